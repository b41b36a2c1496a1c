"""A pool of sandboxed workers per model version.

Each worker is a :class:`modelwarden.sandbox.Sandbox` holding the model warm.  A request
takes an idle worker, first come, first served (:class:`IdleWorkers`; waiting at most until its
deadline, else 503 + Retry-After),
runs ``predict`` (awaited on the event loop: the request goes into the worker's shared-memory
region and the loop waits for its doorbell; only JSON-channel calls and kills use a thread), and
gives the worker back.  When a call kills its worker
(crash, deadline, memory limit, protocol violation) the request gets that error and a
replacement starts in the background, with exponential back-off if replacements keep
failing; other workers, versions and models are untouched.

Warm spares: ``spares`` extra workers are started (model loaded, TensorFlow imported) once the
pool serves, and held back.  When a call kills a worker, a spare takes its place at once — the
next request is served by a worker that is already warm (measured: ``replace_ms`` in the
``worker_restarted`` event and the admin workers endpoint) — and a new spare starts in the
background.

Worker template (on by default, ``template=False`` / ``MODELWARDEN_WORKER_TEMPLATE=0`` to turn it
off): every worker - first ones, spares, replacements - is forked from this server process's
pre-initialised TensorFlow template (:mod:`modelwarden.sandbox.template`) and then hardened
exactly like a fresh one, so a replacement without a spare costs a model load, not a
TensorFlow start (docs/sandbox.md has the fork-safety measurements and figures).

With ``batching`` set, concurrent requests share worker calls (:mod:`modelwarden.server.batching`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from modelwarden.sandbox import protocol
from modelwarden.sandbox.interface import SandboxLimits
from modelwarden.server.batching import Batcher, BatchingConfig
from modelwarden.server.limits import RequestError


WARMUP_TIMEOUT_S = 10.0


class IdleWorkers:
    """Idle workers, handed out first come, first served.

    A released worker goes straight to the request that has waited longest.  ``asyncio.Queue`` does
    not do that: a getter it wakes takes the item only when it next runs, and a request arriving
    meanwhile takes it first (``get_nowait`` on a non-empty queue), sending the woken one to the back
    of the line.  Measured under ``bench_serve.py`` (8 clients, 2 workers at ~3,000 requests/s):
    groups of ~5 requests waited 13-66 ms for a worker while every call took under 10 ms, and wrk's
    p99 was ~45 ms against ~2.5 ms at the median.
    Invariant: while a worker is idle, no request is waiting (``put`` serves a waiter first).
    """

    def __init__(self) -> None:
        self._workers: collections.deque[Worker] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[Worker]] = collections.deque()

    def qsize(self) -> int:
        return len(self._workers)

    def put(self, worker: Worker) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # skip requests that timed out or were cancelled
                waiter.set_result(worker)
                return
        self._workers.append(worker)

    async def get(self, timeout: float) -> Worker:
        """An idle worker, or :class:`TimeoutError` after ``timeout`` seconds."""
        if self._workers:
            return self._workers.popleft()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.put(waiter.result())  # handed a worker as the deadline hit: the next in line gets it
            else:
                waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            raise


def warmup_inputs(specs: dict) -> dict:
    """Zeros (empty strings) of each input's shape, unknown dimensions as 1."""
    out = {}
    for name, spec in specs.items():
        shape = tuple(1 if d is None else d for d in (spec.shape if spec.shape is not None else (1,)))
        if spec.dtype == protocol.STRING:
            out[name] = protocol.string_array([b""] * int(np.prod(shape)), shape)
        else:
            out[name] = np.zeros(shape, protocol.DTYPES.get(spec.dtype, spec.dtype))
    return out


@dataclass
class Worker:
    sandbox: Any  # modelwarden.sandbox.Sandbox
    model: Any  # SandboxedModel
    started: float = field(default_factory=time.time)
    busy: bool = False
    calls: int = 0

    @property
    def pid(self) -> int | None:
        w = getattr(self.sandbox, "_worker", None)
        proc = getattr(getattr(w, "proc", None), "proc", None)
        return getattr(proc, "pid", None)


@dataclass
class PoolSpec:
    path: str
    limits: SandboxLimits
    backend: str
    policy: str | None
    fail_on: str | None
    size: int
    spares: int = 0
    batching: BatchingConfig | None = None
    template: bool = True  # fork workers from the process's TensorFlow template (namespaces backend)


