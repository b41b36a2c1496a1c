"""The gVisor backend: real ``runsc`` sandboxes running real models and real attacker code.

Each escape attempt runs inside a hardened worker on gVisor (tests/attacker.py) and is
checked twice: the positive control shows the attempt really ran in there, the host side
(or the error it got) shows it failed.  A cold start on gVisor's ptrace platform costs
~20 s (TensorFlow's import is syscall-heavy), so workers are shared where a test does not
kill its worker.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from modelwarden.sandbox import DeadlineExceeded, MemoryLimitExceeded, Sandbox, SandboxLimits, WorkerCrashed
from modelwarden.sandbox.client import get_backend
from modelwarden.sandbox.gvisor import GvisorBackend, probe
from modelwarden.sandbox.namespaces import probe_namespaces
from tests.attacker import CONTROL, AttackerWorker
from tests.test_sandbox_isolation import leftovers

_OK, _WHY = probe()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(not _OK, reason=f"gVisor cannot run here: {_WHY}")]

LIMITS = SandboxLimits(timeout_s=60, load_timeout_s=240, max_processes=128)


def gvisor_leftovers() -> list[str]:
    """Processes, bundles and cgroups a gVisor worker could leave behind."""
    found = [p for p in leftovers() if not p.startswith("child ")] + [
        str(x) for x in Path("/tmp").glob("modelwarden-gvisor-*") if "canary" not in x.name]
    found += [str(x) for x in Path("/sys/fs/cgroup").glob("*/modelwarden-gvisor-*")]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].startswith(b"runsc") and any(b"modelwarden-gvisor-" in a for a in argv):
            found.append(" ".join(a.decode(errors="replace") for a in argv)[:200])
    return found


@pytest.fixture(scope="module")
def run_models(fixture_dir):
    return fixture_dir("build_run_models")


@pytest.fixture(scope="module")
def warm(run_models):
    sb = Sandbox(LIMITS, backend="gvisor")
    model = sb.load(run_models / "dense", scan=False)
    yield sb, model
    sb.close()


@pytest.fixture(scope="module")
def attacker():
    with AttackerWorker(LIMITS, backend="gvisor") as w:
        yield w


# -- selection and doctor ------------------------------------------------------------------------------


def test_probe_starts_a_real_sandbox_and_is_cached():
    assert _OK and "starts sandboxes" in _WHY and "platform ptrace" in _WHY
    t0 = time.monotonic()
    assert GvisorBackend.availability() == (_OK, _WHY)
    assert time.monotonic() - t0 < 0.01  # cached: doctor and every run do not pay for another sandbox


def test_a_sandbox_leaves_the_host_dev_null_to_its_owner(tmp_path):
    """runsc hands the files of its stdio to the Sentry's host user (nobody): given the host's
    /dev/null as the worker's output, it chowned the host's /dev/null to nobody, and any process of
    that uid (a namespaces worker of a root caller) could then chmod it.  The output now goes to a
    pipe of the parent's; a real sandbox starts and answers (the positive control) and /dev/null
    keeps its owner."""
    from modelwarden.sandbox.gvisor import PROBE_MAIN, launch
    from modelwarden.sandbox.interface import plan_filesystem

    if os.geteuid() == 0 and os.stat("/dev/null").st_uid != 0:
        os.chown("/dev/null", 0, 0)  # the host's own owner, in case an older run gave it away
    before = os.stat("/dev/null")
    parent, child = socket.socketpair()
    proc = launch(plan_filesystem(str(tmp_path)), 1 << 20, child.fileno(), PROBE_MAIN)
    try:
        child.close()
        parent.settimeout(60)
        answer = b""
        while len(answer) < 21 and (chunk := parent.recv(64)):
            answer += chunk
    finally:
        parent.close()
        proc.kill()
        proc.wait()
    assert answer == b"modelwarden-gvisor-ok"
    after = os.stat("/dev/null")
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)


def test_auto_keeps_namespaces_first_and_gvisor_is_selectable():
    if probe_namespaces()[0]:
        assert get_backend("auto").name == "namespaces"
    assert get_backend("gvisor").name == "gvisor"


def test_doctor_reports_gvisor(tmp_path):
    from tests.conftest import run_cli

    res = run_cli("doctor", "--json")
    data = json.loads(res.stdout)
    (check,) = [c for c in data["checks"] if c["name"] == "backend gvisor"]
    assert check["ok"] is True and "starts sandboxes" in check["detail"]
    if probe_namespaces()[0]:
        assert data["backend"] == "namespaces"


# -- the model runs, the protocol and limits hold --------------------------------------------------------


def test_load_and_predict_a_real_model(warm, run_models):
    sb, model = warm
    expected = json.loads((run_models / "expected.json").read_text())
    out = model.predict({"x": np.array(expected["x"], np.float32)})
    np.testing.assert_allclose(out["y"], np.array(expected["y"], np.float32), rtol=1e-5)
    for _ in range(5):  # warm calls on the same worker
        assert model.predict({"x": np.ones((3, 4), np.float32)})["y"].shape == (3, 2)


def test_the_worker_sees_gvisor_and_its_own_restrictions(warm):
    sb, _ = warm
    info = sb.introspect()
    assert info["layers"]["backend"] == "gvisor"
    assert info["pid"] == 1 and info["ppid"] == 0  # pid 1 of the Sentry's own pid namespace
    assert info["uid"] == 65534  # the fixtures are world-readable: the guest owns nothing
    status = info["status"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd"):
        assert int(status[cap], 16) == 0, cap
    assert status["Seccomp"] == "2"  # the worker's own filter, enforced by the Sentry
    assert info["net_interfaces"] == ["lo"]
    assert info["sockets"]["AF_UNIX"] == "allowed"
    assert all(v.startswith("denied") for k, v in info["sockets"].items() if k != "AF_UNIX")
    assert sorted(info["root"]) == ["dev", "etc", "lib", "lib64", "model", "opt", "proc", "sys", "tmp", "usr"]
    assert info["rlimits"]["nofile"] == [LIMITS.max_open_files] * 2
    assert info["rlimits"]["fsize"] == [LIMITS.max_file_bytes] * 2
    assert info["rlimits"]["core"] == [0, 0]
    mounts = "\n".join(info["mounts"])
    assert "/model 9p ro,noexec" in mounts and f"/tmp tmpfs rw,noexec,size={LIMITS.tmpfs_bytes}" in mounts
    assert "/root" not in mounts and "/work" not in mounts  # no host path of the runtime or checkout


def test_deadline_kills_the_sandbox_and_leaves_nothing():
    before = set(gvisor_leftovers())
    with AttackerWorker(LIMITS, backend="gvisor") as w:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            w.run("while True:\n    pass", timeout=3)
        assert time.monotonic() - t0 < 15
        assert not w.sandbox.alive
    # killed and reaped; the Sentry and gofer (SIGKILLed with the tree) may take a moment to leave
    # a loaded host: nothing may be left after a few seconds, and nothing ever is when they linger
    deadline = time.monotonic() + 10
    while not set(gvisor_leftovers()) <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert set(gvisor_leftovers()) <= before


def test_crash_is_reported_with_its_signal():
    with AttackerWorker(LIMITS, backend="gvisor") as w:
        assert w.run("result = 1") == 1  # control: the harness runs
        with pytest.raises(WorkerCrashed, match="SIGSEGV"):
            w.run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")


def test_memory_bomb_hits_the_memory_limit(fixture_dir):
    escape = fixture_dir("build_escape")
    with Sandbox(SandboxLimits(memory_bytes=1536 << 20, timeout_s=60, load_timeout_s=240), backend="gvisor") as sb:
        model = sb.load(escape / "memory_bomb", scan=False)
        assert model.predict({"n": np.int32(16)})["sum"] == 16 << 20  # control: the op runs
        with pytest.raises(MemoryLimitExceeded):
            model.predict({"n": np.int32(2048)})  # 8 GiB of tiles
        assert not sb.alive


# -- the escape suite on gVisor ---------------------------------------------------------------------------


def test_positive_control(attacker):
    info = attacker.run(CONTROL)
    # gVisor's /proc/self/status has no NoNewPrivs line, and prctl is outside the worker's seccomp
    # allowlist: the filter answering ENOSYS shows it is in force, which (capabilities being gone)
    # the kernel allows only under no_new_privs.
    prctl = attacker.run("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                         "result = [libc.prctl(39, 0, 0, 0, 0), ctypes.get_errno()]")
    assert prctl == [-1, errno.ENOSYS]
    status = info["status"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd"):
        assert int(status[cap], 16) == 0, cap
    assert "CapAmb" not in status  # gVisor has no ambient set (so nothing can be raised into it)
    assert status["Seccomp"] == "2"
    assert info["pid"] == 1 and info["sid"] == info["pgid"]
    assert info["uid_map"][:2] == ["0", "0"]  # the Sentry's own user namespace, not a host mapping
    assert status["Uid"].split()[0] == "65534"
    assert len(info["fds"]) <= 8  # stdio, the channel, and what Python/TF opened


@pytest.fixture(scope="module")
def canary():
    d = Path("/tmp") / f"modelwarden-gvisor-canary-{os.getpid()}"
    d.mkdir(exist_ok=True)
    secret = secrets.token_hex(16)
    (d / "secret.txt").write_text(secret)
    os.chmod(d / "secret.txt", 0o644)
    yield d / "secret.txt", secret
    shutil.rmtree(d, ignore_errors=True)


def test_host_files_cannot_be_read(attacker, canary):
    path, secret = canary
    res = attacker.run(f"""
