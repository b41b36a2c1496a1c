"""Bounds-checked FlatBuffers and FlexBuffers access for hostile input.

Only what the TFLite reader needs: tables with scalar, string, table and
vector fields, and FlexBuffer vectors of strings/blobs (Flex op options).
Every offset is checked against the buffer before use (``struct`` would
happily read negative offsets from the end), every vector length against
the bytes that could hold it, and a work budget bounds the total number of
elements decoded so shared sub-objects cannot amplify the work.
Every failure is an :class:`~modelwarden.errors.InputError` naming the file.
"""

from __future__ import annotations

import struct

from modelwarden.errors import InputError, LimitExceeded

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_SCALARS = {
    "b": struct.Struct("<b"), "B": _U8, "h": struct.Struct("<h"), "H": _U16, "i": _I32, "I": _U32,
    "q": struct.Struct("<q"), "Q": struct.Struct("<Q"), "f": struct.Struct("<f"), "d": struct.Struct("<d"),
    "?": struct.Struct("<?"),
}  # fmt: skip


class FlatBuffer:
    """A buffer plus a decoding budget; create :class:`Table` views with :meth:`root`."""

    def __init__(self, data: bytes, path: str, *, budget: int | None = None) -> None:
        self.data = data
        self.path = path
        self.budget = budget if budget is not None else 16 * len(data) + 1_000_000

    def error(self, message: str) -> InputError:
        return InputError(self.path, message)

    def charge(self, n: int, what: str) -> None:
        self.budget -= n
        if self.budget < 0:
            raise LimitExceeded(self.path, f"decoding {what} exceeded the work budget (shared or repeated sub-objects)")

    def unpack(self, st: struct.Struct, pos: int, what: str) -> int:
        if pos < 0 or pos + st.size > len(self.data):
            raise self.error(f"{what} at byte {pos} lies outside the {len(self.data)}-byte buffer")
        return st.unpack_from(self.data, pos)[0]

    def deref(self, pos: int, what: str) -> int:
        """Follow the uoffset stored at ``pos``."""
        return pos + self.unpack(_U32, pos, what)

    def root(self, what: str = "root table") -> "Table":
        return Table(self, self.deref(0, what), what)

    def identifier(self) -> bytes:
        return self.data[4:8]


