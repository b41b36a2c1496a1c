"""A bounded reader for LevelDB-style SSTables, the container of TensorFlow's checkpoint ``.index`` files.

Layout (``tensorflow/core/lib/io/format.h``, same as LevelDB): data blocks, a
metaindex block, an index block, then a 48-byte footer holding two
``BlockHandle``s (varint64 offset and size, padded to 40 bytes) and the magic
``0xdb4775248b80fb57``.  A block is prefix-compressed entries
(``shared, non_shared, value_length`` varints, key delta, value) followed by
a ``uint32`` restart array and its count; each block is followed by a 5-byte
trailer: compression type and the masked CRC32C of block + type byte.
TensorFlow writes tensor bundles uncompressed; snappy blocks are refused.

Everything here is bounded by the buffer: no offset, length or count read
from the file is trusted before it is checked against what is really there.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from modelwarden.errors import InputError, LimitExceeded

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5
MAX_KEY_BYTES = 64 * 1024
NO_COMPRESSION = 0
SNAPPY_COMPRESSION = 1

# --------------------------------------------------------------------------
# CRC32C (Castagnoli), table-driven; fine for index blocks and bounded reads.


def _make_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _make_table()
_MASK_DELTA = 0xA282EAD8


def _crc32c_python(data: bytes, crc: int = 0) -> int:
    """CRC32C of ``data``, optionally continuing from ``crc`` (table-driven, in Python)."""
    table = _CRC_TABLE
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # the C implementation (hardware CRC32C where the CPU has it): 200x faster per byte
    from google_crc32c import extend as _extend
    from google_crc32c import implementation as _implementation
except ImportError:  # pragma: no cover - the package is a dependency; the fallback keeps scans working
    _extend, _implementation = None, "python"


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32C of ``data``, optionally continuing from ``crc``."""
    if _extend is not None and _implementation == "c":
        return _extend(crc, data if type(data) is bytes else bytes(data))  # it takes read-only buffers only
    return _crc32c_python(data, crc)


