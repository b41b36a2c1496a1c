"""Per-worker cgroups (memory, pids, cpu) when the host delegates them; removed on close.

cgroup v1: a child of the calling process's own cgroup in each controller hierarchy
(so limits nest under whatever already bounds us).  cgroup v2: a child of our own
cgroup when the memory/pids controllers are enabled for its children.  When neither
works the caller falls back to rlimits (see docs/sandbox.md).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field

V1_ROOT = "/sys/fs/cgroup"


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> our cgroup path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) != 3:
                    continue
                for ctrl in parts[1].split(","):
                    out[ctrl] = parts[2]
    except OSError:
        pass
    return out


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


@dataclass
class WorkerCgroups:
    """The cgroup directories of one worker."""

    dirs: dict[str, str] = field(default_factory=dict)  # controller -> directory
    version: int = 0
    reason: str = ""  # why a controller is missing

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(os.path.join(d, "cgroup.procs") for d in dict.fromkeys(self.dirs.values()))

    @property
    def controllers(self) -> tuple[str, ...]:
        return tuple(self.dirs)

    def add(self, pid: int) -> None:
        for path in self.procs_files:
            _write(path, str(pid))

    def memory_exhausted(self) -> bool:
        """True if the memory limit was hit (OOM kill or failed charge)."""
        d = self.dirs.get("memory")
        if not d:
            return False
        if self.version == 1:
            failcnt = _read(os.path.join(d, "memory.failcnt")).strip()
            oom = _read(os.path.join(d, "memory.oom_control"))
            kills = [ln.split()[1] for ln in oom.splitlines() if ln.startswith("oom_kill ")]
            return (failcnt.isdigit() and int(failcnt) > 0) or (bool(kills) and kills[0] != "0")
        events = _read(os.path.join(d, "memory.events"))
        for ln in events.splitlines():
            key, _, value = ln.partition(" ")
            if key in ("oom_kill", "max", "oom") and value.strip() not in ("", "0"):
                return True
        return False

    def cpu_seconds_used(self) -> float | None:
        """CPU time of every task the cgroup ever held (exited ones included), or None."""
        if self.version == 1:
            d = self.dirs.get("cpuacct")
            raw = _read(os.path.join(d, "cpuacct.usage")).strip() if d else ""
            return int(raw) / 1e9 if raw.isdigit() else None
        d = self.dirs.get("memory") or self.dirs.get("pids")
        for ln in _read(os.path.join(d, "cpu.stat")).splitlines() if d else []:
            key, _, value = ln.partition(" ")
            if key == "usage_usec" and value.strip().isdigit():
                return int(value) / 1e6
        return None

    def pids(self) -> list[int]:
        out: list[int] = []
        for path in self.procs_files:
            for tok in _read(path).split():
                if tok.isdigit():
                    out.append(int(tok))
        return out

    def kill_all(self) -> None:
        import signal

        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def remove(self, timeout: float = 5.0) -> None:
        """Remove every directory (waits briefly for exiting tasks to leave)."""
        deadline = time.monotonic() + timeout
        for d in list(dict.fromkeys(self.dirs.values())):
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    self.kill_all()
                    time.sleep(0.01)
        self.dirs.clear()


def create(memory_bytes: int, max_tasks: int, cpus: int | None) -> WorkerCgroups:
    """Create the worker's cgroups; returns what could be created (possibly nothing, with a reason)."""
    name = f"modelwarden-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if os.path.ismount(os.path.join(V1_ROOT, "memory")) or os.path.ismount(os.path.join(V1_ROOT, "pids")):
        return _create_v1(name, memory_bytes, max_tasks, cpus)
    if os.path.exists(os.path.join(V1_ROOT, "cgroup.controllers")):
        return _create_v2(name, memory_bytes, max_tasks, cpus)
    return WorkerCgroups(reason="no cgroup filesystem at /sys/fs/cgroup")


def _create_v1(name: str, memory_bytes: int, max_tasks: int, cpus: int | None) -> WorkerCgroups:
    own = _own_paths()
    cg = WorkerCgroups(version=1)
    reasons: list[str] = []
    wanted: list[tuple[str, str, list[tuple[str, str]]]] = [
        ("memory", "memory", [("memory.limit_in_bytes", str(memory_bytes)),
                              ("memory.memsw.limit_in_bytes", str(memory_bytes)),
                              ("memory.swappiness", "0")]),
        ("pids", "pids", [("pids.max", str(max_tasks))]),
    ]
    if cpus:
        wanted.append(("cpu", "cpu", [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", str(cpus * 100000))]))
    if os.path.ismount(os.path.join(V1_ROOT, "cpuacct")) or os.path.islink(os.path.join(V1_ROOT, "cpuacct")):
        wanted.append(("cpuacct", "cpuacct", []))  # the whole tree's CPU time (the lifetime budget)
    for ctrl, mount, settings in wanted:
        base = os.path.join(V1_ROOT, mount)
        parent = os.path.join(base, own.get(ctrl, "/").lstrip("/"))
        d = os.path.join(parent, name)
        shared = [k for k, v in cg.dirs.items() if os.path.realpath(v) == os.path.realpath(d)]
        if shared:  # co-mounted controllers (cpu,cpuacct): one directory
            cg.dirs[ctrl] = cg.dirs[shared[0]]
            continue
        try:
            os.mkdir(d)
        except OSError as exc:
            reasons.append(f"{ctrl}: cannot create {d}: {exc.strerror}")
            continue
        try:
            for key, value in settings:
                path = os.path.join(d, key)
                if os.path.exists(path):
                    _write(path, value)
                elif key in ("memory.limit_in_bytes", "pids.max"):
                    raise OSError(f"{key} missing")
        except OSError as exc:
            reasons.append(f"{ctrl}: cannot configure: {exc}")
            try:
                os.rmdir(d)
            except OSError:
                pass
            continue
        cg.dirs[ctrl] = d
    cg.reason = "; ".join(reasons)
    return cg


def _create_v2(name: str, memory_bytes: int, max_tasks: int, cpus: int | None) -> WorkerCgroups:
    own = _own_paths().get("", "/")
    parent = os.path.join(V1_ROOT, own.lstrip("/"))
    enabled = _read(os.path.join(parent, "cgroup.subtree_control")).split()
    if "memory" not in enabled or "pids" not in enabled:
        try:
            _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
        except OSError as exc:
            return WorkerCgroups(version=2, reason=f"cgroup v2: controllers not delegated to {parent}: {exc.strerror}")
    d = os.path.join(parent, name)
    try:
        os.mkdir(d)
        _write(os.path.join(d, "memory.max"), str(memory_bytes))
        if os.path.exists(os.path.join(d, "memory.swap.max")):
            _write(os.path.join(d, "memory.swap.max"), "0")
        _write(os.path.join(d, "pids.max"), str(max_tasks))
        if cpus and os.path.exists(os.path.join(d, "cpu.max")):
            _write(os.path.join(d, "cpu.max"), f"{cpus * 100000} 100000")
    except OSError as exc:
        try:
            os.rmdir(d)
        except OSError:
            pass
        return WorkerCgroups(version=2, reason=f"cgroup v2: cannot create {d}: {exc}")
    return WorkerCgroups(dirs={"memory": d, "pids": d}, version=2)
