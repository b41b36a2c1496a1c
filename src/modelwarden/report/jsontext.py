"""``json.dumps(data, indent=N, ensure_ascii=False)``, the same text in a third of the time.

With an indent the standard library encodes in Python generators (its C encoder only writes
compact JSON), which made rendering a report of many artifacts cost as much as scanning a
tenth of them.  Reports are plain data (dicts with string keys, lists, strings, numbers), so
this walks them with appends and the C string escaper; anything else (a non-string key, an
unknown type, very deep nesting) falls back to :func:`json.dumps`, which decides.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring  # the C escaper when available, as json.dumps uses

MAX_DEPTH = 64


class _Fallback(Exception):
    """Something only the standard encoder handles (or rejects) the way callers expect."""


def _float(o: float) -> str:
    if o != o:
        return "NaN"
    if o == float("inf"):
        return "Infinity"
    if o == float("-inf"):
        return "-Infinity"
    return float.__repr__(o)


def dumps(data: object, indent: int | None = 2) -> str:
    """The text of ``json.dumps(data, indent=indent, ensure_ascii=False)``."""
    if indent is None:
        return json.dumps(data, ensure_ascii=False)
    parts: list[str] = []
    add = parts.append
    esc = encode_basestring
    step = " " * indent
    keys: dict[str, str] = {}  # key -> its escaped text plus ": " (a report repeats a few dozen keys)

    def enc(o: object, pad: str, depth: int) -> None:
        if isinstance(o, str):
            add(esc(o))
        elif o is None:
            add("null")
        elif o is True:
            add("true")
        elif o is False:
            add("false")
        elif isinstance(o, int):
            add(int.__repr__(o))
        elif isinstance(o, float):
            add(_float(o))
        elif depth > MAX_DEPTH:
            raise _Fallback
        elif isinstance(o, (list, tuple)):
            if not o:
                add("[]")
                return
            inner = pad + step
            sep = "[\n" + inner
            for item in o:
                if type(item) is str:  # the common case, without a call
                    add(sep + esc(item))
                else:
                    add(sep)
                    enc(item, inner, depth + 1)
                sep = ",\n" + inner
            add("\n" + pad + "]")
        elif isinstance(o, dict):
            if not o:
                add("{}")
                return
            inner = pad + step
            sep = "{\n" + inner
            for key, value in o.items():
                k = keys.get(key) if type(key) is str else None
                if k is None:
                    if not isinstance(key, str):
                        raise _Fallback
                    k = esc(key) + ": "
                    if type(key) is str:
                        keys[key] = k
                t = type(value)
                if t is str:
                    add(sep + k + esc(value))
                elif t is int:
                    add(sep + k + int.__repr__(value))
                else:
                    add(sep + k)
                    enc(value, inner, depth + 1)
                sep = ",\n" + inner
            add("\n" + pad + "}")
        else:
            raise _Fallback

    try:
        enc(data, "", 0)
    except _Fallback:
        return json.dumps(data, indent=indent, ensure_ascii=False)
    return "".join(parts)
