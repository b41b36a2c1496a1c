"""GGUF (llama.cpp) files: a bounds-checked reader of the header, metadata and tensor table.

Layout (little-endian; ``ggml/src/gguf.cpp``): ``"GGUF"``, uint32 version (1-3), tensor
count and metadata count (uint64; uint32 in version 1), metadata key/value pairs (key
string, uint32 value type, value; arrays are a uint32 element type, a count, then the
elements), then one record per tensor (name, uint32 n_dims, n_dims x uint64 dims,
uint32 ggml type, uint64 offset), padding to ``general.alignment`` (default 32), and the
data section.  Strings are a uint64 length (uint32 in version 1) and bytes.

Every declared count and length is checked against the bytes that remain before
anything is read, so a hostile count never allocates; array elements are skipped, not
kept (a 150,000-token vocabulary costs a walk, not a list).  Structural breakage
(bad magic, truncation, unknown value types) is an :class:`InputError`; what the header
claims about the data (offsets past the end, overlaps, misalignment, overflowing dims)
is recorded for the rules to judge.  Chat templates in the metadata
(``tokenizer.chat_template`` and ``tokenizer.chat_template.<name>``) are parsed with
Jinja's parser by :mod:`~modelwarden.formats.hub.templates`.
"""

from __future__ import annotations

import mmap
import struct

from modelwarden.errors import InputError, LimitExceeded
from modelwarden.formats.hub.templates import template_facts
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.formats.pickle_file import map_file
from modelwarden.ir import Artifact, ArtifactFormat, GgufArray, GgufFile, GgufTensor

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8
MAX_KEPT_STRING = 1 << 20  # metadata strings longer than this are kept shortened
TEMPLATE_KEY = "tokenizer.chat_template"

# GGUF value types: name, fixed size (None: string/array)
VALUE_TYPES: dict[int, tuple[str, int | None]] = {
    0: ("uint8", 1), 1: ("int8", 1), 2: ("uint16", 2), 3: ("int16", 2), 4: ("uint32", 4), 5: ("int32", 4),
    6: ("float32", 4), 7: ("bool", 1), 8: ("string", None), 9: ("array", None), 10: ("uint64", 8),
    11: ("int64", 8), 12: ("float64", 8),
}
_SCALAR_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

# ggml type -> (block size in elements, bytes per block), as gguf-py's GGML_QUANT_SIZES.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}


def tensor_nbytes(ggml_type: int, dims: tuple[int, ...]) -> int | None:
    """Bytes of a tensor's data, or None for an unknown type or a partial block."""
    info = GGML_TYPES.get(ggml_type)
    if info is None:
        return None
    _, block, size = info
    n = 1
    for d in dims:
        n *= d
    if n % block:
        return None
    return n // block * size


class _Cursor:
    """Bounds-checked little-endian reads from a byte buffer."""

    def __init__(self, buf, size: int, path: str, wide: bool) -> None:
        self.buf, self.size, self.path, self.wide, self.pos = buf, size, path, wide, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise InputError(self.path, f"truncated GGUF: {what} at byte {self.pos} needs {n} bytes, "
                             f"{self.size - self.pos} remain")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def count(self, what: str) -> int:
        return self.unpack("<Q" if self.wide else "<I", what)

    def string_len(self, what: str) -> int:
        n = self.count(f"{what} length")
        self.need(n, what)
        return n

    def string(self, what: str, keep: int = MAX_KEPT_STRING) -> str:
        n = self.string_len(what)
        raw = bytes(self.buf[self.pos : self.pos + min(n, keep)])
        self.pos += n
        text = raw.decode("utf-8", "replace")
        return text if n <= keep else text + f"...[{n - keep} more bytes]"

    def skip_string(self, what: str) -> None:
        n = self.string_len(what)
        self.pos += n


def _value(c: _Cursor, vtype: int, key: str, depth: int = 0) -> object:
    info = VALUE_TYPES.get(vtype)
    if info is None:
        raise InputError(c.path, f"GGUF metadata {key[:200]!r} has unknown value type {vtype}")
    if vtype == 8:
        return c.string(f"metadata {key[:200]!r} string")
    if vtype != 9:
        return c.unpack(_SCALAR_FMT[vtype], f"metadata {key[:200]!r}")
    if depth >= MAX_ARRAY_DEPTH:
        raise LimitExceeded(c.path, f"GGUF metadata {key[:200]!r} nests arrays more than {MAX_ARRAY_DEPTH} deep")
    item = c.unpack("<I", f"metadata {key[:200]!r} array type")
    n = c.count(f"metadata {key[:200]!r} array count")  # uint64 (uint32 in version 1)
    item_info = VALUE_TYPES.get(item)
    if item_info is None:
        raise InputError(c.path, f"GGUF metadata array {key[:200]!r} has unknown element type {item}")
    fixed = item_info[1]
    if fixed is not None:
        c.need(n * fixed, f"metadata array {key[:200]!r} of {n} {item_info[0]}")
        c.pos += n * fixed
    else:
        min_item = (8 if c.wide else 4) if item == 8 else 12  # empty string / empty nested array
        if n * min_item > c.size - c.pos:
            raise InputError(c.path, f"GGUF metadata array {key[:200]!r} declares {n} {item_info[0]} elements; "
                             f"{c.size - c.pos} bytes remain")
        for _ in range(n):
            if item == 8:
                c.skip_string(f"metadata array {key[:200]!r} element")
            else:
                _value(c, item, key, depth + 1)
    return GgufArray(item_info[0], n)


