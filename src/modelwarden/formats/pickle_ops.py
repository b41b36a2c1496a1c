"""Opcode-level pickle reading: what a stream would import and call, without unpickling.

Written from the pickle protocol (``Lib/pickle.py``, protocols 0-5), not on top of
:mod:`pickletools`, so that it can follow the stack and the memo exactly as the
real unpickler does: ``STACK_GLOBAL`` is resolved from the values actually on the
stack (through ``GET`` of anything ``PUT``/``MEMOIZE``-d before), so memo tricks
and non-string arguments cannot hide an import; every ``REDUCE``/``NEWOBJ``/
``OBJ``/``INST`` records what it calls.  Values are symbolic (strings and small
numbers are kept, everything else is a short description) and bounded: the
parser never allocates more than a constant times the input, never recurses on
input structure, and a malformed stream stops with an error while keeping every
import and call found before the break.

Joblib's inline NumPy arrays (raw bytes written after a ``NumpyArrayWrapper``'s
``BUILD``) are skipped by computing their size from the wrapper's state, as
joblib's own unpickler does.
"""

from __future__ import annotations

import _compat_pickle
import struct
from collections.abc import Sequence

from modelwarden.ir import PickleCall, PickleImport, PickleProgram
from modelwarden.record import field, record

MAX_KEEP_STR = 4096  # longer strings become descriptions
MAX_ITEMS_KEPT = 64  # items kept per list/dict/set (for rendering and joblib state lookups)
MAX_STACK = 4_000_000
MAX_MEMO = 4_000_000
MAX_CALLS = 10_000  # beyond this only calls to targets not seen before are kept
MAX_IMPORTS = 10_000
MAX_PIDS = 256
MAX_RENDERED_PER_TARGET = 16  # calls to one target whose arguments are rendered
MAX_NESTED = 4  # joblib object arrays pickled inside a pickle
MAX_STREAMS = 64  # consecutive pickles in one file
RENDER_MAX = 160
JOBLIB_WRAPPERS = frozenset({
    "joblib.numpy_pickle.NumpyArrayWrapper", "sklearn.externals.joblib.numpy_pickle.NumpyArrayWrapper",
})

# --------------------------------------------------------------------------
# symbolic values


class Mark:
    __slots__ = ()


@record(frozen=False, eq=False)
class Opaque:
    desc: str


@record(frozen=False, eq=False)
class Global:
    module: str
    name: str
    pos: int
    resolved: bool = True
    detail: str = ""

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}" if self.module else self.name


@record(frozen=False, eq=False)
class Call:
    func: object
    args: object
    pos: int
    opcode: str


@record(frozen=False, eq=False)
class Coll:
    """A list, dict, set or frozenset; only the first items are kept."""

    kind: str
    items: list = field(default_factory=list)  # values, or (key, value) pairs for dicts
    count: int = 0

    def add(self, item: object) -> None:
        self.count += 1
        if len(self.items) < MAX_ITEMS_KEPT:
            self.items.append(item)

    def get(self, key: str) -> object:
        for k, v in self.items:
            if k == key:
                return v
        return None


def target_of(func: object) -> tuple[str, bool]:
    """What a call calls: the dotted import, or a ``<...>`` description (unresolved)."""
    if isinstance(func, Global):
        return (func.dotted, True) if func.resolved else (f"<unresolved import: {func.detail}>", False)
    if isinstance(func, Call):
        inner, _ = target_of(func.func)
        return f"<result of {inner}(...) at byte {func.pos}>", False
    return f"<{describe(func)}>", False


def describe(v: object) -> str:
    """A short type-ish description of a value."""
    if isinstance(v, str):
        return "str"
    if isinstance(v, Opaque):
        return v.desc
    if isinstance(v, Coll):
        return v.kind
    if isinstance(v, tuple):
        return "tuple"
    if isinstance(v, Global):
        return f"global {v.dotted}" if v.resolved else "unresolved global"
    if isinstance(v, Call):
        return f"result of {target_of(v.func)[0]}(...)"
    return type(v).__name__


