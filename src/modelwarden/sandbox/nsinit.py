"""Worker-side setup: the built-in namespace backend's boot, and the hardening every backend ends with.

Runs in a fresh interpreter (``python -I -S``) started by the parent, so it imports
only the standard library and :mod:`linux`/:mod:`seccomp` before the filesystem
view changes; numpy, TensorFlow and the rest of modelwarden are imported after
``pivot_root`` from the read-only runtime bound inside.

Process tree of the built-in backend::

    parent (host)  --Popen-->  boot B  (host pid ns; new user/mount/net/ipc/uts/cgroup ns)
                                 \\--fork-->  init D  (pid 1 of a new pid ns: mounts, pivot_root,
                                               rlimits, caps, no_new_privs, seccomp, then runtime)

B only reports D's pid and waits for it; D dies with B (PDEATHSIG) and every
process D's code forks dies with D (pid namespace).  B and D each lead their own
session (no controlling terminal; ``kill(0, ...)`` inside reaches only D's group).

A root caller's B is mapped to host ``nobody`` by the parent: nothing in the sandbox is
ever host uid 0.  The model arrives as open descriptors (see :mod:`snapshot`) on a second
channel, only once the parent's scan gate passed - D is already importing TensorFlow by
then - and B copies it into a tmpfs of its own size that D has bound read-only, then
remounts that tmpfs read-only as a whole before telling the parent (docs/sandbox.md,
"Cold start").  D never sees a byte of a model the gate refuses.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import sys

from modelwarden.sandbox import linux, seccomp, snapshot  # stdlib-only: safe to import before pivot_root

# /proc entries no worker may write, whatever its uid (read-only binds over themselves).
PROC_COVER = ("sys", "sysrq-trigger", "irq", "bus", "fs", "acpi", "scsi", "tty", "driver", "sysvipc")
_COPIES = "/tmp"  # B's private mount namespace: one tmpfs per copied model tree, under a small tmpfs

# Same framing as protocol.py (which needs numpy, so it cannot be imported before pivot_root).
MAGIC = 0x4D574631
PREFIX = struct.Struct(">IIQ")
CONFIG_MAX = 1 << 20


def _send_json(fd: int, header: dict) -> None:
    raw = json.dumps(header, separators=(",", ":")).encode()
    data = PREFIX.pack(MAGIC, len(raw), 0) + raw
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError("parent closed the channel during boot")
        buf += chunk
    return buf


def read_config(fd: int) -> dict:
    """The parent's launch config: u32 length + JSON (the parent is trusted)."""
    (n,) = struct.unpack(">I", _read_exact(fd, 4))
    if n > CONFIG_MAX:
        raise ValueError("config too large")
    return json.loads(_read_exact(fd, n))


def encode_config(cfg: dict) -> bytes:
    raw = json.dumps(cfg, separators=(",", ":")).encode()
    return struct.pack(">I", len(raw)) + raw


def _fatal(fd: int, stage: str, exc: BaseException) -> None:
    try:
        _send_json(fd, {"op": "fatal", "ok": False, "error": "sandbox_unavailable",
                        "message": f"sandbox setup failed at {stage}: {exc}"})
    except OSError:
        pass
    os._exit(71)


# -- built-in backend: boot (B) ----------------------------------------------------------------------


