"""Tensors to TF Serving's JSON text without building nested Python lists, and its cost up front.

Floats are written as TensorFlow Serving writes them (``json_tensor.cc``: ``WriteDecimal``):
six significant digits (``%g``) when that round-trips to the same float, else
``max_digits10`` digits (9 for float32, 17 for float64); a ``.0`` is appended to numbers
written without ``.`` or an exponent; ``NaN``, ``Infinity``, ``-Infinity`` as literals.
Integers in decimal, booleans ``true``/``false``, strings as JSON strings (or
``{"b64": ...}`` when not UTF-8 or the output's name ends in ``_bytes``), complex numbers
as ``[real, imag]``.

:func:`cost` is the work a tensor takes to write: its elements plus the JSON lists its
shape needs — a zero-element tensor of shape ``[2**24, 0]`` has no elements but
16,777,216 lists.  The server refuses replies above :data:`MAX_OUTPUT_CELLS` and formats
large ones in a thread (``app.py``), so no reply can block the event loop or allocate
without bound.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Mapping

import numpy as np

MAX_OUTPUT_CELLS = 8_000_000  # elements + JSON lists of one reply; above: 500 output_too_large
INLINE_CELLS = 20_000  # replies cheaper than this are formatted on the event loop


def cost(arr: np.ndarray) -> int:
    """Elements plus nested JSON lists needed to write ``arr`` (exact, overflow-free)."""
    lists = 0
    prefix = 1
    for d in arr.shape[:-1] if arr.ndim else ():
        prefix *= int(d)
        lists += prefix
        if prefix == 0:
            break
    size = math.prod(int(d) for d in arr.shape)
    return size * (2 if arr.dtype.kind == "c" else 1) + lists + 1


SMALL = 16  # float tensors up to this many elements are written without numpy's per-call overhead
_F32 = struct.Struct("<f")


def _small_float_tokens(values: list[float], f32: bool) -> list[str]:
    """:func:`_float_tokens` for a few float32/float64 values, one at a time (same text)."""
    out = []
    for v in values:
        if v != v:
            out.append("NaN")
            continue
        if v in (math.inf, -math.inf):
            out.append("Infinity" if v > 0 else "-Infinity")
            continue
        t = "%.6g" % v
        back = float(t)
        if f32:
            try:
                back = _F32.unpack(_F32.pack(back))[0]  # as numpy: the decimal to float64, then to float32
            except OverflowError:  # rounds past float32's range: never equal
                back = math.inf
        if back != v:
            t = ("%.9g" if f32 else "%.17g") % v
        out.append(t if ("." in t or "e" in t) else t + ".0")
    return out


def _float_tokens(flat: np.ndarray) -> list[str]:
    values = flat.tolist()
    if len(values) <= SMALL and flat.dtype in (np.float32, np.float64):
        return _small_float_tokens(values, flat.dtype == np.float32)
    tokens = list(map("%.6g".__mod__, values))
    if not tokens:
        return tokens
    wide = np.float32 if flat.dtype == np.float32 else np.float64
    finite = np.isfinite(flat)
    back = np.array(tokens, dtype=np.float64).astype(wide) if flat.dtype != np.float16 else \
        np.array(tokens, dtype=np.float16)
    precise = "%.9g" if flat.dtype == np.float32 else ("%.5g" if flat.dtype == np.float16 else "%.17g")
    for i in np.flatnonzero(finite & (back != flat)).tolist():
        tokens[i] = precise % values[i]
    tokens = [t if ("." in t or "e" in t) else t + ".0" for t in tokens]
    for i in np.flatnonzero(~finite).tolist():
        v = values[i]
        tokens[i] = "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    return tokens


def string_token(value: bytes, binary: bool) -> str:
    """A DT_STRING element: a JSON string when valid UTF-8 (and not ``binary``), else ``{"b64": ...}``."""
    if not binary:
        try:
            return json.dumps(value.decode("utf-8"), ensure_ascii=False)
        except UnicodeDecodeError:
            pass
    return '{"b64":"' + base64.b64encode(value).decode("ascii") + '"}'


def _tokens(flat: np.ndarray, name: str) -> list[str]:
    kind = flat.dtype.kind
    if kind == "f":
        return _float_tokens(flat)
    if kind in "iu":
        return list(map(str, flat.tolist()))
    if kind == "b":
        return ["true" if v else "false" for v in flat.tolist()]
    if kind == "c":
        re, im = _float_tokens(flat.real.copy()), _float_tokens(flat.imag.copy())
        return [f"[{a},{b}]" for a, b in zip(re, im)]
    binary = name.endswith("_bytes")  # TF Serving: names ending in _bytes are always base64
    return [string_token(bytes(v), binary) for v in flat.tolist()]


def _nest(tokens: list[str], shape: tuple[int, ...]) -> list[str]:
    """Group flat tokens into JSON lists for every axis but the first: one fragment per row."""
    if not shape:
        return tokens
    for n in reversed(shape[1:]):
        if n == 0:
            tokens = ["[]"] * (len(tokens) if tokens else 0)
            continue
        tokens = ["[" + ",".join(tokens[i:i + n]) + "]" for i in range(0, len(tokens), n)]
    return tokens


def rows(arr: np.ndarray, name: str = "") -> list[str]:
    """One JSON fragment per index of the first axis of ``arr`` (rank >= 1)."""
    shape = tuple(int(d) for d in arr.shape)
    if math.prod(shape) == 0:  # no elements: the lists are all alike, build one and repeat it
        inner = "[]"
        zero = shape.index(0)
        if zero == 0:
            return []
        for n in reversed(shape[1:zero]):
            inner = "[" + ",".join([inner] * n) + "]"
        return [inner] * shape[0]
    return _nest(_tokens(np.ascontiguousarray(arr).reshape(-1), name), shape)


def encode(arr: np.ndarray, name: str = "") -> str:
    """``arr`` as one JSON value."""
    if arr.ndim == 0:
        return _tokens(arr.reshape(1), name)[0]
    return "[" + ",".join(rows(arr, name)) + "]"


def predict_body(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """TF Serving's predict reply: ``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar).

    The caller checks :func:`cost` first; batch-size checks of the row format are in
    ``codec.check_row_outputs``.
    """
    key = lambda k: json.dumps(k)  # noqa: E731 - output names are JSON-escaped like any string
    if not row_format:
        if len(outputs) == 1:
            k, v = next(iter(outputs.items()))
            return ('{"outputs":' + encode(v, k) + "}").encode()
        return ('{"outputs":{' + ",".join(key(k) + ":" + encode(v, k) for k, v in outputs.items()) + "}}").encode()
    if len(outputs) == 1:
        k, arr = next(iter(outputs.items()))
        body = encode(arr, k) if arr.ndim else "[" + encode(arr, k) + "]"
        return ('{"predictions":' + body + "}").encode()
    cols = {key(k): rows(v, k) for k, v in outputs.items()}
    batch = len(next(iter(cols.values())))
    objs = ("{" + ",".join(k + ":" + c[i] for k, c in cols.items()) + "}" for i in range(batch))
    return ('{"predictions":[' + ",".join(objs) + "]}").encode()
