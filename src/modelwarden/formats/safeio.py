"""Bounded, symlink-aware file access and JSON parsing for hostile inputs."""

from __future__ import annotations

import errno
import json
import os
import stat
from operator import attrgetter

from modelwarden.errors import InputError, LimitExceeded
from modelwarden.ir import FileEntry, FileKind


def inside(rel: str) -> bool:
    """Is a relative path from a config free of absolute and '..' parts?"""
    return bool(rel) and not os.path.isabs(rel) and ".." not in rel.replace("\\", "/").split("/")


def _open_regular(path: str, what: str) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError(path, f"{what} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(path, f"{what} is a symbolic link; refusing to follow it") from None
        raise InputError(path, f"cannot open {what}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputError(path, f"{what} is not a regular file")
    return fd, st


def open_regular(path: str, what: str = "file") -> int:
    """Open a regular file read-only without following symlinks or blocking on FIFOs; the caller closes it."""
    return _open_regular(path, what)[0]


def read_file(path: str, max_bytes: int, *, what: str = "file") -> bytes:
    """Read a regular file, refusing symlinks, non-regular files and anything over ``max_bytes``.

    Reads are sized by the file's length (one byte more, to see growth), not by ``max_bytes``:
    a buffer of the limit would cost a 16 MiB allocation and its unmapping per small file."""
    fd, st = _open_regular(path, what)
    try:
        if st.st_size > max_bytes:
            raise LimitExceeded(path, f"{what} is {st.st_size} bytes, over the {max_bytes}-byte limit")
        chunks = []
        remaining = max_bytes + 1
        want = st.st_size + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, want, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
            want = 1 << 16  # the file grew (or is a special file reporting size 0): read on in chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if len(data) > max_bytes:
            raise LimitExceeded(path, f"{what} grew past the {max_bytes}-byte limit while reading")
        return data
    finally:
        os.close(fd)


def read_head(path: str, n: int) -> bytes:
    """The first ``n`` bytes of a regular file (empty if unreadable); never follows symlinks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.read(fd, n)
    finally:
        os.close(fd)


def _check_depth(text: str, max_depth: int) -> None:
    """Reject JSON nested deeper than ``max_depth`` before the parser recurses."""
    depth = 0
    in_string = False
    escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                raise ValueError(f"JSON nested deeper than {max_depth} levels")
        elif ch in "]}":
            depth -= 1


def load_json(data: bytes | str, path: str, *, max_bytes: int, max_depth: int, what: str = "JSON") -> object:
    """Parse untrusted JSON with size and nesting bounds; errors name the file."""
    if len(data) > max_bytes:
        raise LimitExceeded(path, f"{what} is {len(data)} bytes, over the {max_bytes}-byte limit")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(path, f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    else:
        text = data
    try:
        if text.count("[") + text.count("{") > max_depth:  # cheap pre-check; exact check only if needed
            _check_depth(text, max_depth)
        return json.loads(text)
    except ValueError as exc:
        raise InputError(path, f"{what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise InputError(path, f"{what} is nested too deeply") from None


_NAME = attrgetter("name")


def walk_tree(root: str, max_entries: int) -> tuple[FileEntry, ...]:
    """Every entry below ``root`` (not following symlinks), with link facts, bounded."""
    entries: list[FileEntry] = []
    real_root = ""  # resolved on the first symlink: most trees have none, and it costs a stat per component
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        try:
            with os.scandir(full) as it:
                children = sorted(it, key=_NAME)
        except OSError as exc:
            raise InputError(full, f"cannot list directory: {exc.strerror}") from None
        for entry in children:
            if len(entries) >= max_entries:
                raise LimitExceeded(root, f"directory holds more than {max_entries} entries")
            relpath = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(entry.path)
                except OSError:
                    target = ""
                real_root = real_root or os.path.realpath(root)
                resolved = os.path.realpath(entry.path)
                inside = resolved == real_root or resolved.startswith(real_root + os.sep)
                entries.append(FileEntry(relpath, FileKind.SYMLINK, 0, st.st_nlink, target, inside))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(FileEntry(relpath, FileKind.DIR, 0, st.st_nlink))
                stack.append(relpath)
            elif stat.S_ISREG(st.st_mode):
                entries.append(FileEntry(relpath, FileKind.FILE, st.st_size, st.st_nlink))
            else:
                entries.append(FileEntry(relpath, FileKind.OTHER, 0, st.st_nlink))
    entries.sort(key=lambda e: e.relpath)
    return tuple(entries)
