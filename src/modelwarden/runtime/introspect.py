"""What the worker can see of its own confinement (for ``doctor --probe`` and the tests).

Read from the kernel's view (/proc/self/status, /proc/net/dev, getrlimit...), never
from the sandbox's own bookkeeping, so it shows what is *actually* in force.
"""

from __future__ import annotations

import os
import resource
import socket
from typing import Any

_RLIMITS = {
    "as": resource.RLIMIT_AS, "cpu": resource.RLIMIT_CPU, "fsize": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC, "core": resource.RLIMIT_CORE,
}


def _read(path: str, limit: int = 65536) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError as exc:
        return f"<{exc.strerror}>"


def _status() -> dict[str, str]:
    out = {}
    for line in _read("/proc/self/status").splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
                   "Seccomp_filters", "Threads", "VmRSS", "Speculation_Store_Bypass", "SpeculationIndirectBranch"):
            out[key] = value.strip()
    return out


def _listdir(path: str) -> list[str] | str:
    try:
        return sorted(os.listdir(path))[:500]
    except OSError as exc:
        return f"<{exc.strerror}>"


def _socket_probe() -> dict[str, str]:
    out = {}
    for name in ("AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET", "AF_UNIX"):
        fam = getattr(socket, name, None)
        if fam is None:
            continue
        try:
            s = socket.socket(fam, socket.SOCK_DGRAM if name != "AF_PACKET" else socket.SOCK_RAW)
            s.close()
            out[name] = "allowed"
        except OSError as exc:
            out[name] = f"denied: {exc.strerror}"
    return out


def introspect(layers: dict, model_dir: str = "") -> dict[str, Any]:
    """``model_dir``: the directory the model is (or will be) in, listed as the worker sees it."""
    net = [ln.split(":")[0].strip() for ln in _read("/proc/net/dev").splitlines()[2:] if ":" in ln]
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "uid": os.getuid(),
        "uid_map": _read("/proc/self/uid_map").split(),
        "hostname": socket.gethostname(),
        "status": _status(),
        "root": _listdir("/"),
        "tmp": _listdir("/tmp"),
        "model_dir": _listdir(model_dir) if model_dir else "<unknown>",
        "proc_pids": [p for p in _listdir("/proc") if isinstance(p, str) and p.isdigit()][:100]
        if isinstance(_listdir("/proc"), list) else [],
        "fds": _listdir("/proc/self/fd"),
        "net_interfaces": net,
        "mounts": _read("/proc/self/mounts").splitlines()[:200],
        "rlimits": {k: list(resource.getrlimit(v)) for k, v in _RLIMITS.items()},
        "sockets": _socket_probe(),
        "cgroup": _read("/proc/self/cgroup").splitlines()[:20],
        "layers": layers,
        "cpus": sorted(os.sched_getaffinity(0)),
    }
