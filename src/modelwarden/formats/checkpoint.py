"""TensorFlow checkpoints (tensor bundles): the ``.index`` table, and bounded reads of one tensor's bytes.

A bundle is ``PREFIX.index`` (an SSTable: key ``""`` holds a
``BundleHeaderProto``, every other key a ``BundleEntryProto``) plus data
shards ``PREFIX.data-%05d-of-%05d``.  Reading a checkpoint never reads the
data shards: their sizes come from ``os.stat``.  Slice entries of
partitioned or size-sharded variables are keyed by an OrderedCode-encoded
``(0, name, slice)``; their variable name is decoded and they are marked
``sliced``.
"""

from __future__ import annotations

import os
import stat
import struct

from modelwarden.errors import InputError, LimitExceeded
from modelwarden.formats import safeio, tfproto
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.formats.sstable import SSTable, crc32c, mask_crc, read_varint
from modelwarden.ir import Artifact, ArtifactFormat, Checkpoint, CheckpointEntry, DataShard

MAX_SHARDS = 100_000  # TF names shards with %05d; more is never written by TF
MAX_KEY_BYTES = 64 * 1024
MAX_RANK = 64
ENDIANNESS = {0: "little", 1: "big"}


def index_path(prefix_path: str) -> str:
    return prefix_path + ".index"


def shard_path(prefix_path: str, shard: int, num_shards: int) -> str:
    return f"{prefix_path}.data-{shard:05d}-of-{num_shards:05d}"


def _decode_slice_key(key: bytes, path: str) -> str:
    """The variable name in an OrderedCode ``(0, name, slice...)`` key."""
    # WriteNumIncreasing(0) is the single byte 0x00; WriteString escapes 0x00 -> 00 ff,
    # 0xff -> ff 00 and ends with 00 01.
    out = bytearray()
    i = 1
    while i + 1 < len(key):
        b = key[i]
        if b == 0x00:
            nxt = key[i + 1]
            if nxt == 0x01:
                return out.decode("utf-8", "backslashreplace")
            if nxt != 0xFF:
                break
            out.append(0)
            i += 2
        elif b == 0xFF:
            if key[i + 1] != 0x00:
                break
            out.append(0xFF)
            i += 2
        else:
            out.append(b)
            i += 1
    raise InputError(path, f"malformed slice key {key[:64]!r}")


def _shape(proto: object, path: str, name: str) -> tuple[int, ...]:
    dims = proto.dim  # type: ignore[attr-defined]
    if len(dims) > MAX_RANK:
        raise InputError(path, f"entry {name!r} has rank {len(dims)}, over {MAX_RANK}")
    return tuple(int(d.size) for d in dims)


def _entry(key: bytes, value: bytes, path: str) -> CheckpointEntry:
    if len(key) > MAX_KEY_BYTES:
        raise LimitExceeded(path, f"key of {len(key)} bytes, over the {MAX_KEY_BYTES}-byte limit")
    is_slice = key.startswith(b"\x00")
    name = _decode_slice_key(key, path) if is_slice else key.decode("utf-8", "backslashreplace")
    e = tfproto.parse("BundleEntryProto", value, path)
    if e.offset < 0 or e.size < 0:
        raise InputError(path, f"entry {name!r} has negative offset {e.offset} or size {e.size}")
    return CheckpointEntry(
        name=name,
        dtype=tfproto.dtype_name(e.dtype),
        shape=_shape(e.shape, path, name),
        shard=int(e.shard_id),
        offset=int(e.offset),
        size=int(e.size),
        crc32c=int(e.crc32c),
        sliced=is_slice or len(e.slices) > 0,
    )


