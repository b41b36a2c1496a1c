"""bubblewrap backend: ``bwrap`` builds the namespaces and the filesystem view; the worker then
applies the same rlimits, no_new_privs and seccomp filter as the built-in backend.

A small stager (``python -I -S``, outside the sandbox) puts itself in the worker's cgroups
and, for a root caller, never lets bwrap run as root: in a private mount namespace it binds
every source the sandbox needs under a small tmpfs (opened with root's credentials, so a
0700 home does not matter), then drops to host ``nobody`` and execs bwrap, which maps the
worker's uid 0 to nobody.  bwrap's ``/proc`` cover skips ``/proc/sys`` (the directory is not
writable, its files are), so every entry of :data:`nsinit.PROC_COVER` is bound read-only
explicitly; ``/dev`` is a 64 KiB read-only tmpfs with four devices.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys

from modelwarden.sandbox.interface import Backend, LaunchSpec, WorkerProcess, worker_output
from modelwarden.sandbox.namespaces import boot_env, package_parent
from modelwarden.sandbox.nsinit import PROC_COVER

DEV_TMPFS_BYTES = 64 << 10
STAGE = "/tmp"  # in the stager's private mount namespace only

_STAGER = r"""
import json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["pkg"])
from modelwarden.sandbox import linux
parent = cfg["parent"]
linux.set_pdeathsig(signal.SIGKILL)  # dies with the caller until bwrap (--die-with-parent) takes over
if os.getppid() != parent:
    os._exit(70)
for path in cfg["cgroup_procs"]:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
from modelwarden.sandbox import snapshot
from modelwarden.sandbox.nsinit import _fatal
data = []  # the model, opened once with the caller's credentials; bwrap copies each into a read-only file
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
try:
    for copy in cfg["copies"]:
        data += ["--dir", copy["root"]] + [a for d in copy["dirs"] for a in ("--dir", copy["root"] + "/" + d)]
        for rel, _size in copy["files"]:
            fd = snapshot.open_regular(copy["src"], rel)
            os.set_inheritable(fd, True)
            data += ["--perms", "0444", "--ro-bind-data", str(fd), copy["root"] + "/" + rel]
except snapshot.SnapshotError as exc:
    _fatal(cfg["channel"], "the model copy", exc)
argv = cfg["argv"][:cfg["copies_at"]] + data + cfg["argv"][cfg["copies_at"]:]
if cfg["drop_to"] is not None:
    linux.unshare(linux.CLONE_NEWNS)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    fds = [os.open(src, os.O_PATH | os.O_CLOEXEC) for src in cfg["sources"]]  # before the stage hides /tmp
    linux.mount("tmpfs", cfg["stage"], "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "size=64k,mode=0755")
    for i, fd in enumerate(fds):
        target = f"{cfg['stage']}/{i}"
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.mkdir(target)
        else:
            open(target, "w").close()
        linux.mount(f"/proc/self/fd/{fd}", target, None, linux.MS_BIND | linux.MS_REC)
        os.close(fd)
    uid, gid = cfg["drop_to"]
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    linux.set_pdeathsig(signal.SIGKILL)  # the credential change cleared it (bwrap re-arms its own)
    if os.getppid() != parent:
        os._exit(70)
os.execv(argv[0], argv)
"""


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
    copies_model = True  # by the stager: bwrap copies each open file into a read-only file (--ro-bind-data)

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return _probe()

    def argv(self, spec: LaunchSpec, stage: bool = False) -> tuple[list[str], list[str], int]:
        """bwrap's argv, (``stage``) the host sources the stager must bind under :data:`STAGE`, and
        where in argv the stager inserts the model's ``--ro-bind-data``."""
        plan = spec.plan
        sources: list[str] = []

        def source(path: str) -> str:
            if not stage:
                return path
            sources.append(path)
            return f"{STAGE}/{len(sources) - 1}"

        args = [shutil.which("bwrap") or "bwrap", "--unshare-user", "--uid", "0", "--gid", "0", "--unshare-pid",
                "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent",
                "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox", "--clearenv"]
        for b in plan.binds:
            if not b.noexec:  # user data (model, policy) is copied in by the worker, never bound
                args += ["--ro-bind", source(b.src), b.dst]
        for link, dest in plan.symlinks:
            args += ["--symlink", dest, link]
        args += ["--size", str(DEV_TMPFS_BYTES), "--perms", "0755", "--tmpfs", "/dev"]
        for dev in ("null", "zero", "random", "urandom"):
            args += ["--dev-bind", f"/dev/{dev}", f"/dev/{dev}"]
        for name, dest in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                           ("stderr", "/proc/self/fd/2")):
            args += ["--symlink", dest, f"/dev/{name}"]
        args += ["--remount-ro", "/dev", "--proc", "/proc"]
        for name in PROC_COVER:
            args += ["--ro-bind-try", f"/proc/{name}", f"/proc/{name}"]
        args += ["--size", str(spec.limits.tmpfs_bytes), "--tmpfs", "/tmp"]
        copies_at = len(args)
        args += ["--remount-ro", "/", "--chdir", "/", "--setenv", "MALLOC_ARENA_MAX", "2"]
        if plan.ld_library_path:
            args += ["--setenv", "LD_LIBRARY_PATH", plan.ld_library_path]
        code = (f"import sys; sys.path[0:0] = {list(plan.sys_path)!r}; "
                f"from modelwarden.sandbox.nsinit import exec_main; exec_main({spec.channel_fd})")
        return [*args, "--", plan.python, "-I", "-S", "-c", code], sources, copies_at

    def start(self, spec: LaunchSpec) -> WorkerProcess:
        from modelwarden.sandbox.client import identity_for

        drop_to = identity_for()
        argv, sources, copies_at = self.argv(spec, stage=drop_to is not None)
        stager = {"parent": os.getpid(), "pkg": package_parent(), "cgroup_procs": list(spec.cgroup_procs), "drop_to": drop_to,
                  "sources": sources, "stage": STAGE, "argv": argv, "copies_at": copies_at, "channel": spec.channel_fd,
                  "copies": list(spec.copies)}
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _STAGER, json.dumps(stager)],
                                pass_fds=(spec.channel_fd,), stdin=subprocess.DEVNULL, **worker_output(spec.debug),
                                env=boot_env(), close_fds=True, cwd="/", start_new_session=True)
        return WorkerProcess(proc)

    def layers(self) -> list[str]:
        return ["bwrap: user, pid, network, ipc, uts, cgroup namespaces", "read-only minimal tree",
                "worker uid 0 maps to host nobody when the caller is root", "/proc/sys and friends read-only",
                "capabilities dropped", "no_new_privs", "seccomp-bpf (worker's own)", "rlimits",
                "cgroups (when delegated)"]