def boot_main(fd: int, model_fd: int | None = None) -> None:
    """Entry point of B.  Never returns.

    ``model_fd``: where the parent sends the model's files once its scan gate passed (after D
    is already importing TensorFlow); B copies them into the tmpfs D has bound read-only.
    """
    try:
        linux.set_pdeathsig(signal.SIGKILL)
        cfg = read_config(fd)
        if os.getppid() != cfg["parent_pid"]:
            os._exit(70)
        uid, gid = os.geteuid(), os.getegid()
        flags = 0
        for name in cfg["namespaces"]:
            flags |= linux.NAMESPACE_FLAGS[name]
        linux.unshare(flags)
        map_to = cfg.get("map_to")
        if "user" in cfg["namespaces"]:
            if map_to:
                # a privileged parent maps our uid 0 to an unprivileged host uid (we cannot)
                _send_json(fd, {"op": "map"})
                if read_config(fd).get("op") != "mapped":
                    raise RuntimeError("the parent did not map the user namespace")
            else:
                with open("/proc/self/setgroups", "w") as f:
                    f.write("deny")
                with open("/proc/self/uid_map", "w") as f:
                    f.write(f"0 {uid} 1")
                with open("/proc/self/gid_map", "w") as f:
                    f.write(f"0 {gid} 1")
        # Hold every bind source open now: in *this* mount namespace (bind mounts require it)
        # and with the caller's credentials (the sources may sit under a 0700 directory);
        # the staging tmpfs in init may also hide their host paths (a model under /tmp).
        sources = {}
        for b in cfg["binds"]:
            sources[b["dst"]] = os.open(b["src"], os.O_PATH | os.O_CLOEXEC)
        for dev in ("null", "zero", "random", "urandom"):
            sources[f"/dev/{dev}"] = os.open(f"/dev/{dev}", os.O_PATH | os.O_CLOEXEC)
        if map_to:
            os.setgroups([])
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)  # inside 0 = the unprivileged host uid from now on
            linux.prctl(linux.PR_SET_DUMPABLE, 1)
            # changing credentials cleared the parent-death signal: arm it again, then make sure the
            # parent did not die in between (else nothing would ever kill this tree)
            linux.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != cfg["parent_pid"]:
                os._exit(70)
        linux.assert_not_host_root()
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        copies = cfg.get("copies") or []
        if copies and model_fd is None:
            raise RuntimeError("no channel to receive the model on")
        dests = _mount_copies(copies)  # directory fds: D's pivot_root detaches their paths before the copy
        sources.update({copy["root"]: dest for copy, dest in zip(copies, dests)})  # D binds them, then closes its copies
        # "the model is all there": B writes one byte once the copy is complete and read-only, so the
        # worker can re-check it while it is still importing TensorFlow (runtime/worker.py)
        arrived_r, arrived_w = os.pipe() if copies else (None, None)
        cfg["arrived_fd"] = arrived_r
        r, w = os.pipe()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
        _fatal(fd, "boot", exc)
    pid = os.fork()
    if pid == 0:
        try:
            linux.set_pdeathsig(signal.SIGKILL)
            os.close(w)
            if os.read(r, 1) != b"g":  # B died before releasing us
                os._exit(70)
            os.close(r)
            init_main(fd, cfg, sources)
        except BaseException as exc:  # noqa: BLE001
            _fatal(fd, "init", exc)
        os._exit(0)
    os.close(r)
    if arrived_r is not None:
        os.close(arrived_r)
    try:
        _send_json(fd, {"op": "boot", "pid": pid})
    except OSError:
        os._exit(70)
    os.write(w, b"g")
    os.close(w)
    linux.close_fds_except({0, 1, 2} | ({model_fd, arrived_w, *dests} if copies and model_fd is not None else set()))
    if copies and model_fd is not None:
        try:
            _receive_copies(model_fd, copies, dests)
            os.write(arrived_w, b"c")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent; D dies with us
            _fatal(model_fd, "copying the model in", exc)
        os.close(arrived_w)
        os.close(model_fd)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(70)
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 70)


# -- built-in backend: init (D), pid 1 of the sandbox ------------------------------------------------

_STAGING = "/tmp"  # our private mount namespace mounts the new root over it; sources are held as fds


def _preserved_flags(path: str) -> int:
    """Mount flags a bind remount must keep (the kernel refuses to clear locked ones)."""
    f = os.statvfs(path).f_flag
    out = 0
    for st, ms in ((os.ST_NOSUID, linux.MS_NOSUID), (os.ST_NODEV, linux.MS_NODEV), (os.ST_NOEXEC, linux.MS_NOEXEC),
                   (os.ST_NOATIME, linux.MS_NOATIME), (os.ST_NODIRATIME, linux.MS_NODIRATIME),
                   (os.ST_RELATIME, linux.MS_RELATIME)):
        if f & st:
            out |= ms
    return out


def _bind(src_fd: int, target: str, *, readonly: bool, noexec: bool, nodev: bool = True) -> None:
    linux.mount(f"/proc/self/fd/{src_fd}", target, None, linux.MS_BIND)
    flags = linux.MS_REMOUNT | linux.MS_BIND | linux.MS_NOSUID | _preserved_flags(target)
    if readonly:
        flags |= linux.MS_RDONLY
    if noexec:
        flags |= linux.MS_NOEXEC
    if nodev:
        flags |= linux.MS_NODEV
    linux.mount(None, target, None, flags)


def _mountpoint(path: str, like_dir: bool) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if like_dir:
        os.makedirs(path, exist_ok=True)
    elif not os.path.exists(path):
        with open(path, "w"):
            pass


_COPY_FLAGS = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC


