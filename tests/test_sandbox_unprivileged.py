"""The built-in backend as an unprivileged user (uid 65534): no cgroups, rlimits take over.

The test runner is root here, so it re-runs the real interpreter as ``nobody``: in a private
mount namespace (``unshare -m``) the Python prefix is bind-mounted to a world-traversable
place (it may live under /root, mode 0700) and ``setpriv`` drops to uid/gid 65534.  The
child then uses ``modelwarden.Sandbox`` exactly as a normal user would.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare"),
                       reason="needs root plus setpriv/unshare to become an unprivileged user"),
]

CHILD = r"""
import glob, json, os, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from modelwarden.sandbox import Sandbox, SandboxLimits, SandboxError
run, esc, backend = sys.argv[2], sys.argv[3], sys.argv[4]
out = {"uid": os.getuid()}
lim = SandboxLimits(memory_bytes=1 << 30, max_processes=120, timeout_s=60, load_timeout_s=240)
with Sandbox(lim, backend=backend) as sb:
    m = sb.load(run + "/dense", scan=False)
    out["y"] = m.predict({"x": np.ones((1, 4), np.float32)})["y"].tolist()
    info = sb.introspect()
    out["info"] = {k: info[k] for k in ("uid", "pid", "root", "net_interfaces", "rlimits", "layers", "status")}
with Sandbox(lim, backend=backend) as sb:
    m = sb.load(esc + "/lambda_forkbomb.keras", scan=False, keras_safe_mode=False)
    out["forkbomb"] = m.predict({"x": np.zeros((1, 8), np.float32)})["attack"][0][:2].tolist()
with Sandbox(lim, backend=backend) as sb:
    m = sb.load(esc + "/memory_bomb", scan=False)
    try:
        m.predict({"n": np.int32(2048)})
        out["bomb"] = "no error"
    except SandboxError as e:
        out["bomb"] = type(e).__name__
print("RESULT " + json.dumps(out))
"""


VENV_PROLOGUE = ("import os, site\n"  # inside a venv: its site-packages, bound at /mnt/venv
                 "for _d in os.environ.get('MW_VENV_SITES', '').split(os.pathsep):\n"
                 "    _d and site.addsitedir(_d)\n")


def run_as_nobody(child: str, *args: str) -> dict:
    """Run Python source ``child`` as uid 65534 (argv: src dir, then ``args``); its ``RESULT {json}`` line.

    The base interpreter runs from a bind of its prefix; inside a virtual environment the venv is
    bound too and its site-packages added, so the child sees what the test process sees.
    """
    prefix = sys.base_prefix
    exe = os.path.relpath(os.path.realpath(sys.executable), os.path.realpath(prefix))
    if exe.startswith(".."):
        pytest.skip("interpreter outside its prefix")
    venv = os.path.realpath(sys.prefix) if sys.prefix != sys.base_prefix else ""
    venv_sites = [f"/mnt/venv/{os.path.relpath(os.path.realpath(d), venv)}" for d in site.getsitepackages()
                  if venv and os.path.realpath(d).startswith(venv + "/")]
    script = (
        'mount -t tmpfs -o size=1m,mode=0755 none /mnt && mkdir /mnt/py /mnt/venv && mount --bind "$0" /mnt/py && '
        '{ [ -z "$MW_VENV" ] || mount --bind "$MW_VENV" /mnt/venv; } && '
        'exe="$1" && shift && exec setpriv --reuid=65534 --regid=65534 --clear-groups env -i HOME=/nonexistent '
        'MW_VENV_SITES="$MW_VENV_SITES" MODELWARDEN_WORKER_TEMPLATE="$MODELWARDEN_WORKER_TEMPLATE" LD_LIBRARY_PATH=/mnt/py/lib TF_CPP_MIN_LOG_LEVEL=3 "/mnt/py/$exe" -c "$@"'
    )
    env = dict(os.environ, MW_VENV=venv, MW_VENV_SITES=os.pathsep.join(venv_sites))
    res = subprocess.run(["unshare", "-m", "sh", "-c", script, prefix, exe, VENV_PROLOGUE + child, str(ROOT / "src"),
                          *args], capture_output=True, text=True, timeout=900, cwd="/", env=env)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, res.stdout[-2000:] + res.stderr[-4000:]
    return json.loads(lines[0][7:])


def _backends():
    from modelwarden.sandbox.gvisor import probe

    ok, why = probe()
    return ["namespaces", pytest.param("gvisor", marks=pytest.mark.skipif(not ok, reason=f"gVisor: {why}"))]


@pytest.mark.parametrize("backend", _backends())
def test_sandbox_works_for_an_unprivileged_user(fixture_dir, backend):
    """Rootless on every backend; on gVisor that is ``runsc --rootless`` (RLIMITs enforced by the Sentry)."""
    out = run_as_nobody(CHILD, str(fixture_dir("build_run_models")), str(fixture_dir("build_escape")), backend)
    assert out["uid"] == 65534
    assert out["y"][0] == pytest.approx([1.7, 1.1], rel=1e-5)
    info = out["info"]
    assert info["uid"] == 0 and info["pid"] == 1
    assert info["layers"]["cgroups"] == "none"  # nobody cannot create cgroups: rlimits instead
    assert info["rlimits"]["nproc"] == [120, 120]
    assert info["rlimits"]["as"][0] > 1 << 30
    assert int(info["status"]["CapEff"], 16) == 0 and info["status"]["Seccomp"] == "2"
    assert info["net_interfaces"] == ["lo"]
    assert "model" in info["root"] and "root" not in info["root"] and "home" not in info["root"]
    forks, err = out["forkbomb"]
    assert err == 11 and forks < 120  # EAGAIN from RLIMIT_NPROC
    assert out["bomb"] == "MemoryLimitExceeded"
