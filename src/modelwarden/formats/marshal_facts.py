"""Facts from Python ``marshal`` bytes, without ``marshal.loads``.

``marshal`` is not safe against hostile data, so this module reads the format
itself: every type code, ``FLAG_REF`` back-references, format versions 2-5
(short ascii / interned strings, small tuples, slices) and the code-object
layouts of CPython 3.0-3.7, 3.8-3.10 and 3.11+.  It collects what the code
reveals without running it: the names it uses (``co_names`` of every nested
code object), its string constants and how many code objects it holds.

Work is linear in the input: every container length is checked against the
bytes left before looping, references reuse already-read values, nesting is
bounded by ``max_depth``.  :func:`code_facts` never raises; malformed input
gives a result with ``error`` set.
"""

from __future__ import annotations

import struct

from modelwarden.ir import CodeFacts
from modelwarden.record import record

FLAG_REF = 0x80
MAX_STRINGS = 2000  # string constants kept per blob
MAX_STRING_CHARS = 512  # each kept string is cut to this length
MAX_NAMES = 2000


class _Malformed(Exception):
    """Internal: the bytes are not what the layout expects."""


@record(frozen=False)
class _Code:
    """A parsed code object: only what the facts need."""

    names: tuple
    consts: tuple
    name: str


# Code-object layouts: each is the sequence of fields after the 'c' type byte.
# "i" is a raw little-endian int32, "o" a nested marshalled object.
_LAYOUTS: dict[str, tuple[str, ...]] = {
    "3.11+": (
        "i:argcount", "i:posonlyargcount", "i:kwonlyargcount", "i:stacksize", "i:flags",
        "o:code", "o:consts", "o:names", "o:localsplusnames", "o:localspluskinds",
        "o:filename", "o:name", "o:qualname", "i:firstlineno", "o:linetable", "o:exceptiontable",
    ),
    "3.8-3.10": (
        "i:argcount", "i:posonlyargcount", "i:kwonlyargcount", "i:nlocals", "i:stacksize", "i:flags",
        "o:code", "o:consts", "o:names", "o:varnames", "o:freevars", "o:cellvars",
        "o:filename", "o:name", "i:firstlineno", "o:lnotab",
    ),
    "3.0-3.7": (
        "i:argcount", "i:kwonlyargcount", "i:nlocals", "i:stacksize", "i:flags",
        "o:code", "o:consts", "o:names", "o:varnames", "o:freevars", "o:cellvars",
        "o:filename", "o:name", "i:firstlineno", "o:lnotab",
    ),
}
_STR_TUPLE_FIELDS = {"names", "localsplusnames", "varnames", "freevars", "cellvars"}
_BYTES_FIELDS = {"code", "linetable", "lnotab", "exceptiontable", "localspluskinds"}
_STR_FIELDS = {"filename", "name", "qualname"}
_REF_PLACEHOLDER = object()