def _mount_copies(copies: list[dict]) -> list[int]:
    """B, before D exists: one empty, minimal tmpfs per model tree (D binds each read-only); a
    directory descriptor of each (D inherits them and closes them before any hardening step)."""
    if not copies:
        return []
    linux.mount("tmpfs", _COPIES, "tmpfs", _COPY_FLAGS, "size=64k,mode=0755")
    dests = []
    for i in range(len(copies)):
        dest = f"{_COPIES}/{i}"
        os.mkdir(dest)
        linux.mount("tmpfs", dest, "tmpfs", _COPY_FLAGS, "size=4k,nr_inodes=4,mode=0755")
        dests.append(os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    return dests


def _receive_copies(fd: int, roots: list[dict], dests: list[int]) -> None:
    """B, after D started: the parent sends what to copy (``snapshot.manifest``s) and the files
    only once its scan gate passed.  Each tmpfs is sized to its tree, filled, made read-only as a
    whole; then B tells the parent (``copied``).

    By now D's ``pivot_root`` has detached B's paths to the tmpfs: B works through directory
    descriptors (and ``fspick`` to resize and seal).  D's bind of it is read-only from the start.
    """
    copies = read_config(fd).get("copies")
    if not isinstance(copies, list) or [c.get("root") for c in copies] != [r["root"] for r in roots]:
        raise ValueError("the model hand-over does not match the sandbox's model mounts")
    for copy, dest in zip(copies, dests):
        linux.reconfigure_fs(dest, {"size": str(int(copy["tmpfs_bytes"])),
                                    "nr_inodes": str(len(copy["files"]) + len(copy["dirs"]) + 16)})
        snapshot.receive(fd, copy, dest)
        linux.reconfigure_fs(dest, {"ro": None})
        os.close(dest)
    _send_json(fd, {"op": "copied"})


def _cover_proc(proc: str) -> None:
    """Read-only binds over the /proc entries that write host-wide state (sysctls, sysrq, irq...)."""
    for name in PROC_COVER:
        path = f"{proc}/{name}"
        if os.path.lexists(path):
            linux.mount(path, path, None, linux.MS_BIND)
            linux.mount(None, path, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | linux.MS_NOSUID
                        | linux.MS_NODEV | linux.MS_NOEXEC)


def _no_sysv_shm(proc: str) -> None:
    """No SysV shared memory segments in our IPC namespace: a detached segment is memory that
    RLIMIT_AS does not count (best effort: kernels that refuse the write keep their default)."""
    try:
        with open(f"{proc}/sys/kernel/shmmni", "w") as f:
            f.write("0")
    except OSError:
        pass


def init_main(fd: int, cfg: dict, sources: dict[str, int]) -> None:
    """D: build the filesystem view, pivot into it, harden, run the runtime."""
    os.setsid()  # its own session and process group: kill(0, ...) stays inside
    linux.blank_cmdline()  # /proc/1/cmdline and environ inside would show host paths
    lim = cfg["limits"]
    root = _STAGING
    linux.mount("tmpfs", root, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "size=4m,mode=0755")
    for b in cfg["binds"]:
        target = root + b["dst"]
        is_dir = os.path.isdir(f"/proc/self/fd/{sources[b['dst']]}")
        _mountpoint(target, is_dir)
        _bind(sources[b["dst"]], target, readonly=True, noexec=b.get("noexec", False))
    for copy in cfg.get("copies") or []:
        _mountpoint(root + copy["root"], True)
        _bind(sources[copy["root"]], root + copy["root"], readonly=True, noexec=True)
    for link, dest in cfg["symlinks"]:
        os.makedirs(os.path.dirname(root + link), exist_ok=True)
        os.symlink(dest, root + link)
    # /dev: four character devices on a tiny read-only tmpfs
    os.mkdir(root + "/dev")
    linux.mount("tmpfs", root + "/dev", "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "size=64k,mode=0755")
    for dev in ("null", "zero", "random", "urandom"):
        _mountpoint(root + f"/dev/{dev}", False)
        _bind(sources[f"/dev/{dev}"], root + f"/dev/{dev}", readonly=False, noexec=True, nodev=False)
    for name, dest in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                       ("stderr", "/proc/self/fd/2")):
        os.symlink(dest, root + f"/dev/{name}")
    linux.mount(None, root + "/dev", None, linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NOEXEC)
    os.mkdir(root + "/tmp")
    linux.mount("tmpfs", root + "/tmp", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
                f"size={int(lim['tmpfs_bytes'])},mode=1777")
    os.mkdir(root + "/proc")
    linux.mount("proc", root + "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    _no_sysv_shm(root + "/proc")
    _cover_proc(root + "/proc")
    for src_fd in sources.values():
        os.close(src_fd)
    os.chdir(root)
    linux.pivot_root(".", ".")
    linux.umount2(".", linux.MNT_DETACH)
    os.chdir("/")
    linux.mount(None, "/", None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV)
    linux.sethostname("sandbox")
    harden_and_run(fd, cfg)


# -- every backend ends here -------------------------------------------------------------------------


def apply_rlimits(lim: dict, *, memory_by_cgroup: bool, pids_by_cgroup: bool, gvisor: bool = False) -> None:
    """``gvisor``: the Sentry refuses RLIMIT_MSGQUEUE (EPERM even to lower it; its POSIX message
    queues live in the Sentry's own memory, which the worker's cgroup bounds), and a host pids
    cgroup counts the Sentry's threads, not the guest's tasks, so RLIMIT_NPROC (which the
    Sentry enforces) is set there too (docs/sandbox.md)."""
    linux.set_rlimit(resource.RLIMIT_CORE, 0)
    linux.set_rlimit(resource.RLIMIT_NOFILE, int(lim["max_open_files"]))
    linux.set_rlimit(resource.RLIMIT_FSIZE, int(lim["max_file_bytes"]))
    cpu = int(lim["cpu_seconds"])
    soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 2 if hard == resource.RLIM_INFINITY else min(cpu + 2, hard)))
    if not gvisor:
        linux.set_rlimit(resource.RLIMIT_MSGQUEUE, 0)
    if not pids_by_cgroup or gvisor:
        linux.set_rlimit(resource.RLIMIT_NPROC, int(lim["max_processes"]))
    if not memory_by_cgroup:
        linux.set_rlimit(resource.RLIMIT_AS, int(lim["memory_bytes"]) + int(lim["rlimit_as_headroom"]))


