"""The warm-call fast path: tensors in a shared-memory region, a socket doorbell, no JSON.

The parent creates one sealed memfd (size fixed: ``F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL``,
so the worker can neither shrink it under the parent's mapping - a SIGBUS in the parent - nor
grow it into memory RLIMIT_AS does not count) and a doorbell socketpair, and hands the memfd and
one doorbell end to the worker over the channel (``SCM_RIGHTS``) after the model loaded.  The
worker's seccomp filter still denies ``memfd_create``; it only maps what it was given.

Region layout (``req_bytes + rep_bytes``)::

    request area  [0, req_bytes)            written by the parent, never read back by it
        CALL header (seq last), ENTRY * count, then tensor data at 64-byte aligned offsets
    reply area    [req_bytes, +rep_bytes)   written by the worker, read by the parent as hostile
        same layout

``CALL``: ``seq u64 | magic u32 | count u32 | sig_or_status u32 | busy_us u32 | run_us u64`` (in a reply
``busy_us`` is the worker's own time on the call besides the model's ``run_us``, diagnostics only like
``run_us``; in a request it is the parent's ``spin_us``: how long the worker may poll for the next
request after replying before it sleeps on the doorbell);
``ENTRY``: ``index u32 | dtype code u16 | rank u16 | offset u64 | nbytes u64 | dims u64 * 8``
(offsets relative to the area).  The writer stores ``seq`` last; the reader waits for the
``seq`` it expects (spinning briefly, then ``poll`` on the doorbell and the JSON channel; or, in the
server, with both sockets watched by the event loop - :meth:`ParentChannel.call_async`).

Everything else - load, introspect, errors, string tensors, tensors that do not fit - stays on
the JSON frames of :mod:`protocol`: a worker that cannot answer in shared memory answers on the
channel, and the parent accepts either.  The parent reads the reply area copy-then-check: the
header is copied out once and every field is validated on the copy against the signature and
``max_output_bytes``; tensor bytes are copied out, never wrapped, so a worker rewriting the
region mid-read can change values but never sizes, dtypes or shapes.
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import mmap
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modelwarden.sandbox import pollgate, protocol

MAGIC = 0x4D575348  # "MWSH"
SEQ = struct.Struct("<Q")
CALL = struct.Struct("<QIIIIQ")
CALL_REST = struct.Struct("<IIIIQ")  # CALL without seq, packed at offset SEQ.size
MAX_RANK = 8  # tensors of higher rank take the JSON path
ENTRY = struct.Struct(f"<IHHQQ{MAX_RANK}Q")
MAX_TENSORS = 64  # per call and direction on the fast path
HEADER_BYTES = protocol.aligned(CALL.size + MAX_TENSORS * ENTRY.size)  # data starts here in each area
DEFAULT_AREA_BYTES = 4 << 20  # per direction; only pages touched cost memory
CODES: tuple[str, ...] = tuple(protocol.DTYPES)  # dtype code = index (both sides run the same code)
CODE_OF = {name: i for i, name in enumerate(CODES)}
SEAL = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
MAX_SPIN_US = 100_000  # the most a request may ask the worker to poll for the next one
YIELD = os.sched_yield  # spinners give the CPU to any runnable thread (TensorFlow's) at every turn

FRAME = object()  # "the answer comes on the JSON channel" (errors, fallbacks, a dead worker)


class ShmViolation(Exception):
    """The worker wrote something into the reply area that is not a valid reply."""


class ShmTimeout(Exception):
    """The deadline passed before the worker answered."""


# a reply's outputs as checked: (output name, shape, dtype, offset in the reply area, bytes) each
CheckedOutputs = list[tuple[str, tuple[int, ...], np.dtype, int, int]]

spare_core = pollgate.PollGate()  # poll now?  (pollgate: a spare core, judged while polling)


def poll_for(ready: Callable[[], bool], spin_s: float) -> bool:
    """Poll ``ready`` for at most ``spin_s`` seconds, yielding the CPU at every turn; its last answer."""
    stop = time.perf_counter() + spin_s
    while time.perf_counter() < stop:
        if ready():
            return True
        YIELD()
    return ready()


@dataclass(frozen=True)
class FastSignature:
    """What the parent precomputes per signature for the fast path (``None`` from :func:`plan` if it cannot)."""

    index: int  # position in the worker's signature table
    inputs: tuple[protocol.TensorSpec, ...]
    in_dtypes: tuple[np.dtype, ...]
    outputs: tuple[protocol.TensorSpec, ...]


def plan(index: int, inputs: Mapping[str, protocol.TensorSpec],
         outputs: Mapping[str, protocol.TensorSpec]) -> FastSignature | None:
    """A fast-path plan for a signature, or None when a tensor cannot take it (strings, too many)."""
    if len(inputs) > MAX_TENSORS or len(outputs) > MAX_TENSORS or not outputs:
        return None
    if any(s.dtype not in protocol.DTYPES for s in inputs.values()):
        return None
    if any(s.dtype == protocol.STRING for s in outputs.values()):
        return None
    return FastSignature(index, tuple(inputs.values()), tuple(protocol.DTYPES[s.dtype] for s in inputs.values()),
                         tuple(outputs.values()))


def _layout(arrays: Iterable[np.ndarray]) -> tuple[list[int], int] | None:
    """Where each array's data goes in an area (64-byte aligned, after the header) and where the last
    ends; None when one has a rank the entries cannot describe."""
    pos = HEADER_BYTES
    offsets = []
    for arr in arrays:
        if arr.ndim > MAX_RANK:
            return None
        off = protocol.aligned(pos)
        offsets.append(off)
        pos = off + arr.nbytes
    return offsets, pos


def _write_tensors(view: memoryview, mm: mmap.mmap, base: int, size: int, tensors: Sequence[tuple[int, np.ndarray]]) -> bool:
    """Entries and data of ``tensors`` (index, little-endian C-order array) into an area; False: no fit."""
    layout = _layout(arr for _, arr in tensors)
    if layout is None or layout[1] > size:
        return False
    for i, ((index, arr), off) in enumerate(zip(tensors, layout[0])):
        n = arr.nbytes
        if n:
            view[base + off:base + off + n] = arr.reshape(-1).view(np.uint8)
        ENTRY.pack_into(mm, base + CALL.size + i * ENTRY.size, index, CODE_OF[protocol.dtype_name(arr)], arr.ndim, off, n,
                        *arr.shape, *(0,) * (MAX_RANK - arr.ndim))
    return True


def _drain(sock: socket.socket) -> bool:
    """Empty a doorbell (at most 64 KiB per call, so a peer refilling it cannot keep the caller here
    past its deadline); False when the other end closed it."""
    for _ in range(16):
        try:
            data = sock.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        if len(data) < 4096:
            return True
    return True


def _ring(sock: socket.socket) -> None:
    try:
        sock.send(b"\x01", socket.MSG_DONTWAIT)
    except BlockingIOError:  # the peer has unread rings: it will wake up anyway
        pass
    except OSError:  # the peer is gone: the JSON channel reports how
        pass


# -- parent ----------------------------------------------------------------------------------------


class ParentChannel:
    """The parent's end: owns the region and a doorbell; reads replies as hostile."""

    def __init__(self, req_bytes: int = DEFAULT_AREA_BYTES, rep_bytes: int = DEFAULT_AREA_BYTES) -> None:
        if req_bytes <= HEADER_BYTES or rep_bytes <= HEADER_BYTES:
            raise ValueError("shared-memory areas must be larger than their header")
        self.req_bytes, self.rep_bytes = req_bytes, rep_bytes
        self.memfd = os.memfd_create("modelwarden-shm", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.memfd, req_bytes + rep_bytes)
            fcntl.fcntl(self.memfd, fcntl.F_ADD_SEALS, SEAL)
            self.mm = mmap.mmap(self.memfd, req_bytes + rep_bytes)
        except BaseException:
            os.close(self.memfd)
            raise
        self.view = memoryview(self.mm)
        self.bell, self.worker_bell = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.bell.setblocking(False)
        self.seq = 0
        self.replies = 0  # calls answered in the region (the rest came on the JSON channel)
        self.last_worker_busy_us = 0  # worker-reported, unchecked: for benchmarks only
        # per signature index: (signature, reply entries bytes, max_output_bytes, outputs) of the last
        # reply whose entries passed every check (see _read_reply)
        self._checked: dict[int, tuple[FastSignature, bytes, int, CheckedOutputs]] = {}
        self._poll = select.poll()
        self._channel_fd = -1

    def handover_fds(self) -> list[int]:
        """The descriptors the worker gets (memfd, its doorbell end)."""
        return [self.memfd, self.worker_bell.fileno()]

    def handed_over(self, channel: socket.socket) -> None:
        """After the worker has its copies: close ours (the mapping stays), watch both sockets."""
        os.close(self.memfd)
        self.memfd = -1
        self.worker_bell.close()
        self._channel_fd = channel.fileno()
        self._poll.register(self.bell.fileno(), select.POLLIN)
        self._poll.register(self._channel_fd, select.POLLIN)

    def close(self) -> None:
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1
        self.worker_bell.close()
        self.bell.close()
        self.view.release()
        self.mm.close()

    def fits(self, sig: FastSignature, arrays: Sequence[np.ndarray]) -> bool:
        layout = _layout(arrays)
        return layout is not None and layout[1] <= self.req_bytes

    def submit(self, sig: FastSignature, arrays: Sequence[np.ndarray], worker_spin_us: int = 0) -> int:
        """Write one request into the region and ring the worker; its ``seq`` (for :meth:`collect`).
        ``worker_spin_us``: how long the worker may poll for the next request after answering this one."""
        self.seq += 1
        seq = self.seq
        mm = self.mm
        if not _write_tensors(self.view, mm, 0, self.req_bytes, list(enumerate(arrays))):
            raise ValueError("inputs do not fit the request area (call fits() first)")
        CALL_REST.pack_into(mm, SEQ.size, MAGIC, len(arrays), sig.index, min(max(0, worker_spin_us), MAX_SPIN_US), 0)
        SEQ.pack_into(mm, 0, seq)
        _ring(self.bell)
        return seq

    def answered(self, seq: int) -> bool:
        """The reply area carries ``seq`` (the reply itself is still unchecked)."""
        return SEQ.unpack_from(self.mm, self.req_bytes)[0] == seq

    def collect(self, sig: FastSignature, seq: int, max_output_bytes: int) -> tuple[dict[str, np.ndarray], int] | object | None:
        """After a doorbell ring: ``(outputs, run_us)`` when the reply to ``seq`` is in the region, None
        when it is not there yet; FRAME when the worker closed its doorbell.  Never blocks: the doorbell
        is drained first (at most 64 KiB, so a flooding worker cannot keep the caller here)."""
        if not _drain(self.bell):
            return FRAME
        if self.answered(seq):
            return self._read_reply(sig, seq, max_output_bytes)
        return None

    def call(self, sig: FastSignature, arrays: Sequence[np.ndarray], deadline: float, spin_s: float,
             max_output_bytes: int, worker_spin_us: int = 0) -> tuple[dict[str, np.ndarray], int] | object:
        """Send one request and block for the answer: ``(outputs, run_us)`` from the reply area, or FRAME
        (read the channel).  ``spin_s``: poll the reply's ``seq`` that long before sleeping on the doorbell
        (never past the deadline).  :meth:`call_async` is the same wait on an event loop."""
        seq = self.submit(sig, arrays, worker_spin_us)
        spin_s = min(spin_s, deadline - time.monotonic())
        if spin_s > 0 and poll_for(lambda: self.answered(seq), spin_s):
            return self._read_reply(sig, seq, max_output_bytes)
        while True:
            if self.answered(seq):
                return self._read_reply(sig, seq, max_output_bytes)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ShmTimeout("deadline passed while waiting for the worker")
            for fd, _events in self._poll.poll(max(1, math.ceil(remaining * 1000))):
                if fd == self._channel_fd:
                    return FRAME  # an error, a fallback reply, or EOF: the JSON path decides
                res = self.collect(sig, seq, max_output_bytes)
                if res is not None:
                    return res

    async def call_async(self, sig: FastSignature, arrays: Sequence[np.ndarray], deadline: float,
                         max_output_bytes: int) -> tuple[dict[str, np.ndarray], int] | object:
        """:meth:`call` without a thread: the event loop watches the doorbell and the JSON channel.

        The loop is never blocked: each doorbell wake-up drains at most 64 KiB and reads the reply
        only once its ``seq`` is there (checked exactly as in :meth:`call`); a reply on the channel
        (or its EOF) resolves to FRAME, the deadline to :class:`ShmTimeout`.  A flooding worker costs
        loop iterations until the deadline, never the loop itself."""
        seq = self.submit(sig, arrays)
        if self.answered(seq):
            return self._read_reply(sig, seq, max_output_bytes)
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def on_bell() -> None:
            if done.done():
                return
            try:
                res = self.collect(sig, seq, max_output_bytes)
            except Exception as exc:  # noqa: BLE001 - ShmViolation & co. are the caller's to judge
                done.set_exception(exc)
                return
            if res is not None:
                done.set_result(res)

        def on_channel() -> None:
            if not done.done():
                done.set_result(FRAME)

        def on_deadline() -> None:
            if not done.done():
                done.set_exception(ShmTimeout("deadline passed while waiting for the worker"))

        bell, channel = self.bell.fileno(), self._channel_fd
        loop.add_reader(bell, on_bell)
        try:
            loop.add_reader(channel, on_channel)
            try:
                timer = loop.call_later(max(0.0, deadline - time.monotonic()), on_deadline)
                try:
                    return await done
                finally:
                    timer.cancel()
            finally:
                loop.remove_reader(channel)
        finally:
            loop.remove_reader(bell)

    def _read_reply(self, sig: FastSignature, seq: int, max_output_bytes: int) -> tuple[dict[str, np.ndarray], int]:
        """Copy, then check, then copy out the tensors.  Every field is hostile.

        The checks of the entries are a function of their bytes, the signature and
        ``max_output_bytes`` alone, so the outcome for the last bytes that passed is kept: a reply whose
        copied entries are byte-for-byte those is not checked field by field again (a model's replies
        usually are: same shapes, same offsets)."""
        base = self.req_bytes
        nout = len(sig.outputs)
        header = bytes(self.view[base:base + CALL.size + nout * ENTRY.size])  # one copy; checks read only this
        got_seq, magic, count, status, busy_us, run_us = CALL.unpack_from(header)
        if got_seq != seq or magic != MAGIC:
            raise ShmViolation("reply header does not belong to this call")
        if status != 0 or count != nout:
            raise ShmViolation(f"reply announces {count} tensors with status {status}, the signature has {nout} outputs")
        entries = header[CALL.size:]
        known = self._checked.get(sig.index)
        if known is None or known[0] is not sig or known[1] != entries or known[2] != max_output_bytes:
            known = self._checked[sig.index] = (sig, entries, max_output_bytes,
                                                self._check_entries(sig, header, max_output_bytes))
        out: dict[str, np.ndarray] = {}
        view = self.view
        for name, shape, dtype, off, want in known[3]:
            arr = np.empty(shape, dtype)
            if want:
                arr.reshape(-1).view(np.uint8)[:] = view[base + off:base + off + want]
            out[name] = arr
        self.replies += 1
        self.last_worker_busy_us = busy_us
        return out, run_us

    def _check_entries(self, sig: FastSignature, header: bytes, max_output_bytes: int) -> CheckedOutputs:
        """Every entry of a copied reply header (one per declared output: the caller checked the
        count) checked against the signature, the reply area and ``max_output_bytes``, or ShmViolation."""
        size, nout = self.rep_bytes, len(sig.outputs)
        plan: CheckedOutputs = []
        seen: set[str] = set()
        total = slots = 0
        for i in range(nout):
            index, code, rank, off, nbytes, *dims = ENTRY.unpack_from(header, CALL.size + i * ENTRY.size)
            if index >= nout:
                raise ShmViolation(f"output index {index} out of range")
            spec = sig.outputs[index]
            if spec.name in seen:
                raise ShmViolation(f"output {spec.name!r} sent twice")
            seen.add(spec.name)
            if code >= len(CODES) or rank > MAX_RANK:
                raise ShmViolation(f"output {spec.name!r}: bad dtype code {code} or rank {rank}")
            dname = CODES[code]
            if dname != spec.dtype and spec.dtype not in protocol.UNCROSSABLE:
                raise ShmViolation(f"returned {spec.name!r} as {dname}, the signature declares {spec.dtype}")
            shape = tuple(dims[:rank])
            if any(d > protocol.MAX_DIM for d in shape) or any(dims[rank:]):
                raise ShmViolation(f"output {spec.name!r}: invalid dimensions")
            if not protocol.shape_fits(spec.shape, shape):
                raise ShmViolation(f"returned {spec.name!r} with shape {list(shape)}, the signature declares {spec.describe()}")
            dtype = protocol.DTYPES[dname]
            n = math.prod(shape)
            want = n * dtype.itemsize
            if nbytes != want:
                raise ShmViolation(f"output {spec.name!r}: {nbytes} bytes announced for {want}")
            total, slots = protocol.charge(spec.name, shape, want, total, slots, max_output_bytes)
            if off % protocol.ALIGN or off < HEADER_BYTES or off + want > size:
                raise ShmViolation(f"output {spec.name!r}: offset {off} (+{want} bytes) outside the reply area")
            plan.append((spec.name, shape, dtype, off, want))
        return plan


