"""Issue #9: attacker code already running inside the worker (tests/attacker.py) tries to get out.

Each attack runs for real in a hardened worker on every backend this host offers, with a
positive control showing the same probe does detect the weakness where it exists.  Probes
only *open* kernel settings for writing and never write them: nothing on the host changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from modelwarden.sandbox import DeadlineExceeded, Sandbox, SandboxLimits
from modelwarden.sandbox.bwrap import BwrapBackend
from modelwarden.sandbox.client import _Worker, debug_enabled
from modelwarden.sandbox.namespaces import probe_namespaces
from tests.attacker import AttackerWorker, harness_model, spawn_mode, spawn_mode_all  # noqa: F401 - fixtures
from tests.conftest import ROOT

BACKENDS = [name for name, ok in (("namespaces", probe_namespaces()[0]), ("bwrap", BwrapBackend.availability()[0]))
            if ok]
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(not BACKENDS, reason="no sandbox backend on this host")]
pytestmark = [*pytestmark, pytest.mark.usefixtures("spawn_mode")]  # workers booted fresh and forked from the template
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the host-root attack needs a root caller")

# Opens (never writes) every sysctl for writing; what succeeds is writable by this process.
SYSCTL_PROBE = r"""
import os
def try_open(path, flags=os.O_WRONLY):
    try:
        os.close(os.open(path, flags))
        return "OPENED"
    except OSError as exc:
        return exc.errno
writable, seen = [], 0
for d, _dirs, files in os.walk("/proc/sys"):
    for f in files:
        seen += 1
        if try_open(os.path.join(d, f)) == "OPENED":
            writable.append(os.path.join(d, f))
others = {p: try_open(p) for p in ("/proc/sysrq-trigger", "/proc/irq/default_smp_affinity", "/proc/fs/nfsd/threads")
          if os.path.exists(p)}
result = {"core_pattern": try_open("/proc/sys/kernel/core_pattern"), "writable": writable[:20],
          "n_writable": len(writable), "seen": seen, "others": others,
          "uid_map": [l.split() for l in open("/proc/self/uid_map")], "gid_map": [l.split() for l in open("/proc/self/gid_map")],
          "tmp_control": try_open("/tmp/probe-control", os.O_WRONLY | os.O_CREAT)}
"""


def _private_copy(tmp_path: Path) -> str:
    """The harness as a root-owned 0600 file in a 0700 directory: what forced host uid 0 before."""
    d = tmp_path / "private"
    d.mkdir(mode=0o700)
    target = d / "exec.keras"
    shutil.copy(harness_model(), target)
    target.chmod(0o600)
    return str(target)


def _run_here(source: str) -> dict:
    g: dict = {}
    exec(source, g)  # noqa: S102 - the probe only opens files, never writes
    return g["result"]


# -- 1. never host uid 0; /proc/sys and friends read-only ----------------------------------------------


@ROOT_ONLY
@pytest.mark.parametrize("backend", BACKENDS)
def test_root_private_model_never_gives_host_root_or_writable_sysctls(backend, tmp_path):
    control = _run_here(SYSCTL_PROBE)  # positive control: as host root the probe finds writable sysctls
    assert control["core_pattern"] == "OPENED" and control["n_writable"] > 100, control
    with AttackerWorker(backend=backend, model=_private_copy(tmp_path)) as w:
        info = w.run(SYSCTL_PROBE)
    assert info["tmp_control"] == "OPENED"  # the probe ran and can open what is writable
    for line in info["uid_map"] + info["gid_map"]:
        assert line[1] != "0", info["uid_map"]  # no uid/gid of the worker is host 0
    assert info["uid_map"] == [["0", "65534", "1"]]
    assert info["seen"] > 100 and info["n_writable"] == 0, info["writable"]
    assert info["core_pattern"] != "OPENED"
    assert all(v != "OPENED" for v in info["others"].values()), info["others"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_proc_sys_is_mounted_read_only_whatever_the_uid(backend):
    """Second layer: even a worker uid that could write sysctls meets a read-only /proc/sys."""
    with AttackerWorker(backend=backend) as w:
        mounts = w.run("result = [l.split() for l in open('/proc/self/mountinfo')]")
        control = w.run("import os; result = os.statvfs('/tmp').f_flag & os.ST_RDONLY")
    assert control == 0  # /tmp stays writable: the flag is read correctly
    by_point = {m[4]: m[5].split(",") for m in mounts}
    for name in ("sys", "irq", "bus", "fs", "sysrq-trigger"):
        if os.path.lexists(f"/proc/{name}"):
            assert "ro" in by_point.get(f"/proc/{name}", []), (name, sorted(p for p in by_point if p.startswith("/proc")))


def test_doctor_reports_the_workers_host_uid():
    from modelwarden.sandbox.doctor import diagnose

    check = next(c for c in diagnose().checks if c.name == "worker host uid")
    expected = 65534 if os.geteuid() == 0 else os.geteuid()
    assert check.ok and f"host uid {expected}" in check.detail


# -- 2. own session and process group; signals reach nothing outside ----------------------------------

CANARY = r"""
import signal, sys, time
def record(sig, _frame):
    with open(sys.argv[1], "a") as f:
        f.write(f"{sig}\n")