def read_gguf(buf, size: int, path: str, display: str, limits: Limits = DEFAULT_LIMITS) -> GgufFile:
    """Parse the header, metadata and tensor table of GGUF bytes ``buf``."""
    if size < 8 or bytes(buf[:4]) != MAGIC:
        raise InputError(path, "not a GGUF file (no GGUF magic)")
    version = struct.unpack_from("<I", buf, 4)[0]
    if version not in (1, 2, 3):
        raise InputError(path, f"unsupported GGUF version {version} (known: 1, 2, 3)")
    c = _Cursor(buf, size, path, wide=version >= 2)
    c.pos = 8
    n_tensors = c.count("tensor count")
    n_kv = c.count("metadata count")
    min_kv, min_tensor = (8 + 4 + 1, 8 + 4 + 4 + 8) if c.wide else (4 + 4 + 1, 4 + 4 + 4 + 8)
    if n_kv * min_kv > size - c.pos:
        raise InputError(path, f"GGUF declares {n_kv} metadata entries; the file has room for at most "
                         f"{(size - c.pos) // min_kv}")
    if n_tensors > limits.max_nodes:
        raise LimitExceeded(path, f"GGUF declares {n_tensors} tensors (limit {limits.max_nodes})")
    if n_tensors * min_tensor > size - c.pos:
        raise InputError(path, f"GGUF declares {n_tensors} tensors; the file has room for at most "
                         f"{(size - c.pos) // min_tensor}")
    metadata: dict[str, object] = {}
    types: dict[str, str] = {}
    dupes: list[str] = []
    for _ in range(n_kv):
        key = c.string("metadata key", keep=4096)
        vtype = c.unpack("<I", f"metadata {key[:200]!r} type")
        value = _value(c, vtype, key)
        if key in metadata:
            dupes.append(key)
        else:
            metadata[key] = value
            types[key] = VALUE_TYPES[vtype][0]
    tensors: list[GgufTensor] = []
    seen: set[str] = set()
    dup_tensors: list[str] = []
    for i in range(n_tensors):
        name = c.string(f"tensor {i} name", keep=4096)
        n_dims = c.unpack("<I", f"tensor {name[:200]!r} n_dims")
        if n_dims > MAX_DIMS:
            raise InputError(path, f"GGUF tensor {name[:200]!r} has {n_dims} dimensions (ggml allows {MAX_DIMS})")
        dims = tuple(c.count(f"tensor {name[:200]!r} dim") for _ in range(n_dims))
        ggml_type = c.unpack("<I", f"tensor {name[:200]!r} type")
        offset = c.unpack("<Q", f"tensor {name[:200]!r} offset")
        if name in seen:
            dup_tensors.append(name)
        seen.add(name)
        tensors.append(GgufTensor(name, dims, ggml_type, offset, tensor_nbytes(ggml_type, dims)))
    raw_align = metadata.get("general.alignment")
    alignment = raw_align if (types.get("general.alignment") == "uint32" and isinstance(raw_align, int)
                              and raw_align > 0 and raw_align & (raw_align - 1) == 0) else DEFAULT_ALIGNMENT
    data_offset = -(-c.pos // alignment) * alignment
    return GgufFile(display, version, size, data_offset, alignment, tuple(tensors), metadata, types,
                    tuple(dupes[:100]), tuple(dup_tensors[:100]))


def chat_templates(g: GgufFile) -> list[tuple[str, str, object]]:
    """``(key, name, value)`` of every chat template in the metadata."""
    out = []
    for key, value in g.metadata.items():
        if key == TEMPLATE_KEY:
            out.append((key, "default", value))
        elif key.startswith(TEMPLATE_KEY + "."):
            out.append((key, key[len(TEMPLATE_KEY) + 1 :], value))
    return out


class GgufReader(Reader):
    format = ArtifactFormat.GGUF

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        buf, size = map_file(candidate.path)
        try:
            g = read_gguf(buf, size, candidate.path, candidate.display, limits)
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()
        templates = tuple(template_facts(v, f"{candidate.display}:{k}", name) for k, name, v in chat_templates(g)
                          if isinstance(v, str))
        meta = {"gguf_version": str(g.version), "tensors": str(len(g.tensors)), "metadata_keys": str(len(g.metadata))}
        arch = g.metadata.get("general.architecture")
        if isinstance(arch, str):
            meta["architecture"] = arch[:100]
        return Artifact(path=candidate.path, display=candidate.display, format=ArtifactFormat.GGUF, gguf=g,
                        templates=templates, metadata=meta)