def _shard_size(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def read_checkpoint(prefix_path: str, display: str, limits: Limits = DEFAULT_LIMITS) -> Checkpoint:
    """Read ``PREFIX.index`` and stat the data shards; ``display`` names the prefix in reports."""
    shown = index_path(display)
    data = safeio.read_file(index_path(prefix_path), limits.max_member_bytes, what="checkpoint index")
    try:
        table = SSTable(data, shown)
        it = table.entries(limits.max_checkpoint_entries + 2)  # header + one over: reported below
        first = next(it, None)
        if first is None or first[0] != b"":
            raise InputError(shown, "checkpoint index has no bundle header (empty key)")
        header = tfproto.parse("BundleHeaderProto", first[1], shown)
        num_shards = int(header.num_shards)
        if num_shards < 1:
            raise InputError(shown, f"bundle header declares {num_shards} shards")
        if num_shards > MAX_SHARDS:
            raise LimitExceeded(shown, f"bundle header declares {num_shards} shards, over {MAX_SHARDS}")
        if header.endianness not in ENDIANNESS:
            raise InputError(shown, f"bundle header has unknown endianness {header.endianness}")
        entries: list[CheckpointEntry] = []
        for key, value in it:
            if len(entries) >= limits.max_checkpoint_entries:
                raise LimitExceeded(shown, f"checkpoint holds more than {limits.max_checkpoint_entries} entries")
            entries.append(_entry(key, value, shown))
    except struct.error as exc:  # defensive: every unpack is bounds-checked first
        raise InputError(shown, f"malformed checkpoint index ({exc})") from None
    shards = tuple(
        DataShard(shard=i, path=shard_path(display, i, num_shards), size=_shard_size(shard_path(prefix_path, i, num_shards)))
        for i in range(num_shards)
    )
    return Checkpoint(
        prefix=display,
        num_shards=num_shards,
        entries=tuple(entries),
        shards=shards,
        endianness=ENDIANNESS[header.endianness],
    )


def _find_shard(prefix_path: str, shard: int) -> str:
    directory, base = os.path.split(prefix_path)
    stem = f"{base}.data-{shard:05d}-of-"
    try:
        names = [n for n in os.listdir(directory or ".") if n.startswith(stem)]
    except OSError as exc:
        raise InputError(prefix_path, f"cannot list checkpoint directory: {exc.strerror}") from None
    if len(names) != 1:
        raise InputError(prefix_path, f"expected one data file {stem}*, found {len(names)}")
    return os.path.join(directory, names[0])


def string_tensor_crc(data: bytes, count: int, path: str) -> int:
    """TF's checksum of a string tensor: the lengths (as uint32, uint64 when larger), the masked
    length checksum, then the string bytes (``WriteStringTensor`` in ``tensor_bundle.cc``)."""
    if count > len(data):
        raise InputError(path, f"string tensor claims {count} elements in {len(data)} bytes")
    crc = 0
    pos = 0
    for _ in range(count):
        n, pos = read_varint(data, pos, len(data), path, "string tensor lengths")
        crc = crc32c(struct.pack("<I", n) if n <= 0xFFFFFFFF else struct.pack("<Q", n & (2**64 - 1)), crc)
    if pos + 4 > len(data):
        raise InputError(path, "string tensor truncated before its length checksum")
    crc = crc32c(data[pos : pos + 4], crc)
    return crc32c(data[pos + 4 :], crc)


def read_entry_bytes(
    prefix_path: str, entry: CheckpointEntry, max_bytes: int, *, num_shards: int | None = None
) -> bytes:
    """The stored bytes of one tensor, bounded by ``max_bytes``, CRC32C-verified against the index."""
    path = shard_path(prefix_path, entry.shard, num_shards) if num_shards else _find_shard(prefix_path, entry.shard)
    if entry.size > max_bytes:
        raise LimitExceeded(path, f"entry {entry.name!r} is {entry.size} bytes, over the {max_bytes}-byte limit")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise InputError(path, f"cannot open checkpoint data file: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(path, "checkpoint data file is not a regular file")
        if entry.offset + entry.size > st.st_size:
            raise InputError(
                path, f"entry {entry.name!r} [{entry.offset}, +{entry.size}) extends past the file ({st.st_size} bytes)"
            )
        data = os.pread(fd, entry.size, entry.offset)
    finally:
        os.close(fd)
    if len(data) != entry.size:
        raise InputError(path, f"short read of entry {entry.name!r}")
    if entry.crc32c is not None and entry.size and entry.dtype != "variant":
        if entry.dtype == "string":
            count = 1
            for d in entry.shape:
                count *= max(d, 0)
            actual = string_tensor_crc(data, count, path)
        else:
            actual = crc32c(data)
        if mask_crc(actual) != entry.crc32c:
            raise InputError(path, f"CRC32C mismatch for entry {entry.name!r}: the data file is corrupted")
    return data


class CheckpointReader(Reader):
    """A standalone checkpoint: the candidate path is ``PREFIX.index``."""

    format = ArtifactFormat.TF_CHECKPOINT

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        path, display = candidate.path, candidate.display
        if path.endswith(".index"):
            path = path[: -len(".index")]
        if display.endswith(".index"):
            display = display[: -len(".index")]
        ckpt = read_checkpoint(path, display, limits)
        return Artifact(
            path=candidate.path,
            display=candidate.display,
            format=ArtifactFormat.TF_CHECKPOINT,
            checkpoints=(ckpt,),
            metadata={"num_shards": str(ckpt.num_shards), "entries": str(len(ckpt.entries))},
        )
