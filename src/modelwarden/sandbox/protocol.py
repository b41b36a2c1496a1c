"""The wire format between the parent and the sandboxed worker.  No pickle.

A frame is a 16-byte prefix ``MAGIC u32 | header_len u32 | body_len u64``
(big-endian), a UTF-8 JSON object (the header) and ``body_len`` raw bytes.
Tensors travel as header entries ``{"name", "dtype", "shape"}`` plus their
C-order bytes in the body, each starting at a 64-byte aligned offset so the
receiver can wrap them without copying.  String tensors (dtype ``"string"``, numpy
object arrays of ``bytes``) are one block: ``count`` little-endian uint64 element
lengths, then the concatenated element bytes (``count`` = product of the shape).

Everything the worker sends is hostile: :func:`recv_frame` bounds every size
before allocating (and grows large buffers only as bytes arrive), :func:`decode_tensors`
checks names, dtypes, shapes, counts and the exact byte layout against the body, and
charges zero-size tensors for the nested structure their shape describes (``[2**24, 0]``
holds no bytes but would build 16 million Python lists in ``tolist()``).
"""

from __future__ import annotations

import json
import math
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modelwarden.sanitize import printable

MAGIC = 0x4D574631  # "MWF1"
PREFIX = struct.Struct(">IIQ")
ALIGN = 64
MAX_HEADER_BYTES = 1 << 20
MAX_TENSORS = 1024
MAX_RANK = 32
MAX_NAME_CHARS = 256
MAX_DIM = 1 << 40

EMPTY_SLOT_BYTES = 64  # charged per slot of a zero-size tensor's shape (an empty Python list is 56 bytes + a pointer)
MAX_EMPTY_SLOTS = 1 << 20  # and at most this many such slots per frame, whatever the output limit
GROW_FROM = 1 << 20  # receive buffers above this grow as bytes arrive (doubling), never up front

STRING = "string"  # DT_STRING: numpy object arrays of bytes; see encode/decode_tensors
LENGTH = np.dtype("<u8")  # element length prefix of string tensors

# dtype names on the wire -> numpy dtypes (little-endian, fixed size).  Strings are separate (STRING).
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<") if np.dtype(name).itemsize > 1 else np.dtype(name)
    for name in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64", "complex64", "complex128",
    )
}

# dtype names a signature may report that cannot cross the boundary (TensorFlow and ml_dtypes
# names); every other name a worker sends is a protocol violation, never parsed by numpy.
UNCROSSABLE = frozenset({
    "unknown", "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e4m3b11fnuz", "float8_e5m2",
    "float8_e5m2fnuz", "int2", "uint2", "int4", "uint4", "qint8", "quint8", "qint16", "quint16", "qint32",
    "resource", "variant",
})
SPEC_DTYPES = frozenset(DTYPES) | {STRING} | UNCROSSABLE

# What decoding hostile bytes may raise besides FrameError: all mean "the peer broke the protocol".
DECODE_ERRORS = (ValueError, OverflowError, TypeError, KeyError, IndexError, AttributeError, MemoryError,
                 RecursionError, UnicodeError)


class FrameError(Exception):
    """A frame or tensor block violates the protocol (the peer is broken or hostile)."""


class FrameTimeout(FrameError):
    """The deadline passed before a whole frame arrived."""


class ChannelClosed(FrameError):
    """The peer closed the channel (possibly mid-frame)."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, dtype and shape of one tensor; ``None`` in ``shape`` means any size."""

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None  # None: unknown rank

    def describe(self) -> str:
        dims = "?" if self.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"
        return f"{printable(self.name)}: {self.dtype}{dims}"  # names come from the worker

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape)}


def aligned(n: int) -> int:
    """``n`` rounded up to the tensor alignment (ALIGN)."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


_aligned = aligned


_NAMES: dict[np.dtype, str] = {}  # numpy computes dtype.name in Python (microseconds): cached per dtype


def dtype_name(arr: np.ndarray) -> str:
    """``arr``'s dtype as the signatures name it: ``"string"`` for object/bytes/str arrays."""
    dt = arr.dtype
    name = _NAMES.get(dt)
    if name is None:
        name = STRING if dt.kind in "OSU" else dt.name
        if len(_NAMES) < 256:
            _NAMES[dt] = name
    return name