def mask_crc(crc: int) -> int:
    """LevelDB's CRC masking (stored CRCs are masked so CRCs of CRCs stay strong)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --------------------------------------------------------------------------


def read_varint(buf: bytes, pos: int, end: int, path: str, what: str, max_bytes: int = 10) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos`` (not past ``end``); return (value, new pos)."""
    result = 0
    shift = 0
    for i in range(max_bytes):
        if pos >= end:
            raise InputError(path, f"truncated varint in {what} at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
    raise InputError(path, f"varint too long in {what} at byte {pos - max_bytes}")


def _handle(buf: bytes, pos: int, end: int, path: str, what: str) -> tuple[int, int, int]:
    off, pos = read_varint(buf, pos, end, path, what)
    size, pos = read_varint(buf, pos, end, path, what)
    return off, size, pos


class SSTable:
    """An in-memory SSTable: iterate ``(key, value)`` pairs in order with :meth:`entries`."""

    def __init__(self, data: bytes, path: str, *, verify_crc: bool = True) -> None:
        self.data = data
        self.path = path
        self.verify_crc = verify_crc
        # Prefix compression lets a small file describe huge keys; bound the bytes we rebuild.
        self._key_budget = 64 * len(data) + (1 << 20)
        if len(data) < FOOTER_SIZE:
            raise InputError(path, f"file is {len(data)} bytes, too short for a table footer ({FOOTER_SIZE} bytes)")
        foot = len(data) - FOOTER_SIZE
        (magic,) = struct.unpack_from("<Q", data, len(data) - 8)
        if magic != MAGIC:
            raise InputError(path, f"bad table magic {magic:#018x} (expected {MAGIC:#018x}); not a checkpoint index")
        _, _, pos = _handle(data, foot, foot + 40, path, "footer metaindex handle")
        self.index_offset, self.index_size, _ = _handle(data, pos, foot + 40, path, "footer index handle")

    def block(self, offset: int, size: int, what: str) -> bytes:
        """The contents of the block at ``offset``/``size``, trailer checked."""
        limit = len(self.data) - FOOTER_SIZE
        if offset < 0 or size < 0 or offset + size + TRAILER_SIZE > limit:
            raise InputError(
                self.path, f"{what} at offset {offset} size {size} extends past the end of the table ({limit} bytes)"
            )
        contents = self.data[offset : offset + size]
        ctype = self.data[offset + size]
        if self.verify_crc:
            (stored,) = struct.unpack_from("<I", self.data, offset + size + 1)
            actual = crc32c(self.data[offset : offset + size + 1])
            if unmask_crc(stored) != actual:
                raise InputError(self.path, f"CRC32C mismatch in {what} at offset {offset}: the file is corrupted")
        if ctype == SNAPPY_COMPRESSION:
            raise InputError(self.path, f"{what} is snappy-compressed; TensorFlow checkpoints are not, refusing")
        if ctype != NO_COMPRESSION:
            raise InputError(self.path, f"{what} has unknown compression type {ctype}")
        return contents

    def _block_entries(self, block: bytes, what: str) -> Iterator[tuple[bytes, bytes]]:
        path = self.path
        if len(block) < 4:
            raise InputError(path, f"{what} is {len(block)} bytes, too short for a restart count")
        (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
        if num_restarts > (len(block) - 4) // 4:
            raise InputError(path, f"{what} claims {num_restarts} restart points, more than fit in the block")
        end = len(block) - 4 - 4 * num_restarts
        if end > 0 and num_restarts == 0:
            raise InputError(path, f"{what} has entries but no restart points")
        pos = 0
        key = b""
        while pos < end:
            start = pos
            shared, pos = read_varint(block, pos, end, path, what, 5)
            non_shared, pos = read_varint(block, pos, end, path, what, 5)
            vlen, pos = read_varint(block, pos, end, path, what, 5)
            if shared > len(key):
                raise InputError(path, f"{what}: entry at {start} shares {shared} bytes of a {len(key)}-byte key")
            if pos + non_shared + vlen > end:
                raise InputError(path, f"{what}: entry at {start} extends past the block")
            if shared + non_shared > MAX_KEY_BYTES:
                raise LimitExceeded(path, f"{what}: key of {shared + non_shared} bytes, over {MAX_KEY_BYTES}")
            self._key_budget -= shared + non_shared
            if self._key_budget < 0:
                raise LimitExceeded(path, "keys reconstructed from shared prefixes exceed the work budget")
            new_key = key[:shared] + block[pos : pos + non_shared]
            pos += non_shared
            if start and new_key <= key:
                raise InputError(path, f"{what}: keys out of order at entry offset {start}")
            key = new_key
            yield key, block[pos : pos + vlen]
            pos += vlen

    def entries(self, max_entries: int) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` of the data blocks, in key order, at most ``max_entries``."""
        path = self.path
        index = self.block(self.index_offset, self.index_size, "index block")
        count = 0
        last: bytes | None = None
        prev_end = 0
        for sep, handle in self._block_entries(index, "index block"):
            off, size, hend = _handle(handle, 0, len(handle), path, "index block handle")
            if hend != len(handle):
                raise InputError(path, "index block handle has trailing bytes")
            if off < prev_end:
                raise InputError(path, f"data block at offset {off} overlaps the previous block")
            prev_end = off + size + TRAILER_SIZE
            block = self.block(off, size, "data block")
            for key, value in self._block_entries(block, f"data block at {off}"):
                if last is not None and key <= last:
                    raise InputError(path, "keys out of order across data blocks")
                if key > sep:
                    raise InputError(path, f"data block at {off} holds a key beyond its index separator")
                last = key
                count += 1
                if count > max_entries:
                    raise LimitExceeded(path, f"table holds more than {max_entries} entries")
                yield key, value
