"""Which isolation layers this host offers, and (with ``probe``) which a real worker has in force."""

from __future__ import annotations

import os
import platform
import tempfile
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True  # False: optional layer (its absence only weakens defence in depth)


@dataclass
class Diagnosis:
    checks: list[Check] = field(default_factory=list)
    backend: str = ""  # what ``--backend auto`` would use ("" when none works)
    probe: dict | None = None

    @property
    def usable(self) -> bool:
        return bool(self.backend)

    def to_json(self) -> dict:
        return {"usable": self.usable, "backend": self.backend,
                "checks": [c.__dict__ for c in self.checks], "probe": self.probe}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


UNBOUNDED_WITHOUT_CGROUPS = (
    "without cgroups: memory is RLIMIT_AS per process (each process of the tree gets its own; the model's "
    "tmpfs copy, /tmp and SysV shared memory are not counted), processes are RLIMIT_NPROC (per uid), "
    "CPU is RLIMIT_CPU per process plus the parent's count of the whole tree; every tmpfs is sized "
    "(/tmp by --tmpfs, /dev 64 KiB read-only, the model copy to the model's size)")


def diagnose(probe: bool = False) -> Diagnosis:
    from modelwarden.sandbox import cgroups
    from modelwarden.sandbox.client import worker_host_uid
    from modelwarden.sandbox.bwrap import BwrapBackend
    from modelwarden.sandbox.gvisor import GvisorBackend
    from modelwarden.sandbox.namespaces import NamespacesBackend

    d = Diagnosis()
    add = d.checks.append
    add(Check("kernel", platform.system() == "Linux", f"{platform.system()} {platform.release()}, "
              f"running as uid {os.geteuid()}"))
    sysctls = {k: _read(p) for k, p in (
        ("user.max_user_namespaces", "/proc/sys/user/max_user_namespaces"),
        ("kernel.unprivileged_userns_clone", "/proc/sys/kernel/unprivileged_userns_clone"),
        ("kernel.apparmor_restrict_unprivileged_userns", "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
    ) if _read(p) is not None}
    ok, why = NamespacesBackend.availability()
    add(Check("namespaces", ok, why + ("; " + ", ".join(f"{k}={v}" for k, v in sysctls.items()) if sysctls else "")))
    try:
        from modelwarden.sandbox import seccomp

        f = seccomp.Filter(seccomp.extra_allow_from_env()).build()
        summary = f.summary
        f.close()
        seccomp_ok = "Seccomp" in (_read("/proc/self/status") or "")
        extra = f" (+ {seccomp.ENV_ALLOW}: {', '.join(f.extra_allow)})" if f.extra_allow else ""
        add(Check("seccomp-bpf", seccomp_ok, f"libseccomp loaded; allowlist of {len(summary.allowed)} syscalls{extra} "
                  f"+ AF_UNIX sockets, clone without namespaces, {len(seccomp.IOCTL_ALLOWED)} ioctls; "
                  f"{len(summary.denied)} denied with EPERM, the rest ENOSYS" if seccomp_ok else "kernel without seccomp"))
    except (OSError, ValueError) as exc:
        add(Check("seccomp-bpf", False, str(exc)))
    add(Check("no_new_privs", True, "prctl(PR_SET_NO_NEW_PRIVS) (Linux >= 3.5)"))
    host_uid = worker_host_uid()
    add(Check("worker host uid", host_uid != 0, f"workers run as host uid {host_uid}"
              + (" (nobody: the caller is root; models are copied in, never read by the worker's uid)"
                 if os.geteuid() == 0 else " (the caller's own uid)")
              if host_uid != 0 else "a worker would run as host uid 0: refusing (sysctls would be writable)"))
    cg = cgroups.create(256 << 20, 64, None)
    if cg.dirs:
        add(Check("cgroups", True, f"cgroup v{cg.version} delegated: {', '.join(cg.controllers)}"
                  + (f" ({cg.reason})" if cg.reason else ""), required=False))
    else:
        add(Check("cgroups", False, (cg.reason or "not delegated") + "; " + UNBOUNDED_WITHOUT_CGROUPS,
                  required=False))
    cg.remove()
    for cls in (BwrapBackend, GvisorBackend):
        ok, why = cls.availability()
        add(Check(f"backend {cls.name}", ok, why, required=False))
    for cls in (NamespacesBackend, BwrapBackend, GvisorBackend):
        if cls.availability()[0] and host_uid != 0:
            d.backend = cls.name
            break
    if probe and d.backend:
        d.probe = probe_worker(d.backend)
    return d


def probe_worker(backend: str) -> dict:
    """Start a real worker (with an empty model directory) and ask it what it sees."""
    from modelwarden.sandbox.client import _Worker, get_backend
    from modelwarden.sandbox.interface import SandboxLimits, plan_filesystem

    import time

    limits = SandboxLimits()
    with tempfile.TemporaryDirectory(prefix="modelwarden-doctor-") as empty:
        worker = _Worker(get_backend(backend), plan_filesystem(empty), limits,
                         {"max_output_bytes": 1 << 20, "max_input_bytes": 1 << 20}, False)
        try:
            worker.wait_ready(time.monotonic() + limits.load_timeout_s)
            reply, _ = worker.request({"op": "introspect"}, [], limits.timeout_s, "introspect", 0)
            info = reply.get("info")
            return info if isinstance(info, dict) else {}
        finally:
            worker.kill()
