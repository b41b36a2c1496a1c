"""The worker template (sandbox/template.py): workers forked from one pre-initialised TensorFlow
process are hardened like fresh ones, cannot reach the template or each other, and the template
survives what they do.  Attacker code runs in real template-forked workers (tests/attacker.py);
each probe has a positive control run outside the sandbox.  The whole escape suite also runs
against template-forked workers (the ``spawn_mode`` fixture in tests/test_sandbox_attack*.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from modelwarden.sandbox import Sandbox, SandboxLimits, WorkerCrashed, template
from modelwarden.sandbox.namespaces import probe_namespaces
from tests.attacker import CONTROL, AttackerWorker

_NS_OK, _NS_WHY = probe_namespaces()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(not _NS_OK, reason=f"namespaces unavailable: {_NS_WHY}")]


@pytest.fixture
def tmpl(monkeypatch) -> template.Template:
    monkeypatch.setenv("MODELWARDEN_WORKER_TEMPLATE", "1")
    return template.warm()


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def test_forked_worker_is_hardened_exactly_like_a_fresh_one(tmpl):
    with AttackerWorker() as w:
        forked = w.run(CONTROL)
        boot = w.sandbox._worker.proc.proc
        assert isinstance(boot, template.ForkedProcess) and _ppid(boot.pid) == tmpl.pid
        assert w.sandbox.introspect()["layers"]["template"] is True
    with AttackerWorker(template=False) as w:  # control: the same probe in a freshly booted worker
        fresh = w.run(CONTROL)
        assert not isinstance(w.sandbox._worker.proc.proc, template.ForkedProcess)
    for key in ("uid_map", "gid_map", "status"):
        assert forked[key] == fresh[key], key
    assert forked["fds"][:-1] == fresh["fds"][:-1]  # the last one: the probe's own listdir
    assert forked["fds"][:4] == [0, 1, 2, 3]  # stdio and the channel
    assert forked["status"]["CapEff"] == "0000000000000000" and forked["status"]["NoNewPrivs"] == "1"
    assert forked["status"]["Seccomp"] == "2" and forked["uid_map"][1] != "0"
    assert forked["pid"] == 1 and forked["sid"] == 1  # pid 1 of its own pid namespace, own session


def test_template_state_is_measured_single_threaded_and_unconfined(tmpl):
    """What the docs claim about the template itself (docs/sandbox.md, 'Template process')."""
    assert tmpl.info["import_s"] > 0 and len(tmpl.info["threads"]) >= 1
    a, b = socket.socketpair()
    try:
        p = tmpl.spawn(b.fileno())  # at least one fork: OpenBLAS's atfork handler stopped its threads
        p.kill()
        assert p.wait(10) == -signal.SIGKILL
    finally:
        a.close()
        b.close()
    assert len(os.listdir(f"/proc/{tmpl.pid}/task")) == 1  # no other thread alive in T
    with open(f"/proc/{tmpl.pid}/status") as f:
        status = f.read()
    assert "\nSeccomp:\t0\n" in status  # T is trusted code, unconfined like the boot process B
    with open(f"/proc/{tmpl.pid}/maps") as f:
        assert "_pywrap_tensorflow_internal" in f.read()  # TensorFlow is loaded in T


PROBE = r"""
import ctypes, errno, os, signal
libc = ctypes.CDLL(None, use_errno=True)
def err(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def ptrace(pid):
    if libc.ptrace(16, pid, 0, 0) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
    os.waitpid(pid, 0x40000000)  # __WALL: the tracee's attach stop, then let it go on
    libc.ptrace(17, pid, 0, 0)  # PTRACE_DETACH
def readmem(pid):
    with open(f"/proc/{pid}/maps") as f:
        start = int(f.readline().split("-")[0], 16)
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(start)
        f.read(16)
result = {}
for name, pid in TARGETS.items():
    result[name] = {"kill0": err(lambda: os.kill(pid, 0)), "sigcont": err(lambda: os.kill(pid, signal.SIGCONT)),
                    "ptrace": err(lambda: ptrace(pid)), "mem": err(lambda: readmem(pid)),
                    "fds": err(lambda: os.listdir(f"/proc/{pid}/fd"))}
"""


def _probe(targets: dict[str, int]) -> str:
    return f"TARGETS = {json.dumps(targets)}\n" + PROBE


def test_worker_cannot_signal_trace_or_read_the_template_or_a_sibling(tmpl):
    with AttackerWorker() as sibling, AttackerWorker() as w:
        targets = {"template": tmpl.pid, "sibling_boot": sibling.sandbox._worker.proc.proc.pid,
                   "sibling_init": sibling.sandbox._worker.init_pid, "parent": os.getpid()}
        inside = w.run(_probe(targets))
        for name, res in inside.items():
            assert set(res.values()) <= {"ESRCH", "ENOENT", "EPERM"}, (name, res)
            assert res["kill0"] == "ESRCH" and res["mem"] == "ENOENT", (name, res)
        assert sibling.run("result = 6 * 7") == 42  # the sibling is untouched
    # positive control: the same probe outside the sandbox, as the same user, reaches a canary and
    # the template (not ptraced: an attach stops it)
    canary = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        res = subprocess.run([sys.executable, "-c", _probe({"canary": canary.pid}) + "print(result)"],
                             capture_output=True, text=True, timeout=60)
        assert set(eval(res.stdout)["canary"].values()) == {"ok"}, res  # noqa: S307 - our own repr
    finally:
        canary.kill()
        canary.wait()
    os.kill(tmpl.pid, 0)
    with open(f"/proc/{tmpl.pid}/mem", "rb"):
        pass
    assert tmpl.alive


def test_no_template_descriptor_or_shared_writable_memory_reaches_a_worker(tmpl):
    control = _socket_inodes(tmpl.pid)
    assert control, "the template holds its control socket (control for the search below)"
    with AttackerWorker() as w:
        worker = w.sandbox._worker
        for pid in (worker.proc.proc.pid, worker.init_pid):
            assert not (_socket_inodes(pid) & control), pid
        inside = w.run("result = sorted(int(x) for x in __import__('os').listdir('/proc/self/fd'))")
        # stdio, the channel, the fast path's doorbell and region (mmap keeps its own duplicate of the
        # region's descriptor), and the probe's own listdir fd - as in test_sandbox_isolation
        assert len(inside) <= 7
    with open("/proc/net/unix") as f:  # the control socket has no path anyone could connect to
        named = {ln.split()[6] for ln in f.read().splitlines()[1:] if len(ln.split()) >= 8}
    assert not (named & control)
    with open(f"/proc/{tmpl.pid}/maps") as f:  # nothing of the template is shared writable with its forks
        shared_rw = [ln for ln in f if ln.split()[1].startswith("rw") and ln.split()[1][3] == "s"]
    assert shared_rw == []


def test_a_worker_changing_its_copy_of_tensorflow_changes_nothing_in_the_next_worker(tmpl):
    with AttackerWorker() as w:
        original = w.run("import tensorflow as tf; result = tf.__version__")
        assert w.run("import tensorflow as tf, json; tf.__version__ = 'pwned'; json.marker = 1; "
                     "result = tf.__version__") == "pwned"  # control: the change is real, in this worker
    with AttackerWorker() as w:
        assert w.run("import tensorflow as tf, json; result = [tf.__version__, hasattr(json, 'marker')]") == [
            original, False]


def test_fork_bomb_in_a_forked_worker_does_not_exhaust_the_template(tmpl):
    with AttackerWorker(SandboxLimits(timeout_s=60, max_processes=64)) as w:
        res = w.run("import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
                    "            time.sleep(60); os._exit(0)\n        n += 1\nexcept OSError as e:\n"
                    "    result = [n, e.errno]\n")
        assert res[1] == 11 and res[0] < 64  # EAGAIN below max_processes (control: forks did succeed)
        t0 = time.monotonic()
        with AttackerWorker() as other:  # the bomb is still alive; the template forks the next worker
            assert other.run("result = 1") == 1
        assert time.monotonic() - t0 < 30
    assert tmpl.alive and len(os.listdir(f"/proc/{tmpl.pid}/task")) == 1


def test_a_boot_process_killed_mid_fork_is_reported_and_the_template_serves_on(tmpl, fixture_dir):
    a, b = socket.socketpair()
    try:
        p = tmpl.spawn(b.fileno())
        p.kill()  # before it received its config: the worker dies mid-start
        assert p.wait(10) == -signal.SIGKILL and p.poll() == -signal.SIGKILL
    finally:
        a.close()
        b.close()
    model = fixture_dir("build_run_models") / "dense"
    with Sandbox(template=True) as sb:
        m = sb.load(model, scan=False)
        assert m.predict({"x": np.array([[1, 2, 3, 4]], np.float32)})["y"].tolist() == [[4.5, 4.5]]
        assert sb.timings["ready_s"] < 2.0  # forked: no TensorFlow import on this path


def test_workers_die_with_their_template_and_a_new_template_replaces_it(fixture_dir, monkeypatch):
    monkeypatch.setenv("MODELWARDEN_WORKER_TEMPLATE", "1")
    model = fixture_dir("build_run_models") / "dense"
    x = {"x": np.array([[1, 2, 3, 4]], np.float32)}
    old = template.warm()
    with Sandbox() as sb:
        m = sb.load(model, scan=False)
        m.predict(x)
        os.kill(old.pid, signal.SIGKILL)
        old.proc.wait(10)
        with pytest.raises(WorkerCrashed):
            for _ in range(50):  # the boot process and the worker die by PDEATHSIG
                m.predict(x)
                time.sleep(0.1)
    with Sandbox(template=True) as sb:
        sb.load(model, scan=False).predict(x)
        assert sb._worker.template.pid != old.pid


def test_off_switch_and_default(fixture_dir, monkeypatch):
    model = fixture_dir("build_run_models") / "dense"
    monkeypatch.setenv("MODELWARDEN_WORKER_TEMPLATE", "0")
    with Sandbox(template=True) as sb:
        sb.load(model, scan=False)
        assert sb._worker.template is None and not isinstance(sb._worker.proc.proc, template.ForkedProcess)
    monkeypatch.delenv("MODELWARDEN_WORKER_TEMPLATE")
    template.close_all()
    with Sandbox() as sb:  # default: no template is warm in this process, so none is started
        sb.load(model, scan=False)
        assert sb._worker.template is None
    template.warm()
    with Sandbox() as sb:  # default with a warm template: forked
        sb.load(model, scan=False)
        assert sb._worker.template is not None


def test_a_wedged_template_is_replaced_and_the_worker_boots_fresh(fixture_dir, monkeypatch):
    monkeypatch.setenv("MODELWARDEN_WORKER_TEMPLATE", "1")
    model = fixture_dir("build_run_models") / "dense"
    x = {"x": np.array([[1, 2, 3, 4]], np.float32)}
    old = template.warm()
    os.kill(old.pid, signal.SIGSTOP)  # not reachable from a worker; a host process with rights could
    with Sandbox() as sb:
        sb.load(model, scan=False).predict(x)  # spawn times out, T is killed, the worker boots fresh
        assert sb._worker.template is None
    assert old.proc.poll() is not None
    with Sandbox(template=True) as sb:
        sb.load(model, scan=False).predict(x)
        assert sb._worker.template is not None and sb._worker.template.pid != old.pid


def test_a_template_that_cannot_import_tensorflow_says_why_and_leaves_nothing():
    from modelwarden.sandbox.client import worker_env

    with pytest.raises(template.TemplateDied, match="template start failed: ModuleNotFoundError"):
        template.Template(["/nonexistent"], worker_env())
