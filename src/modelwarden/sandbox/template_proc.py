"""The template process T: TensorFlow imported once, every sandboxed worker's boot process forked from it.

Runs in a fresh ``python -I -S`` started by the parent (:mod:`modelwarden.sandbox.template`).
T is trusted code only: it imports TensorFlow and the worker runtime with the workers'
environment, never opens a model and never sees a request.  Its only input is a
``SOCK_SEQPACKET`` socketpair to the parent (nobody else can connect to it) carrying
``spawn`` requests with the new worker's channel descriptor, the channel its model will
arrive on and (debug) its output pipe (``SCM_RIGHTS``, roles named in the request).

For each request T forks a child that closes every descriptor but the channel (and the
debug pipe), leads its own session and runs :func:`modelwarden.sandbox.nsinit.boot_main`:
exactly the boot process B of a fresh worker, with TensorFlow already in memory.  The
child is single-threaded (``fork`` copies only the calling thread), so it can
``unshare(CLONE_NEWUSER | ...)``, which a multi-threaded process cannot.  T reports each
child's exit status to the parent.  T exits when the parent closes the control socket
(every child dies with it: boot processes have ``PDEATHSIG`` on T).

Fork safety (measured, docs/sandbox.md): after ``import tensorflow`` the only other threads
are OpenBLAS's idle thread servers (numpy's and scipy's), which OpenBLAS's own
``pthread_atfork`` handler stops at a first, throw-away fork; T never runs a computation, so
no TensorFlow, Eigen or oneDNN thread pool exists in it and no lock of theirs can be held.
T checks that it is single-threaded before every fork and refuses to fork otherwise (the
parent then boots the worker fresh).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import time

from modelwarden.sandbox import linux, nsinit

MSG_MAX = 1 << 16


def _send(sock: socket.socket, msg: dict) -> None:
    sock.send(json.dumps(msg, separators=(",", ":")).encode())


def _threads() -> list[str]:
    out = []
    for tid in sorted(os.listdir("/proc/self/task"), key=int):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                out.append(f.read().strip())
        except OSError:
            pass
    return out


def _preload(sys_path: list[str]) -> None:
    """Import what every worker needs, nothing model-specific (TensorFlow, Keras, the runtime)."""
    import site

    sys.path[:] = list(sys_path)
    for p in sys_path:
        if p.endswith(("site-packages", "dist-packages")):
            site.addsitedir(p)
    from modelwarden.runtime.imports import tensorflow_without_optional_extras

    tensorflow_without_optional_extras()  # the point of the template (without what workers never use)

    try:
        import keras  # noqa: F401 - .keras models load without importing it per worker
    except ImportError:
        pass
    import modelwarden.runtime.worker  # noqa: F401
    import modelwarden.scanner  # noqa: F401 - the in-sandbox re-check


def _prime_fork() -> None:
    """Fork once and reap: ``pthread_atfork`` handlers run (OpenBLAS stops its idle thread servers),
    so T is single-threaded before the first worker is forked (checked before every fork)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + 2
    while len(_threads()) > 1 and time.monotonic() < deadline:  # joined threads leave /proc shortly
        time.sleep(0.01)


def _spawn(sock: socket.socket, children: dict[int, int], sel: selectors.BaseSelector) -> bool:
    """One request: fork a boot process on the received channel.  False when the parent is gone."""
    try:
        raw, fds, _flags, _addr = socket.recv_fds(sock, MSG_MAX, 2)
    except OSError:
        return False
    if not raw:
        return False
    msg = None
    try:
        msg = json.loads(raw)
        roles = msg.get("fds") if isinstance(msg, dict) else None
        if (msg.get("op") != "spawn" or not isinstance(roles, list) or len(roles) != len(fds)
                or not roles or roles[0] != "chan" or len(set(roles)) != len(roles)
                or not set(roles) <= {"chan", "model", "out"}):
            raise ValueError("bad request")
    except ValueError as exc:
        for fd in fds:
            os.close(fd)
        _send(sock, {"op": "error", "message": str(exc), "id": msg.get("id") if isinstance(msg, dict) else None})
        return True
    named = dict(zip(roles, fds))
    chan, model, out = named["chan"], named.get("model"), named.get("out")
    if len(_threads()) != 1:  # never fork with another thread alive: it could hold a lock forever
        for fd in fds:
            os.close(fd)
        _send(sock, {"op": "error", "message": f"the template is multi-threaded ({_threads()}); not forking",
                     "id": msg.get("id")})
        return True
    try:
        pid = os.fork()
    except OSError as exc:  # e.g. EAGAIN: refuse this one, keep serving
        for fd in fds:
            os.close(fd)
        _send(sock, {"op": "error", "message": f"fork failed: {exc}", "id": msg.get("id")})
        return True
    if pid == 0:  # the boot process B of a new worker
        try:
            os.setsid()
            if out is not None:
                os.dup2(out, 1)
                os.dup2(out, 2)
            linux.close_fds_except({0, 1, 2, chan} | ({model} if model is not None else set()))
            nsinit.boot_main(chan, model)  # the control socket and T's pidfds are gone
        finally:
            os._exit(70)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    children[pidfd] = pid
    sel.register(pidfd, selectors.EVENT_READ)
    _send(sock, {"op": "spawned", "pid": pid, "id": msg.get("id")})
    return True


def template_main(fd: int) -> None:
    """Entry point of T.  Never returns."""
    sock = socket.socket(fileno=fd)
    try:
        cfg = json.loads(sock.recv(1 << 20))
        if os.getppid() != cfg["parent_pid"]:
            os._exit(70)
        os.environ.clear()
        os.environ.update(cfg["env"])
        t0 = time.monotonic()
        _preload(cfg["sys_path"])
        threads_after_import = _threads()
        _prime_fork()
        if len(_threads()) != 1:
            raise RuntimeError(f"still multi-threaded after a first fork: {_threads()}")
        status = linux.status_fields("Seccomp", "NoNewPrivs", "CapEff")
        _send(sock, {"op": "ready", "import_s": round(time.monotonic() - t0, 3), "threads": threads_after_import,
                     "seccomp": status.get("Seccomp"), "no_new_privs": status.get("NoNewPrivs")})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
        try:
            _send(sock, {"op": "fatal", "message": f"template start failed: {type(exc).__name__}: {exc}"[:2000]})
        finally:
            os._exit(71)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    children: dict[int, int] = {}  # pidfd -> pid
    while True:
        for key, _ in sel.select():
            if key.fileobj is sock:
                if not _spawn(sock, children, sel):
                    os._exit(0)  # parent gone: our children die with us (PDEATHSIG)
                continue
            pidfd = key.fd
            pid = children.pop(pidfd)
            sel.unregister(pidfd)
            os.close(pidfd)
            _, st = os.waitpid(pid, 0)
            try:
                _send(sock, {"op": "exit", "pid": pid, "status": os.waitstatus_to_exitcode(st)})
            except OSError:
                os._exit(0)
