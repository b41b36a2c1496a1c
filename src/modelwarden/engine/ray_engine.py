"""Scanning on a Ray cluster: artifacts (small ones in batches) as Ray tasks.

Discovery and the results store stay on the driver; nodes must see the same filesystem paths
(a shared mount, as on a model-hub mirror) and have modelwarden installed.  Each task returns
plain JSON records (:mod:`records`) that the driver validates.  Ray itself moves task
arguments and return values with pickle between the driver and its own workers: run the
cluster's workers as the same trusted code (they are modelwarden scanner processes that parse,
never execute, the artifacts).

Faults: tasks are submitted without Ray's own retries so the driver can count and attribute
them.  A task whose worker or node is lost is resubmitted (counted in ``stats.retried``); a
batch that fails twice is split into single-artifact tasks, and a single artifact whose task
is lost ``max_attempts`` times, or runs past ``task_timeout_s``, is reported as an error for
that artifact — never lost, never counted twice.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from modelwarden.engine import records
from modelwarden.engine.interface import ArtifactResult, Engine, ScanJob
from modelwarden.errors import UsageError
from modelwarden.formats.interface import Candidate
from modelwarden.report.interface import ScanError

_remote_fn: Any = None


def _scan_batch(cands: list[Candidate], job: ScanJob) -> list[str]:
    """Runs inside a Ray worker."""
    from modelwarden.scanner import paused_gc, scan_candidate

    with paused_gc():
        return [records.dumps(scan_candidate(c, job)) for c in cands]


_ADDRESS = re.compile(r"^(?:ray://)?(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):\d{1,5}$")


def check_address(address: str) -> str:
    """``auto``, ``local``, ``HOST:PORT`` or ``ray://HOST:PORT``; anything else is a usage error."""
    if address in ("auto", "local") or _ADDRESS.match(address or ""):
        return address
    raise UsageError(f"--ray {address!r}: not a Ray cluster address (HOST:PORT, ray://HOST:PORT, auto or local)")


def connect(address: str) -> tuple[Any, bool]:
    """Join the cluster at ``address`` (``auto``: a running one, else start a local one).
    Returns (ray, whether this call started Ray)."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False}
    try:
        if address == "auto":
            try:
                ray.init(address="auto", **kwargs)
                return ray, False
            except ConnectionError:  # no running cluster: start a local one
                pass
        if address in ("auto", "local"):
            ray.init(**kwargs)
            return ray, True
        ray.init(address=address, **kwargs)
        return ray, False
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; the user needs the reason, not a trace
        raise UsageError(f"cannot connect to the Ray cluster at {address}: {type(exc).__name__}: {exc}"[:1000]) from None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'modelwarden[ray]'") from None
    return ray


@dataclass
class _Task:
    indices: list[int]
    attempt: int
    started: float


class RayEngine(Engine):
    name = "ray"

    def __init__(self, address: str = "auto", *, batch_size: int | None = None, task_timeout_s: float = 600.0,
                 max_attempts: int = 3) -> None:
        super().__init__()
        self.address = check_address(address)
        self.batch_size = batch_size
        self.task_timeout_s = task_timeout_s
        self.max_attempts = max_attempts
        self._started_here = False

    def _connect(self) -> Any:
        ray, started = connect(self.address)
        self._started_here = self._started_here or started
        return ray

    def close(self) -> None:
        if self._started_here:
            ray = _import_ray()
            ray.shutdown()
            self._started_here = False

    def _remote(self, ray: Any) -> Any:
        global _remote_fn
        if _remote_fn is None:
            _remote_fn = ray.remote(num_cpus=1, max_retries=0)(_scan_batch)
        return _remote_fn

    def run(self, candidates: Sequence[Candidate], job: ScanJob) -> Iterator[tuple[int, ArtifactResult]]:
        if not candidates:
            return
        ray = self._connect()
        remote = self._remote(ray)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.stats.workers = len([n for n in ray.nodes() if n.get("Alive")])
        size = self.batch_size or max(1, min(64, len(candidates) // (4 * cpus)))
        job_ref = ray.put(job)
        tasks: dict[Any, _Task] = {}

        def submit(indices: list[int], attempt: int) -> None:
            ref = remote.options(scheduling_strategy="SPREAD").remote([candidates[i] for i in indices], job_ref)
            tasks[ref] = _Task(indices, attempt, time.monotonic())

        for start in range(0, len(candidates), size):
            submit(list(range(start, min(start + size, len(candidates)))), 1)
        while tasks:
            ready, _ = ray.wait(list(tasks), num_returns=1, timeout=1.0)
            for ref in ready:
                task = tasks.pop(ref)
                try:
                    payloads = ray.get(ref)
                except (ray.exceptions.RayTaskError, ray.exceptions.TaskCancelledError) as exc:
                    # the task's own code raised: scan_candidate catches input errors, so this is a bug
                    yield from self._errors(candidates, task.indices, f"the scan task failed ({type(exc).__name__})")
                    continue
                except ray.exceptions.RayError as exc:  # worker or node lost
                    yield from self._lost(candidates, task, exc, submit)
                    continue
                yield from self._decode(candidates, task.indices, payloads)
            now = time.monotonic()
            for ref, task in list(tasks.items()):
                if now - task.started > self.task_timeout_s:
                    ray.cancel(ref, force=True)
                    del tasks[ref]
                    if len(task.indices) > 1:  # find the slow one: the others get their own tasks
                        self.stats.retried += len(task.indices)
                        for i in task.indices:
                            submit([i], task.attempt + 1)
                    else:
                        yield from self._errors(candidates, task.indices,
                                                f"scanning it took longer than {self.task_timeout_s:g}s; its task was cancelled")

    def _lost(self, candidates: Sequence[Candidate], task: _Task, exc: Exception, submit: Any) -> Iterator[tuple[int, ArtifactResult]]:
        if task.attempt >= self.max_attempts:
            yield from self._errors(candidates, task.indices, f"its scan task was lost {task.attempt} times "
                                    f"({type(exc).__name__}: a worker or node died)")
            return
        self.stats.retried += 1
        if len(task.indices) > 1 and task.attempt >= 2:  # isolate an artifact that kills its worker
            for i in task.indices:
                submit([i], task.attempt + 1)
        else:
            submit(task.indices, task.attempt + 1)

    def _decode(self, candidates: Sequence[Candidate], indices: list[int], payloads: object) -> Iterator[tuple[int, ArtifactResult]]:
        if not isinstance(payloads, list) or len(payloads) != len(indices):
            yield from self._errors(candidates, indices, "the scan task returned a malformed result")
            return
        for i, payload in zip(indices, payloads):
            try:
                result = records.loads(payload) if isinstance(payload, str) else None
            except records.RecordError:
                result = None
            self.stats.analysed += 1
            yield i, result or ArtifactResult(None, errors=(ScanError(candidates[i].path,
                                                                      "the scan task returned a malformed result"),))

    def _errors(self, candidates: Sequence[Candidate], indices: list[int], message: str) -> Iterator[tuple[int, ArtifactResult]]:
        for i in indices:
            self.stats.analysed += 1
            yield i, ArtifactResult(None, errors=(ScanError(candidates[i].path, message),))
