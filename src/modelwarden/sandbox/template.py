"""The parent's side of the worker template: one pre-initialised TensorFlow process per parent.

A fresh worker pays for ``import tensorflow`` (~3 s) on every start.  With a template, the
namespaces backend asks a long-lived process T (:mod:`template_proc`; TensorFlow imported,
nothing model-specific) to ``fork`` the worker's boot process instead of starting a new
interpreter; everything after that - new user/pid/mount/net/ipc/uts/cgroup namespaces, the
uid map, cgroups, the model copy, pivot_root, rlimits, capabilities, no_new_privs, seccomp -
is the same code on the same path as a fresh worker (:func:`nsinit.boot_main`).

Use: ``Sandbox(template=True)`` (start T on first use), ``None`` (default: use T if this
process already has one warm, e.g. after :func:`warm`), ``False`` (always boot fresh).
``MODELWARDEN_WORKER_TEMPLATE=0`` turns templates off everywhere, ``=1`` on.  The server's
worker pool uses one by default.  Only the namespaces backend forks from a template; bwrap,
gVisor and ``unsafe-none`` always boot fresh.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Any

from modelwarden.sandbox.interface import FsPlan

START_TIMEOUT_S = 120.0
SPAWN_TIMEOUT_S = 10.0
# T imports TensorFlow with the workers' environment but a home that cannot exist (under /proc):
# Keras creates and reads ``$KERAS_HOME`` at import, and T runs with the host's view.
_NO_HOME = "/proc/modelwarden-template-has-no-home"


def setting() -> bool | None:
    """``MODELWARDEN_WORKER_TEMPLATE``: True/False when set, None when unset or empty."""
    value = (os.environ.get("MODELWARDEN_WORKER_TEMPLATE") or "").strip().lower()
    if not value:
        return None
    return value not in ("0", "false", "no", "off")


def host_sys_path(plan: FsPlan) -> list[str]:
    """The plan's in-sandbox sys.path translated back to host paths (what T imports from)."""
    binds = sorted(plan.binds, key=lambda b: -len(b.dst))
    out = []
    for p in plan.sys_path:
        for b in binds:
            if p == b.dst or p.startswith(b.dst.rstrip("/") + "/"):
                out.append(b.src + p[len(b.dst):])
                break
    return out


class TemplateDied(OSError):
    """The template process is gone (the caller falls back to a fresh worker)."""