class _Parser:
    """One pass over a marshal blob with one code layout."""

    def __init__(self, data: bytes, layout: str, max_depth: int) -> None:
        self.data = data
        self.pos = 0
        self.fields = _LAYOUTS[layout]
        self.max_depth = max_depth
        self.refs: list[object] = []
        self.codes: list[_Code] = []

    # -- primitives -------------------------------------------------------
    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Malformed(f"truncated: needs {n} bytes at offset {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def _byte(self) -> int:
        return self._take(1)[0]

    def _int32(self) -> int:
        return struct.unpack("<i", self._take(4))[0]

    def _count(self, per_item: int = 1) -> int:
        """A container/str length, checked against the bytes left (each item takes >= per_item)."""
        n = self._int32()
        if n < 0 or n * per_item > len(self.data) - self.pos:
            raise _Malformed(f"length {n} at offset {self.pos - 4} exceeds the data")
        return n

    # -- objects ----------------------------------------------------------
    def read(self, depth: int = 0) -> object:
        if depth > self.max_depth:
            raise _Malformed(f"nested deeper than {self.max_depth} levels")
        start = self.pos
        code = self._byte()
        flag = code & FLAG_REF
        code &= ~FLAG_REF
        ref_index = -1
        if flag:
            ref_index = len(self.refs)
            self.refs.append(_REF_PLACEHOLDER)  # reserved first, as marshal.c does
        value = self._read_body(chr(code), depth, start)
        if flag:
            self.refs[ref_index] = value
        return value

    def _read_body(self, t: str, depth: int, start: int) -> object:  # noqa: C901 - a dispatch table
        if t == "0":
            raise _Malformed(f"NULL object at offset {start}")
        if t == "N":
            return None
        if t in "FT":
            return t == "T"
        if t in "S.":
            return None  # StopIteration / Ellipsis: nothing to learn
        if t == "i":
            return self._int32()
        if t == "I":
            return struct.unpack("<q", self._take(8))[0]
        if t == "g":
            return struct.unpack("<d", self._take(8))[0]
        if t == "y":
            self._take(16)
            return 0.0
        if t == "f":
            self._take(self._byte())
            return 0.0
        if t == "x":
            self._take(self._byte())
            self._take(self._byte())
            return 0.0
        if t == "l":
            n = self._int32()
            if abs(n) * 2 > len(self.data) - self.pos:
                raise _Malformed(f"long of {n} digits at offset {start} exceeds the data")
            self._take(abs(n) * 2)
            return 0  # the value does not matter for facts
        if t == "s":
            return self._take(self._count())
        if t in "tua":
            return self._text(self._take(self._count()))
        if t == "A":
            return self._text(self._take(self._count()))
        if t in "zZ":
            return self._text(self._take(self._byte()))
        if t == ")":
            return self._seq(self._byte(), depth)
        if t in "([<>":
            return self._seq(self._count(), depth)
        if t == "{":
            items = []
            while True:
                if self.pos < len(self.data) and self.data[self.pos] == ord("0"):
                    self.pos += 1
                    return tuple(items)
                items.append(self.read(depth + 1))
                items.append(self.read(depth + 1))
        if t == ":":  # slice (format version 5)
            return (self.read(depth + 1), self.read(depth + 1), self.read(depth + 1))
        if t == "r":
            index = self._int32()
            if not 0 <= index < len(self.refs):
                raise _Malformed(f"bad back-reference {index} at offset {start}")
            value = self.refs[index]
            if value is _REF_PLACEHOLDER:
                raise _Malformed(f"back-reference {index} to an unfinished object at offset {start}")
            return value
        if t == "c":
            return self._code(depth, start)
        raise _Malformed(f"unknown type code {t!r} at offset {start}")

    @staticmethod
    def _text(raw: bytes) -> str:
        return raw.decode("utf-8", "surrogatepass") if raw.isascii() else raw.decode("utf-8", "replace")

    def _seq(self, n: int, depth: int) -> tuple:
        if n > len(self.data) - self.pos:
            raise _Malformed(f"container of {n} items exceeds the data")
        return tuple(self.read(depth + 1) for _ in range(n))

    def _code(self, depth: int, start: int) -> _Code:
        values: dict[str, object] = {}
        for spec in self.fields:
            kind, _, name = spec.partition(":")
            if kind == "i":
                values[name] = self._int32()
                continue
            value = self.read(depth + 1)
            if name in _STR_TUPLE_FIELDS and not (
                isinstance(value, tuple) and all(isinstance(v, str) for v in value)
            ):
                raise _Malformed(f"code object at offset {start}: {name} is not a tuple of strings")
            if name in _BYTES_FIELDS and not isinstance(value, bytes):
                raise _Malformed(f"code object at offset {start}: {name} is not bytes")
            if name in _STR_FIELDS and not isinstance(value, str):
                raise _Malformed(f"code object at offset {start}: {name} is not a string")
            if name == "consts" and not isinstance(value, tuple):
                raise _Malformed(f"code object at offset {start}: consts is not a tuple")
            values[name] = value
        code = _Code(values["names"], values["consts"], values["name"])  # type: ignore[arg-type]
        self.codes.append(code)
        return code


def _strings(value: object, out: dict[str, None], depth: int = 0) -> None:
    """String constants inside a const (tuples and frozensets nest), bounded."""
    if len(out) >= MAX_STRINGS or depth > 32:
        return
    if isinstance(value, str):
        out.setdefault(value[:MAX_STRING_CHARS], None)
    elif isinstance(value, bytes):
        out.setdefault(value[:MAX_STRING_CHARS].decode("latin-1"), None)
    elif isinstance(value, tuple):
        for item in value:
            _strings(item, out, depth + 1)


def code_facts(data: bytes, *, max_bytes: int = 16 * 1024**2, max_depth: int = 64) -> CodeFacts:
    """Names, strings and code-object count of a marshalled code object; never raises."""
    if len(data) > max_bytes:
        return CodeFacts((), (), 0, error=f"marshal data is {len(data)} bytes, over the {max_bytes}-byte limit")
    if not data:
        return CodeFacts((), (), 0, error="marshal data is empty")
    errors: list[str] = []
    for layout in _LAYOUTS:
        parser = _Parser(data, layout, max_depth)
        try:
            root = parser.read()
        except _Malformed as exc:
            errors.append(f"{layout}: {exc}")
            continue
        except (RecursionError, MemoryError, ValueError, struct.error) as exc:  # defensive: stay clean
            errors.append(f"{layout}: {type(exc).__name__}")
            continue
        if not isinstance(root, _Code):
            return CodeFacts((), (), 0, error=f"marshal data holds a {type(root).__name__}, not a code object")
        names: dict[str, None] = {}
        strings: dict[str, None] = {}
        for code in parser.codes:
            for n in code.names:
                if len(names) < MAX_NAMES:
                    names.setdefault(n[:MAX_STRING_CHARS], None)
            for const in code.consts:
                if not isinstance(const, _Code):
                    _strings(const, strings)
        trailing = len(data) - parser.pos
        error = f"{trailing} trailing bytes after the code object" if trailing else ""
        return CodeFacts(tuple(names), tuple(strings), len(parser.codes), python_layout=layout, error=error)
    return CodeFacts((), (), 0, error="not a marshalled code object (" + "; ".join(errors) + ")")