# -- worker ----------------------------------------------------------------------------------------


class WorkerChannel:
    """The worker's end (inside the sandbox): reads requests, writes replies, rings the parent."""

    def __init__(self, memfd: int, bell_fd: int, req_bytes: int, rep_bytes: int) -> None:
        try:
            if os.fstat(memfd).st_size != req_bytes + rep_bytes:
                raise ValueError("shared-memory region has an unexpected size")
            self.mm = mmap.mmap(memfd, req_bytes + rep_bytes)
        finally:
            os.close(memfd)
        self.view = memoryview(self.mm)
        self.bell = socket.socket(fileno=bell_fd)
        self.bell.setblocking(False)
        self.req_bytes, self.rep_bytes = req_bytes, rep_bytes
        self.seen = 0  # the last request seq handled
        self.spin_s = 0.0  # how long the parent wants the next wait to poll before sleeping
        self.woke = 0.0  # when the pending request was noticed
        self._poll = select.poll()
        self._poll.register(self.bell.fileno(), select.POLLIN)
        self._channel_fd = -1

    def wait(self, channel: socket.socket, spin_s: float) -> bool:
        """Block until a request is in the region (True) or something arrived on the channel (False)."""
        if self._channel_fd != channel.fileno():
            self._channel_fd = channel.fileno()
            self._poll.register(self._channel_fd, select.POLLIN)
        mm, seen, unpack_seq = self.mm, self.seen, SEQ.unpack_from
        if spin_s > 0 and poll_for(lambda: unpack_seq(mm, 0)[0] != seen, spin_s):
            self.woke = time.perf_counter()
            return True
        while True:
            if unpack_seq(mm, 0)[0] != seen:
                self.woke = time.perf_counter()
                return True
            for fd, _events in self._poll.poll():
                if fd == self._channel_fd:
                    return False
                if not _drain(self.bell):
                    return False  # the parent is gone: the channel read ends the loop

    def request(self) -> tuple[int, int, list[tuple[int, np.ndarray]]]:
        """(seq, signature index, [(input index, array view)]) of the pending request (from the trusted
        parent); its spin budget for the next wait goes to :attr:`spin_s`."""
        seq, magic, count, sig_index, spin_us, _t = CALL.unpack_from(self.mm, 0)
        self.seen = seq
        self.spin_s = min(spin_us, MAX_SPIN_US) / 1e6
        if magic != MAGIC or count > MAX_TENSORS:
            raise ValueError("malformed shared-memory request")
        tensors = []
        for i in range(count):
            index, code, rank, off, nbytes, *dims = ENTRY.unpack_from(self.mm, CALL.size + i * ENTRY.size)
            dtype = protocol.DTYPES[CODES[code]]
            shape = tuple(dims[:rank])
            n = math.prod(shape)
            if n * dtype.itemsize != nbytes or off + nbytes > self.req_bytes:
                raise ValueError("malformed shared-memory request")
            tensors.append((index, np.frombuffer(self.mm, dtype, n, off).reshape(shape)))
        return seq, sig_index, tensors

    def reply(self, seq: int, outputs: Sequence[tuple[int, np.ndarray]], run_us: int) -> bool:
        """Write the reply and ring; False (nothing rung) when it must go on the channel instead."""
        arrays = []
        for index, arr in outputs:
            name = protocol.dtype_name(arr)
            if name not in CODE_OF:
                return False
            arrays.append((index, np.require(arr, protocol.DTYPES[name], "C")))
        base = self.req_bytes
        if len(arrays) > MAX_TENSORS or not _write_tensors(self.view, self.mm, base, self.rep_bytes, arrays):
            return False
        busy_us = max(0, min(int((time.perf_counter() - self.woke) * 1e6) - run_us, 0xFFFFFFFF))
        CALL_REST.pack_into(self.mm, base + SEQ.size, MAGIC, len(arrays), 0, busy_us, run_us)
        SEQ.pack_into(self.mm, base, seq)
        _ring(self.bell)
        return True