signal.signal(signal.SIGUSR1, record)
print("ready", flush=True)
time.sleep(120)
"""

KILLS = r"""
import os, signal
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
def k(pid, sig):
    try:
        os.kill(pid, sig)
        return "sent"
    except OSError as exc:
        return exc.errno
out = {"ppid": os.getppid(), "sid": os.getsid(0), "pgid": os.getpgid(0), "pid": os.getpid()}
out["kill0"] = k(0, signal.SIGUSR1)
out["kill_pgrp"] = k(-os.getpgid(0), signal.SIGUSR1)
out["kill_ppid"] = k(os.getppid(), signal.SIGUSR1) if os.getppid() > 1 else "no parent visible"
out["usr1_host_parent"] = k(HOST_PID, signal.SIGUSR1)
out["usr1_host_pgrp"] = k(-HOST_PGID, signal.SIGUSR1)
out["usr1_canary"] = k(CANARY_PID, signal.SIGUSR1)
out["stop_canary"] = k(CANARY_PID, signal.SIGSTOP)
result = out
"""
# kill(-1, ...) is deliberately absent: were the sandbox broken it would hit every process of the host.


def _canary(record: Path, new_session: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CANARY, str(record)], stdout=subprocess.PIPE, text=True,
                            start_new_session=new_session)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_kill_zero_reaches_process_group_peers_without_a_sandbox(tmp_path):
    """Positive control: the same kill(0, ...) and kill(-pgid, ...) hit a peer in the caller's group."""
    record = tmp_path / "control.txt"
    src = (f"import os, signal, subprocess, sys\np = subprocess.Popen([sys.executable, '-c', {CANARY!r}, {str(record)!r}], "
           "stdout=subprocess.PIPE, text=True)\nassert p.stdout.readline().strip() == 'ready'\n"
           "signal.signal(signal.SIGUSR1, signal.SIG_IGN)\nimport time\n"
           "def seen(n):  # one at a time: a second SIGUSR1 sent while one is pending merges into it\n"
           "    end = time.monotonic() + 10\n"
           f"    r = {str(record)!r}\n"
           "    while time.monotonic() < end and (not os.path.exists(r) or open(r).read().count(chr(10)) < n):\n"
           "        time.sleep(0.01)\n"
           "os.kill(0, signal.SIGUSR1)\nseen(1)\nos.kill(-os.getpgid(0), signal.SIGUSR1)\nseen(2)\np.kill()\n")
    subprocess.run([sys.executable, "-c", src], start_new_session=True, timeout=60, check=True)
    assert record.read_text().split() == [str(int(signal.SIGUSR1))] * 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_worker_signals_reach_nothing_outside_and_the_deadline_holds(backend, tmp_path):
    record = tmp_path / "canary.txt"
    canary = _canary(record)  # in *our* process group, as another model's worker would be
    hits: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda sig, _f: hits.append(sig))
    try:
        with AttackerWorker(SandboxLimits(timeout_s=60), backend=backend) as w:
            src = (KILLS.replace("HOST_PID", str(os.getpid())).replace("HOST_PGID", str(os.getpgid(0)))
                   .replace("CANARY_PID", str(canary.pid)))
            out = w.run(src)
            time.sleep(0.3)
            assert out["pgid"] == out["sid"]  # its own session and group
            assert out["kill0"] == "sent"  # the attack really ran (it reached its own group)
            assert _state(canary.pid) != "T" and _state(os.getpid()) != "T"
            assert not record.exists() and hits == [], (out, hits)
            assert canary.poll() is None
            # the deadline is enforced from outside: a worker that stops nothing cannot outlast it
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                w.run(src + "\nimport time\ntime.sleep(60)", timeout=3)
            assert time.monotonic() - t0 < 8
    finally:
        signal.signal(signal.SIGUSR1, old)
        canary.kill()
        canary.wait()