import os
def attempt(p):
    try:
        return open(p, 'rb').read(4096).hex()
    except OSError as e:
        return 'errno %d' % e.errno
result = {{'model': len(open('/model/exec.keras', 'rb').read()),
          'canary': attempt({str(path)!r}), 'shadow': attempt('/etc/shadow'),
          'host_root': attempt('/root/.bashrc'), 'via_proc': attempt('/proc/1/root' + {str(path)!r}),
          'listing': sorted(os.listdir('/'))}}
""")
    assert res["model"] > 1000  # control: file reads work in there
    assert secret.encode().hex() not in json.dumps(res)
    for key in ("canary", "shadow", "host_root", "via_proc"):
        assert res[key] == "errno 2", (key, res[key])  # not there at all
    assert "root" not in res["listing"] and "work" not in res["listing"]


def test_host_files_cannot_be_written(attacker, tmp_path):
    marker = f"modelwarden-gvisor-write-{secrets.token_hex(4)}"
    res = attacker.run(f"""
import os
def attempt(p):
    try:
        with open(p, 'w') as f:
            f.write('pwned')
        return 'written'
    except OSError as e:
        return 'errno %d' % e.errno
result = {{p: attempt(p) for p in ['/tmp/{marker}', '/model/{marker}', '/{marker}', '/dev/{marker}',
                                   '/usr/lib/{marker}', '/opt/modelwarden/pkg/modelwarden/{marker}',
                                   '/etc/ld.so.cache', '/dev/shm/{marker}']}}