def _relocate(cfg: dict) -> None:
    """Point Python at the runtime as mounted inside (sys.path, already-imported packages)."""
    import importlib
    import site

    sys.path[:] = list(cfg["sys_path"])
    for p in cfg["sys_path"]:
        if p.endswith(("site-packages", "dist-packages")):
            site.addsitedir(p)
    # every already-imported package (stdlib ones too) must find its submodules at the new place
    moves = sorted(((b["src"].rstrip("/"), b["dst"].rstrip("/")) for b in cfg["binds"] if b["src"] != b["dst"]),
                   key=lambda m: -len(m[0]))

    def move(p: str) -> str:
        for old, new in moves:
            if p == old or p.startswith(old + "/"):
                return new + p[len(old):]
        return p

    if moves:
        # modules imported before the pivot (all of TensorFlow when forked from the worker template)
        # also find their data files through __file__, their spec's origin and their loader's path
        for mod in list(sys.modules.values()):
            path = getattr(mod, "__path__", None)
            if isinstance(path, list):
                path[:] = [move(p) for p in path]
            for obj, attr in ((mod, "__file__"), (getattr(mod, "__spec__", None), "origin"),
                              (getattr(mod, "__loader__", None), "path")):
                value = getattr(obj, attr, None)
                if isinstance(value, str):
                    try:
                        setattr(obj, attr, move(value))
                    except (AttributeError, TypeError):
                        pass
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()


def harden_and_run(fd: int, cfg: dict) -> None:
    """Limits, fds, capabilities, no_new_privs, seccomp, relocation, then the runtime.  Never returns."""
    lim = cfg["limits"]
    if cfg.get("cpus"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: int(cfg["cpus"])])
    apply_rlimits(lim, memory_by_cgroup=cfg.get("memory_by_cgroup", False),
                  pids_by_cgroup=cfg.get("pids_by_cgroup", False),
                  gvisor=cfg.get("layers", {}).get("backend") == "gvisor")
    arrived = cfg.get("arrived_fd")
    linux.close_fds_except({0, 1, 2, fd} | ({arrived} if arrived is not None else set()))
    if cfg.get("drop_caps", True):
        if cfg.get("layers", {}).get("backend") != "gvisor":  # under gVisor uid 0 is the Sentry's, not the host's
            linux.assert_not_host_root()
        linux.drop_all_capabilities()
    linux.set_no_new_privs()
    seccomp_summary = None
    if cfg.get("seccomp", True):
        seccomp_summary = seccomp.install(cfg.get("seccomp"))
    os.environ.clear()
    os.environ.update(cfg["env"])
    os.umask(0o077)
    _relocate(cfg)
    from modelwarden.runtime.worker import main

    rc = main(fd, cfg["runtime"], layers={"seccomp": seccomp_summary is not None, **cfg.get("layers", {})},
              arrived_fd=arrived)
    sys.stdout.flush()
    os._exit(rc)


def exec_main(fd: int) -> None:
    """Entry point for exec-based backends (bwrap, unsandboxed): config then hardening."""
    try:
        cfg = read_config(fd)
        linux.set_pdeathsig(signal.SIGKILL)
    except BaseException as exc:  # noqa: BLE001
        _fatal(fd, "config", exc)
    try:
        harden_and_run(fd, cfg)
    except BaseException as exc:  # noqa: BLE001
        _fatal(fd, "harden", exc)