def spec_dtype_name(dtype: np.dtype) -> str:
    """The protocol's name for a signature dtype: one of :data:`SPEC_DTYPES` (``"unknown"`` otherwise)."""
    if dtype.kind in "OSU":
        return STRING
    return dtype.name if dtype.name in SPEC_DTYPES else "unknown"


def extent(shape: Sequence[int]) -> int:
    """Slots a shape describes, zero dimensions counted as 1 (what nested-list formatting walks)."""
    return math.prod(d or 1 for d in shape)


def shape_fits(spec_shape: tuple[int | None, ...] | None, shape: Sequence[int]) -> bool:
    """``shape`` matches a spec shape (``None``: any rank; ``None`` dimensions: any size)."""
    if spec_shape is None:
        return True
    return len(shape) == len(spec_shape) and all(d is None or d == a for d, a in zip(spec_shape, shape))


def wire_dtype(arr: np.ndarray) -> str:
    """The wire name of ``arr``'s dtype, or FrameError if it cannot cross the boundary."""
    dt = arr.dtype
    if dt.kind in "OSU":
        return STRING
    name = dt.name
    if name not in DTYPES:
        raise FrameError(f"dtype {dt} cannot cross the sandbox boundary (supported: {', '.join(DTYPES)}, {STRING})")
    return name


def string_elements(arr: np.ndarray) -> list[bytes]:
    """The elements of a string array in C order as ``bytes`` (``str`` is UTF-8 encoded)."""
    out: list[bytes] = []
    for v in arr.reshape(-1).tolist():
        if isinstance(v, bytes):
            out.append(v)
        elif isinstance(v, (bytearray, memoryview)):
            out.append(bytes(v))
        elif isinstance(v, str):
            out.append(v.encode("utf-8"))
        else:
            raise FrameError(f"string tensors hold bytes or str, not {type(v).__name__}")
    return out


def tensor_nbytes(arr: np.ndarray) -> int:
    """Bytes ``arr`` occupies on the wire (string tensors: length prefixes + element bytes)."""
    if arr.dtype.kind in "OSU":
        return arr.size * LENGTH.itemsize + sum(len(e) for e in string_elements(arr))
    return arr.nbytes


def string_array(elements: Sequence[bytes], shape: Sequence[int]) -> np.ndarray:
    """An object array of ``elements`` (bytes) with ``shape``."""
    arr = np.empty(len(elements), dtype=object)
    for i, e in enumerate(elements):
        arr[i] = e
    return arr.reshape(tuple(shape))


def encode_tensors(tensors: Mapping[str, np.ndarray]) -> tuple[list[dict], list[memoryview], int]:
    """Header entries, body chunks (with alignment padding) and the body length."""
    entries: list[dict] = []
    chunks: list[memoryview] = []
    offset = 0
    for name, value in tensors.items():
        arr = np.asarray(value)
        dtype = wire_dtype(arr)
        shape = [int(d) for d in arr.shape]
        entries.append({"name": str(name), "dtype": dtype, "shape": shape})
        pad = _aligned(offset) - offset
        if pad:
            chunks.append(memoryview(bytes(pad)))
            offset += pad
        if dtype == STRING:
            elements = string_elements(arr)
            lengths = np.array([len(e) for e in elements], dtype=LENGTH)
            data = b"".join(elements)
            chunks.append(memoryview(lengths.view(np.uint8)))
            if data:
                chunks.append(memoryview(data))
            offset += lengths.nbytes + len(data)
            continue
        arr = np.require(arr, dtype=DTYPES[dtype], requirements="C")  # keeps 0-d shapes, unlike ascontiguousarray
        if arr.nbytes:
            chunks.append(memoryview(arr.reshape(-1).view(np.uint8)))
        offset += arr.nbytes
    return entries, chunks, offset