""")
    assert res.pop(f"/tmp/{marker}") == "written"  # control: the sandbox's own tmpfs takes writes
    for p, r in res.items():
        assert r in ("errno 13", "errno 30"), (p, r)  # EACCES / EROFS
    import modelwarden

    pkg = Path(modelwarden.__file__).parent
    for host in (Path("/tmp") / marker, pkg / marker, Path("/") / marker, Path("/dev") / marker):
        assert not host.exists()


def test_network_sockets_fail(attacker):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.5)
    port = srv.getsockname()[1]
    try:
        res = attacker.run(f"""
import socket
out = {{}}
for name, fam, typ in (('inet', socket.AF_INET, socket.SOCK_STREAM), ('inet6', socket.AF_INET6, socket.SOCK_STREAM),
                       ('udp', socket.AF_INET, socket.SOCK_DGRAM), ('netlink', socket.AF_NETLINK, socket.SOCK_RAW),
                       ('packet', socket.AF_PACKET, socket.SOCK_RAW)):
    try:
        s = socket.socket(fam, typ)
        s.settimeout(2)
        s.connect(('127.0.0.1', {port}))
        out[name] = 'connected'
    except OSError as e:
        out[name] = 'errno %d' % e.errno
a, b = socket.socketpair()
a.sendall(b'ok')
out['unix'] = b.recv(2).decode()
result = out
""")
        assert res.pop("unix") == "ok"  # control: socket() itself works (AF_UNIX pairs)
        for name, r in res.items():
            assert r == "errno 97", (name, r)  # EAFNOSUPPORT from the worker's seccomp filter
        with pytest.raises(socket.timeout):
            srv.accept()
    finally:
        srv.close()


def test_kill_reaches_nothing_outside(attacker):
    # sentinels: one in this process's process group, one in its own session
    same_group = subprocess.Popen(["sleep", "120"])
    own_session = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        res = attacker.run(f"""
