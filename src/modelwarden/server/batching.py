"""Server-side batching: concurrent requests for one model version become one worker call.

Like TF Serving's ``--enable_batching``, but adaptive: a request that finds a worker idle (and no
queue of its kind) is called at once, with no queue, task or timer - batches only form from
requests that arrive while every worker is busy.  Requests whose inputs agree in names, dtypes
and every dimension but the first (and in signature) are queued together; a queue is dispatched
as one call when a worker is idle (so a lone request never waits), when a worker becomes free, when
its rows add up to ``max_batch_size``, or at the latest ``timeout_s`` after its first request
— batches form while every worker is busy.  The inputs are concatenated along axis 0, one
sandboxed call runs, and each request gets its rows of every output back.  A request at least ``max_batch_size`` rows big, or with a scalar input, runs
alone.  If the merged call fails with an input or execution error, or an output has no batch
axis, each request of the batch is re-run alone so one request's bad values can never fail
another's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelwarden.sandbox import errors as sberr

Call = Callable[[dict, "str | None", float], Awaitable[dict]]


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    timeout_s: float = 0.002


@dataclass
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    deadline: float
    future: asyncio.Future


@dataclass
class _Queue:
    items: list[_Pending] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.TimerHandle | None = None


def _key(inputs: dict[str, np.ndarray], signature: str | None) -> tuple | None:
    """Requests with equal keys can share a call; None: this request cannot be batched."""
    if not inputs or any(a.ndim == 0 for a in inputs.values()):
        return None
    rows = {a.shape[0] for a in inputs.values()}
    if len(rows) != 1:
        return None
    return signature, tuple((k, a.dtype.str, a.shape[1:]) for k, a in sorted(inputs.items()))


class Batcher:
    def __init__(self, cfg: BatchingConfig, call: Call, idle: Callable[[], int] = lambda: 0,
                 busy: Callable[[], int] = lambda: 0) -> None:
        self.cfg = cfg
        self._call = call
        self._idle = idle  # idle workers now
        self._busy = busy  # workers running a call now
        self._queues: dict[tuple, _Queue] = {}
        self._dispatched = 0
        self.batches = 0  # merged calls made (observability, bench)
        self.batched_requests = 0

    async def submit(self, inputs: dict[str, np.ndarray], signature: str | None, deadline: float) -> dict:
        key = _key(inputs, signature)
        rows = next(iter(inputs.values())).shape[0] if key else 0
        if key is None or rows >= self.cfg.max_batch_size:
            return await self._call(inputs, signature, deadline)
        q = self._queues.get(key)
        if q is None and self._idle() > self._pending_runs():
            return await self._direct(inputs, signature, deadline)  # a worker is free: no queue, task or timer
        loop = asyncio.get_running_loop()
        if q is not None and q.rows + rows > self.cfg.max_batch_size:
            self._flush(key)
            q = None
        if q is None:
            q = self._queues[key] = _Queue()
            q.timer = loop.call_later(self.cfg.timeout_s, self._flush, key)
        p = _Pending(inputs, rows, deadline, loop.create_future())
        q.items.append(p)
        q.rows += rows
        if q.rows >= self.cfg.max_batch_size or self._idle() > self._pending_runs():
            self._flush(key)
        return await p.future

    async def _direct(self, inputs: dict[str, np.ndarray], signature: str | None, deadline: float) -> dict:
        self._dispatched += 1
        try:
            return await self._call(inputs, signature, deadline)
        finally:
            self._dispatched -= 1

    def _pending_runs(self) -> int:
        """Dispatched calls still waiting for a worker (every call of the pool goes through here)."""
        return self._dispatched - self._busy()

    def worker_free(self) -> None:
        """A worker became free: the oldest queue goes now rather than at its timeout."""
        if self._queues:
            self._flush(next(iter(self._queues)))

    def _flush(self, key: tuple) -> None:
        q = self._queues.pop(key, None)
        if q is None:
            return
        if q.timer is not None:
            q.timer.cancel()
        self._dispatched += 1
        asyncio.get_running_loop().create_task(self._run(q.items, key[0]))

    async def _run(self, items: list[_Pending], signature: str | None) -> None:
        try:
            await self._run_batch(items, signature)
        finally:
            self._dispatched -= 1  # counted until its call is over: waiting for or holding a worker

    async def _run_batch(self, items: list[_Pending], signature: str | None) -> None:
        if len(items) == 1:
            await self._alone(items[0], signature)
            return
        merged = {k: np.concatenate([p.inputs[k] for p in items]) for k in items[0].inputs}
        total = sum(p.rows for p in items)
        try:
            out = await self._call(merged, signature, min(p.deadline for p in items))
        except (sberr.InvalidInput, sberr.ExecutionFailed):
            await asyncio.gather(*(self._alone(p, signature) for p in items))
            return
        except BaseException as exc:  # noqa: BLE001 - a worker failure is every member's failure
            for p in items:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        if any(a.ndim == 0 or a.shape[0] != total for a in out.values()):
            await asyncio.gather(*(self._alone(p, signature) for p in items))
            return
        self.batches += 1
        self.batched_requests += len(items)
        start = 0
        for p in items:
            part = {k: a[start:start + p.rows] for k, a in out.items()}
            start += p.rows
            if not p.future.done():
                p.future.set_result(part)

    async def _alone(self, p: _Pending, signature: str | None) -> None:
        try:
            result: Any = await self._call(p.inputs, signature, p.deadline)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
            if not p.future.done():
                p.future.set_exception(exc)
            return
        if not p.future.done():
            p.future.set_result(result)
