"""Output tensors as JSON text, written piece by piece.

Memory stays bounded by one chunk of values, never by the tensor's shape: the tensors come
from the sandboxed worker, and a shape such as ``[2**22, 0]`` (zero bytes) or ``[2**24, 1]``
would make ``tolist()`` build millions of Python lists at once.  Floats that are not finite
are written as ``null``, complex tensors as ``{"real": ..., "imag": ...}``, string tensors as
text when valid UTF-8, else ``{"b64": ...}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TextIO

import numpy as np

CHUNK = 4096  # values formatted per write


def write_outputs(outputs: Mapping[str, np.ndarray], out: TextIO) -> None:
    """``{"name": nested lists, ...}`` for ``outputs``, written to ``out``."""
    out.write("{")
    for i, (name, arr) in enumerate(outputs.items()):
        out.write(", " if i else "")
        out.write(json.dumps(str(name)) + ": ")
        if arr.dtype.kind == "c":
            out.write('{"real": ')
            _write(arr.real, out)
            out.write(', "imag": ')
            _write(arr.imag, out)
            out.write("}")
        else:
            _write(arr, out)
    out.write("}\n")


def _write(arr: np.ndarray, out: TextIO) -> None:
    if arr.size == 0:
        out.write(_empty(arr.shape))
    elif arr.ndim == 0:
        out.write(_values(arr.reshape(1))[1:-1])
    elif arr.ndim == 1:
        out.write("[")
        for start in range(0, arr.shape[0], CHUNK):
            out.write(", " if start else "")
            out.write(_values(arr[start:start + CHUNK])[1:-1])
        out.write("]")
    else:
        out.write("[")
        for i in range(arr.shape[0]):
            out.write(", " if i else "")
            _write(arr[i], out)
        out.write("]")


def _empty(shape: tuple[int, ...]) -> str:
    """The nested lists of a zero-size array (the protocol bounds how many its shape describes)."""
    text = "[]"
    for d in reversed(shape[: shape.index(0)]):
        text = "[" + ", ".join([text] * d) + "]"
    return text


def _values(arr: np.ndarray) -> str:
    """A 1-D array as a JSON list."""
    if arr.dtype.kind in "OSU":
        from modelwarden.server.codec import render_string

        vals: list[Any] = [render_string(v if isinstance(v, bytes) else str(v).encode(), False) for v in arr.tolist()]
    else:
        vals = arr.tolist()
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            vals = [v if math.isfinite(v) else None for v in vals]
    return json.dumps(vals)
