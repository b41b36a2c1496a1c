"""Issue #9's in-worker attacks again, with the caller an unprivileged user (uid 65534), both backends.

Same probes as tests/test_sandbox_attacks.py (their positive controls run there), and the
shared-memory reply attacks of tests/test_sandbox_shm.py (forged, then lying after honest calls);
here the caller owns the worker's host uid, so signals and sysctls are what could reach it.
"""

from __future__ import annotations

import pytest

from modelwarden.sandbox.bwrap import BwrapBackend
from tests.attacker import harness_model, spawn_mode, spawn_mode_all  # noqa: F401 - fixtures
from tests.conftest import ROOT
from tests.test_sandbox_attacks import CANARY, KILLS, SYSCTL_PROBE
from tests.test_sandbox_shm import REGION
from tests.test_sandbox_unprivileged import pytestmark as _unpriv_marks
from tests.test_sandbox_unprivileged import run_as_nobody

pytestmark = _unpriv_marks
pytestmark = [*pytestmark, pytest.mark.usefixtures("spawn_mode")]  # workers booted fresh and forked from the template

CHILD = r"""
import json, os, subprocess, sys, tempfile, time
sys.path[0:0] = [sys.argv[1], sys.argv[2]]
from tests.attacker import AttackerWorker
harness, backends = sys.argv[3], sys.argv[4].split(",")
probe, kills, canary_src, region = json.loads(sys.argv[5])
from modelwarden.sandbox import ProtocolViolation
out = {"uid": os.getuid()}
record = tempfile.mktemp(prefix="mw-canary-")
canary = subprocess.Popen([sys.executable, "-c", canary_src, record], stdout=subprocess.PIPE, text=True)
assert canary.stdout.readline().strip() == "ready"
import signal
hits = []
signal.signal(signal.SIGUSR1, lambda s, f: hits.append(s))
for backend in backends:
    with AttackerWorker(backend=backend, model=harness) as w:
        res = {"sysctl": w.run(probe)}
        src = (kills.replace("HOST_PID", str(os.getpid())).replace("HOST_PGID", str(os.getpgid(0)))
               .replace("CANARY_PID", str(canary.pid)))
        res["kills"] = w.run(src)
        time.sleep(0.3)
        res["canary_state"] = open(f"/proc/{canary.pid}/stat").read().rsplit(")", 1)[1].split()[0]
        res["canary_hit"] = os.path.exists(record)
        res["parent_hits"] = len(hits)
        # the shared-memory region: a forged reply reaches this caller (positive control), honest
        # calls make it remember their layout, a lying header is still refused
        res["forged"] = w.run(region + "forged('forged'); time.sleep(0.5); result = 'real'")
        res["honest"] = [w.run("result = 1") for _ in range(3)]
        try:
            w.run(region + "reply([(0, F32, 2, 1 << 62, 8, 1, 2, 0, 0, 0, 0, 0, 0)]); time.sleep(30)")
            res["lying_header"] = "accepted"
        except ProtocolViolation as exc:
            res["lying_header"] = "outside the reply area" in str(exc) and not w.sandbox.alive
    out[backend] = res
canary.kill()
print("RESULT " + json.dumps(out), flush=True)
"""


def test_in_worker_attacks_fail_for_an_unprivileged_caller():
    import json

    backends = ["namespaces"] + (["bwrap"] if BwrapBackend.availability()[0] else [])
    out = run_as_nobody(CHILD, str(ROOT), harness_model(), ",".join(backends), json.dumps([SYSCTL_PROBE, KILLS, CANARY, REGION]))
    assert out["uid"] == 65534
    for backend in backends:
        res = out[backend]
        sysctl, kills = res["sysctl"], res["kills"]
        assert sysctl["tmp_control"] == "OPENED"  # the probe ran
        assert sysctl["uid_map"] == [["0", "65534", "1"]]
        assert sysctl["seen"] > 100 and sysctl["n_writable"] == 0, (backend, sysctl["writable"])
        assert kills["kill0"] == "sent" and kills["pgid"] == kills["sid"]
        assert res["canary_state"] != "T" and not res["canary_hit"] and res["parent_hits"] == 0, (backend, res)
        assert res["forged"] == "forged" and res["honest"] == [1, 1, 1] and res["lying_header"] is True, (backend, res)