# -- 3. no controlling terminal; debug output neutralised ---------------------------------------------

TTY_PROBE = r"""
import fcntl, os, termios
def stat_tty():
    return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[4])
out = {"tty_nr": stat_tty(), "isatty": [os.isatty(fd) for fd in (0, 1, 2)], "tiocsti": {}}
for fd in (0, 1, 2):
    try:
        for ch in b"INJECTED\n":
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([ch]))
        out["tiocsti"][fd] = "typed"
    except OSError as exc:
        out["tiocsti"][fd] = exc.errno
print("\x1b]52;c;ZXZpbA==\x07\x1b[2J worker says hi", flush=True)
result = out
"""

PTY_CHILD = r"""
import json, sys
sys.path[0:0] = [sys.argv[1], sys.argv[2]]
from tests.attacker import AttackerWorker
src = open(sys.argv[3]).read()
if sys.argv[4] == "none":
    g = {}
    exec(src, g)
    res = g["result"]
else:
    with AttackerWorker(backend=sys.argv[4], debug=True) as w:
        res = w.run(src)
print("RESULT " + json.dumps(res), flush=True)
"""


def _under_a_terminal(backend: str, tmp_path: Path) -> tuple[dict, str]:
    """Run the probe from a process whose controlling terminal is a pty; return its result and the
    terminal's whole input/output (injected keystrokes are echoed back on the master side)."""
    import pty

    probe = tmp_path / "probe.py"
    probe.write_text(TTY_PROBE)
    pid, master = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-c", PTY_CHILD, str(ROOT / "src"), str(ROOT), str(probe), backend])
    out = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    os.close(master)
    text = out.decode("utf-8", "replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("RESULT ")), None)
    assert line, text[-3000:]
    return json.loads(line[7:]), text


def test_tiocsti_types_into_the_terminal_without_a_sandbox(tmp_path):
    """Positive control: the probe really injects keystrokes when it shares the terminal."""
    if open("/proc/sys/dev/tty/legacy_tiocsti").read().strip() != "1":
        pytest.skip("this kernel refuses TIOCSTI to everyone (dev.tty.legacy_tiocsti=0)")
    res, _text = _under_a_terminal("none", tmp_path)
    assert res["tty_nr"] != 0 and "typed" in res["tiocsti"].values()


@pytest.mark.parametrize("backend", BACKENDS)
def test_debug_worker_has_no_terminal_and_its_output_is_neutralised(backend, tmp_path):
    res, text = _under_a_terminal(backend, tmp_path)
    assert res["tty_nr"] == 0 and res["isatty"] == [False, False, False]
    assert "typed" not in res["tiocsti"].values(), res
    assert "INJECTED" not in text.replace("b\"INJECTED", "")
    assert "worker says hi" in text  # debug output is relayed ...
    assert "\x1b]52" not in text and "\x1b[2J" not in text and "\\x1b]52" in text  # ... with escapes made visible


@pytest.mark.parametrize("value, on", [(None, False), ("", False), ("0", False), ("false", False), ("off", False),
                                       ("1", True), ("yes", True)])
def test_debug_switch_values(value, on):
    assert debug_enabled(value or "") is on


# -- 5. the bytes scanned are the bytes loaded ----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_swapped_after_the_checks_is_not_what_tensorflow_loads(backend, fixture_dir, tmp_path, monkeypatch):
    good = fixture_dir("build_run_models") / "dense.keras"
    bad = fixture_dir("build_escape") / "lambda_system.keras"  # refused by both scans
    expected = json.loads((fixture_dir("build_run_models") / "expected.json").read_text())
    target = tmp_path / "m.keras"
    shutil.copy(good, target)
    swapped = []
    original = _Worker.wait_ready

    def wait_then_swap(self, deadline):  # after the in-sandbox re-check, before TensorFlow's load
        original(self, deadline)
        shutil.copy(bad, target)
        swapped.append(hashlib.sha256(target.read_bytes()).hexdigest())

    monkeypatch.setattr(_Worker, "wait_ready", wait_then_swap)
    with Sandbox(SandboxLimits(timeout_s=60), backend=backend) as sb:
        model = sb.load(target)  # host scan and re-check both see the good model
        name = next(iter(model.signature(None).inputs))
        out = model.predict({name: np.array(expected["x"], np.float32)})
    assert swapped == [hashlib.sha256(bad.read_bytes()).hexdigest()]  # control: the host file was swapped
    (y,) = out.values()
    np.testing.assert_allclose(y, expected["y"], rtol=1e-5)  # TensorFlow ran the model that was checked


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_model_copy_counts_against_the_memory_limit(backend, tmp_path):
    from modelwarden.sandbox import MemoryLimitExceeded
    from modelwarden.sandbox.cgroups import create

    probe = create(256 << 20, 64, None)
    has_memory_cgroup = "memory" in probe.dirs
    probe.remove()
    if not has_memory_cgroup:
        pytest.skip("no memory cgroup: the copy is bounded by the model's own size only")
    (tmp_path / "saved_model.pb").write_bytes(b"\0" * (400 << 20))  # bigger than the whole limit
    with Sandbox(SandboxLimits(memory_bytes=256 << 20), backend=backend) as sb:
        with pytest.raises(MemoryLimitExceeded):
            sb.load(tmp_path, scan=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_file_swapped_for_a_link_before_the_copy_is_refused(backend, fixture_dir, tmp_path, monkeypatch):
    from modelwarden.errors import UsageError
    from modelwarden.sandbox import SandboxUnavailable, snapshot

    d = tmp_path / "m"
    shutil.copytree(fixture_dir("build_run_models") / "dense", d)
    walk = snapshot.manifest

    def walk_then_swap(src, dst):  # the host walk saw a regular file; then it became a link
        m = walk(src, dst)
        (d / "saved_model.pb").unlink()
        (d / "saved_model.pb").symlink_to("/etc/passwd")
        return m

    monkeypatch.setattr(snapshot, "manifest", walk_then_swap)
    with Sandbox(SandboxLimits(timeout_s=60), backend=backend) as sb:
        with pytest.raises((UsageError, SandboxUnavailable), match="without following links"):
            sb.load(d, scan=False)


def test_symlinks_in_the_model_are_never_followed(tmp_path, fixture_dir):
    from modelwarden.sandbox import snapshot

    d = tmp_path / "m"
    shutil.copytree(fixture_dir("build_run_models") / "dense", d)
    (d / "leak").symlink_to("/etc/passwd")
    (d / "variables" / "dirlink").symlink_to("/etc")
    m = snapshot.manifest(str(d), "/model")
    names = {rel for rel, _ in m["files"]} | set(m["dirs"])
    assert "saved_model.pb" in names and not any("leak" in n or "dirlink" in n for n in names)
    # a directory swapped for a symlink between the walk and the open is refused, not followed
    victim = next(rel for rel, _ in m["files"] if rel.startswith("variables/"))
    shutil.rmtree(d / "variables")
    (d / "variables").symlink_to("/etc")
    with pytest.raises(snapshot.SnapshotError, match="without following links"):
        snapshot.open_regular(str(d), victim)


# -- 6. every tmpfs the worker can write is sized --------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_writable_tmpfs_is_sized(backend):
    probe = r"""
import os
res = {}
for line in open("/proc/self/mountinfo"):
    f = line.split()
    point, opts = f[4], f[5].split(",")
    sep = f.index("-")
    fstype, sopts = f[sep + 1], f[sep + 3].split(",")
    if fstype == "tmpfs":
        res[point] = {"ro": "ro" in opts, "size": [o for o in sopts if o.startswith("size=")]}
def try_write(path):
    try:
        with open(path, "wb") as fh:
            fh.write(b"x" * 4096)
        return "written"
    except OSError as exc:
        return exc.errno
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
shm = libc.shmget(0, 1 << 20, 0o1000 | 0o600)
result = {"tmpfs": res, "dev": try_write("/dev/fill"), "tmp": try_write("/tmp/fill"),
          "model": try_write("/model/fill"), "shmget": shm}
"""
    with AttackerWorker(backend=backend) as w:
        info = w.run(probe)
    assert info["tmp"] == "written"  # control: /tmp is writable
    assert info["dev"] != "written" and info["model"] != "written"
    for point, m in info["tmpfs"].items():
        assert m["ro"] or m["size"], (point, m)
    assert info["tmpfs"]["/tmp"]["size"] == [f"size={SandboxLimits().tmpfs_bytes // 1024}k"]
    if backend == "namespaces":  # SysV segments (memory RLIMIT_AS does not count) are refused
        assert info["shmget"] == -1


def test_sysv_shm_works_without_a_sandbox():
    """Positive control for the shmget probe above (the segment is removed at once)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    shm = libc.shmget(0, 1 << 20, 0o1000 | 0o600)
    assert shm >= 0
    assert libc.shmctl(shm, 0, None) == 0  # IPC_RMID


# -- 7. the whole tree's CPU is bounded, between calls too ---------------------------------------------

BURNER_CHAIN = r"""
import os, resource, time
def burn_then_pass_on():
    while True:
        t = resource.getrusage(resource.RUSAGE_SELF)
        if t.ru_utime + t.ru_stime > 0.7:  # far below RLIMIT_CPU: every link is short-lived
            if os.fork():
                os._exit(0)
            continue
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork():
        os._exit(0)
    burn_then_pass_on()
os.waitpid(pid, 0)
result = "started"
"""


@pytest.mark.parametrize("backend, cgroups", [(b, c) for b, c in (("namespaces", True), ("bwrap", False),
                                                                  ("namespaces", False)) if b in BACKENDS],
                         ids=lambda v: {True: "cgroups", False: "rlimits-only"}.get(v, v))
def test_a_chain_of_short_lived_burners_cannot_outlive_the_cpu_budget(backend, cgroups):
    from modelwarden.sandbox import WorkerCrashed

    with AttackerWorker(SandboxLimits(timeout_s=60, cpu_seconds=20), backend=backend, use_cgroups=cgroups) as w:
        assert w.run(BURNER_CHAIN) == "started"
        alive = w.run("import os\nresult = [p for p in os.listdir('/proc') if p.isdigit() and p != str(os.getpid())"
                      " and open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0] == 'R']")
        assert alive, "control: the burner chain runs between calls"
        deadline = time.monotonic() + 150
        while w.sandbox.alive and time.monotonic() < deadline:
            time.sleep(0.5)  # no call in flight: only the watchdog can stop the chain
        assert not w.sandbox.alive
        with pytest.raises(WorkerCrashed, match="CPU-time budget"):
            w.run("result = 1")


# -- 7. host paths the model has no need to know ---------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkout_and_model_host_paths_are_not_shown(backend, tmp_path):
    model = tmp_path / "where-the-model-lives" / "exec.keras"
    model.parent.mkdir()
    shutil.copy(harness_model(), model)
    with AttackerWorker(backend=backend, model=str(model)) as w:
        seen = w.run("result = {'cmdline': open('/proc/1/cmdline').read(), 'mountinfo': open('/proc/self/mountinfo').read(),"
                     " 'environ': open('/proc/1/environ').read()}")
    assert seen["cmdline"].strip("\0") and "/opt/modelwarden" in seen["mountinfo"]  # control: readable
    assert "where-the-model-lives" not in seen["mountinfo"] + seen["cmdline"] + seen["environ"]
    checkout = str(ROOT)
    assert checkout not in seen["cmdline"] and checkout not in seen["environ"]
    if os.geteuid() == 0 or backend == "namespaces":  # bwrap's own argv names its sources unless staged
        assert not any(p in seen["cmdline"] for p in ("/root/", "/home/", checkout))