class WorkerPool:
    """``size`` warm sandboxed workers for one model version."""

    def __init__(self, label: str, spec: PoolSpec, loader: concurrent.futures.Executor,
                 on_event: Callable[[str, dict], None]) -> None:
        self.label = label
        self.spec = spec
        self._loader = loader
        self._calls = concurrent.futures.ThreadPoolExecutor(max_workers=spec.size, thread_name_prefix=f"mw-{label}")
        self._idle = IdleWorkers()
        self.workers: list[Worker] = []
        self.signatures: dict[str, Any] = {}
        self.restarts = 0
        self._failures = 0  # consecutive failed starts (back-off)
        self._closed = False
        self._on_event = on_event
        self.last_error = ""
        self._spares: list[Worker] = []
        self._spares_starting = 0
        self.last_replace_ms: float | None = None
        self._batcher = Batcher(spec.batching, self._call, self._idle.qsize,
                                lambda: sum(w.busy for w in self.workers)) if spec.batching else None

    def _start_one(self) -> Worker:
        from modelwarden.sandbox.client import Sandbox

        sb = Sandbox(self.spec.limits, backend=self.spec.backend, policy=self.spec.policy, fail_on=self.spec.fail_on,
                     template=self.spec.template)
        try:
            # the registry ran the host scan gate once for this version; the worker still re-checks
            # the exact bytes TensorFlow loads, inside the sandbox, before importing TensorFlow.
            model = sb.load(self.spec.path, scan=False, recheck=True)
        except BaseException:
            sb.close()
            raise
        if self._closed:  # stopped while this replacement started: nobody will ever _add() it
            sb.close()
            raise RuntimeError(f"pool {self.label} closed while a worker started")
        return Worker(sb, model)

    async def start(self) -> None:
        """Start every worker; raises the first start error if none could start."""
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(self._loader, self._start_one)
                                         for _ in range(self.spec.size)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for r in results:
            if isinstance(r, Worker):
                self._add(r)
        if not self.workers:
            raise errors[0]
        for _ in errors:  # partial start: keep trying in the background
            self._schedule_replacement("start failed")
        self._schedule_spares()

    def _schedule_spares(self) -> None:
        if not self._closed and len(self._spares) + self._spares_starting < self.spec.spares:
            self._spares_starting += 1
            asyncio.get_running_loop().create_task(self._start_spare())

    def _start_warm_spare(self) -> Worker:
        """A started worker that has also run each signature once on zeros: TensorFlow's first call
        (function tracing, kernel set-up) is paid here, not by the request that meets the spare."""
        w = self._start_one()
        for name, sig in w.model.signatures.items():
            try:
                w.model.predict(warmup_inputs(sig.inputs), name, WARMUP_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - zeros may be invalid for the model; warm-up is best effort
                pass
            if not w.sandbox.alive:
                raise RuntimeError("the spare worker died during its warm-up call")
        return w

    async def _start_spare(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            w = await loop.run_in_executor(self._loader, self._start_warm_spare)
        except Exception as exc:  # noqa: BLE001 - no spare: replacements fall back to a cold start
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self._on_event("worker_start_failed", {"pool": self.label, "error": self.last_error, "spare": True})
            return
        finally:
            self._spares_starting -= 1
        if self._closed:
            w.sandbox.close()
            return
        self._spares.append(w)
        self._on_event("spare_ready", {"pool": self.label, "pid": w.pid})
        self._schedule_spares()

    def _add(self, w: Worker) -> None:
        if self._closed:
            w.sandbox.close()
            return
        if not self.signatures:
            self.signatures = dict(w.model.signatures)
        self.workers.append(w)
        self._idle.put(w)

    @property
    def alive(self) -> int:
        return sum(1 for w in self.workers if w.sandbox.alive)

    async def predict(self, inputs: dict, signature: str | None, deadline: float) -> dict:
        if self._batcher is not None:
            return await self._batcher.submit(inputs, signature, deadline)
        return await self._call(inputs, signature, deadline)

    async def _call(self, inputs: dict, signature: str | None, deadline: float) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RequestError(504, "request deadline exceeded before a worker was free", kind="deadline")
        try:
            worker = await self._idle.get(remaining)
        except (asyncio.TimeoutError, TimeoutError):
            raise RequestError(503, f"all workers of {self.label} are busy or restarting", retry_after=1.0,
                               kind="overloaded") from None
        worker.busy = True
        timeout = max(0.05, deadline - time.monotonic())
        if self.spec.limits.timeout_s:
            timeout = min(timeout, self.spec.limits.timeout_s)
        try:
            # awaited on the loop (shared memory + doorbell); only the JSON path and kills use a thread
            out = await worker.model.predict_async(inputs, signature, timeout, self._calls)
        except BaseException as exc:
            self._release(worker, exc)
            raise
        self._release(worker, None)
        return out

    def _release(self, worker: Worker, exc: BaseException | None) -> None:
        worker.busy = False
        worker.calls += 1
        if worker.sandbox.alive and not self._closed:
            self._idle.put(worker)
            if self._batcher is not None:
                self._batcher.worker_free()
            return
        # the call killed the worker: drop it, start another
        if worker in self.workers:
            self.workers.remove(worker)
        worker.sandbox.close()
        reason = getattr(exc, "code", None) or "died"
        self._on_event("worker_lost", {"pool": self.label, "reason": reason, "pid": worker.pid})
        if not self._closed and self._take_spare(reason):
            return
        self._schedule_replacement(reason)

    def _take_spare(self, reason: str) -> bool:
        """Put a warm spare in the lost worker's place now; start the next spare in the background."""
        t0 = time.monotonic()
        while self._spares:
            w = self._spares.pop(0)
            if not w.sandbox.alive:
                w.sandbox.close()
                continue
            self._add(w)
            self.restarts += 1
            self.last_replace_ms = round((time.monotonic() - t0) * 1000, 3)
            self._on_event("worker_restarted", {"pool": self.label, "reason": reason, "pid": w.pid, "spare": True,
                                                "replace_ms": self.last_replace_ms})
            self._schedule_spares()
            return True
        return False

    def _schedule_replacement(self, reason: str) -> None:
        if self._closed:
            return
        asyncio.get_running_loop().create_task(self._replace(reason))

    async def _replace(self, reason: str) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            if self._failures:
                await asyncio.sleep(min(60.0, 0.5 * 2 ** min(self._failures, 7)))
            t0 = time.monotonic()
            try:
                w = await loop.run_in_executor(self._loader, self._start_one)
            except Exception as exc:  # noqa: BLE001 - keep serving; report and retry
                self._failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                self._on_event("worker_start_failed", {"pool": self.label, "error": self.last_error})
                continue
            self._failures = 0
            self.restarts += 1
            self.last_replace_ms = round((time.monotonic() - t0) * 1000, 3)
            self._on_event("worker_restarted", {"pool": self.label, "reason": reason, "pid": w.pid, "spare": False,
                                                "replace_ms": self.last_replace_ms})
            self._add(w)
            return

    def batching_stats(self) -> dict | None:
        b = self._batcher
        return None if b is None else {"batches": b.batches, "batched_requests": b.batched_requests}

    @property
    def spares(self) -> list[dict]:
        return [{"pid": w.pid, "alive": w.sandbox.alive, "started": round(w.started, 3)} for w in self._spares]

    def info(self) -> list[dict]:
        return [{"pid": w.pid, "busy": w.busy, "alive": w.sandbox.alive, "calls": w.calls,
                 "started": round(w.started, 3)} for w in self.workers]

    def close(self) -> None:
        self._closed = True
        for w in self.workers + self._spares:
            w.sandbox.close()
        self.workers.clear()
        self._spares.clear()
        self._calls.shutdown(wait=False, cancel_futures=True)


def pool_limits(memory_bytes: int, timeout_s: float | None, max_processes: int) -> SandboxLimits:
    kw: dict[str, Any] = {"memory_bytes": memory_bytes, "max_processes": max_processes}
    if timeout_s:
        kw["timeout_s"] = timeout_s
    else:
        kw["timeout_s"] = 3600.0  # the request deadline bounds every call
    kw["cpu_seconds"] = 86400  # lifetime CPU budget of a warm worker; when spent it is replaced
    return SandboxLimits(**kw)
