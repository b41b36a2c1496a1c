"""gVisor backend: the worker runs on ``runsc``'s user-space kernel (the Sentry), not the host's.

Every syscall of the worker is served by the Sentry, which itself runs under its own seccomp
filter, as an unprivileged host user, in its own namespaces; host files reach it only through
the gofer, and only the read-only binds of the :class:`FsPlan`.  The worker then applies the
same rlimits, capability drop, ``no_new_privs`` and seccomp filter as on every other backend
(gVisor implements all of them for its guests), so the two layers are independent.

How one worker is started (``runsc run`` of an OCI bundle in a private temporary directory)::

    parent --Popen--> runsc run  (placed in the worker's cgroups first; stdin = stdout = channel)
                        |-- gofer    (host root, chrooted, serves the read-only binds)
                        \\-- sandbox  (the Sentry: host nobody, own user/pid/net/ipc/uts/mount ns)
                              \\-- python (gVisor pid 1): exec_main -> harden_and_run -> runtime

* **Channel.**  This runsc version has no flag to pass extra fds into the container, so the
  socketpair end is the container's stdin (runsc donates its stdio to the Sentry as host
  fds).  The worker moves it to a new fd and points 0 and 1 at ``/dev/null`` before reading
  a byte.  Only stdin may be the socket: the Sentry shuts a donated host socket down when
  any one of its donated fds is closed, which would cut the channel.
* **Filesystem.**  The bundle's root is a read-only skeleton of empty mount points; the plan's
  binds are read-only bind mounts (``noexec`` where the plan says so), ``/tmp`` a tmpfs sized
  ``tmpfs_bytes``, ``/proc``, ``/sys`` and ``/dev`` are the Sentry's own synthetic ones.
* **Network.**  ``--network=none``: a loopback device only, inside the Sentry's own netstack.
* **Platform.**  ``ptrace`` by default (works in any VM).  ``MODELWARDEN_GVISOR_PLATFORM``
  selects another (``kvm`` needs a working ``/dev/kvm``; on this project's Firecracker CI VM
  the device exists but ``runsc --platform=kvm`` hangs at start-up, see docs/sandbox.md).
* **Limits.**  Memory is bounded by the worker's memory cgroup when the host delegates one
  (``runsc run`` is placed in it before it starts anything and runs with ``--ignore-cgroups``,
  so the Sentry, the gofer and all guest memory stay inside), otherwise by the worker's own
  RLIMIT_AS, which the Sentry enforces.  Guest tasks are bounded by RLIMIT_NPROC (enforced by
  the Sentry) on every host; a delegated pids cgroup bounds the Sentry's host threads.
* **Teardown.**  Killing ``runsc run`` kills the Sentry and the gofer (runsc starts both
  with PDEATHSIG=SIGKILL); the bundle and runsc's state directory are removed when the
  parent reaps ``runsc run``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
import threading
from typing import Any

from modelwarden.sandbox.interface import Backend, FsPlan, LaunchSpec, WorkerProcess, plan_filesystem, worker_output
from modelwarden.sandbox.namespaces import boot_env

PLATFORM_ENV = "MODELWARDEN_GVISOR_PLATFORM"
DEFAULT_PLATFORM = "ptrace"
PROBE_TIMEOUT_S = 60.0
# Host tasks the Sentry needs (measured on the ptrace platform, docs/sandbox.md): ~63 with
# TensorFlow loaded, ~11 more per guest process, <1 per guest thread.
HOST_TASKS_BASE = 64
HOST_TASKS_PER_GUEST = 16


def platform() -> str:
    """The runsc platform to use: ``ptrace`` unless the operator chose another."""
    return os.environ.get(PLATFORM_ENV, "").strip() or DEFAULT_PLATFORM


def runsc_argv(runsc: str, state_dir: str, bundle: str, container: str, *, rootless: bool) -> list[str]:
    """``runsc run`` with every global flag this backend relies on."""
    # --ignore-cgroups: otherwise runsc moves the Sentry and the gofer into cgroups of its own
    # (named after the container, unlimited, left behind on SIGKILL), out of the worker's
    args = [runsc, "--root", state_dir, "--network=none", f"--platform={platform()}", "--host-uds=none",
            "--ignore-cgroups"]
    if rootless:
        args.append("--rootless")
    return [*args, "run", "--bundle", bundle, container]


EXEC_MAIN = "from modelwarden.sandbox.nsinit import exec_main; exec_main(fd)"
PROBE_MAIN = "import modelwarden.sandbox.nsinit; os.write(fd, b'modelwarden-gvisor-ok')"


def worker_code(plan: FsPlan, main: str) -> str:
    """The guest's ``-c`` program: take the channel ``fd`` off stdio, then run ``main``."""
    return ("import os, sys; fd = os.dup(0); null = os.open('/dev/null', os.O_RDWR); "
            "os.dup2(null, 0); os.dup2(null, 1); os.close(null); "
            f"sys.path[0:0] = {list(plan.sys_path)!r}; {main}")