class Template:
    """A running template process T and its control channel (parent side)."""

    def __init__(self, sys_path: list[str], env: dict[str, str]) -> None:
        from modelwarden.sandbox.namespaces import popen_python

        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = parent
        self._lock = threading.Lock()  # one spawn at a time
        self._cond = threading.Condition()
        self._replies: list[dict] = []
        self._exits: dict[int, int] = {}
        self.dead = False
        self._seq = 0
        try:
            self.proc = popen_python("template_main", child.fileno(), False, module="template_proc")
        finally:
            child.close()
        t_env = dict(env, HOME=_NO_HOME, KERAS_HOME=_NO_HOME + "/.keras", TMPDIR=_NO_HOME)
        parent.send(json.dumps({"parent_pid": os.getpid(), "env": t_env, "sys_path": sys_path}).encode())
        parent.settimeout(START_TIMEOUT_S)
        try:
            ready = json.loads(parent.recv(1 << 16) or b"{}")
        except (OSError, ValueError) as exc:
            self.close()
            raise TemplateDied(f"the worker template did not start: {exc}") from None
        if ready.get("op") != "ready":
            self.close()
            raise TemplateDied(str(ready.get("message") or "the worker template did not start"))
        parent.settimeout(None)
        self.info = ready
        self.pid = self.proc.pid
        threading.Thread(target=self._read, daemon=True, name="modelwarden-template").start()

    def _read(self) -> None:
        while True:
            try:
                raw = self._sock.recv(1 << 16)
                msg = json.loads(raw) if raw else None
            except (OSError, ValueError):
                msg = None
            with self._cond:
                if not isinstance(msg, dict):
                    self.dead = True
                    self._cond.notify_all()
                    return
                if msg.get("op") == "exit" and type(msg.get("pid")) is int and type(msg.get("status")) is int:
                    self._exits[msg["pid"]] = msg["status"]
                else:
                    self._replies.append(msg)
                self._cond.notify_all()

    def spawn(self, channel_fd: int, out_fd: int | None = None, model_fd: int | None = None) -> "ForkedProcess":
        """Fork a boot process that will speak on ``channel_fd`` (and receive its model on
        ``model_fd``); it waits for its config."""
        named = {"chan": channel_fd, "model": model_fd, "out": out_fd}
        roles = [k for k, fd in named.items() if fd is not None]
        with self._lock:
            if self.dead:
                raise TemplateDied("the worker template is gone")
            self._seq += 1
            try:
                socket.send_fds(self._sock, [json.dumps({"op": "spawn", "id": self._seq, "fds": roles}).encode()],
                                [named[k] for k in roles])
            except OSError as exc:
                raise TemplateDied(f"the worker template is gone: {exc}") from None
            deadline = time.monotonic() + SPAWN_TIMEOUT_S
            reply: dict = {}
            with self._cond:
                while not reply and not self.dead and time.monotonic() < deadline:
                    while self._replies and not reply:  # a late answer to an earlier request is dropped
                        msg = self._replies.pop(0)
                        reply = msg if msg.get("id") == self._seq else {}
                    if not reply:
                        self._cond.wait(max(0.0, deadline - time.monotonic()))
        pid = reply.get("pid")
        if reply.get("op") != "spawned" or type(pid) is not int or pid <= 1:
            if not reply:  # stopped or wedged: replace it (its workers die with it)
                self.close(kill=True)
            raise TemplateDied(f"the worker template did not fork: {reply.get('message') or 'no answer'}")
        return ForkedProcess(self, pid)

    def wait_exit(self, pid: int, timeout: float | None) -> int | None:
        """Exit status (``Popen.returncode`` convention) of child ``pid``; None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while pid not in self._exits:
                if self.dead:
                    return -signal.SIGKILL  # T gone: its children died with it (PDEATHSIG)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            return self._exits.pop(pid)

    @property
    def alive(self) -> bool:
        return not self.dead and self.proc.poll() is None

    def close(self, kill: bool = False) -> None:
        self.dead = True
        try:
            self._sock.close()
        except OSError:
            pass
        if kill:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ForkedProcess:
    """A worker's boot process forked by the template: the ``subprocess.Popen`` subset ``_Worker`` uses.

    It is T's child, not ours: we signal it through a pidfd (opened while it is still blocked
    waiting for its config, and checked to be T's child) and learn its status from T.
    """

    stdout: Any = None

    def __init__(self, template: Template, pid: int) -> None:
        self._template = template
        self.pid = pid
        self.returncode: int | None = None
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError as exc:
            raise TemplateDied(f"the forked worker {pid} is already gone: {exc}") from None
        from modelwarden.sandbox.client import _ppid

        if _ppid(pid) != template.pid:
            self.kill()
            raise TemplateDied(f"the forked worker {pid} is not the template's child")

    def poll(self) -> int | None:
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            status = self._template.wait_exit(self.pid, timeout)
            if status is None:
                if timeout == 0:
                    return None  # type: ignore[return-value] - poll()
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
            self.returncode = status
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        return self.returncode

    def kill(self) -> None:
        if self._pidfd is not None and self.returncode is None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except OSError:
                pass

    def send_signal(self, sig: int) -> None:
        if self._pidfd is not None and self.returncode is None:
            signal.pidfd_send_signal(self._pidfd, sig)


_shared_lock = threading.Lock()
_shared: dict[tuple, Template] = {}
_failed: dict[tuple, float] = {}  # when a template last failed to start
RETRY_AFTER_S = 60.0


def shared(plan: FsPlan, env: dict[str, str], start: bool) -> Template | None:
    """This process's template for ``plan``'s runtime; started when ``start`` and none is alive."""
    sys_path = host_sys_path(plan)
    key = (tuple(sys_path), tuple(sorted(env.items())))
    with _shared_lock:
        t = _shared.get(key)
        if t is not None and not t.alive:
            t.close()
            del _shared[key]
            t = None
        if t is None and start:
            if time.monotonic() - _failed.get(key, -RETRY_AFTER_S) < RETRY_AFTER_S:
                return None  # it failed to start just now: boot fresh instead of paying again
            try:
                t = _shared[key] = Template(sys_path, env)
            except OSError:
                _failed[key] = time.monotonic()
                raise
        return t


def warm(plan_model: str | os.PathLike | None = None) -> Template:
    """Start this process's template now (so the next ``Sandbox`` forks from it)."""
    from modelwarden.sandbox.client import worker_env
    from modelwarden.sandbox.interface import plan_filesystem

    plan = plan_filesystem(plan_model or os.path.dirname(os.path.abspath(__file__)))
    t = shared(plan, worker_env(), True)
    if t is None:
        raise TemplateDied(f"the worker template failed to start less than {RETRY_AFTER_S:.0f} s ago")
    return t


def running_pids() -> set[int]:
    """Pids of this process's live templates (tests tell them from leftover workers)."""
    with _shared_lock:
        return {t.pid for t in _shared.values() if t.alive}


@atexit.register
def close_all() -> None:
    with _shared_lock:
        for t in _shared.values():
            t.close()
        _shared.clear()