def render(v: object, limit: int = RENDER_MAX) -> str:
    """A bounded, non-recursive-in-input rendering of a value (for evidence)."""
    out: list[str] = []
    budget = [limit]
    _render(v, out, budget, 0)
    text = "".join(out)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _emit(out: list[str], budget: list[int], text: str) -> bool:
    if budget[0] <= 0:
        return False
    out.append(text[: budget[0]])
    budget[0] -= len(text)
    return budget[0] > 0


def _render(v: object, out: list[str], budget: list[int], depth: int) -> None:
    if budget[0] <= 0:
        return
    if depth > 6:
        _emit(out, budget, "...")
        return
    if isinstance(v, str):
        _emit(out, budget, repr(v[:RENDER_MAX]))
    elif isinstance(v, (int, float, bool)) or v is None:
        _emit(out, budget, repr(v))
    elif isinstance(v, Global):
        _emit(out, budget, v.dotted if v.resolved else f"<unresolved {v.detail}>")
    elif isinstance(v, Call):
        _emit(out, budget, target_of(v.func)[0] if isinstance(v.func, Global) else "<call>")
        if isinstance(v.args, tuple) and len(v.args) <= 8:
            _emit(out, budget, "(")
            for i, item in enumerate(v.args):
                if i:
                    _emit(out, budget, ", ")
                _render(item, out, budget, depth + 1)
            _emit(out, budget, ")")
        else:
            _emit(out, budget, "(*")
            _render(v.args, out, budget, depth + 1)
            _emit(out, budget, ")")
    elif isinstance(v, (tuple, Coll)):
        items = v if isinstance(v, tuple) else v.items
        opener, closer = {"list": "[]", "dict": "{}", "set": "{}", "frozenset": "{}"}.get(
            getattr(v, "kind", ""), "()")
        _emit(out, budget, opener)
        for i, item in enumerate(items[:8]):
            if i:
                _emit(out, budget, ", ")
            if isinstance(v, Coll) and v.kind == "dict":
                _render(item[0], out, budget, depth + 1)
                _emit(out, budget, ": ")
                _render(item[1], out, budget, depth + 1)
            else:
                _render(item, out, budget, depth + 1)
        total = len(items) if isinstance(v, tuple) else v.count
        if total > 8:
            _emit(out, budget, f", ... {total} items")
        elif total == 1 and isinstance(v, tuple):
            _emit(out, budget, ",")
        _emit(out, budget, closer)
    elif isinstance(v, Opaque):
        _emit(out, budget, f"<{v.desc}>")
    else:
        _emit(out, budget, f"<{type(v).__name__}>")


# --------------------------------------------------------------------------
# the parser


