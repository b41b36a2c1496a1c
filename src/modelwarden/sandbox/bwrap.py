"""bubblewrap backend: ``bwrap`` builds the namespaces and the filesystem view; the worker then
applies the same rlimits, no_new_privs and seccomp filter as the built-in backend.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

from modelwarden.sandbox.interface import Backend, LaunchSpec, WorkerProcess
from modelwarden.sandbox.namespaces import boot_env


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[bool, str]:
    path = shutil.which("bwrap")
    if not path:
        return False, "bwrap is not installed (apt-get install bubblewrap)"
    try:
        res = subprocess.run([path, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc",
                              "--dev", "/dev", "true"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bwrap failed to run: {exc}"
    if res.returncode != 0:
        return False, f"bwrap cannot create a sandbox here: {res.stderr.strip()[-300:]}"
    return True, f"{path} works"


class BwrapBackend(Backend):
    name = "bwrap"
    description = "bubblewrap (bwrap) + the worker's own seccomp filter and limits"
    boot_frame = False

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return _probe()

    def argv(self, spec: LaunchSpec) -> list[str]:
        plan = spec.plan
        args = ["bwrap", "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                "--hostname", "sandbox", "--clearenv"]
        for b in plan.binds:
            args += ["--ro-bind", b.src, b.dst]
        for link, dest in plan.symlinks:
            args += ["--symlink", dest, link]
        args += ["--dev", "/dev", "--proc", "/proc",
                 "--size", str(spec.limits.tmpfs_bytes), "--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/"]
        args += ["--setenv", "MALLOC_ARENA_MAX", "2"]
        if plan.ld_library_path:
            args += ["--setenv", "LD_LIBRARY_PATH", plan.ld_library_path]
        code = (f"import sys; sys.path[0:0] = {list(plan.sys_path)!r}; "
                f"from modelwarden.sandbox.nsinit import exec_main; exec_main({spec.channel_fd})")
        return [*args, "--", plan.python, "-I", "-S", "-c", code]

    def start(self, spec: LaunchSpec) -> WorkerProcess:
        out = None if spec.debug else subprocess.DEVNULL
        env = dict(boot_env(), MW_CGROUP_PROCS=" ".join(spec.cgroup_procs))
        proc = subprocess.Popen(["/bin/sh", "-c", 'for p in $MW_CGROUP_PROCS; do echo $$ > "$p" || exit 97; done; exec "$@"',
                                 "sh", *self.argv(spec)], pass_fds=(spec.channel_fd,), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, env=env, close_fds=True, cwd="/")
        return WorkerProcess(proc)

    def layers(self) -> list[str]:
        return ["bwrap: user, pid, network, ipc, uts, cgroup namespaces", "read-only minimal tree",
                "capabilities dropped", "no_new_privs", "seccomp-bpf (worker's own)", "rlimits",
                "cgroups (when delegated)"]