def _skeleton(rootfs: str, plan: FsPlan) -> None:
    """Empty mount points for every bind, the plan's symlinks, /tmp, /proc, /sys and /dev."""
    for sub in ("tmp", "proc", "sys", "dev"):
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    for b in plan.binds:
        target = os.path.join(rootfs, b.dst.lstrip("/"))
        if os.path.isdir(b.src):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.exists(target):
                with open(target, "w"):
                    pass
    for link, dest in plan.symlinks:
        target = os.path.join(rootfs, link.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(dest, target)
    os.chmod(rootfs, 0o755)


def oci_config(plan: FsPlan, rootfs: str, args: list[str], tmpfs_bytes: int, user: tuple[int, int]) -> dict[str, Any]:
    """The OCI runtime spec of one worker: read-only root and binds, sized /tmp, no capabilities."""
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "nodev", "noexec"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "noexec", f"size={int(tmpfs_bytes)}", "mode=1777"]},
    ]
    for b in plan.binds:
        opts = ["bind", "ro", "nosuid", "nodev"] + (["noexec"] if b.noexec else [])
        mounts.append({"destination": b.dst, "type": "bind", "source": b.src, "options": opts})
    env = ["PATH=/usr/bin:/bin", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1", "MALLOC_ARENA_MAX=2"]
    if plan.ld_library_path:
        env.append(f"LD_LIBRARY_PATH={plan.ld_library_path}")
    no_caps: dict[str, list[str]] = {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": user[0], "gid": user[1]}, "args": args, "env": env, "cwd": "/",
                    "capabilities": no_caps, "noNewPrivileges": True},
        "root": {"path": rootfs, "readonly": True},
        "hostname": "sandbox",
        "mounts": mounts,
        "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
    }


def guest_identity(plan: FsPlan) -> tuple[int, int]:
    """uid/gid of the worker *inside* gVisor (no host identity: the Sentry serves its syscalls).

    ``nobody`` when it can read every bind (then it owns nothing: ``/dev`` and ``/`` are not
    writable, only the sized ``/tmp``; runsc always mounts its own, unsized ``/dev`` tmpfs owned
    by guest root and ignores a ``/dev`` entry in the bundle), else the model's owner, else the Sentry's uid 0 without
    capabilities (a root-private model; see docs/sandbox.md).  Same rule as the namespaces backend.
    """
    from modelwarden.sandbox.client import identity_for

    return identity_for(plan) or (0, 0)


def widen_pids_cgroup(cgroup_procs: tuple[str, ...], max_processes: int) -> None:
    """Let the worker's pids cgroup hold the Sentry's host threads for ``max_processes`` guest tasks.

    The guest's own limit is RLIMIT_NPROC, enforced by the Sentry (a fork bomb gets EAGAIN, as
    on the other backends); a host pids cgroup sized for guest tasks would instead be exhausted
    by the Sentry's threads first and kill the whole sandbox.
    """
    for procs in cgroup_procs:
        path = os.path.join(os.path.dirname(procs), "pids.max")
        if os.path.exists(path):
            with open(path, "w") as f:
                f.write(str(HOST_TASKS_BASE + HOST_TASKS_PER_GUEST * max_processes))


class _RunscProcess(subprocess.Popen):
    """``runsc run``; once reaped, its bundle and state directory are removed."""

    workdir = ""

    def wait(self, timeout: float | None = None) -> int:
        rc = super().wait(timeout)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = ""
        return rc


