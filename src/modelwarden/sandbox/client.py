"""The parent side: ``Sandbox`` (one warm worker, one model) and ``SandboxedModel``.

The parent never imports TensorFlow and never trusts the worker: every reply is
bounded and validated by :mod:`protocol`; any violation, death or timeout kills the
whole worker tree and raises a specific :class:`SandboxError`.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import os
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from modelwarden.errors import UsageError
from modelwarden.sandbox import cgroups, protocol, shmchannel, snapshot
from modelwarden.sanitize import printable
from modelwarden.sandbox.errors import (
    ERRORS_BY_CODE, WORKER_REPORTABLE, DeadlineExceeded, InvalidInput, MemoryLimitExceeded, OpBlocked, OutputTooLarge,
    ProtocolViolation, SandboxError, SandboxUnavailable, ScanRefused, WorkerCrashed,
)
from modelwarden.sandbox.interface import (
    SANDBOX_PKG_DIR, Backend, FsPlan, LaunchSpec, SandboxLimits, WorkerProcess, plan_filesystem,
)
from modelwarden.sandbox.nsinit import encode_config

REPLY_HEADER_MAX = 256 * 1024
SPIN_MAX_S = 0.0  # >0: calls faster than this are awaited by polling, not sleeping (see FrameReader);
#                   off by default: on a loaded 2-core host polling steals the CPU TensorFlow needs
WORKER_SPIN_S = 0.0  # >0: the worker polls this long for the next request before sleeping
CALL_ROUTES = frozenset({"session", "eager", "keras", "tflite"})  # what a load reply may name as its call
# Shared-memory fast path (shmchannel): with a spare core (shmchannel.spare_core, a pollgate.PollGate:
# x86, 2+ CPUs, CPU pressure below 5 % measured while polling), both sides poll instead of sleeping for
# short calls, yielding the CPU at every turn:
# the parent polls the reply's sequence number for calls shorter than FAST_SPIN_MAX_S (at most twice
# the last call); the worker, told per request by the parent, polls for the next request after
# replying when the caller's gap between an answer and its next request was short (at most
# WORKER_SPIN_MAX_S).  Measured on the 2-vCPU VM (docs/sandbox.md, "Warm calls"): a worker that
# sleeps between calls runs its TensorFlow call ~2x slower (its vCPU halts, its caches go cold) and
# pays a wake-up.  MODELWARDEN_SANDBOX_SPIN_US bounds both (0: never spin).  The event-loop path
# (serve) never spins on either side.


def _spin_env(default_us: float) -> float:
    try:
        return max(0.0, min(float(os.environ.get("MODELWARDEN_SANDBOX_SPIN_US", default_us)), 100_000.0)) / 1e6
    except ValueError:
        return default_us / 1e6


FAST_SPIN_MAX_S = _spin_env(2000)
WORKER_SPIN_MAX_S = min(FAST_SPIN_MAX_S, 1e-3)


def model_kind(path: str | os.PathLike) -> str:
    """saved_model | keras | tflite, from the path's shape (the worker re-detects nothing)."""
    p = Path(path)
    if p.is_dir():
        if (p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file():
            return "saved_model"
        raise UsageError(f"{path}: directory is not a SavedModel (no saved_model.pb)")
    if not p.is_file():
        raise UsageError(f"{path}: no such file or directory")
    suffix = p.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix == ".tflite":
        return "tflite"
    raise UsageError(f"{path}: cannot run this format (supported: SavedModel directory, .keras, .tflite)")


def get_backend(name: str) -> Backend:
    """Instantiate a backend by name; ``auto`` picks the built-in one, then bwrap, then gVisor."""
    from modelwarden.sandbox.bwrap import BwrapBackend
    from modelwarden.sandbox.gvisor import GvisorBackend
    from modelwarden.sandbox.namespaces import NamespacesBackend
    from modelwarden.sandbox.unsandboxed import UnsandboxedBackend

    table: dict[str, type[Backend]] = {
        "namespaces": NamespacesBackend, "bwrap": BwrapBackend, "gvisor": GvisorBackend,
        "unsafe-none": UnsandboxedBackend,
    }
    if name == "auto":
        reasons = []
        for cls in (NamespacesBackend, BwrapBackend, GvisorBackend):
            ok, why = cls.availability()
            if ok:
                return cls()
            reasons.append(f"{cls.name}: {why}")
        raise SandboxUnavailable("no sandbox backend works on this host: " + "; ".join(reasons)
                                 + " (run `modelwarden doctor`)")
    if name not in table:
        raise UsageError(f"unknown backend {name!r} (choose from auto, {', '.join(table)})")
    ok, why = table[name].availability()
    if not ok:
        raise SandboxUnavailable(f"backend {name} is not available here: {why} (run `modelwarden doctor`)")
    return table[name]()


@dataclass(frozen=True)
class Signature:
    name: str
    inputs: dict[str, protocol.TensorSpec]
    outputs: dict[str, protocol.TensorSpec]


def worker_text(value: object, limit: int) -> str:
    """A string the worker sent, safe to print or log (controls and escape sequences made visible)."""
    return printable(value if isinstance(value, str) else "" if value is None else str(value)[: limit + 1], limit)


def _printable_tree(value: Any, depth: int = 0) -> Any:
    """A JSON value from the worker with every string (keys too) passed through :func:`printable`."""
    if depth > 20:
        return None
    if isinstance(value, str):
        return printable(value, 4000)
    if isinstance(value, dict):
        return {printable(str(k), 200): _printable_tree(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable_tree(v, depth + 1) for v in value]
    return value


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


NOBODY = 65534


def worker_env() -> dict[str, str]:
    """The sandboxed worker's whole environment (the template imports TensorFlow with it too)."""
    return {"HOME": "/tmp", "TMPDIR": "/tmp", "PATH": "/nonexistent", "LANG": "C.UTF-8",
            "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "KERAS_HOME": "/tmp/.keras",
            "PYTHONDONTWRITEBYTECODE": "1", "KERAS_BACKEND": "tensorflow"}


def identity_for(plan: FsPlan | None = None) -> tuple[int, int] | None:
    """Host uid/gid the worker's uid 0 maps to when the caller is root: always ``nobody``.

    The worker never runs as host uid 0 (a sysctl write is checked against host uid 0, not
    capabilities).  Root-private model files still work: the parent opens them with its own
    credentials and the worker receives a copy (:mod:`snapshot`).  ``None`` for other callers:
    the worker keeps the caller's (non-root) uid.
    """
    return (NOBODY, NOBODY) if os.geteuid() == 0 else None


def worker_host_uid() -> int:
    """The host uid every sandboxed worker will have (what ``doctor`` shows)."""
    ident = identity_for()
    return ident[0] if ident else os.geteuid()


def debug_enabled(value: str | None = None) -> bool:
    """``MODELWARDEN_SANDBOX_DEBUG``: on unless unset, empty, ``0``, ``false``, ``no`` or ``off``."""
    value = os.environ.get("MODELWARDEN_SANDBOX_DEBUG") if value is None else value
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def _relay_output(stream: Any) -> None:
    """Copy the worker's debug output to our stderr, one sanitised line at a time."""
    import sys

    from modelwarden.sanitize import printable

    try:
        for raw in iter(lambda: stream.readline(8192), b""):
            sys.stderr.write("[sandbox] " + printable(raw.decode("utf-8", "replace").rstrip("\n")) + "\n")
    except (OSError, ValueError):
        pass
    finally:
        stream.close()


def _copies(plan: FsPlan, backend: Backend) -> list[dict]:
    """What the worker receives as a private copy (model, policy file) instead of a bind."""
    if not getattr(backend, "copies_model", False):
        return []
    try:
        return [snapshot.manifest(b.src, b.dst) for b in plan.binds if b.noexec]
    except (snapshot.SnapshotError, OSError) as exc:
        raise UsageError(f"cannot read the model to hand it to the sandbox: {exc}") from None


CPU_CHECK_S = 1.0  # how often the watchdog counts each worker tree's CPU time
_LIVE: "weakref.WeakSet[_Worker]" = weakref.WeakSet()
_watchdog_lock = threading.Lock()
_watchdog: threading.Thread | None = None


def _watch_cpu() -> None:
    """Kill every worker tree that spent its lifetime CPU budget, called or not (daemon thread)."""
    while True:
        time.sleep(CPU_CHECK_S)
        for worker in list(_LIVE):
            try:
                worker.check_cpu()
            except Exception:  # noqa: BLE001 - the watchdog never dies
                pass


def _track(worker: "_Worker") -> None:
    global _watchdog
    _LIVE.add(worker)
    with _watchdog_lock:
        if _watchdog is None:
            _watchdog = threading.Thread(target=_watch_cpu, daemon=True, name="modelwarden-cpu-watchdog")
            _watchdog.start()


@atexit.register
def _kill_leftover_workers() -> None:
    """At interpreter exit (after executor threads finished), no worker or cgroup outlives us."""
    for worker in list(_LIVE):
        worker.kill()


def _stat_fields(pid: str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def tree_cpu_seconds(pid_ns: str) -> float:
    """CPU time (self + reaped children) of every live or zombie process in pid namespace ``pid_ns``."""
    ticks = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != pid_ns:
                continue
        except OSError:
            continue
        fields = _stat_fields(pid)
        if fields:
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class _Worker:
    """One started worker process tree and its channel."""

    def __init__(self, backend: Backend, plan: FsPlan, limits: SandboxLimits, runtime: dict, debug: bool,
                 use_cgroups: bool = True, template: Any = None) -> None:
        self.seccomp_allow = self._seccomp_allow()  # before anything starts: a bad setting is a usage error
        self.limits = limits
        self.backend = backend
        self.dead = False
        self._lock = threading.Lock()  # kill() vs the CPU watchdog
        self._pidfd: int | None = None
        self.init_pid: int | None = None
        self.fast: shmchannel.ParentChannel | None = None  # the shared-memory fast path (attach_fast)
        self.ready_info: dict = {}
        self.cg = (cgroups.create(limits.memory_bytes, limits.max_processes, limits.cpus) if use_cgroups
                   else cgroups.WorkerCgroups(reason="cgroups disabled by the caller"))
        self.memory_cgroup = "memory" in self.cg.dirs
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = parent
        self.reader = protocol.FrameReader(parent)
        self._last_call_s = 0.0
        self._answered_at = 0.0  # perf_counter when the last fast call returned (the caller's gap)
        self.template = template if backend.name == "namespaces" else None
        # boot_frame backends: the model goes to the boot process on a channel of its own, and only
        # when deliver_model() is called (after the scan gate), while the worker imports TensorFlow
        self.model_sock: socket.socket | None = None
        model_child: socket.socket | None = None
        try:
            self.copies = _copies(plan, backend)
            if backend.boot_frame and self.copies:
                self.model_sock, model_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            spec = LaunchSpec(plan, limits, child.fileno(), runtime, self.cg.procs_files, debug, tuple(self.copies),
                              model_fd=model_child.fileno() if model_child is not None else None)
            try:
                self.proc: WorkerProcess = self._start(backend, spec)
            except OSError as exc:
                raise SandboxUnavailable(f"cannot start the {backend.name} sandbox: {exc}") from None
        except BaseException:
            for s in (parent, child, self.model_sock, model_child):
                if s is not None:
                    s.close()
            self.cg.remove()
            raise
        child.close()
        if model_child is not None:
            model_child.close()
        if self.proc.proc.stdout is not None:
            threading.Thread(target=_relay_output, args=(self.proc.proc.stdout,), daemon=True,
                             name="modelwarden-sandbox-debug").start()
        self.map_to = identity_for(plan) if backend.name == "namespaces" else None
        self.cpu_exhausted = False
        self._pid_ns: str | None = None
        if backend.name != "unsafe-none":
            _track(self)
        cfg = self._config(plan, limits, runtime, backend)
        try:
            parent.sendall(encode_config(cfg))
            if self.map_to:  # B waits for us to map its user namespace before it copies the model
                header, _ = self._recv(time.monotonic() + limits.load_timeout_s, "sandbox boot", max_body=0)
                self._check_fatal(header)
                if header.get("op") != "map":
                    self._violation("expected the map request")
                self._map_ids(self.map_to)
        except OSError:
            self._boot_failed()

    def deliver_model(self, deadline: float) -> None:
        """Hand the model over (boot_frame backends; a no-op elsewhere): call only once the scan gate
        passed.  Returns when the boot process copied it all into the worker's read-only tmpfs."""
        sock, self.model_sock = self.model_sock, None
        if sock is None:
            return
        try:
            sock.sendall(encode_config({"copies": self.copies}))
            snapshot.send(sock, self.copies)
            header, _ = protocol.FrameReader(sock).recv(max_body=0, deadline=deadline, max_header=REPLY_HEADER_MAX)
        except snapshot.SnapshotError as exc:
            self.kill()
            raise UsageError(f"cannot hand the model to the sandbox: {exc}") from None
        except protocol.FrameTimeout:
            self.kill()
            raise DeadlineExceeded("copying the model into the sandbox did not finish within the load deadline; "
                                   "the worker was killed") from None
        except (OSError, protocol.FrameError, *protocol.DECODE_ERRORS):
            header = {}
        finally:
            sock.close()
        self._check_fatal(header)
        if header.get("op") != "copied":
            self._died("sandbox boot (copying the model in)")

    def _start(self, backend: Backend, spec: LaunchSpec) -> WorkerProcess:
        """Fork the boot process from the template when there is one (else, or if it is gone, start
        a fresh interpreter); in debug mode a forked worker writes to a pipe we relay."""
        if self.template is not None:
            from modelwarden.sandbox.template import TemplateDied

            r, w = os.pipe() if spec.debug else (None, None)
            try:
                started = backend.start(dataclasses.replace(spec, template=self.template, debug_fd=w))
                if r is not None:
                    started.proc.stdout = os.fdopen(r, "rb")
                    r = None
                return started
            except TemplateDied:
                self.template = None
            finally:
                for fd in (r, w):
                    if fd is not None:
                        os.close(fd)
        return backend.start(spec)

    def _config(self, plan: FsPlan, limits: SandboxLimits, runtime: dict, backend: Backend) -> dict:
        sandboxed = backend.name != "unsafe-none"
        env = worker_env()
        if not sandboxed:
            import sys
            import tempfile

            env.update(HOME=tempfile.gettempdir(), TMPDIR=tempfile.gettempdir(), KERAS_HOME=os.path.join(
                tempfile.gettempdir(), ".keras-modelwarden"))
            sys_path = [p for p in sys.path if p]
        else:
            sys_path = list(plan.sys_path)
        import modelwarden

        pkg_host = os.path.dirname(os.path.abspath(modelwarden.__file__))
        return {
            "parent_pid": self.template.pid if self.template is not None else os.getpid(),
            "binds": [dataclasses.asdict(b) for b in plan.binds if not (self.copies and b.noexec)] if sandboxed else [],
            "copies": [{"root": c["root"]} for c in self.copies],  # what is in them comes after the gate
            "symlinks": [list(s) for s in plan.symlinks] if sandboxed else [],
            "namespaces": ["user", "mount", "pid", "network", "ipc", "uts", "cgroup"],
            "limits": {**dataclasses.asdict(limits), "rlimit_as_headroom": limits.as_headroom()},
            "memory_by_cgroup": "memory" in self.cg.dirs,
            "pids_by_cgroup": "pids" in self.cg.dirs,
            "cpus": limits.cpus,
            "env": env,
            "sys_path": sys_path,
            "pkg_host": pkg_host,
            "pkg_inside": f"{SANDBOX_PKG_DIR}/modelwarden" if sandboxed and SANDBOX_PKG_DIR in plan.sys_path else pkg_host,
            "map_to": list(self.map_to) if self.map_to else None,
            "drop_caps": sandboxed,
            "seccomp": {"allow": list(self.seccomp_allow)} if sandboxed else False,
            "runtime": runtime,
            "layers": {"backend": backend.name, "cgroups": ",".join(self.cg.controllers) or "none",
                       "template": self.template is not None,
                       "host_uid": worker_host_uid() if sandboxed else os.geteuid(),
                       "cgroup_note": self.cg.reason},
        }

    @staticmethod
    def _seccomp_allow() -> tuple[str, ...]:
        """Extra syscalls for the worker's allowlist (``MODELWARDEN_SECCOMP_ALLOW``; docs/sandbox.md)."""
        from modelwarden.sandbox import seccomp

        try:
            return seccomp.extra_allow_from_env()
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    # -- receiving -----------------------------------------------------------------------------------

    def _map_ids(self, target: tuple[int, int]) -> None:
        """Map the boot process's user namespace: inside 0 -> ``target`` on the host (we are root)."""
        pid = self.proc.proc.pid  # our own child, not a pid the worker told us
        try:
            for name, value in (("uid_map", target[0]), ("gid_map", target[1])):
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(f"0 {value} 1")
            self.sock.sendall(encode_config({"op": "mapped"}))
        except OSError as exc:
            self.kill()
            raise SandboxUnavailable(f"cannot map the sandbox's user namespace: {exc}") from None

    def wait_ready(self, deadline: float) -> None:
        """Until TensorFlow is imported in the worker (returns at once when it already said so)."""
        if self.ready_info:
            return
        if getattr(self.backend, "boot_frame", False):
            header, _ = self._recv(deadline, "sandbox boot", max_body=0)
            self._check_fatal(header)
            pid = header.get("pid")
            if header.get("op") != "boot" or type(pid) is not int or pid <= 1:
                self._violation("bad boot message")
            self.init_pid = pid
            try:
                self._pidfd = os.pidfd_open(pid)
            except (OSError, AttributeError):
                self._pidfd = None
            # holding the pidfd, make sure it is the boot process's child (not a recycled pid)
            if self._pidfd is not None and _ppid(pid) != self.proc.proc.pid:
                os.close(self._pidfd)
                self._pidfd = None
                self.init_pid = None
        header, _ = self._recv(deadline, "TensorFlow start-up in the sandbox", max_body=0)
        self._check_fatal(header)
        if header.get("op") != "ready":
            self._violation("expected the ready message")
        if header.get("ok") is not True:
            code = header.get("error")
            if not isinstance(code, str) or code not in WORKER_REPORTABLE:
                self._violation("unknown error code")
            self.kill()
            raise ERRORS_BY_CODE[code](worker_text(header.get("message"), 8000) or code)
        self.ready_info = header

    def _boot_failed(self) -> None:
        """The boot process went away while we talked to it: report its own reason if it sent one
        (e.g. the model copy failed), else how it died (memory limit, signal...)."""
        try:
            header, _ = self.reader.recv(max_body=0, deadline=time.monotonic() + 2, max_header=REPLY_HEADER_MAX)
        except protocol.FrameError:
            header = {}
        self._check_fatal(header)
        self._died("sandbox boot (copying the model in)")

    def _check_fatal(self, header: dict) -> None:
        if header.get("op") == "fatal":
            msg = worker_text(header.get("message"), 2000)
            self.kill()
            raise SandboxUnavailable(f"{msg} (run `modelwarden doctor`)")

    def _violation(self, what: str) -> None:
        self.kill()
        raise ProtocolViolation(f"the worker broke the protocol ({what}); it was killed")

    def _recv(self, deadline: float, what: str, max_body: int) -> tuple[dict, bytearray]:
        if self.dead:
            raise WorkerCrashed("the sandbox worker is no longer running")
        try:
            # spin briefly only for calls known to be short (a spinning parent steals a core from TF)
            spin = min(2 * self._last_call_s, SPIN_MAX_S) if 0 < self._last_call_s < SPIN_MAX_S else 0.0
            return self.reader.recv(max_body=max_body, deadline=deadline, max_header=REPLY_HEADER_MAX, spin_s=spin)
        except protocol.FrameTimeout:
            self.kill()
            raise DeadlineExceeded(f"{what} did not finish within its deadline; the worker was killed") from None
        except protocol.ChannelClosed:
            self._died(what)
        except protocol.FrameError as exc:
            self.kill()
            if "body of" in str(exc) and max_body:
                raise OutputTooLarge(f"the model's output exceeds the limit of {max_body} bytes; the worker was killed") from None
            raise ProtocolViolation(f"the worker sent a malformed frame ({printable(str(exc), 300)}); it was killed") from None
        except protocol.DECODE_ERRORS as exc:
            self._violation(f"undecodable frame: {type(exc).__name__}")
        raise AssertionError("unreachable")

    def _died(self, what: str) -> None:
        status = self.kill(grace=1.0)
        if self.cpu_exhausted:
            raise WorkerCrashed(f"the worker's processes together used up its CPU-time budget of "
                                f"{self.limits.cpu_seconds}s during or before {what}; it was killed")
        if self.oom:
            raise MemoryLimitExceeded(
                f"the worker exceeded its memory limit of {self.limits.memory_bytes} bytes during {what} and was killed")
        sig = 0
        if status is not None and 128 < status <= 128 + 64:
            sig = status - 128  # the boot process reports its child's death by signal this way
        elif status is not None and status < 0:
            sig = -status
        if sig == signal.SIGXCPU:
            raise WorkerCrashed(f"the worker exceeded its CPU-time limit ({self.limits.cpu_seconds}s) during {what}")
        if sig:
            hint = ""
            if not self.memory_cgroup and self.backend.name != "unsafe-none" and sig in (
                    signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS):
                hint = (" (memory is limited by RLIMIT_AS on this host: running out of address space often"
                        " ends in a crash; a larger --memory may help)")
            raise WorkerCrashed(f"the worker died from {_signal_name(sig)} during {what}{hint}")
        raise WorkerCrashed(f"the worker exited unexpectedly (status {status}) during {what}")

    # -- requests ------------------------------------------------------------------------------------

    def _usable(self) -> bool:
        """Neither dead nor condemned by the CPU watchdog (see :meth:`_check_usable`)."""
        return not (self.dead or self.cpu_exhausted)

    def _check_usable(self, what: str) -> None:
        """Refuse a call to a worker that is dead or that the CPU watchdog condemned (its kill may still
        be landing: the worker is never used again; this reaps it and reports the budget)."""
        if self._usable():
            return
        if self.cpu_exhausted:
            self._died(what)
        raise WorkerCrashed("the sandbox worker is no longer running (an earlier call killed it)")

    def request(self, header: Mapping, chunks: list, timeout: float, what: str, max_body: int) -> tuple[dict, bytearray]:
        self._check_usable(what)
        t0 = time.monotonic()
        deadline = t0 + timeout
        try:
            protocol.send_frame(self.sock, header, chunks, deadline=deadline)
        except protocol.FrameTimeout:
            self.kill()
            raise DeadlineExceeded(f"{what}: the worker stopped reading its input; it was killed") from None
        except OSError:
            self._died(what)
        reply, body = self._recv(deadline, what, max_body)
        self._last_call_s = time.monotonic() - t0
        return self._checked_reply(reply, body)

    def fast_request(self, sig: shmchannel.FastSignature, arrays: list[np.ndarray], timeout: float, what: str,
                     max_output_bytes: int) -> tuple[dict, bytearray, dict[str, np.ndarray] | None]:
        """One predict through the shared-memory region: (reply, body, outputs).

        ``outputs`` are already validated when the worker answered in the region; ``None`` when it
        answered on the JSON channel instead (errors, string outputs, outputs too big for the region):
        then ``reply``/``body`` are that frame, to decode like any JSON reply.
        """
        fast = self._fast_channel(what)
        t0 = time.monotonic()
        deadline = t0 + timeout
        spin_s, worker_spin_us = self._spin_budgets()
        try:
            res = fast.call(sig, arrays, deadline, spin_s, max_output_bytes, worker_spin_us)
        except Exception as exc:  # noqa: BLE001 - _fast_failed re-raises what it does not own
            self._fast_failed(exc, what)
        return self._fast_done(res, t0, deadline, what, max_output_bytes)

    async def fast_request_async(self, sig: shmchannel.FastSignature, arrays: list[np.ndarray], timeout: float,
                                 what: str, max_output_bytes: int,
                                 executor: Any = None) -> tuple[dict, bytearray, dict[str, np.ndarray] | None]:
        """:meth:`fast_request` awaited on the running event loop, without a thread for the call.

        The request goes into the region and the loop waits for the doorbell
        (:meth:`shmchannel.ParentChannel.call_async`); only what may block - reading a JSON reply,
        killing a worker (deadline, violation, condemned or dead worker) - runs in ``executor``, with
        exactly the synchronous path's checks and errors.  A caller cancelled mid-call leaves the
        worker busy with a request nobody waits for: it is killed, never reused."""
        loop = asyncio.get_running_loop()
        fast = self.fast
        try:
            if fast is None or not self._usable():  # _check_usable may reap (blocking): off the loop
                return await loop.run_in_executor(executor, self.fast_request, sig, arrays, timeout, what,
                                                  max_output_bytes)
            t0 = time.monotonic()
            deadline = t0 + timeout
            try:
                # never a spin or a blocking wait on the loop, even for a lone call: while the loop
                # waits, the next requests cannot be read, and every call would run alone (measured)
                res = await fast.call_async(sig, arrays, deadline, max_output_bytes)
            except (shmchannel.ShmTimeout, shmchannel.ShmViolation, protocol.FrameError, *protocol.DECODE_ERRORS) as exc:
                await loop.run_in_executor(executor, self._fast_failed, exc, what)
            if res is shmchannel.FRAME:
                return await loop.run_in_executor(executor, self._fast_done, res, t0, deadline, what, max_output_bytes)
            return self._fast_done(res, t0, deadline, what, max_output_bytes)
        except asyncio.CancelledError:
            self.kill()
            raise

    def _spin_budgets(self) -> tuple[float, int]:
        """How long this call polls before sleeping: the parent for the reply (seconds: twice the last
        call when it was short) and the worker for the next request after replying (µs: a few times the
        caller's gap between the last answer and this request, when that was short); only with a
        spare core (see FAST_SPIN_MAX_S, WORKER_SPIN_MAX_S)."""
        last = self._last_call_s
        gap = time.perf_counter() - self._answered_at
        want_parent, want_worker = 0 < last < FAST_SPIN_MAX_S, gap < WORKER_SPIN_MAX_S
        if not (want_parent or want_worker) or not shmchannel.spare_core():
            return 0.0, 0
        return (min(2 * last, FAST_SPIN_MAX_S) if want_parent else 0.0,
                int(min(4 * gap + 50e-6, WORKER_SPIN_MAX_S) * 1e6) if want_worker else 0)

    def _fast_channel(self, what: str) -> shmchannel.ParentChannel:
        fast = self.fast
        self._check_usable(what)
        if fast is None:  # dropped by a kill since the caller looked
            raise WorkerCrashed("the sandbox worker is no longer running (an earlier call killed it)")
        return fast

    def _fast_failed(self, exc: Exception, what: str) -> NoReturn:
        """A fast call that ended without an answer: kill the worker and raise the caller's error."""
        if isinstance(exc, shmchannel.ShmTimeout):
            self.kill()
            raise DeadlineExceeded(f"{what} did not finish within its deadline; the worker was killed") from None
        if isinstance(exc, (shmchannel.ShmViolation, protocol.FrameError, *protocol.DECODE_ERRORS)):
            self._violation(f"invalid reply in shared memory: {printable(str(exc), 300)}")
        raise exc

    def _fast_done(self, res: object, t0: float, deadline: float, what: str,
                   max_output_bytes: int) -> tuple[dict, bytearray, dict[str, np.ndarray] | None]:
        """The answer of a fast call: from the region, or (FRAME) the JSON reply read from the channel."""
        if res is shmchannel.FRAME:
            reply, body = self._recv(deadline, what, max_output_bytes)
            self._last_call_s = time.monotonic() - t0
            return self._checked_reply(reply, body) + (None,)
        self._last_call_s = time.monotonic() - t0
        self._answered_at = time.perf_counter()
        outputs, run_us = res  # type: ignore[misc]
        return {"ok": True, "run_us": run_us}, bytearray(), outputs

    def attach_fast(self, timeout: float) -> None:
        """Hand the worker a shared-memory region and a doorbell; on any refusal keep the JSON path."""
        try:
            chan = shmchannel.ParentChannel()
        except OSError:  # no memfd/sealing here: every call stays on the JSON channel
            return
        try:
            self.request({"op": "shm", "req_bytes": chan.req_bytes, "rep_bytes": chan.rep_bytes}, [], timeout, "shared-memory set-up", 0)
            try:
                socket.send_fds(self.sock, [b"F"], chan.handover_fds())
            except OSError:
                self._died("shared-memory set-up")
            self.request_reply(time.monotonic() + timeout, "shared-memory set-up")
        except SandboxError:
            chan.close()
            if self.dead:
                raise
            return  # the worker could not map it: the JSON channel still works
        chan.handed_over(self.sock)
        self.fast = chan

    def request_reply(self, deadline: float, what: str) -> tuple[dict, bytearray]:
        """Receive and check the reply to a request already sent."""
        reply, body = self._recv(deadline, what, 0)
        return self._checked_reply(reply, body)

    def _checked_reply(self, reply: dict, body: bytearray) -> tuple[dict, bytearray]:
        """``(reply, body)`` of a successful reply; a worker-reported error raised as its SandboxError."""
        if reply.get("ok") is True:
            return reply, body
        code = reply.get("error")
        msg = worker_text(reply.get("message"), 8000)
        if not isinstance(code, str) or code not in WORKER_REPORTABLE:
            self._violation("unknown error code")
        if body:
            self._violation("error reply with a body")
        cls = ERRORS_BY_CODE[code]
        if code == "memory_limit":
            self.kill()  # an allocation failure may leave TF in a bad state
        raise cls(msg or code)

    # -- the whole tree's CPU budget ------------------------------------------------------------------

    def _find_pid_ns(self) -> str | None:
        """The worker's pid namespace (as /proc/PID/ns/pid reads), found from our own child."""
        if self.init_pid is not None:
            candidates = [str(self.init_pid)]
        else:  # exec-based backends: the sandbox's first process is a child of the one we started
            me = str(self.proc.proc.pid)
            candidates = [p for p in os.listdir("/proc") if p.isdigit() and (_stat_fields(p) or ["", ""])[1] == me]
        mine = os.readlink("/proc/self/ns/pid")
        for pid in candidates:
            try:
                ns = os.readlink(f"/proc/{pid}/ns/pid")
            except OSError:
                continue
            if ns != mine:
                return ns
        return None

    def check_cpu(self) -> None:
        """Kill the tree once all its processes together used more than ``cpu_seconds`` (RLIMIT_CPU is
        per process: a chain of short-lived burners would never hit it)."""
        if self.dead or self.cpu_exhausted:
            return
        used = self.cg.cpu_seconds_used()
        if used is None:
            self._pid_ns = self._pid_ns or self._find_pid_ns()
            if self._pid_ns is None:
                return
            used = tree_cpu_seconds(self._pid_ns)
        if used > self.limits.cpu_seconds:
            with self._lock:
                if self.dead:
                    return
                self.cpu_exhausted = True
                self._sigkill_tree()
                self.proc.proc.kill()  # the caller's next call (or close) reaps and reports it

    # -- teardown ------------------------------------------------------------------------------------

    def _sigkill_tree(self) -> None:
        """SIGKILL the sandbox's pid 1 (the kernel then kills its pid namespace) and the cgroups' tasks."""
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except OSError:
                pass
        self.cg.kill_all()

    def kill(self, grace: float = 0.0) -> int | None:
        """Kill the whole tree, reap it, remove cgroups.  Returns the host process's exit status.

        ``grace``: when the worker already died, give the host process that long to exit by
        itself so its status tells how the worker died.
        """
        with self._lock:
            if self.dead:
                return self._status
            self.dead = True
        p = self.proc.proc
        status = None
        if grace:
            try:
                status = p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                status = None
        self.oom = self.cg.memory_exhausted()
        self._sigkill_tree()
        if status is None:
            p.kill()
            try:
                status = p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # cannot happen with SIGKILL short of a kernel hang
                status = None
        for pid in self.proc.kill_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self.sock.close()
        if self.model_sock is not None:
            self.model_sock.close()
            self.model_sock = None
        self.fast = None  # unmapped when the last call holding it returns (never under a reader's feet)
        self.cg.remove()
        _LIVE.discard(self)
        self._status = status
        return status

    oom = False
    cpu_exhausted = False
    _status: int | None = None


class SandboxedModel:
    """A model loaded inside a sandbox; ``predict`` runs one signature on numpy inputs."""

    def __init__(self, sandbox: "Sandbox", kind: str, signatures: dict[str, Signature], call_route: str = "unknown") -> None:
        self._sandbox = sandbox
        self.kind = kind
        self.signatures = signatures
        # as the worker reports it (diagnostics, not a security property): "session" (a TensorFlow
        # session in the worker's calling thread), "eager", "keras", "tflite"; "unknown" otherwise
        self.call_route = call_route
        self.last_run_us: int | None = None
        # position in the worker's signature table = position in the load reply (JSON keeps order)
        self._fast = {name: shmchannel.plan(i, sig.inputs, sig.outputs) for i, (name, sig) in enumerate(signatures.items())}

    def signature(self, name: str | None) -> Signature:
        if name is None:
            if "serving_default" in self.signatures:
                name = "serving_default"
            elif len(self.signatures) == 1:
                name = next(iter(self.signatures))
            else:
                raise InvalidInput(f"choose a signature: {self._names()}")
        if name not in self.signatures:
            raise InvalidInput(f"no signature {name!r} (available: {self._names()})")
        return self.signatures[name]

    def _names(self) -> str:
        return printable(", ".join(sorted(self.signatures)), 2000) or "none"

    def predict(self, inputs: Mapping[str, Any], signature: str | None = None, timeout: float | None = None) -> dict[str, np.ndarray]:
        sig, arrays, worker, fast, ordered = self._prepare(inputs, signature)
        lim = self._sandbox.limits
        if fast is not None:
            reply, body, out = worker.fast_request(fast, ordered, timeout or lim.timeout_s, f"predict({sig.name})",
                                                   lim.max_output_bytes)
            return self._outputs(worker, sig, reply, body, out)
        return self._json_predict(worker, sig, arrays, timeout)

    async def predict_async(self, inputs: Mapping[str, Any], signature: str | None = None, timeout: float | None = None,
                            executor: Any = None) -> dict[str, np.ndarray]:
        """:meth:`predict` on the running event loop: a shared-memory call is awaited without a thread
        (:meth:`_Worker.fast_request_async`); the JSON path and anything that may block run in
        ``executor`` (None: the loop's default)."""
        sig, arrays, worker, fast, ordered = self._prepare(inputs, signature)
        lim = self._sandbox.limits
        loop = asyncio.get_running_loop()
        if fast is not None:
            reply, body, out = await worker.fast_request_async(fast, ordered, timeout or lim.timeout_s,
                                                               f"predict({sig.name})", lim.max_output_bytes, executor)
            if out is not None:
                return self._outputs(worker, sig, reply, body, out)
            return await loop.run_in_executor(executor, self._outputs, worker, sig, reply, body, out)
        return await loop.run_in_executor(executor, self._json_predict, worker, sig, arrays, timeout)

    def _prepare(self, inputs: Mapping[str, Any], signature: str | None) -> tuple[
            Signature, dict[str, np.ndarray], _Worker, shmchannel.FastSignature | None, list[np.ndarray]]:
        """Checked inputs, the worker, and the fast-path plan with its ordered arrays (None: JSON path)."""
        sig = self.signature(signature)
        arrays = {str(k): np.asarray(v) for k, v in inputs.items()}
        problems = protocol.check_inputs(arrays, sig.inputs, sig.name)
        if problems:
            raise InvalidInput("; ".join(problems))
        lim = self._sandbox.limits
        worker = self._sandbox._require_worker()
        chan = worker.fast  # read once: the CPU watchdog may kill the worker (and drop it) meanwhile
        fast = self._fast.get(sig.name) if chan is not None else None
        if chan is not None and fast is not None:
            ordered = [np.require(arrays[s.name], dt, "C") for s, dt in zip(fast.inputs, fast.in_dtypes)]
            if chan.fits(fast, ordered) and sum(a.nbytes for a in ordered) <= lim.max_input_bytes:
                return sig, arrays, worker, fast, ordered
        return sig, arrays, worker, None, []

    def _json_predict(self, worker: _Worker, sig: Signature, arrays: dict[str, np.ndarray],
                      timeout: float | None) -> dict[str, np.ndarray]:
        lim = self._sandbox.limits
        try:
            entries, chunks, total = protocol.encode_tensors(arrays)
        except protocol.FrameError as exc:
            raise InvalidInput(str(exc)) from None
        if total > lim.max_input_bytes:
            raise InvalidInput(f"inputs total {total} bytes, above the limit of {lim.max_input_bytes}")
        reply, body = worker.request({"op": "predict", "signature": sig.name, "tensors": entries}, chunks,
                                     timeout or lim.timeout_s, f"predict({sig.name})", lim.max_output_bytes)
        return self._outputs(worker, sig, reply, body, None)

    def _outputs(self, worker: _Worker, sig: Signature, reply: dict, body: bytearray,
                 out: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """Decode and check a JSON reply (``out`` None), note the worker's compute time, return the outputs."""
        run_us = reply.get("run_us")
        self.last_run_us = run_us if type(run_us) is int else None  # worker-reported compute time (bench)
        if out is not None:  # checked against the signature while copied out of shared memory
            return out
        lim = self._sandbox.limits
        try:
            out = protocol.decode_tensors(reply.get("tensors"), body, max_bytes=lim.max_output_bytes)
            problem = protocol.check_outputs(out, sig.outputs)
        except (protocol.FrameError, *protocol.DECODE_ERRORS) as exc:
            worker.kill()
            raise ProtocolViolation(f"the worker sent invalid outputs ({printable(str(exc), 300)}); it was killed") from None
        if problem:
            worker.kill()
            raise ProtocolViolation(f"the worker {problem}; it was killed")
        return out


class Sandbox:
    """An isolated worker running one model::

        with modelwarden.Sandbox(SandboxLimits(memory_bytes=2 << 30)) as sb:
            model = sb.load("model_dir")
            out = model.predict({"x": array}, signature="serving_default")

    ``load`` scans the model first (``scan=True``) and refuses it on findings at or above
    ``fail_on``; the worker re-checks the bytes it loads with the same policy.  The worker
    stays warm for repeated ``predict`` calls until ``close``.  A SavedModel runs in a TensorFlow
    session in the worker's calling thread (``session_call=False``: loaded eagerly, quicker to load
    for a single call); ``model.call_route`` says which route the worker took.
    """

    def __init__(self, limits: SandboxLimits | None = None, *, backend: str = "auto", policy: Any = None,
                 fail_on: str | None = None, debug: bool | None = None, use_cgroups: bool = True,
                 template: bool | None = None, shared_memory: bool = True, session_call: bool = True) -> None:
        self.limits = limits or SandboxLimits()
        self.shared_memory = shared_memory  # False: every call on the JSON channel (the fallback path)
        # SavedModels: True runs them in a TensorFlow session in the worker's calling thread (runtime/graphcall.py:
        # fast warm calls, a slower load for large models); False loads them eagerly (one-shot runs)
        self.session_call = session_call
        self.backend_name = backend
        self.policy = policy
        self.fail_on = fail_on
        self.debug = debug_enabled() if debug is None else debug
        self.use_cgroups = use_cgroups  # False: rlimits only (what hosts without delegation get)
        # fork the worker from this process's pre-initialised TensorFlow template (sandbox/template.py):
        # True: start one if needed; None: only if one is already warm; False: never
        self.template = template
        self._worker: _Worker | None = None
        self._model: SandboxedModel | None = None
        self.timings: dict[str, float] = {}
        self.scan_report: Any = None

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the worker tree and remove everything it used (idempotent)."""
        if self._worker is not None:
            self._worker.kill()

    @property
    def alive(self) -> bool:
        return self._worker is not None and not self._worker.dead and not self._worker.cpu_exhausted

    def _require_worker(self) -> _Worker:
        if self._worker is None:
            raise UsageError("load a model first")
        return self._worker

    def load(self, path: str | os.PathLike, *, scan: bool = True, recheck: bool | None = None,
             keras_safe_mode: bool = True) -> SandboxedModel:
        """Start the worker with ``path`` as its only model, scan, re-check inside, load.

        ``scan=False`` skips the host-side static scan *and* (unless ``recheck=True``) the
        in-sandbox re-check; isolation applies regardless.  ``keras_safe_mode=False`` lets
        Keras deserialize Python code (Lambda layers) - inside the sandbox only.
        """
        if self._worker is not None:
            raise UsageError("a Sandbox runs exactly one model; open another Sandbox for another model")
        kind = model_kind(path)
        recheck = scan if recheck is None else recheck
        t0 = time.monotonic()
        backend = get_backend(self.backend_name)
        policy_file = None
        policy_arg: Any = self.policy
        if isinstance(self.policy, (str, os.PathLike)) and str(self.policy) not in ("default", "strict") and os.path.isfile(self.policy):
            policy_file = str(self.policy)
        elif self.policy is not None and not isinstance(self.policy, str):
            raise UsageError("Sandbox(policy=...) takes a profile name or a policy file path")
        plan = plan_filesystem(path, policy_file)
        if backend.name == "unsafe-none":
            plan = dataclasses.replace(plan, model_path=plan.host_model, policy_path=policy_file or "")
        runtime = {"max_output_bytes": self.limits.max_output_bytes, "max_input_bytes": self.limits.max_input_bytes,
                   "spin_s": WORKER_SPIN_S, "graph_call": bool(self.session_call),
                   "model": {"path": plan.model_path, "kind": kind, "recheck": bool(recheck),
                             "policy": plan.policy_path or (policy_arg if isinstance(policy_arg, str) else None),
                             "fail_on": self.fail_on}}
        tmpl = self._template(backend, plan)
        self.timings["template_s"] = time.monotonic() - t0
        deadline = t0 + self.limits.load_timeout_s
        # The worker never sees a byte of a model the scan gate refuses.  Where the boot process
        # receives the model on a channel of its own (built-in backend), the worker starts and
        # imports TensorFlow while we scan, and the model follows once the gate passed; elsewhere
        # the worker's view holds the model from its start, so the gate comes first.
        overlap = bool(getattr(backend, "boot_frame", False)) and backend.copies_model
        if scan and not overlap:
            self._host_scan(path)
        self._worker = worker = _Worker(backend, plan, self.limits, runtime, self.debug, self.use_cgroups, tmpl)
        if scan and overlap:
            try:
                self._host_scan(path)
            except BaseException:
                worker.kill()
                raise
        self.timings["scan_s"] = time.monotonic() - t0
        worker.deliver_model(deadline)
        self.timings["delivered_s"] = time.monotonic() - t0
        worker.wait_ready(deadline)
        self.timings["ready_s"] = time.monotonic() - t0
        req = {"op": "load", "path": plan.model_path, "kind": kind, "keras_safe_mode": bool(keras_safe_mode)}
        try:  # the worker re-checks the bytes it received (recheck), then loads them
            reply, _ = worker.request(req, [], max(0.1, deadline - time.monotonic()), "model load", 0)
        except OpBlocked:
            worker.kill()  # the re-check refused the model: this worker is never used again
            raise
        self.timings["load_s"] = time.monotonic() - t0
        sigs_raw = reply.get("signatures")
        if not isinstance(sigs_raw, dict) or len(sigs_raw) > 256:
            worker._violation("bad signature table")
        signatures: dict[str, Signature] = {}
        try:
            for name, sig in sigs_raw.items():
                if not isinstance(name, str) or len(name) > protocol.MAX_NAME_CHARS or not isinstance(sig, dict):
                    raise protocol.FrameError("bad signature entry")
                signatures[name] = Signature(name, protocol.specs_from_json(sig.get("inputs"), "inputs"),
                                             protocol.specs_from_json(sig.get("outputs"), "outputs"))
        except (protocol.FrameError, *protocol.DECODE_ERRORS) as exc:
            worker._violation(printable(str(exc), 300))
        if self.shared_memory and backend.shared_memory:
            worker.attach_fast(max(0.1, deadline - time.monotonic()))
        route = reply.get("call")
        self._model = SandboxedModel(self, kind, signatures, route if type(route) is str and route in CALL_ROUTES else "unknown")
        return self._model

    def _template(self, backend: Backend, plan: FsPlan) -> Any:
        """The template to fork from, or None (fresh boot); see :mod:`modelwarden.sandbox.template`."""
        from modelwarden.sandbox import template

        forced = template.setting()
        wanted = self.template if forced is None or self.template is False else forced
        if wanted is False or backend.name != "namespaces":
            return None
        try:
            return template.shared(plan, worker_env(), start=bool(wanted))
        except OSError:
            return None  # no template: the worker boots fresh (slower, same isolation)

    def _host_scan(self, path: str | os.PathLike) -> None:
        try:
            from modelwarden.scanner import scan as static_scan
        except ImportError as exc:
            raise SandboxError(f"the static scan is unavailable ({exc}); refusing to run unscanned "
                               "(use --skip-scan / scan=False to run it sandboxed without a scan)") from None
        kwargs: dict[str, Any] = {"policy": self.policy}
        if self.fail_on:
            from modelwarden.analysis.interface import Severity

            kwargs["fail_on"] = Severity.parse(self.fail_on)
        report = static_scan(str(path), **kwargs)
        self.scan_report = report
        failing = report.failing()
        if report.errors or failing:
            lines = [f"{f.rule_id} [{f.severity.label}] {f.message} ({f.location.logical() or f.location.file})"
                     for f in failing[:50]]
            lines += [f"unreadable: {e.path}: {e.message}" for e in report.errors[:20]]
            raise ScanRefused(f"refused by the static scan ({len(failing)} finding(s) at or above "
                              f"{report.fail_on.label}, {len(report.errors)} error(s)):\n  " + "\n  ".join(lines), report)

    def introspect(self) -> dict:
        """The worker's own view of its confinement (uid, caps, seccomp, mounts, sockets...)."""
        worker = self._require_worker()
        reply, _ = worker.request({"op": "introspect"}, [], self.limits.timeout_s, "introspect", 0)
        info = reply.get("info")
        return _printable_tree(info) if isinstance(info, dict) else {}