def _check_spec_entry(entry: object, index: int) -> tuple[str, np.dtype | None, tuple[int, ...]]:
    if not isinstance(entry, dict) or set(entry) != {"name", "dtype", "shape"}:
        raise FrameError(f"tensor #{index}: entry must be an object with exactly name, dtype, shape")
    name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise FrameError(f"tensor #{index}: name must be a non-empty string of at most {MAX_NAME_CHARS} characters")
    if not isinstance(dtype, str) or (dtype not in DTYPES and dtype != STRING):
        raise FrameError(f"tensor {name!r}: dtype {str(dtype)[:40]!r} is not allowed")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise FrameError(f"tensor {name!r}: shape must be a list of at most {MAX_RANK} dimensions")
    dims: list[int] = []
    for d in shape:
        if type(d) is not int or d < 0 or d > MAX_DIM:
            raise FrameError(f"tensor {name!r}: invalid dimension {str(d)[:40]!r}")
        dims.append(d)
    return name, DTYPES.get(dtype), tuple(dims)  # None: a string tensor


def decode_tensors(entries: object, body: bytes | bytearray | memoryview, *, max_bytes: int) -> dict[str, np.ndarray]:
    """Validate ``entries`` against ``body`` and wrap the tensors (read-only views when possible).

    Rejects: non-list entries, more than MAX_TENSORS, bad/duplicate names, unknown dtypes,
    negative/huge dimensions, a layout that does not exactly cover ``body`` and totals above
    ``max_bytes`` (a zero-size tensor counts EMPTY_SLOT_BYTES per slot of its :func:`extent`, and
    zero-size tensors may describe MAX_EMPTY_SLOTS slots in all).  String tensors: the length block must fit in the body before it is read,
    every length must fit in the rest of the body, and the lengths must sum exactly to the
    bytes taken (string tensors are copied into ``bytes`` objects, bounded by the body size).
    """
    if not isinstance(entries, list):
        raise FrameError("tensors must be a list")
    if len(entries) > MAX_TENSORS:
        raise FrameError(f"{len(entries)} tensors exceed the limit of {MAX_TENSORS}")
    view = memoryview(body).cast("B") if not isinstance(body, memoryview) else body.cast("B")
    out: dict[str, np.ndarray] = {}
    offset = 0
    total = 0
    slots = 0
    for i, entry in enumerate(entries):
        name, dtype, shape = _check_spec_entry(entry, i)
        if name in out:
            raise FrameError(f"duplicate tensor name {name!r}")
        count = math.prod(shape)
        if dtype is None:
            total, slots = charge(name, shape, 0, total, slots, max_bytes)
            out[name], offset, total = _decode_strings(name, shape, count, view, offset, total, max_bytes)
            continue
        nbytes = count * dtype.itemsize
        total, slots = charge(name, shape, nbytes, total, slots, max_bytes)
        start = _aligned(offset)
        if start > len(view) or start + nbytes > len(view):
            raise FrameError(f"tensor {name!r} ({nbytes} bytes) extends past the end of the body ({len(view)} bytes)")
        arr = np.frombuffer(view[start:start + nbytes], dtype=dtype, count=count).reshape(shape)
        out[name] = arr
        offset = start + nbytes
    if offset != len(view):
        raise FrameError(f"body has {len(view) - offset} unexpected trailing bytes")
    return out


def charge(name: str, shape: Sequence[int], nbytes: int, total: int, slots: int, max_bytes: int) -> tuple[int, int]:
    """Add one tensor to a reply's running ``(total bytes, zero-size slots)``; FrameError above the limits.

    A zero-size tensor holds no bytes but formatting walks every other dimension of its shape,
    so each slot of its :func:`extent` costs EMPTY_SLOT_BYTES (at most MAX_EMPTY_SLOTS slots).
    """
    if shape and not math.prod(shape):
        slots += extent(shape)
        total += extent(shape) * EMPTY_SLOT_BYTES
        if total > max_bytes or slots > MAX_EMPTY_SLOTS:
            raise FrameError(f"tensor {name!r}: zero-size shape {list(shape)[:8]} describes "
                             f"{extent(shape)} slots, above the output limit")
    total += nbytes
    if total > max_bytes:
        raise FrameError(f"tensors total {total} bytes, above the limit of {max_bytes}")
    return total, slots