class Broken(Exception):
    """The stream is malformed at ``pos``."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.pos = pos


_OPNAMES = {
    0x28: "MARK", 0x2E: "STOP", 0x30: "POP", 0x31: "POP_MARK", 0x32: "DUP", 0x46: "FLOAT", 0x49: "INT",
    0x4A: "BININT", 0x4B: "BININT1", 0x4C: "LONG", 0x4D: "BININT2", 0x4E: "NONE", 0x50: "PERSID",
    0x51: "BINPERSID", 0x52: "REDUCE", 0x53: "STRING", 0x54: "BINSTRING", 0x55: "SHORT_BINSTRING",
    0x56: "UNICODE", 0x58: "BINUNICODE", 0x61: "APPEND", 0x62: "BUILD", 0x63: "GLOBAL", 0x64: "DICT",
    0x7D: "EMPTY_DICT", 0x65: "APPENDS", 0x67: "GET", 0x68: "BINGET", 0x69: "INST", 0x6A: "LONG_BINGET",
    0x6C: "LIST", 0x5D: "EMPTY_LIST", 0x6F: "OBJ", 0x70: "PUT", 0x71: "BINPUT", 0x72: "LONG_BINPUT",
    0x73: "SETITEM", 0x74: "TUPLE", 0x29: "EMPTY_TUPLE", 0x75: "SETITEMS", 0x47: "BINFLOAT",
    0x80: "PROTO", 0x81: "NEWOBJ", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x85: "TUPLE1", 0x86: "TUPLE2",
    0x87: "TUPLE3", 0x88: "NEWTRUE", 0x89: "NEWFALSE", 0x8A: "LONG1", 0x8B: "LONG4", 0x42: "BINBYTES",
    0x43: "SHORT_BINBYTES", 0x8C: "SHORT_BINUNICODE", 0x8D: "BINUNICODE8", 0x8E: "BINBYTES8",
    0x8F: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET", 0x92: "NEWOBJ_EX", 0x93: "STACK_GLOBAL",
    0x94: "MEMOIZE", 0x95: "FRAME", 0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
}
OPCODES = frozenset(_OPNAMES)
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct(">d")
_MARK = Mark()


@record(frozen=False, slots=False)
class _Result:
    imports: list[PickleImport] = field(default_factory=list)
    calls: list[PickleCall] = field(default_factory=list)
    pids: list[str] = field(default_factory=list)
    nested: list[PickleProgram] = field(default_factory=list)
    seen_targets: dict[str, int] = field(default_factory=dict)
    seen_imports: set[tuple[str, str, bool]] = field(default_factory=set)
    protocol: int = 0
    ops: int = 0


class _Parser:
    """One pass over one stream; see :func:`parse_stream`."""

    def __init__(self, buf: "bytes | Sequence[int]", start: int, end: int, source: str, depth: int) -> None:
        self.buf = buf
        self.pos = start
        self.start = start
        self.end = end
        self.source = source
        self.depth = depth
        self.stack: list = []
        self.meta: list[list] = []
        self.memo: dict[int, object] = {}
        self.r = _Result()

    # -- reading
    def take(self, n: int) -> bytes:
        p = self.pos
        if n < 0 or p + n > self.end:
            raise Broken(f"truncated: needs {n} bytes, {self.end - p} left", p)
        self.pos = p + n
        return self.buf[p : p + n]

    def skip(self, n: int) -> int:
        """Advance over ``n`` bytes without reading them; returns their start."""
        p = self.pos
        if n < 0 or p + n > self.end:
            raise Broken(f"truncated: declares {n} bytes, {self.end - p} left", p)
        self.pos = p + n
        return p

    def line(self) -> bytes:
        """A newline-terminated argument (module and class names, memo indices): at most MAX_KEEP_STR."""
        p = self.pos
        nl = self.buf.find(b"\n", p, min(self.end, p + MAX_KEEP_STR + 1))
        if nl < 0:
            if self.buf.find(b"\n", p, self.end) < 0:
                raise Broken("truncated: line argument without newline", p)
            raise Broken(f"line argument longer than {MAX_KEEP_STR} bytes", p)
        self.pos = nl + 1
        return bytes(self.buf[p:nl])

    def long_line(self) -> bytes | None:
        """A newline-terminated value of any length (protocol 0 STRING/UNICODE/LONG: Python 2 wrote
        whole arrays so); None, after skipping it, when it is longer than MAX_KEEP_STR."""
        p = self.pos
        nl = self.buf.find(b"\n", p, self.end)
        if nl < 0:
            raise Broken("truncated: line argument without newline", p)
        self.pos = nl + 1
        return bytes(self.buf[p:nl]) if nl - p <= MAX_KEEP_STR else None

    def text(self, n: int, encoding: str) -> object:
        """A string argument of ``n`` bytes: kept when short, described otherwise."""
        if n > MAX_KEEP_STR:
            self.skip(n)
            return Opaque(f"str of {n} bytes")
        raw = self.take(n)
        try:
            return raw.decode(encoding, "surrogatepass") if encoding == "utf-8" else raw.decode(encoding)
        except UnicodeDecodeError:
            return Opaque("undecodable str")

    # -- stack
    def pop(self) -> object:
        if not self.stack:
            raise Broken("stack underflow", self.pos)
        return self.stack.pop()

    def top(self) -> object:
        if not self.stack:
            raise Broken("stack underflow", self.pos)
        return self.stack[-1]

    def pop_mark(self) -> list:
        if not self.meta:
            raise Broken("MARK not found", self.pos)
        items = self.stack
        self.stack = self.meta.pop()
        return items

    def push(self, v: object) -> None:
        self.stack.append(v)

    # -- facts
    def add_import(self, g: Global, opcode: str) -> None:
        key = (g.module, g.name, g.resolved)
        if len(self.r.imports) >= MAX_IMPORTS and key in self.r.seen_imports:
            return
        self.r.seen_imports.add(key)
        self.r.imports.append(PickleImport(g.module, g.name, g.pos, opcode, g.resolved, g.detail))

    def add_call(self, c: Call) -> None:
        target, resolved = target_of(c.func)
        seen = self.r.seen_targets
        n = seen.get(target, 0)
        if len(self.r.calls) >= MAX_CALLS and n:
            return
        seen[target] = n + 1
        args = render(c.args) if n < MAX_RENDERED_PER_TARGET else "..."
        self.r.calls.append(PickleCall(target, c.pos, c.opcode, args, resolved))

    # -- the loop
    def run(self) -> tuple[int, str]:
        """Parse to STOP; returns (end position, error or "")."""
        try:
            self._loop()
            return self.pos, ""
        except Broken as exc:
            return exc.pos, f"{exc} at byte {exc.pos}"
        except (struct.error, ValueError, OverflowError) as exc:
            return self.pos, f"malformed argument ({exc}) at byte {self.pos}"

    def _loop(self) -> None:  # noqa: C901 - one opcode per branch, in protocol order
        buf = self.buf
        stack_cap = MAX_STACK
        while True:
            if self.pos >= self.end:
                raise Broken("truncated: stream ends before STOP", self.pos)
            at = self.pos
            op = buf[at]
            self.pos = at + 1
            self.r.ops += 1
            if len(self.stack) > stack_cap or len(self.meta) > stack_cap:
                raise Broken(f"stack deeper than {stack_cap} entries", at)
            # protocol 0/1 -------------------------------------------------
            if op == 0x71:  # BINPUT
                self._put(self.take(1)[0], at)
            elif op == 0x68:  # BINGET
                self._get(self.take(1)[0], at)
            elif op == 0x94:  # MEMOIZE
                self._put(len(self.memo), at)
            elif op == 0x8C:  # SHORT_BINUNICODE
                self.push(self.text(self.take(1)[0], "utf-8"))
            elif op == 0x58:  # BINUNICODE
                self.push(self.text(_U32.unpack(self.take(4))[0], "utf-8"))
            elif op == 0x8D:  # BINUNICODE8
                self.push(self.text(_U64.unpack(self.take(8))[0], "utf-8"))
            elif op == 0x28:  # MARK
                self.meta.append(self.stack)
                self.stack = []
            elif op == 0x4B:  # BININT1
                self.push(self.take(1)[0])
            elif op == 0x4D:  # BININT2
                self.push(_U16.unpack(self.take(2))[0])
            elif op == 0x4A:  # BININT
                self.push(_I32.unpack(self.take(4))[0])
            elif op == 0x85:  # TUPLE1
                self.push((self.pop(),))
            elif op == 0x86:  # TUPLE2
                b = self.pop()
                self.push((self.pop(), b))
            elif op == 0x87:  # TUPLE3
                c = self.pop()
                b = self.pop()
                self.push((self.pop(), b, c))
            elif op == 0x29:  # EMPTY_TUPLE
                self.push(())
            elif op == 0x74:  # TUPLE
                self.push(tuple(self.pop_mark()))
            elif op == 0x52:  # REDUCE
                args = self.pop()
                func = self.pop()
                self._call(func, args, at, "REDUCE")
            elif op == 0x81:  # NEWOBJ
                args = self.pop()
                cls = self.pop()
                self._call(cls, args, at, "NEWOBJ")
            elif op == 0x92:  # NEWOBJ_EX
                kwargs = self.pop()
                args = self.pop()
                cls = self.pop()
                self._call(cls, (args, kwargs), at, "NEWOBJ_EX")
            elif op == 0x62:  # BUILD
                state = self.pop()
                inst = self.top()
                self._build(inst, state, at)
            elif op == 0x63:  # GLOBAL
                module = self.line().decode("utf-8", "replace")
                name = self.line().decode("utf-8", "replace")
                g = self._global(module, name, at)
                self.add_import(g, "GLOBAL")
                self.push(g)
            elif op == 0x93:  # STACK_GLOBAL
                name = self.pop()
                module = self.pop()
                self.push(self._stack_global(module, name, at))
            elif op == 0x69:  # INST
                module = self.line().decode("utf-8", "replace")
                name = self.line().decode("utf-8", "replace")
                g = self._global(module, name, at)
                self.add_import(g, "INST")
                self._call(g, tuple(self.pop_mark()), at, "INST")
            elif op == 0x6F:  # OBJ
                items = self.pop_mark()
                if not items:
                    raise Broken("OBJ without a class", at)
                self._call(items[0], tuple(items[1:]), at, "OBJ")
            elif op in (0x82, 0x83, 0x84):  # EXT1/2/4: copyreg's extension registry
                n = {0x82: 1, 0x83: 2, 0x84: 4}[op]
                code = int.from_bytes(self.take(n), "little")
                g = Global("", f"<extension {code}>", at, False, f"copyreg extension code {code}")
                self.add_import(g, _OPNAMES[op])
                self.push(g)
            elif op == 0x5D:  # EMPTY_LIST
                self.push(Coll("list"))
            elif op == 0x7D:  # EMPTY_DICT
                self.push(Coll("dict"))
            elif op == 0x8F:  # EMPTY_SET
                self.push(Coll("set"))
            elif op == 0x6C:  # LIST
                c = Coll("list")
                for item in self.pop_mark():
                    c.add(item)
                self.push(c)
            elif op == 0x64:  # DICT
                items = self.pop_mark()
                c = Coll("dict")
                for i in range(0, len(items) - 1, 2):
                    c.add((items[i], items[i + 1]))
                self.push(c)
            elif op == 0x91:  # FROZENSET
                c = Coll("frozenset")
                for item in self.pop_mark():
                    c.add(item)
                self.push(c)
            elif op == 0x61:  # APPEND
                v = self.pop()
                self._add_to(self.top(), [v], at)
            elif op == 0x65:  # APPENDS
                items = self.pop_mark()
                self._add_to(self.top(), items, at)
            elif op == 0x90:  # ADDITEMS
                items = self.pop_mark()
                self._add_to(self.top(), items, at)
            elif op == 0x73:  # SETITEM
                v = self.pop()
                k = self.pop()
                self._setitems(self.top(), [k, v], at)
            elif op == 0x75:  # SETITEMS
                items = self.pop_mark()
                self._setitems(self.top(), items, at)
            elif op == 0x2E:  # STOP
                self.pop()
                return
            elif op == 0x80:  # PROTO
                proto = self.take(1)[0]
                if proto > 5:
                    raise Broken(f"unsupported pickle protocol {proto}", at)
                self.r.protocol = proto
            elif op == 0x95:  # FRAME
                n = _U64.unpack(self.take(8))[0]
                if n > self.end - self.pos:
                    raise Broken(f"truncated: FRAME declares {n} bytes, {self.end - self.pos} left", at)
            elif op == 0x4E:  # NONE
                self.push(None)
            elif op == 0x88:
                self.push(True)
            elif op == 0x89:
                self.push(False)
            elif op == 0x47:  # BINFLOAT
                self.push(_F64.unpack(self.take(8))[0])
            elif op == 0x8A:  # LONG1
                n = self.take(1)[0]
                self.push(int.from_bytes(self.take(n), "little", signed=True))
            elif op == 0x8B:  # LONG4
                n = _I32.unpack(self.take(4))[0]
                if n < 0:
                    raise Broken("LONG4 with negative byte count", at)
                if n > 64:
                    self.skip(n)
                    self.push(Opaque(f"int of {n} bytes"))
                else:
                    self.push(int.from_bytes(self.take(n), "little", signed=True))
            elif op == 0x43:  # SHORT_BINBYTES
                n = self.take(1)[0]
                self.skip(n)
                self.push(Opaque(f"bytes of {n}"))
            elif op in (0x42, 0x54):  # BINBYTES, BINSTRING
                n = (_U32 if op == 0x42 else _I32).unpack(self.take(4))[0]
                if n < 0:
                    raise Broken("negative byte count", at)
                if op == 0x54:
                    self.push(self.text(n, "latin-1"))
                else:
                    self.skip(n)
                    self.push(Opaque(f"bytes of {n}"))
            elif op in (0x8E, 0x96):  # BINBYTES8, BYTEARRAY8
                n = _U64.unpack(self.take(8))[0]
                self.skip(n)
                self.push(Opaque(f"{'bytes' if op == 0x8E else 'bytearray'} of {n}"))
            elif op == 0x55:  # SHORT_BINSTRING
                self.push(self.text(self.take(1)[0], "latin-1"))
            elif op == 0x53:  # STRING
                raw = self.long_line()
                if raw is None:
                    self.push(Opaque("long str"))
                    continue
                if len(raw) >= 2 and raw[0] == raw[-1] and raw[:1] in (b"'", b'"'):
                    raw = raw[1:-1]
                else:
                    raise Broken("STRING argument is not quoted", at)
                try:
                    self.push(raw.decode("unicode_escape") if b"\\" in raw else raw.decode("latin-1"))
                except UnicodeDecodeError:
                    self.push(Opaque("undecodable str"))
            elif op == 0x56:  # UNICODE
                raw = self.long_line()
                if raw is None:
                    self.push(Opaque("long str"))
                    continue
                try:
                    self.push(raw.decode("raw-unicode-escape"))
                except UnicodeDecodeError:
                    self.push(Opaque("undecodable str"))
            elif op == 0x49:  # INT
                raw = self.line()
                if raw in (b"00", b"01"):
                    self.push(raw == b"01")
                else:
                    self.push(self._int_text(raw, at))
            elif op == 0x4C:  # LONG
                raw = self.long_line()
                if raw is None:
                    self.push(Opaque("long int"))
                    continue
                self.push(self._int_text(raw[:-1] if raw.endswith(b"L") else raw, at))
            elif op == 0x46:  # FLOAT
                raw = self.line()
                try:
                    self.push(float(raw))
                except ValueError:
                    raise Broken("FLOAT argument is not a number", at) from None
            elif op == 0x67:  # GET
                self._get(self._int_text(self.line(), at), at)
            elif op == 0x6A:  # LONG_BINGET
                self._get(_U32.unpack(self.take(4))[0], at)
            elif op == 0x70:  # PUT
                self._put(self._int_text(self.line(), at), at)
            elif op == 0x72:  # LONG_BINPUT
                self._put(_U32.unpack(self.take(4))[0], at)
            elif op == 0x30:  # POP
                if self.stack:
                    self.stack.pop()
                else:
                    self.pop_mark()
            elif op == 0x31:  # POP_MARK
                self.pop_mark()
            elif op == 0x32:  # DUP
                self.push(self.top())
            elif op == 0x50:  # PERSID
                pid = self.line().decode("ascii", "replace")
                self._persistent(pid)
            elif op == 0x51:  # BINPERSID
                self._persistent(self.pop())
            elif op == 0x97:  # NEXT_BUFFER
                self.push(Opaque("out-of-band buffer"))
            elif op == 0x98:  # READONLY_BUFFER
                self.top()
            else:
                raise Broken(f"unknown opcode 0x{op:02x}", at)

    # -- opcode helpers
    def _int_text(self, raw: bytes, at: int) -> object:
        text = raw.strip()
        if len(text) > 40:
            if not text.lstrip(b"-+").isdigit():
                raise Broken("integer argument is not a number", at)
            return Opaque(f"int of {len(text)} digits")
        try:
            return int(text)
        except ValueError:
            raise Broken("integer argument is not a number", at) from None

    def _put(self, idx: object, at: int) -> None:
        if not isinstance(idx, int) or idx < 0:
            raise Broken("negative or invalid memo index", at)
        if not self.stack:
            raise Broken("memo PUT on an empty stack", at)
        if len(self.memo) >= MAX_MEMO and idx not in self.memo:
            raise Broken(f"memo larger than {MAX_MEMO} entries", at)
        self.memo[idx] = self.stack[-1]

    def _get(self, idx: object, at: int) -> None:
        try:
            self.push(self.memo[idx])  # type: ignore[index]
        except (KeyError, TypeError):
            raise Broken(f"memo value not found at index {idx}", at) from None

    def _global(self, module: str, name: str, at: int) -> Global:
        """What ``find_class(module, name)`` imports: below protocol 3 the unpickler first maps
        Python 2 names to Python 3 ones (``_compat_pickle``, ``fix_imports=True``, the default
        of pickle.load, numpy.load and joblib.load); the written name is kept in ``detail``."""
        if self.r.protocol >= 3:
            return Global(module, name, at)
        mapped = _compat_pickle.NAME_MAPPING.get((module, name))
        if mapped is None and module in _compat_pickle.IMPORT_MAPPING:
            mapped = (_compat_pickle.IMPORT_MAPPING[module], name)
        if mapped is None or mapped == (module, name):
            return Global(module, name, at)
        return Global(mapped[0], mapped[1], at, detail=f"written as {module}.{name} (Python 2 name)")

    def _stack_global(self, module: object, name: object, at: int) -> Global:
        if isinstance(module, str) and isinstance(name, str):
            g = self._global(module, name, at)
        else:
            detail = f"STACK_GLOBAL with module {describe(module)} and name {describe(name)}"
            shown_mod = module if isinstance(module, str) else f"<{describe(module)}>"
            shown_name = name if isinstance(name, str) else f"<{describe(name)}>"
            g = Global(shown_mod, shown_name, at, False, detail)
        self.add_import(g, "STACK_GLOBAL")
        return g

    def _call(self, func: object, args: object, at: int, opcode: str) -> None:
        c = Call(func, args, at, opcode)
        self.add_call(c)
        self.push(c)

    def _add_to(self, target: object, items: list, at: int) -> None:
        if isinstance(target, Coll):
            for item in items:
                target.add(item)
        # APPEND on a call result calls its .append/.extend: the object's own code, already imported

    def _setitems(self, target: object, items: list, at: int) -> None:
        if len(items) % 2:
            raise Broken("odd number of items for SETITEMS", at)
        if isinstance(target, Coll):
            for i in range(0, len(items), 2):
                target.add((items[i], items[i + 1]))

    def _persistent(self, pid: object) -> None:
        if len(self.r.pids) < MAX_PIDS:
            self.r.pids.append(render(pid, 120))
        self.push(Opaque("persistent object"))

    def _build(self, inst: object, state: object, at: int) -> None:
        if not (isinstance(inst, Call) and isinstance(inst.func, Global) and inst.func.dotted in JOBLIB_WRAPPERS):
            return
        if not isinstance(state, Coll) or state.kind != "dict":
            raise Broken("joblib array wrapper without a state dict", at)
        dtype = state.get("dtype")
        shape = state.get("shape")
        descr = dtype.args[0] if isinstance(dtype, Call) and isinstance(dtype.args, tuple) and dtype.args else None
        if not isinstance(descr, str) or not isinstance(shape, tuple) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise Broken("joblib array wrapper with an unreadable dtype or shape", at)
        if descr.lstrip("<>|=").startswith("O"):
            if self.depth >= MAX_NESTED:
                raise Broken("joblib object arrays nested too deeply", at)
            progs = parse_stream(self.buf, self.pos, self.end, self.source, depth=self.depth + 1,
                                 role="joblib object array")
            self.r.nested.extend(progs)
            if progs[0].error:
                raise Broken(f"joblib object array pickle is broken ({progs[0].error})", self.pos)
            self.pos = progs[0].end
            return
        itemsize = _itemsize(descr)
        if itemsize is None:
            raise Broken(f"joblib array wrapper with unknown dtype {descr!r}", at)
        if state.get("numpy_array_alignment_bytes") is not None:
            pad = self.take(1)[0]
            self.skip(pad)
        n = itemsize
        for d in shape:
            n *= d
            if n > self.end:
                raise Broken(f"joblib array of {shape} {descr} is larger than the file", at)
        self.skip(n)


def _itemsize(descr: str) -> int | None:
    """Bytes per element of a NumPy dtype string such as '<f8', '|b1', '<U10', 'V24'."""
    body = descr.lstrip("<>|=")
    kind, digits = body[:1], body[1:]
    if kind in ("M", "m"):
        return 8
    if not digits.isdigit() or len(digits) > 9:
        return {"?": 1, "b": 1, "B": 1}.get(body) if body else None
    size = int(digits)
    return size * 4 if kind == "U" else size


def parse_stream(buf: "bytes | Sequence[int]", start: int, end: int, source: str, *, depth: int = 0,
                 role: str = "") -> list[PickleProgram]:
    """Parse the pickle starting at ``buf[start]`` (``end`` bounds it); never raises on bad input.

    Returns the stream's program first, then any pickles nested in it (joblib object arrays).
    """
    p = _Parser(buf, start, min(end, len(buf)), source, depth)
    stop, error = p.run()
    r = p.r
    prog = PickleProgram(
        source=source, offset=start, protocol=r.protocol, imports=tuple(r.imports), calls=tuple(r.calls),
        opcodes=r.ops, end=stop, error=error, persistent_ids=tuple(r.pids), role=role,
    )
    return [prog, *r.nested]


def looks_like_start(buf: "bytes | Sequence[int]", pos: int, end: int) -> bool:
    """Does a pickle plausibly start at ``pos``?  Protocol 2+ header, or a protocol 0/1 opcode."""
    if pos >= end:
        return False
    b = buf[pos]
    if b == 0x80:
        return pos + 2 < end and buf[pos + 1] <= 5 and buf[pos + 2] in OPCODES
    return b in _PROTO0_STARTS


# Opcodes a protocol 0/1 pickle can reasonably begin with.
_PROTO0_STARTS = frozenset(b"(c]})NIJKLMSTUVXFGgi")


def parse_streams(buf: "bytes | Sequence[int]", start: int, end: int, source: str, *, role: str = "",
                  max_streams: int = MAX_STREAMS, strict_next: bool = True) -> tuple[list[PickleProgram], int]:
    """Every consecutive pickle from ``start``: returns the programs and where parsing stopped.

    The first stream is always parsed (and reported even when broken).  A following one is
    parsed when it starts with a protocol 2+ header, or (``strict_next=False``) any pickle
    opcode; one that breaks before importing or calling anything is treated as trailing data
    and not reported.
    """
    programs: list[PickleProgram] = []
    pos = start
    end = min(end, len(buf))
    while pos < end and len(programs) < max_streams:
        first = not programs
        if not first:
            if strict_next and not (buf[pos] == 0x80 and looks_like_start(buf, pos, end)):
                break
            if not strict_next and not looks_like_start(buf, pos, end):
                break
        prog, *nested = parse_stream(buf, pos, end, source, role=role)
        if not first and prog.error and not prog.imports and not prog.calls:
            break  # trailing bytes that merely resemble a pickle
        programs.append(prog)
        programs.extend(nested)
        if prog.error or prog.end <= pos:
            pos = prog.end
            break
        pos = prog.end
    return programs, pos
