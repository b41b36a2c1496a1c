"""Plain pickle files (pickle, joblib, dill-style), raw or compressed, read without unpickling.

The file is memory-mapped and its opcode stream walked by
:mod:`~modelwarden.formats.pickle_ops`; consecutive pickles (several ``dump``
calls in one file) are all reported.  joblib's compressed files (gzip, bz2,
xz, LZMA-alone, zlib, and LZ4 frames when the optional ``lz4`` package is installed) are decompressed in memory, bounded by ``Limits.max_member_bytes``
and the compression-ratio limit.
"""

from __future__ import annotations

import bz2
import lzma
import mmap
import os
import zlib

from modelwarden.errors import InputError, LimitExceeded
from modelwarden.formats import pickle_ops
from modelwarden.formats.archive import open_regular
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.ir import Artifact, ArtifactFormat, PickleProgram

CHUNK = 1 << 16
RATIO_FLOOR = 1 << 20


def compression_of(head: bytes) -> str:
    """The compression wrapping a (joblib) pickle, from its first bytes, or ""."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh") and head[3:4].isdigit():
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head[:1] == b"\x78" and len(head) > 1 and (head[0] << 8 | head[1]) % 31 == 0:
        return "zlib"
    if head.startswith(LZ4_FRAME_MAGIC):
        return "lz4"
    if len(head) >= 5 and head[:1] == b"\x5d" and head[1:5] in _LZMA_ALONE_DICTS:
        return "lzma"  # joblib compress='lzma': LZMA-alone (lc=3 lp=0 pb=2), as xz/lzma write it
    return ""


LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"
# LZMA-alone dictionary sizes (2^n or 2^n + 2^(n-1)) that encoders write, little-endian
_LZMA_ALONE_DICTS = frozenset((1 << n).to_bytes(4, "little") for n in range(12, 31)) | frozenset(
    ((1 << n) + (1 << (n - 1))).to_bytes(4, "little") for n in range(12, 31))


def _decompressor(kind: str, path: str = ""):
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if kind == "zlib":
        return zlib.decompressobj()
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    if kind == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
    if kind == "lz4":
        try:
            import lz4.frame
        except ImportError:
            raise InputError(path, "joblib file compressed with lz4: install the lz4 package "
                                   "(pip install 'modelwarden[lz4]') to inspect it") from None
        return lz4.frame.LZ4FrameDecompressor()
    return lzma.LZMADecompressor()


def decompress(data: "bytes | mmap.mmap", kind: str, path: str, limits: Limits, max_bytes: int | None = None) -> bytes:
    """Decompress a whole stream, stopping at the size and ratio limits as actually produced."""
    cap = limits.max_member_bytes if max_bytes is None else max_bytes
    ratio_cap = max(RATIO_FLOOR, len(data) * limits.max_zip_ratio)
    d = _decompressor(kind, path)
    out: list[bytes] = []
    total = 0
    try:
        for i in range(0, len(data), CHUNK):
            for piece in _feed(d, data[i : i + CHUNK]):
                total += len(piece)
                if total > cap:
                    raise LimitExceeded(path, f"{kind} stream decompresses past the {cap}-byte limit")
                if total > ratio_cap:
                    raise LimitExceeded(path, f"{kind} stream decompresses more than {limits.max_zip_ratio}x "
                                        "its size (a bomb?)")
                out.append(piece)
            if d.eof:
                break
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError, RuntimeError) as exc:
        raise InputError(path, f"{kind} stream is corrupt ({exc})") from None
    return b"".join(out)


def _feed(d, chunk: bytes):
    """Decompress one input chunk in bounded pieces."""
    zlib_like = hasattr(d, "unconsumed_tail")
    while True:
        piece = d.decompress(chunk, CHUNK)
        yield piece
        if d.eof:
            return
        if zlib_like:
            chunk = d.unconsumed_tail
            if not chunk:
                return
        else:
            chunk = b""
            if d.needs_input:
                return


def map_file(path: str) -> "tuple[mmap.mmap | bytes, int]":
    """The file's bytes, memory-mapped (no copy); empty files give b""."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return b"", 0
        return mmap.mmap(fd, size, prot=mmap.PROT_READ), size
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot map file ({exc})") from None
    finally:
        os.close(fd)


def read_pickles(path: str, display: str, limits: Limits, role: str = "") -> tuple[list[PickleProgram], dict[str, str]]:
    mapped, size = map_file(path)
    try:
        info = {"bytes": str(size)}
        buf = mapped
        kind = compression_of(bytes(mapped[:8]))
        if kind:
            buf = decompress(mapped, kind, path, limits)
            info["compression"] = kind
        if not buf:
            raise InputError(path, "empty file")
        progs, end = pickle_ops.parse_streams(buf, 0, len(buf), display, role=role)
        info["streams"] = str(len(progs))
        if end < len(buf) and not any(p.error for p in progs):
            info["trailing_bytes"] = str(len(buf) - end)
        return progs, info
    finally:
        if isinstance(mapped, mmap.mmap):
            mapped.close()


class PickleReader(Reader):
    format = ArtifactFormat.PICKLE

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        progs, info = read_pickles(candidate.path, candidate.display, limits)
        return Artifact(path=candidate.path, display=candidate.display, format=ArtifactFormat.PICKLE,
                        pickles=tuple(progs), metadata=info)
