"""Copy the model into the sandbox once: the bytes the re-check scans are the bytes TensorFlow loads.

The parent walks each user-data source (model, policy file) without following symlinks,
opens every regular file with the *caller's* credentials and hands the open descriptors
over the worker's channel (``SCM_RIGHTS``), one at a time - with the built-in backend only
once the scan gate passed, to the boot process, which copies each into a tmpfs sized to the
model that the worker has bound read-only (and then remounts it read-only as a whole).  A file swapped on the host after this
point changes nothing the worker sees; a root-private model needs no read access by
the worker's unprivileged uid.

Stdlib only: the receiver runs before ``pivot_root``.
"""

from __future__ import annotations

import os
import socket
import stat

MAX_FILES = 10_000
MAX_DEPTH = 64
PAGE = 4096


class SnapshotError(Exception):
    """The model tree cannot be copied (too many files, unreadable, changed type...)."""


def _walk(dir_fd: int, rel: str, depth: int, dirs: list[str], files: list[list]) -> None:
    if depth > MAX_DEPTH:
        raise SnapshotError(f"{rel}: directory nesting deeper than {MAX_DEPTH}")
    with os.scandir(dir_fd) as entries:
        names = sorted((e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False)) for e in entries)
    for name, is_dir, is_file in names:
        path = f"{rel}/{name}" if rel else name
        if len(files) + len(dirs) >= MAX_FILES:
            raise SnapshotError(f"the model has more than {MAX_FILES} files and directories")
        if is_dir:
            dirs.append(path)
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                _walk(sub, path, depth + 1, dirs, files)
            finally:
                os.close(sub)
        elif is_file:
            files.append([path, os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_size])
        # symlinks, fifos, sockets, devices: never followed, never copied


def manifest(src: str, dst: str) -> dict:
    """What to copy for one user-data bind ``src`` -> ``dst``: the tmpfs root, dirs and (file, size)."""
    if os.path.isdir(src):
        root, dirs, files = dst, [], []
        fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _walk(fd, "", 0, dirs, files)
        finally:
            os.close(fd)
    else:
        root, dirs, files = os.path.dirname(dst), [], [[os.path.basename(dst), os.stat(src).st_size]]
    return {"src": src, "root": root, "dirs": dirs, "files": files,
            "tmpfs_bytes": sum(-(-size // PAGE) * PAGE for _, size in files) + PAGE * (len(files) + len(dirs) + 16)}


def _open_no_follow(src: str, rel: str, is_dir_src: bool) -> int:
    """Open ``src/rel`` component by component, refusing symlinks at every step."""
    if not is_dir_src:
        return os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    parts = rel.split("/")
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def open_regular(src: str, rel: str) -> int:
    """Open file ``rel`` of the manifest of ``src`` without following links; a regular file or an error."""
    try:
        fd = _open_no_follow(src, rel, os.path.isdir(src))
    except OSError as exc:
        raise SnapshotError(f"{src}/{rel}: cannot open without following links: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SnapshotError(f"{src}/{rel}: no longer a regular file")
    return fd


def send(sock: socket.socket, copies: list[dict]) -> None:
    """Parent: hand every file of ``copies`` over ``sock`` as an open descriptor (caller's credentials)."""
    for copy in copies:
        for rel, _size in copy["files"]:
            fd = open_regular(copy["src"], rel)
            try:
                socket.send_fds(sock, [b"f"], [fd])
            finally:
                os.close(fd)


def _copy_fd(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy at most ``size`` bytes (the size the tmpfs was sized for), from offset 0."""
    offset = 0
    while offset < size:
        try:
            n = os.sendfile(dst_fd, src_fd, offset, min(size - offset, 1 << 30))
        except OSError:
            n = -1
        if n == -1:  # sendfile unsupported for this source: plain reads
            chunk = os.pread(src_fd, min(size - offset, 1 << 20), offset)
            n = len(chunk)
            if n:
                os.write(dst_fd, chunk)
        if n == 0:
            break  # the file shrank on the host: the copy is what the worker scans and loads
        offset += n


def receive(chan_fd: int, copy: dict, dest_fd: int) -> None:
    """Boot side: receive each descriptor of ``copy``, copy it under the directory ``dest_fd``
    (relative to it: the directory may be detached from every path by then); read-only modes."""
    sock = socket.socket(fileno=os.dup(chan_fd))
    try:
        for d in copy["dirs"]:
            os.mkdir(d, 0o755, dir_fd=dest_fd)
        for rel, size in copy["files"]:
            _msg, fds, _flags, _addr = socket.recv_fds(sock, 1, 1)
            if len(fds) != 1:
                raise SnapshotError("the parent closed the channel while sending the model")
            try:
                out = os.open(rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444,
                              dir_fd=dest_fd)
                try:
                    _copy_fd(fds[0], out, int(size))
                finally:
                    os.close(out)
            finally:
                os.close(fds[0])
        for d in reversed(copy["dirs"]):
            os.chmod(d, 0o555, dir_fd=dest_fd)  # a directory we just made (no link can be there)
    finally:
        sock.close()