def launch(plan: FsPlan, tmpfs_bytes: int, channel_fd: int, main: str, *, user: tuple[int, int] = (0, 0),
           cgroup_procs: tuple[str, ...] = (), debug: bool = False) -> _RunscProcess:
    """Write a bundle for ``plan`` and start ``runsc run`` with ``channel_fd`` as the guest's stdio."""
    runsc = shutil.which("runsc")
    if not runsc:
        raise OSError("runsc is not installed")
    workdir = tempfile.mkdtemp(prefix="modelwarden-gvisor-")
    sink: int | None = None
    try:
        os.chmod(workdir, 0o711)  # the Sentry (host nobody) and the gofer must traverse it
        rootfs = os.path.join(workdir, "rootfs")
        os.mkdir(rootfs)
        _skeleton(rootfs, plan)
        args = [plan.python, "-I", "-S", "-c", worker_code(plan, main)]
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(oci_config(plan, rootfs, args, tmpfs_bytes, user), f)
        argv = runsc_argv(runsc, os.path.join(workdir, "state"), workdir, os.path.basename(workdir),
                          rootless=os.geteuid() != 0)
        env = dict(boot_env(), MW_CGROUP_PROCS=" ".join(cgroup_procs))
        # runsc hands the files of its stdio to the Sentry's host user (nobody): given the host's
        # /dev/null, it chowns /dev/null itself, and then any process of that uid (a worker of the
        # namespaces backend, for a root caller) could chmod the host's /dev/null.  So the output
        # goes to a pipe of our own, drained and dropped (debug: a pipe the parent sanitises).
        w = None
        if not debug:
            sink, w = os.pipe()
        try:
            proc = _RunscProcess(
                ["/bin/sh", "-c", 'for p in $MW_CGROUP_PROCS; do echo $$ > "$p" || exit 97; done; exec "$@"', "sh", *argv],
                stdin=channel_fd, **(worker_output(debug) if debug else {"stdout": w, "stderr": w}),
                env=env, close_fds=True, cwd="/", start_new_session=True)
        finally:
            if w is not None:
                os.close(w)
    except BaseException:
        if sink is not None:
            os.close(sink)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    if sink is not None:
        threading.Thread(target=_discard, args=(sink,), daemon=True, name="modelwarden-gvisor-output").start()
    proc.workdir = workdir
    return proc


def _discard(fd: int) -> None:
    """Read and drop runsc's and the guest's output until every writer has exited."""
    try:
        while os.read(fd, 1 << 16):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=1)
def probe() -> tuple[bool, str]:
    """Start a real tiny sandbox (runsc run of a one-line Python) and read its answer on the channel."""
    import socket

    path = shutil.which("runsc")
    if not path:
        return False, "runsc is not installed (apt-get install runsc)"
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{path} does not run: {exc}"
    with tempfile.TemporaryDirectory(prefix="modelwarden-gvisor-probe-") as empty:
        plan = plan_filesystem(empty)
        parent, child = socket.socketpair()
        proc = None
        try:
            proc = launch(plan, 1 << 20, child.fileno(), PROBE_MAIN, debug=False)
            child.close()
            parent.settimeout(PROBE_TIMEOUT_S)
            answer = b""
            while len(answer) < 64:
                chunk = parent.recv(64)
                if not chunk:
                    break
                answer += chunk
        except socket.timeout:
            answer = f"no answer within {PROBE_TIMEOUT_S:.0f} s (the sandbox hangs at start-up)".encode()
        except OSError as exc:
            answer = f"error: {exc}".encode()
        finally:
            parent.close()
            child.close()
            if proc is not None:
                proc.kill()
                proc.wait()
        stderr_hint = "" if answer else " (run with MODELWARDEN_SANDBOX_DEBUG=1 or `runsc --debug` to see why)"
    if not answer.startswith(b"modelwarden-gvisor-ok"):
        return False, (f"{version} at {path} cannot start a sandbox here with --platform={platform()}: "
                       f"{answer[:200].decode(errors='replace') or 'no answer'}{stderr_hint}")
    return True, f"{version} at {path} starts sandboxes (platform {platform()}, network none)"


class GvisorBackend(Backend):
    name = "gvisor"
    description = "gVisor runsc (user-space kernel) + the worker's own seccomp filter and limits"
    boot_frame = False
    shared_memory = False  # the channel is a donated host fd; a host memfd mapped by the guest is untested

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return probe()

    def start(self, spec: LaunchSpec) -> WorkerProcess:
        user = guest_identity(spec.plan)
        widen_pids_cgroup(spec.cgroup_procs, spec.limits.max_processes)
        proc = launch(spec.plan, spec.limits.tmpfs_bytes, spec.channel_fd, EXEC_MAIN, user=user,
                      cgroup_procs=spec.cgroup_procs, debug=spec.debug)
        return WorkerProcess(proc, notes={"platform": platform(), "guest_uid": str(user[0])})

    def layers(self) -> list[str]:
        return [f"gVisor user-space kernel (runsc, platform {platform()})",
                "Sentry: host nobody, own namespaces, runsc's seccomp filter", "network none (Sentry netstack)",
                "read-only minimal tree via the gofer", "capabilities dropped", "no_new_privs",
                "seccomp-bpf (worker's own, enforced by the Sentry)", "rlimits (enforced by the Sentry)",
                "cgroups around the whole sandbox (when delegated)"]