import os, signal, time
out = {{'ppid': os.getppid()}}
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the attacker survives its own kill(0)/kill(-1)
for name, target in (('group0', 0), ('all', -1), ('parent', os.getppid() or 1),
                     ('host_pid', {same_group.pid}), ('host_pgid', -{os.getpgid(0)}), ('host_sid', {own_session.pid})):
    try:
        os.kill(target, signal.SIGTERM)
        out[name] = 'sent'
    except OSError as e:
        out[name] = 'errno %d' % e.errno
_, st = os.waitpid(child, 0)
out['child'] = os.waitstatus_to_exitcode(st)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
result = out
""")
        assert res["child"] == -signal.SIGTERM  # control: kill(-1) really delivered, to the sandbox's own child
        assert res["ppid"] == 0 and res["group0"] == "sent" and res["all"] == "sent"
        for key in ("host_pid", "host_pgid", "host_sid"):
            assert res[key] == "errno 3", (key, res[key])  # ESRCH: host pids do not exist in there
        time.sleep(0.2)
        assert same_group.poll() is None and own_session.poll() is None  # the host sentinels live on
        assert attacker.sandbox.alive
    finally:
        for p in (same_group, own_session):
            p.kill()
            p.wait()


def test_proc_sys_writes_fail(attacker):
    with open("/proc/sys/kernel/core_pattern") as f:
        host_core = f.read()
    with open("/proc/sys/kernel/hostname") as f:
        host_name = f.read()
    res = attacker.run("""
import os
out = {'present': sorted(os.listdir('/proc/sys/kernel'))}
for p in ('/proc/sys/kernel/core_pattern', '/proc/sys/kernel/hostname', '/proc/sys/vm/drop_caches',
          '/proc/sys/kernel/modprobe', '/proc/sysrq-trigger', '/sys/kernel/uevent_helper'):
    try:
        with open(p, 'w') as f:
            f.write('|/tmp/pwn %p')
        out[p] = 'written'
    except OSError as e:
        out[p] = 'errno %d' % e.errno
writable = []
for d, _, files in os.walk('/proc/sys'):
    for f in files:
        if os.access(os.path.join(d, f), os.W_OK):
            writable.append(os.path.join(d, f))
out['writable'] = writable
result = out
""")
    present = res.pop("present")
    assert "hostname" in present  # control: /proc/sys is there (the Sentry's own, far smaller than the host's)
    assert res["/proc/sys/kernel/hostname"] in ("errno 13", "errno 30")  # an existing file: write refused
    assert res.pop("writable") == []
    for p, r in res.items():
        assert r in ("errno 2", "errno 13", "errno 30"), (p, r)
    with open("/proc/sys/kernel/core_pattern") as f:
        assert f.read() == host_core
    with open("/proc/sys/kernel/hostname") as f:
        assert f.read() == host_name



def test_fork_bomb_gets_eagain_and_the_worker_survives(fixture_dir):
    model_path = fixture_dir("build_escape") / "lambda_forkbomb.keras"  # the escape suite's own fork bomb
    with Sandbox(LIMITS, backend="gvisor") as sb:
        model = sb.load(model_path, scan=False, keras_safe_mode=False)
        forks, err = model.predict({"x": np.zeros((1, 8), np.float32)})["attack"][0][:2]
        assert forks > 10  # control: fork really works in there
        assert err == 11 and forks < LIMITS.max_processes  # EAGAIN from RLIMIT_NPROC, enforced by the Sentry
        model.predict({"x": np.zeros((1, 8), np.float32)})  # the Sentry did not die of it
        assert sb.alive

