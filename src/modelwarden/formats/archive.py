"""Zip and tar containers, inspected in memory and never extracted.

Every member is described (:class:`~modelwarden.ir.ArchiveMember`: path, kind,
declared sizes, encryption, link target) from the central directory / tar
headers before any content is read.  Content is then sniffed by its first
bytes, whatever the member is called: pickles are parsed (bounded by
``Limits.max_member_bytes`` and the compression-ratio limit as actually
decompressed), nested zip/tar members are inspected recursively up to
:data:`MAX_DEPTH` levels, and everything else is only labelled.  Limits that
stop an inspection are recorded in :attr:`ArchiveFacts.skipped` for the
archive rules to report.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tarfile

from modelwarden.errors import InputError, LimitExceeded
from modelwarden.formats import pickle_ops
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.formats.keras_v3 import read_member
from modelwarden.ir import Artifact, ArtifactFormat, ArchiveFacts, ArchiveMember, FileKind, PickleProgram
from modelwarden.record import field, record

MAX_DEPTH = 3  # nested archives inspected below the outer one
MAX_TAR_BYTES = 8 * 1024**3  # bytes of (decompressed) tar stream walked before giving up
MAX_LINK_TARGET = 4096
PEEK = 64
NPY_MAGIC = b"\x93NUMPY"
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
ZIP_EMPTY = b"PK\x05\x06"

# A hook deciding how a member that holds a pickle is labelled: role text, "" = expected,
# None = use the default ("unexpected: ...").  Readers of PyTorch / npz pass their own.
RoleHook = Callable[[str], "str | None"]


def sniff_bytes(head: bytes, size: int | None = None) -> str:
    """What a blob is, from its first bytes: pickle, npy, zip, tar, gzip, safetensors, onnx or ""."""
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith((ZIP_MAGIC, ZIP_EMPTY)):
        return "zip"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if size is not None and 2 <= n <= size - 8:
            return "safetensors"
    if is_pickle_head(head, size if size is not None else len(head)):
        return "pickle"
    return ""


def is_pickle_head(head: bytes, size: int) -> bool:
    """Does ``head`` (the first bytes of a ``size``-byte blob) start a pickle?

    Protocol 2+ streams announce themselves (PROTO); protocol 0/1 ones must parse
    cleanly over the head with identifier-like globals, so text files are not mistaken.
    """
    if len(head) < 2:
        return False
    if head[0] == 0x80:
        return pickle_ops.looks_like_start(head, 0, len(head))
    if head[0] not in b"(c]}":
        return False
    prog = pickle_ops.parse_stream(head, 0, len(head), "")[0]
    if any(not (i.module.replace(".", "_").isidentifier() and i.name.replace(".", "_").isidentifier())
           for i in prog.imports):
        return False
    if not prog.error:
        return prog.opcodes >= 2
    if not prog.error.startswith("truncated") or len(head) >= size:
        return False
    if prog.error.startswith("truncated: line") and 0 < prog.end < len(head):
        # a protocol 0 value line (Python 2 wrote whole arrays as one STRING) may run past the head
        op, arg = head[prog.end - 1: prog.end], head[prog.end: prog.end + 1]
        if (op == b"S" and arg in (b"'", b'"')) or op == b"V":
            return prog.opcodes >= 2
    return prog.opcodes >= 8


@record(frozen=False, slots=False)
class Inspection:
    """What walking one container found."""

    kind: str
    members: list[ArchiveMember] = field(default_factory=list)
    pickles: list[PickleProgram] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    total: int = 0
    max_depth: int = 0

    def facts(self) -> ArchiveFacts:
        return ArchiveFacts(self.kind, tuple(self.members), self.total, self.max_depth, tuple(self.skipped))


def _safe_name(name: str) -> str:
    return name.replace("\x00", "\\0")[:1024]


def _default_role(name: str) -> str | None:
    return None


class _Walker:
    def __init__(self, path: str, limits: Limits, role_hook: RoleHook) -> None:
        self.path = path
        self.limits = limits
        self.role_hook = role_hook
        self.result: Inspection | None = None

    # -- pickles and nested containers found in a member's bytes
    def content(self, data: bytes, name: str, container: str, depth: int, insp: Inspection) -> str:
        kind = sniff_bytes(data[:512], len(data))
        shown = f"{container}!{name}" if container else name
        if kind == "pickle":
            role = self.role_hook(name) if not container else None
            if role == "skip-unless-clean":
                progs, _ = pickle_ops.parse_streams(data, 0, len(data), shown)
                if progs and not progs[0].error:
                    insp.pickles.extend(_relabel(progs, f"unexpected: pickle in data member {shown}"))
                return "pickle"
            progs, _ = pickle_ops.parse_streams(data, 0, len(data), shown)
            label = role if role is not None else f"unexpected: pickle in archive member {shown}"
            insp.pickles.extend(_relabel(progs, label))
        elif kind == "npy":
            insp.pickles.extend(npy_pickles(data, shown, self.path))
        elif kind in ("zip", "tar", "gzip"):
            if depth >= MAX_DEPTH:
                insp.skipped.append(f"{shown}: nested archive deeper than {MAX_DEPTH} levels not inspected")
                insp.max_depth = max(insp.max_depth, depth + 1)
                return kind
            insp.max_depth = max(insp.max_depth, depth + 1)
            try:
                if kind == "zip":
                    with zipfile.ZipFile(io.BytesIO(data)) as zf:
                        self.zip(zf, shown, depth + 1, insp)
                else:
                    self.tar(io.BytesIO(data), kind == "gzip", shown, depth + 1, insp, len(data))
            except InputError as exc:
                insp.skipped.append(f"{shown}: {exc.reason}")
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
                insp.skipped.append(f"{shown}: nested archive is corrupt ({exc})")
            except Exception as exc:  # tarfile.TarError, imported lazily
                if type(exc).__module__ != "tarfile":
                    raise
                insp.skipped.append(f"{shown}: nested archive is corrupt ({exc})")
        return kind

    # -- zip
    def zip(self, zf: zipfile.ZipFile, container: str, depth: int, insp: Inspection) -> None:
        infos = zf.infolist()
        insp.total += len(infos)
        if insp.total > self.limits.max_zip_members:
            raise LimitExceeded(self.path, f"archive has more than {self.limits.max_zip_members} members")
        for info in infos:
            insp.members.append(self.zip_member(zf, info, container, depth, insp))

    def zip_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, container: str, depth: int,
                   insp: Inspection) -> ArchiveMember:
        name = _safe_name(info.filename)
        mode = info.external_attr >> 16
        encrypted = bool(info.flag_bits & 0x1)
        base = dict(name=name, size=info.file_size, compressed=info.compress_size, container=container,
                    encrypted=encrypted)
        if info.is_dir():
            return ArchiveMember(kind=FileKind.DIR, **base)
        if not container and self.role_hook(name) == "skip-unless-clean":
            return ArchiveMember(kind=FileKind.FILE, content="data", **base)  # raw storage: never read
        if encrypted:
            return ArchiveMember(kind=FileKind.FILE, **base)
        if stat.S_ISLNK(mode):
            try:
                raw = read_member(zf, info, self.path, MAX_LINK_TARGET, self.limits.max_zip_ratio)
                target = raw.decode("utf-8", "replace")
            except InputError as exc:
                target = f"<unreadable: {exc.reason}>"
            return ArchiveMember(kind=FileKind.SYMLINK, link_target=target, **base)
        kind = FileKind.FILE if stat.S_IFMT(mode) in (0, stat.S_IFREG) else FileKind.OTHER
        shown = f"{container}!{name}" if container else name
        try:
            with zf.open(info) as fh:
                head = fh.read(PEEK)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError,
                RuntimeError) as exc:
            insp.skipped.append(f"{shown}: cannot be read ({exc})")
            return ArchiveMember(kind=kind, **base)
        content = _head_kind(head, info.file_size)
        if content == "maybe-pickle" and not container and self.role_hook(name) == "skip-unless-clean":
            content = ""  # raw tensor data that happens to start like a protocol 0 opcode
        if content and content != "safetensors" and kind is FileKind.FILE:
            if info.file_size > self.limits.max_member_bytes:
                insp.skipped.append(f"{shown}: {content} of {info.file_size} bytes not inspected "
                                    f"(over the {self.limits.max_member_bytes}-byte limit)")
                return ArchiveMember(kind=kind, content=content, **base)
            try:
                data = read_member(zf, info, self.path, self.limits.max_member_bytes, self.limits.max_zip_ratio)
            except LimitExceeded as exc:
                insp.skipped.append(f"{shown}: {exc.reason}")
                return ArchiveMember(kind=kind, content=content, **base)
            except InputError as exc:
                insp.skipped.append(f"{shown}: {exc.reason}")
                return ArchiveMember(kind=kind, content=content, **base)
            content = self.content(data, name, container, depth, insp)
        return ArchiveMember(kind=kind, content=content, **base)

    # -- tar
    def tar(self, fh: "io.BufferedIOBase", gz: bool, container: str, depth: int, insp: Inspection,
            size: int) -> None:
        import gzip
        import tarfile

        stream: io.RawIOBase | io.BufferedIOBase = fh
        cap = size
        if gz:
            stream = gzip.GzipFile(fileobj=fh, mode="rb")
            cap = min(MAX_TAR_BYTES, max(1 << 20, size * self.limits.max_zip_ratio))
        source = _Bounded(stream, cap, self.path)
        base = 0
        where = f"{container}: " if container else ""
        for _ in range(MAX_TAR_RESYNCS + 1):
            with tarfile.open(fileobj=source, mode="r|") as tf:
                for ti in tf:
                    insp.total += 1
                    if insp.total > self.limits.max_zip_members:
                        raise LimitExceeded(self.path, f"archive has more than {self.limits.max_zip_members} members")
                    insp.members.append(self.tar_member(tf, ti, container, depth, insp))
                stop = tf.offset  # where tarfile stopped: an end-of-archive block, or a header it rejected
                pending = bytes(getattr(tf.fileobj, "buf", b""))
            # tarfile ends the walk at the first header that fails its checksum; GNU tar skips it and
            # extracts what follows.  So a rejected header that is not zeros is reported and walked past.
            block = source.block_at(stop)
            if block is not None and not block.strip(b"\x00"):
                return  # the end-of-archive marker: GNU tar stops here too
            found = _next_header(_Prefixed(pending, source))
            if found is None:
                if block is not None:
                    insp.skipped.append(f"{where}tar header at byte {base + stop} fails its checksum and nothing "
                                        "after it is a valid header (tarfile stops there; GNU tar skips it)")
                return
            skipped, header, rest = found
            bad_at = base + stop
            base = bad_at + BLOCK + skipped
            insp.skipped.append(f"{where}tar header at byte {bad_at} fails its checksum: Python's tarfile ends the "
                                f"archive there, GNU tar skips it and extracts the members from byte {base} on "
                                "(inspected)")
            source = _Bounded(_Prefixed(header + rest, source), cap, self.path)
        insp.skipped.append(f"{where}more than {MAX_TAR_RESYNCS} damaged tar headers")

    def tar_member(self, tf: "tarfile.TarFile", ti: "tarfile.TarInfo", container: str, depth: int,
                   insp: Inspection) -> ArchiveMember:
        name = _safe_name(ti.name)
        base = dict(name=name, size=ti.size, compressed=ti.size, container=container)
        if ti.isdir():
            return ArchiveMember(kind=FileKind.DIR, **base)
        if ti.issym() or ti.islnk():
            return ArchiveMember(kind=FileKind.SYMLINK, link_target=_safe_name(ti.linkname),
                                 hardlink=ti.islnk(), **base)
        if not ti.isfile():
            return ArchiveMember(kind=FileKind.OTHER, **base)
        shown = f"{container}!{name}" if container else name
        fh = tf.extractfile(ti)
        if fh is None:
            return ArchiveMember(kind=FileKind.FILE, **base)
        head = fh.read(PEEK)
        content = _head_kind(head, ti.size)
        if content and content != "safetensors":
            if ti.size > self.limits.max_member_bytes:
                insp.skipped.append(f"{shown}: {content} of {ti.size} bytes not inspected "
                                    f"(over the {self.limits.max_member_bytes}-byte limit)")
                return ArchiveMember(kind=FileKind.FILE, content=content, **base)
            data = head + fh.read(ti.size - len(head))
            content = self.content(data, name, container, depth, insp)
        return ArchiveMember(kind=FileKind.FILE, content=content, **base)


BLOCK = 512
MAX_TAR_RESYNCS = 16


def _next_header(stream: "_Prefixed") -> "tuple[int, bytes, bytes] | None":
    """Read 512-byte blocks until one is a valid tar header (its checksum matches): (bytes skipped
    before it, the header block, what was read after it), or None at the end of the stream.
    Zero blocks are skipped too (a damaged header is often followed by padding)."""
    import tarfile

    skipped = 0
    while True:
        block = stream.read_exact(BLOCK)
        if len(block) < BLOCK:
            return None
        if block.strip(b"\x00"):
            try:
                tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
                return skipped, block, stream.take_prefix()
            except tarfile.HeaderError:
                pass
        skipped += BLOCK


class _Prefixed(io.RawIOBase):
    """``prefix`` (bytes already read) followed by the rest of ``inner``."""

    def __init__(self, prefix: bytes, inner) -> None:
        self.prefix = prefix
        self.inner = inner

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.prefix:
            n = len(self.prefix) if n is None or n < 0 else n
            data, self.prefix = self.prefix[:n], self.prefix[n:]
            return data
        return self.inner.read(n)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def read_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            data = self.read(n - len(out))
            if not data:
                break
            out += data
        return out

    def take_prefix(self) -> bytes:
        data, self.prefix = self.prefix, b""
        return data


def _head_kind(head: bytes, size: int) -> str:
    kind = sniff_bytes(head, size)
    if kind == "" and head[:1] in (b"(", b"c", b"]", b"}") and size > len(head):
        return "maybe-pickle"  # protocol 0/1 decided on the whole member
    return kind


def _relabel(progs: list[PickleProgram], role: str) -> list[PickleProgram]:
    from modelwarden.record import replace

    return [replace(p, role=p.role or role) for p in progs]


class _Bounded(io.RawIOBase):
    """A read-only stream that refuses to yield more than ``cap`` bytes (tar/gzip bombs)."""

    WINDOW = 1 << 16

    def __init__(self, inner, cap: int, path: str) -> None:
        self.inner = inner
        self.cap = cap
        self.path = path
        self.count = 0
        self.window = b""  # the last WINDOW bytes read (tar headers tarfile rejected)

    def block_at(self, offset: int) -> bytes | None:
        """The 512 bytes at ``offset`` of the stream, if they are still in the window."""
        start = offset - (self.count - len(self.window))
        if start < 0 or start + BLOCK > len(self.window):
            return None
        return self.window[start: start + BLOCK]

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        data = self.inner.read(n)
        self.count += len(data)
        self.window = (self.window + data)[-self.WINDOW:]
        if self.count > self.cap:
            raise LimitExceeded(self.path, f"archive decompresses past {self.cap} bytes (more than "
                                "the compression-ratio limit allows: a bomb?)")
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


# --------------------------------------------------------------------------
# NumPy .npy payloads (shared with numpy_file)


def npy_header(data: bytes, path: str) -> tuple[dict, int]:
    """Parse an .npy header: (header dict, offset of the array data)."""
    import ast

    if len(data) < 10 or not data.startswith(NPY_MAGIC):
        raise InputError(path, "not an .npy file")
    major = data[6]
    if major == 1:
        hlen, start = int.from_bytes(data[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(data[8:12], "little"), 12
    else:
        raise InputError(path, f"unsupported .npy format version {major}")
    if hlen > 100_000 or start + hlen > len(data):
        raise InputError(path, f".npy header of {hlen} bytes is truncated or too large")
    text = data[start : start + hlen].decode("latin-1")
    if text.count("(") + text.count("[") + text.count("{") > 200:
        raise InputError(path, ".npy header is nested too deeply")
    try:
        header = ast.literal_eval(text.strip() if major != 1 else _without_long_suffix(text))
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise InputError(path, f".npy header is not a Python literal ({type(exc).__name__})") from None
    if not isinstance(header, dict) or "descr" not in header:
        raise InputError(path, ".npy header has no 'descr'")
    return header, start + hlen


def _without_long_suffix(text: str) -> str:
    """A version 1.0 header written by Python 2 may spell ints ``2L``; numpy.load drops the ``L``
    (``numpy.lib.format._filter_header``) outside string literals, and so do we."""
    import io
    import tokenize

    if "L" not in text and "l" not in text:
        return text.strip()
    out: list[tuple[int, str]] = []
    last = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text.strip()).readline):
            if last is not None and last.type == tokenize.NUMBER and tok.type == tokenize.NAME \
                    and tok.string in ("L", "l") and tok.start == last.end:
                continue
            out.append((tok.type, tok.string))
            last = tok
    except (tokenize.TokenError, SyntaxError, ValueError):
        return text.strip()
    return tokenize.untokenize(out).strip()


def descr_has_object(descr: object, depth: int = 0) -> bool:
    if depth > 32:
        return True
    if isinstance(descr, str):
        return descr.lstrip("<>|=").startswith("O")
    if isinstance(descr, (list, tuple)):
        return any(descr_has_object(d, depth + 1) for d in descr)
    return False


def npy_pickles(data: bytes, shown: str, path: str) -> list[PickleProgram]:
    """The pickle inside an object-dtype .npy blob (empty for numeric arrays)."""
    try:
        header, off = npy_header(data, shown)
    except InputError as exc:
        return [PickleProgram(shown, 0, 0, (), (), 0, 0, f"unreadable .npy header: {exc.reason}", (),
                              "npy object array")]
    if not descr_has_object(header.get("descr")):
        return []
    progs, _ = pickle_ops.parse_streams(data, off, len(data), shown)
    return _relabel(progs, "npy object array")


# --------------------------------------------------------------------------
# the reader


def open_regular(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError(path, "file does not exist") from None
    except OSError as exc:
        if exc.errno == 40:
            raise InputError(path, "file is a symbolic link; refusing to follow it") from None
        raise InputError(path, f"cannot open file: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(path, "not a regular file")
    return fd


def inspect_zip(zf: zipfile.ZipFile, path: str, limits: Limits = DEFAULT_LIMITS,
                role_hook: RoleHook = _default_role) -> Inspection:
    """Inspect an already open zip (a model container such as ``.keras``): every member's
    content, pickles, nested archives, links and names, exactly as for a plain archive."""
    insp = Inspection("zip")
    _Walker(path, limits, role_hook).zip(zf, "", 0, insp)
    return insp


def inspect_file(path: str, limits: Limits = DEFAULT_LIMITS, role_hook: RoleHook = _default_role) -> Inspection:
    """Inspect a zip, tar or tar.gz file on disk."""
    import gzip
    import tarfile

    walker = _Walker(path, limits, role_hook)
    with os.fdopen(open_regular(path), "rb") as fh:
        head = fh.read(512)
        fh.seek(0)
        try:
            if head.startswith((ZIP_MAGIC, ZIP_EMPTY)):
                insp = Inspection("zip")
                with zipfile.ZipFile(fh) as zf:
                    walker.zip(zf, "", 0, insp)
                return insp
            gz = head.startswith(GZIP_MAGIC)
            insp = Inspection("tar.gz" if gz else "tar")
            walker.tar(fh, gz, "", 0, insp, os.fstat(fh.fileno()).st_size)
            return insp
        except LimitExceeded:
            raise
        except zipfile.BadZipFile as exc:
            raise InputError(path, f"not a valid zip archive ({exc})") from None
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise InputError(path, f"not a valid tar archive ({exc})") from None
        except (OSError, ValueError) as exc:
            raise InputError(path, f"archive is corrupt ({exc})") from None


class ArchiveReader(Reader):
    format = ArtifactFormat.ARCHIVE

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        insp = inspect_file(candidate.path, limits)
        return Artifact(
            path=candidate.path, display=candidate.display, format=ArtifactFormat.ARCHIVE,
            pickles=tuple(insp.pickles), archive=insp.facts(),
            metadata={"archive": insp.kind, "members": str(insp.total)},
        )


def open_head(path: str, n: int) -> bytes:
    """The first ``n`` bytes of a regular file (refusing links); errors name the file."""
    fd = open_regular(path)
    try:
        return os.read(fd, n)
    finally:
        os.close(fd)
