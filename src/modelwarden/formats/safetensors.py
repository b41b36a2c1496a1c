"""safetensors files: an 8-byte little-endian header length, a JSON header, then raw bytes.

The reader checks what makes the file unreadable (exit 2): a header length
over the limit or past the end of the file, a header that is not UTF-8 JSON
object, tensor entries without a string dtype, an integer shape and two
integer data offsets.  Everything else — unknown dtypes, sizes that do not
match the byte range, offsets outside the data, overlaps, gaps, non-string
metadata, duplicate keys — is recorded as fact for the MW85x rules.  Tensor
bytes are never read.
"""

from __future__ import annotations

import json
import os

from modelwarden.errors import InputError, LimitExceeded
from modelwarden.formats import safeio
from modelwarden.formats.archive import open_regular
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.ir import Artifact, ArtifactFormat, SafetensorsHeader, SafetensorsTensor

MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's own limit
MAX_TENSORS = 1_000_000
MAX_RANK = 64


def _pairs_hook(duplicates: list[str]):
    def hook(pairs):
        seen: dict[str, object] = {}
        for k, v in pairs:
            if k in seen and len(duplicates) < 100:
                duplicates.append(k)
            seen[k] = v
        return seen
    return hook


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_header(path: str, display: str, limits: Limits = DEFAULT_LIMITS) -> SafetensorsHeader:
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        first = os.pread(fd, 8, 0)
        if len(first) < 8:
            raise InputError(path, "safetensors file is shorter than its 8-byte header length")
        n = int.from_bytes(first, "little")
        cap = min(MAX_HEADER, limits.max_json_bytes)
        if n > cap:
            raise LimitExceeded(path, f"safetensors header length {n} is over the {cap}-byte limit")
        if n > size - 8:
            raise InputError(path, f"safetensors header length {n} runs past the end of the {size}-byte file")
        raw = os.pread(fd, n, 8)
    finally:
        os.close(fd)
    if len(raw) < n:
        raise InputError(path, "safetensors header is truncated")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"safetensors header is not valid UTF-8 (byte {exc.start})") from None
    duplicates: list[str] = []
    try:
        if text.count("[") + text.count("{") > limits.max_json_depth:
            safeio.load_json(text, path, max_bytes=limits.max_json_bytes, max_depth=limits.max_json_depth,
                             what="safetensors header")
        header = json.loads(text, object_pairs_hook=_pairs_hook(duplicates))
    except ValueError as exc:
        raise InputError(path, f"safetensors header is not valid JSON ({exc})") from None
    except RecursionError:
        raise InputError(path, "safetensors header is nested too deeply") from None
    if not isinstance(header, dict):
        raise InputError(path, "safetensors header is not a JSON object")
    if len(header) > MAX_TENSORS:
        raise LimitExceeded(path, f"safetensors header lists more than {MAX_TENSORS} tensors")
    metadata = header.pop("__metadata__", None)
    present = metadata is not None
    if present and not isinstance(metadata, dict):
        metadata = {"<not an object>": metadata}
    tensors = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise InputError(path, f"safetensors tensor {name[:200]!r} is not a JSON object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str):
            raise InputError(path, f"safetensors tensor {name[:200]!r} has no string dtype")
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_int(d) and d >= 0 for d in shape):
            raise InputError(path, f"safetensors tensor {name[:200]!r} has an invalid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_int(o) and o >= 0 for o in offsets)):
            raise InputError(path, f"safetensors tensor {name[:200]!r} has invalid data_offsets")
        extra = tuple(sorted(k for k in entry if k not in ("dtype", "shape", "data_offsets")))
        tensors.append(SafetensorsTensor(name, dtype, tuple(shape), offsets[0], offsets[1], extra))
    return SafetensorsHeader(display, n, size, tuple(tensors), metadata or {}, present, tuple(duplicates))


class SafetensorsReader(Reader):
    format = ArtifactFormat.SAFETENSORS

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        h = read_header(candidate.path, candidate.display, limits)
        return Artifact(path=candidate.path, display=candidate.display, format=ArtifactFormat.SAFETENSORS,
                        safetensors=(h,), metadata={"tensors": str(len(h.tensors)), "header_bytes": str(h.header_len)})
