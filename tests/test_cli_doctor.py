"""``modelwarden doctor`` tells the truth about what ``run`` and ``serve`` need, and ``run``/``serve``
say the same thing (exit 3 with the install command) instead of failing later inside the sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT

# The child makes the named top-level packages unimportable for itself only (as on a machine
# where they were never installed), then runs the real CLI.
CHILD = r"""
import sys
BLOCKED = set(sys.argv[1].split(",")) - {""}
class Uninstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Uninstalled())
from modelwarden.cli import main
sys.exit(main(sys.argv[2:]))
"""


def cli_without(blocked: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), NO_COLOR="1")
    env.pop("MODELWARDEN_DEBUG", None)
    return subprocess.run([sys.executable, "-c", CHILD, blocked, *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


def test_doctor_reports_every_runtime_dependency():
    proc = cli_without("", "doctor", "--json")
    data = json.loads(proc.stdout)
    deps = {d["name"]: d for d in data["dependencies"]}
    assert set(deps) == {"python tensorflow", "python numpy", "python uvicorn", "python orjson", "python grpc"}
    assert all(d["ok"] for d in deps.values()), deps  # this suite installs .[dev,tf,serve]
    assert data["can_run"] == data["usable"]
    assert proc.returncode == (0 if data["usable"] else 3)


def test_without_tensorflow_doctor_run_and_serve_say_how_to_install_it(tmp_path):
    doctor = cli_without("tensorflow", "doctor")
    assert doctor.returncode == 3, doctor.stdout + doctor.stderr
    line = next(ln for ln in doctor.stdout.splitlines() if "python tensorflow" in ln)
    assert line.startswith("[MISSING]") and "pip install" in line and "[tf]" in line
    assert "cannot execute models" in doctor.stdout or "No sandbox backend" in doctor.stdout

    run = cli_without("tensorflow", "run", str(ROOT / "examples/models/dense_savedmodel"), "--inputs",
                      '{"x": [[1.0, 2.0]]}')
    assert run.returncode == 3 and "Traceback" not in run.stderr
    assert "needs tensorflow" in run.stderr and "pip install" in run.stderr and "[tf]" in run.stderr

    serve = cli_without("uvicorn,orjson", "serve", "--check-config", "--token-db", str(tmp_path / "t.json"))
    assert serve.returncode == 3 and "Traceback" not in serve.stderr
    assert "uvicorn, orjson" in serve.stderr and "[serve]" in serve.stderr


def test_doctor_without_the_serve_extra_still_passes_for_run():
    proc = cli_without("uvicorn", "doctor", "--json")
    data = json.loads(proc.stdout)
    uv = next(d for d in data["dependencies"] if d["name"] == "python uvicorn")
    assert not uv["ok"] and not uv["required"] and "[serve]" in uv["detail"]
    assert proc.returncode == (0 if data["usable"] else 3)


@pytest.mark.sandbox
def test_doctor_probe_shows_the_active_layers_formatted():
    """One real worker: what it sees, as aligned text (not a raw Python dict)."""
    proc = cli_without("", "doctor", "--probe")
    if proc.returncode != 0:
        pytest.skip("no sandbox backend on this host: " + proc.stdout[-500:])
    section = proc.stdout.split("Active in a real worker:", 1)[1]
    assert "{" not in section and "'" not in section, section
    rows = {ln[:31].strip(): ln[31:].strip() for ln in section.splitlines() if ln.strip()}
    assert rows["effective capabilities"] == "0" * 16 and rows["no_new_privs"] == "1"
    assert rows["seccomp mode (2 = filter)"] == "2" and rows["network interfaces"] == "lo"
    assert rows["pid / uid inside"] == "1 / 0"
    assert "AF_INET denied" in rows["sockets"] and "AF_UNIX allowed" in rows["sockets"]


def test_a_package_only_on_pythonpath_does_not_count(tmp_path, monkeypatch):
    """The worker gets the Python prefixes and site-packages, never PYTHONPATH: a package the host
    process can import from elsewhere is not available to run/serve, and doctor must not say it is."""
    import importlib.util

    from modelwarden.cli import deps

    (tmp_path / "mw_only_here").mkdir()
    (tmp_path / "mw_only_here" / "__init__.py").write_text("raise SystemExit('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert importlib.util.find_spec("mw_only_here") is not None
    assert str(tmp_path) not in deps.worker_path()
    assert not deps.installed("mw_only_here")
    assert deps.installed("numpy")