def _decode_strings(name: str, shape: tuple[int, ...], count: int, view: memoryview, offset: int, total: int,
                    max_bytes: int) -> tuple[np.ndarray, int, int]:
    """One string tensor at ``offset`` (aligned): validated, copied out; (array, new offset, new total)."""
    start = _aligned(offset)
    remaining = len(view) - start
    if remaining < 0 or count > remaining // LENGTH.itemsize:  # bounds count before any allocation
        raise FrameError(f"string tensor {name!r}: {count} element lengths extend past the end of the body")
    lbytes = count * LENGTH.itemsize
    lengths = np.frombuffer(view[start:start + lbytes], dtype=LENGTH, count=count)
    remaining -= lbytes
    if count and int(lengths.max()) > remaining:
        raise FrameError(f"string tensor {name!r}: an element length extends past the end of the body")
    # every length <= remaining and count <= len(body)/8: the uint64 sum cannot overflow for bodies < 2**32 * 8
    if count and int(lengths.max()) * count >= 1 << 63:
        raise FrameError(f"string tensor {name!r}: element lengths too large")
    data_len = int(lengths.sum(dtype=np.uint64)) if count else 0
    if data_len > remaining:
        raise FrameError(f"string tensor {name!r}: {data_len} bytes of elements extend past the end of the body")
    total += lbytes + data_len
    if total > max_bytes:
        raise FrameError(f"tensors total {total} bytes, above the limit of {max_bytes}")
    pos = start + lbytes
    data = bytes(view[pos:pos + data_len])
    ends = np.cumsum(lengths, dtype=np.uint64).tolist() if count else []
    elements: list[bytes] = []
    prev = 0
    for end in ends:
        elements.append(data[prev:end])
        prev = end
    return string_array(elements, shape), pos + data_len, total


# -- framing ---------------------------------------------------------------------------------------


def send_frame(sock: socket.socket, header: Mapping, chunks: Sequence[memoryview | bytes] = (), body_len: int | None = None,
               deadline: float | None = None) -> None:
    """Send one frame: JSON ``header`` and the concatenation of ``chunks`` as the body.

    With ``deadline`` a peer that stops reading cannot block the sender: FrameTimeout.
    """
    hdr = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if len(hdr) > MAX_HEADER_BYTES:
        raise FrameError(f"header of {len(hdr)} bytes exceeds {MAX_HEADER_BYTES}")
    if body_len is None:
        body_len = sum(len(memoryview(c).cast("B")) for c in chunks)
    parts: list = [PREFIX.pack(MAGIC, len(hdr), body_len) + hdr, *chunks]
    # sendmsg may send partially; loop over the remaining buffers.
    bufs = [memoryview(p).cast("B") for p in parts if len(memoryview(p).cast("B"))]
    while bufs:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FrameTimeout("deadline passed while sending to the worker")
            sock.settimeout(remaining)
        try:
            sent = sock.sendmsg(bufs[:512])
        except socket.timeout:
            raise FrameTimeout("deadline passed while sending to the worker") from None
        while sent and bufs:
            if sent >= len(bufs[0]):
                sent -= len(bufs[0])
                bufs.pop(0)
            else:
                bufs[0] = bufs[0][sent:]
                sent = 0