class Table:
    """A FlatBuffers table at ``pos``; fields are addressed by their index in the schema."""

    __slots__ = ("fb", "pos", "vt", "vt_size", "what")

    def __init__(self, fb: FlatBuffer, pos: int, what: str) -> None:
        self.fb = fb
        self.pos = pos
        self.what = what
        vt = pos - fb.unpack(_I32, pos, f"{what} vtable offset")
        self.vt_size = fb.unpack(_U16, vt, f"{what} vtable")
        if self.vt_size < 4 or self.vt_size % 2 or vt + self.vt_size > len(fb.data):
            raise fb.error(f"{what} has a malformed vtable (size {self.vt_size} at byte {vt})")
        self.vt = vt

    def _field(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot + 2 > self.vt_size:
            return None
        off = self.fb.unpack(_U16, self.vt + slot, f"{self.what} vtable entry")
        return self.pos + off if off else None

    def has(self, index: int) -> bool:
        return self._field(index) is not None

    def scalar(self, index: int, fmt: str, default: int | float | bool = 0) -> int | float | bool:
        pos = self._field(index)
        if pos is None:
            return default
        return self.fb.unpack(_SCALARS[fmt], pos, f"{self.what} field {index}")

    def table(self, index: int, what: str) -> "Table | None":
        pos = self._field(index)
        if pos is None:
            return None
        return Table(self.fb, self.fb.deref(pos, what), what)

    def _vector(self, index: int, elem_size: int, what: str) -> tuple[int, int] | None:
        pos = self._field(index)
        if pos is None:
            return None
        start = self.fb.deref(pos, what)
        n = self.fb.unpack(_U32, start, f"{what} length")
        start += 4
        if n * elem_size > len(self.fb.data) - start:
            raise self.fb.error(f"{what} claims {n} elements, more than the buffer can hold")
        return start, n

    def span(self, index: int, elem_size: int, what: str) -> tuple[int, int] | None:
        """``(start, count)`` of a vector field, bounds-checked, without copying it."""
        return self._vector(index, elem_size, what)

    def bytes_(self, index: int, what: str) -> bytes | None:
        """A string or ``[ubyte]`` field as bytes (copied; callers bound their use)."""
        vec = self._vector(index, 1, what)
        if vec is None:
            return None
        start, n = vec
        self.fb.charge(n, what)  # many fields may share one huge string: bound the copying
        return self.fb.data[start : start + n]

    def string(self, index: int, what: str, default: str = "") -> str:
        raw = self.bytes_(index, what)
        return default if raw is None else raw.decode("utf-8", "backslashreplace")

    def vector_len(self, index: int, elem_size: int, what: str) -> int:
        vec = self._vector(index, elem_size, what)
        return 0 if vec is None else vec[1]

    def scalars(self, index: int, fmt: str, what: str) -> tuple:
        st = _SCALARS[fmt]
        vec = self._vector(index, st.size, what)
        if vec is None:
            return ()
        start, n = vec
        self.fb.charge(n, what)
        return tuple(x[0] for x in st.iter_unpack(self.fb.data[start : start + n * st.size]))

    def tables(self, index: int, what: str) -> list["Table"]:
        vec = self._vector(index, 4, what)
        if vec is None:
            return []
        start, n = vec
        self.fb.charge(n, what)
        return [Table(self.fb, self.fb.deref(start + 4 * i, what), f"{what}[{i}]") for i in range(n)]


# --------------------------------------------------------------------------
# FlexBuffers (schema-less); only vectors of strings/blobs/keys are decoded.

FBT_KEY = 4
FBT_STRING = 5
FBT_VECTOR = 10
FBT_BLOB = 25


def _uint(data: bytes, pos: int, width: int, path: str) -> int:
    if width not in (1, 2, 4, 8) or pos < 0 or pos + width > len(data):
        raise InputError(path, f"flexbuffer value at byte {pos} (width {width}) is out of bounds")
    return int.from_bytes(data[pos : pos + width], "little")


def _flex_bytes(data: bytes, pos: int, parent_width: int, packed: int, path: str) -> bytes:
    typ, width = packed >> 2, 1 << (packed & 3)
    target = pos - _uint(data, pos, parent_width, path)
    if typ == FBT_KEY:
        if target < 0:
            raise InputError(path, "flexbuffer key offset out of bounds")
        end = data.find(b"\x00", target)
        if end < 0:
            raise InputError(path, "flexbuffer key is not terminated")
        return data[target:end]
    if typ not in (FBT_STRING, FBT_BLOB):
        raise InputError(path, f"flexbuffer element has type {typ}, expected a string or blob")
    n = _uint(data, target - width, width, path)
    if target < 0 or n > len(data) - target:
        raise InputError(path, f"flexbuffer string of {n} bytes runs past the buffer")
    return data[target : target + n]


def flex_string_vector(data: bytes, path: str, max_items: int = 1024) -> list[bytes]:
    """Decode a FlexBuffer whose root is a vector of strings/blobs/keys."""
    if len(data) < 3:
        raise InputError(path, "flexbuffer is too short")
    root_width = data[-1]
    packed = data[-2]
    root_pos = len(data) - 2 - root_width
    if root_width not in (1, 2, 4, 8) or root_pos < 0:
        raise InputError(path, f"flexbuffer has a bad root width {root_width}")
    typ, width = packed >> 2, 1 << (packed & 3)
    if typ != FBT_VECTOR:
        raise InputError(path, f"flexbuffer root has type {typ}, expected an untyped vector")
    target = root_pos - _uint(data, root_pos, root_width, path)
    n = _uint(data, target - width, width, path)
    if n > max_items or target < 0 or target + n * width + n > len(data):
        raise InputError(path, f"flexbuffer vector of {n} elements runs past the buffer")
    types = data[target + n * width : target + n * width + n]
    return [_flex_bytes(data, target + i * width, width, types[i], path) for i in range(n)]
