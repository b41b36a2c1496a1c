"""The built-in backend: Linux namespaces, pivot_root, rlimits/cgroups, no_new_privs, seccomp.

No extra binaries: a fresh ``python -I -S`` runs :func:`modelwarden.sandbox.nsinit.boot_main`
(or the worker template forks a process that runs it: :mod:`modelwarden.sandbox.template`),
which unshares user, mount, pid, network, IPC, UTS and cgroup namespaces and forks
the sandbox's pid 1 (see nsinit for the process tree).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from typing import Any

from modelwarden.sandbox.interface import Backend, LaunchSpec, WorkerProcess, worker_output

NAMESPACES = ("user", "mount", "pid", "network", "ipc", "uts", "cgroup")


def package_parent() -> str:
    import modelwarden

    return os.path.dirname(os.path.dirname(os.path.abspath(modelwarden.__file__)))


def boot_env() -> dict[str, str]:
    """The boot process's environment: nothing of the caller's."""
    # MALLOC_ARENA_MAX: glibc reserves 64 MiB of address space per malloc arena (up to 8 per core),
    # which would make an RLIMIT_AS-based memory limit depend on the core count.
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "MALLOC_ARENA_MAX": "2"}


def popen_python(entry: str, channel_fd: int, debug: bool, module: str = "nsinit",
                 extra_fd: int | None = None) -> subprocess.Popen:
    """``python -I -S`` running ``<module>.<entry>(channel_fd[, extra_fd])`` in a new session.

    The package's host path arrives on a pipe, not in the command line, which the sandbox's
    pid 1 shows as ``/proc/1/cmdline`` (it would reveal the checkout's location).
    """
    r, w = os.pipe()
    try:
        os.write(w, package_parent().encode())
    finally:
        os.close(w)
    args = f"{channel_fd}" + (f", {extra_fd}" if extra_fd is not None else "")
    code = (f"import os, sys; sys.path.insert(0, os.read({r}, 65536).decode()); os.close({r}); "
            f"from modelwarden.sandbox.{module} import {entry}; {entry}({args})")
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", code],
            pass_fds=(channel_fd, r) + ((extra_fd,) if extra_fd is not None else ()), stdin=subprocess.DEVNULL, **worker_output(debug),
            env=boot_env(), close_fds=True, cwd="/", start_new_session=True,
        )
    finally:
        os.close(r)


_PROBE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
bad = []
for name, flag in (("user", 0x10000000), ("mount", 0x20000), ("pid", 0x20000000), ("network", 0x40000000),
                   ("ipc", 0x08000000), ("uts", 0x04000000), ("cgroup", 0x02000000)):
    pid = os.fork()
    if pid == 0:
        f = flag if name == "user" else (flag | 0x10000000)
        if libc.unshare(f) != 0:
            os._exit(10 + ctypes.get_errno() % 100)
        # the model copy needs the new mount API (fspick, Linux 5.2+): only its absence counts here
        if name == "mount" and libc.syscall(433, -100, b"/", 1) < 0 and ctypes.get_errno() == 38:
            os._exit(10 + 38)
        os._exit(0)
    _, st = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(st) != 0:
        bad.append(f"{name}:{os.strerror(os.waitstatus_to_exitcode(st) - 10)}")
print(",".join(bad))
"""


@functools.lru_cache(maxsize=1)
def probe_namespaces() -> tuple[bool, str]:
    """Try each namespace in a throwaway process: (all usable, reason)."""
    try:
        res = subprocess.run([sys.executable, "-I", "-S", "-c", _PROBE], capture_output=True, text=True,
                             timeout=20, env=boot_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"namespace probe failed: {exc}"
    missing = res.stdout.strip()
    if res.returncode != 0:
        return False, f"namespace probe failed: {res.stderr.strip()[-300:]}"
    if missing:
        hint = ""
        if "user" in missing:
            hint = (" (user namespaces disabled: check sysctl user.max_user_namespaces, "
                    "kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns)")
        return False, f"cannot create namespaces: {missing}{hint}"
    return True, "user, mount, pid, network, ipc, uts and cgroup namespaces available"


class NamespacesBackend(Backend):
    name = "namespaces"
    description = "built-in: Linux namespaces + pivot_root + seccomp-bpf (no extra binaries)"
    boot_frame = True
    copies_model = True

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return probe_namespaces()

    def start(self, spec: LaunchSpec) -> WorkerProcess:
        proc: Any = (spec.template.spawn(spec.channel_fd, spec.debug_fd, spec.model_fd) if spec.template is not None
                     else popen_python("boot_main", spec.channel_fd, spec.debug, extra_fd=spec.model_fd))
        try:
            for path in spec.cgroup_procs:  # before the config arrives, so nothing is forked outside
                with open(path, "w") as f:
                    f.write(str(proc.pid))
        except OSError:
            proc.kill()
            proc.wait()
            raise
        return WorkerProcess(proc, kill_pids=[])

    def layers(self) -> list[str]:
        return [f"{n} namespace" for n in NAMESPACES] + [
            "pivot_root into a minimal read-only tree", "no_new_privs", "all capabilities dropped",
            "seccomp-bpf", "rlimits", "cgroups (when delegated)"]