class FrameReader:
    """Buffered frame receiver: one ``recv`` syscall for a small frame, optional brief spin-polling.

    ``spin_s`` > 0 polls the socket without sleeping for up to that long before blocking: on
    virtual machines a sleeping peer costs tens of microseconds to wake, more than a small
    model's whole inference.  Bytes beyond the current frame stay buffered for the next one.
    """

    CHUNK = 1 << 16

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray(self.CHUNK)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def buffered(self) -> bool:
        """Bytes of a next frame are already buffered (a poll on the socket would not see them)."""
        return self._start != self._end

    def _fill(self, deadline: float | None, spin_s: float) -> None:
        """Read more bytes into the buffer (at least one), honouring the deadline."""
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):
            self._buf[: self._end - self._start] = self._buf[self._start:self._end]
            self._end -= self._start
            self._start = 0
            self._view = memoryview(self._buf)
        sock = self.sock
        if spin_s > 0:
            stop = time.perf_counter() + spin_s
            while True:
                try:
                    k = sock.recv_into(self._view[self._end:], 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if time.perf_counter() < stop:
                        continue
                    break
                except (ConnectionResetError, BrokenPipeError) as exc:
                    raise ChannelClosed(f"channel reset: {exc}") from None
                if k == 0:
                    raise ChannelClosed("channel closed" + (" mid-frame" if self._end > self._start else ""))
                self._end += k
                return
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FrameTimeout("deadline passed while waiting for the worker")
            sock.settimeout(remaining)
        elif sock.gettimeout() is not None:
            sock.settimeout(None)
        try:
            k = sock.recv_into(self._view[self._end:])
        except socket.timeout:
            raise FrameTimeout("deadline passed while waiting for the worker") from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ChannelClosed(f"channel reset: {exc}") from None
        if k == 0:
            raise ChannelClosed("channel closed" + (" mid-frame" if self._end > self._start else ""))
        self._end += k

    def _recv_direct(self, out: bytearray, got: int, n: int, deadline: float | None, mid: bool) -> int:
        """Receive up to ``n - got`` bytes straight into ``out[got:]`` (grown as needed); bytes read."""
        _room(out, got + min(n - got, self.CHUNK), n)
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FrameTimeout("deadline passed while waiting for the worker")
            self.sock.settimeout(remaining)
        try:
            k = self.sock.recv_into(memoryview(out)[got:], min(n, len(out)) - got)
        except socket.timeout:
            raise FrameTimeout("deadline passed while waiting for the worker") from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ChannelClosed(f"channel reset: {exc}") from None
        if k == 0:
            raise ChannelClosed("channel closed" + (" mid-frame" if got or mid else ""))
        return k

    def _take(self, n: int, deadline: float | None, spin_s: float, mid: bool = False) -> bytearray:
        """Exactly ``n`` bytes (``n`` already bounded by the caller); ``mid``: inside a frame.

        The buffer starts at GROW_FROM bytes at most and doubles as bytes arrive, so a peer
        announcing a large frame and sending nothing costs nothing.
        """
        out = bytearray(min(n, GROW_FROM))
        got = 0
        while got < n:
            if self._start == self._end:
                if n - got >= self.CHUNK:  # large body: read straight into place
                    got += self._recv_direct(out, got, n, deadline, True)
                    continue
                try:
                    self._fill(deadline, spin_s)
                except ChannelClosed:
                    if got or mid:
                        raise ChannelClosed("channel closed mid-frame") from None
                    raise
            k = min(n - got, self._end - self._start)
            _room(out, got + k, n)
            out[got:got + k] = self._view[self._start:self._start + k]
            self._start += k
            got += k
        return out

    def recv(self, *, max_body: int, deadline: float | None = None, max_header: int = MAX_HEADER_BYTES,
             spin_s: float = 0.0) -> tuple[dict, bytearray]:
        """Receive one frame, bounding header and body sizes *before* allocating them."""
        prefix = self._take(PREFIX.size, deadline, spin_s)
        magic, hlen, blen = PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise FrameError(f"bad frame magic 0x{magic:08x}")
        if hlen > max_header:
            raise FrameError(f"header of {hlen} bytes exceeds the limit of {max_header}")
        if blen > max_body:
            raise FrameError(f"body of {blen} bytes exceeds the limit of {max_body}")
        hdr = self._take(hlen, deadline, 0.0, mid=True)
        body = self._take(blen, deadline, 0.0, mid=True) if blen else bytearray()
        try:
            header = json.loads(hdr.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise FrameError(f"header is not valid JSON: {str(exc)[:120]}") from None
        if not isinstance(header, dict):
            raise FrameError("header must be a JSON object")
        return header, body


def recv_frame(
    sock: socket.socket, *, max_body: int, deadline: float | None = None, max_header: int = MAX_HEADER_BYTES,
) -> tuple[dict, bytearray]:
    """Receive one frame with a throwaway reader (only for one-frame exchanges; see FrameReader)."""
    return _SingleReader(sock).recv(max_body=max_body, deadline=deadline, max_header=max_header)


class _SingleReader(FrameReader):
    """Never reads past the current frame (reads exact sizes), so no bytes are lost."""

    def __init__(self, sock: socket.socket) -> None:  # no buffer needed
        self.sock = sock

    def _fill(self, deadline: float | None, spin_s: float) -> None:
        raise AssertionError("unused")

    def _take(self, n: int, deadline: float | None, spin_s: float, mid: bool = False) -> bytearray:
        out = bytearray(min(n, GROW_FROM))
        got = 0
        while got < n:
            got += self._recv_direct(out, got, n, deadline, mid)
        return out


def _room(out: bytearray, need: int, n: int) -> None:
    """Grow ``out`` (doubling, at most to ``n``) until it holds ``need`` bytes."""
    if len(out) < need:
        out.extend(bytes(min(n, max(need, 2 * len(out))) - len(out)))


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-finite constant {name} not allowed")


def specs_from_json(value: object, what: str) -> dict[str, TensorSpec]:
    """Parse a worker-reported list of tensor specs (hostile: validated like any frame)."""
    if not isinstance(value, list) or len(value) > MAX_TENSORS:
        raise FrameError(f"{what}: expected a list of at most {MAX_TENSORS} specs")
    out: dict[str, TensorSpec] = {}
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or set(entry) != {"name", "dtype", "shape"}:
            raise FrameError(f"{what} #{i}: malformed spec")
        name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or name in out:
            raise FrameError(f"{what} #{i}: bad or duplicate name")
        if not isinstance(dtype, str) or dtype not in SPEC_DTYPES:
            raise FrameError(f"{what} {name!r}: dtype {str(dtype)[:40]!r} is not one of the protocol's dtypes")
        if shape is not None:
            if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
                d is None or (type(d) is int and 0 <= d <= MAX_DIM) for d in shape
            ):
                raise FrameError(f"{what} {name!r}: bad shape")
            shape = tuple(shape)
        out[name] = TensorSpec(name, dtype, shape)
    return out


def check_inputs(inputs: Mapping[str, np.ndarray], specs: Mapping[str, TensorSpec], signature: str) -> list[str]:
    """Problems with ``inputs`` for a signature's ``specs`` (empty list when they fit)."""
    problems: list[str] = []
    for name in inputs:
        if name not in specs:
            problems.append(f"unknown input {name!r} (expected: {printable(', '.join(sorted(specs)), 2000) or 'none'})")
    for name, spec in specs.items():
        if name not in inputs:
            problems.append(f"missing input {spec.describe()}")
            continue
        arr = inputs[name]
        have = dtype_name(arr)
        if have != spec.dtype:
            problems.append(f"input {name!r} has dtype {have}, signature {signature!r} expects {spec.dtype}")
        if not shape_fits(spec.shape, arr.shape):
            problems.append(f"input {name!r} has shape {list(arr.shape)}, expected {spec.describe()}")
    return problems


def check_outputs(outputs: Mapping[str, np.ndarray], specs: Mapping[str, TensorSpec]) -> str | None:
    """The first way ``outputs`` (decoded from the worker) contradict the signature, or None.

    Names must be the signature's (when it declares any), dtypes the declared one (when that
    can cross), shapes must fit the declared shape.
    """
    if specs and outputs.keys() != specs.keys():
        return f"returned outputs {sorted(outputs)[:20]}, the signature declares {sorted(specs)[:20]}"
    for name, arr in outputs.items():
        spec = specs.get(name)
        if spec is None:
            continue
        have = dtype_name(arr)
        if have != spec.dtype and spec.dtype not in UNCROSSABLE:
            return f"returned {name!r} as {have}, the signature declares {spec.dtype}"
        if not shape_fits(spec.shape, arr.shape):
            return f"returned {name!r} with shape {list(arr.shape)[:8]}, the signature declares {spec.describe()}"
    return None
