"""Choosing an engine and a store, and running a scan's candidates through them in order."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from typing import TYPE_CHECKING

from modelwarden.engine.interface import ArtifactResult, Engine, Progress, ScanJob
from modelwarden.errors import UsageError
from modelwarden.formats.interface import Candidate

if TYPE_CHECKING:
    from modelwarden.engine.store import ResultStore


def make_engine(engine: "Engine | str | None", jobs: int | None = None, address: str | None = None) -> Engine:
    """``None``/"local": this process or a fork pool; "ray": a Ray cluster (``address``)."""
    if jobs is not None and (type(jobs) is not int or jobs < 1):
        raise UsageError(f"jobs must be a positive integer, got {jobs!r}")
    if isinstance(engine, Engine):
        return engine
    if engine in (None, "local"):
        from modelwarden.engine.local import ForkPoolEngine

        return ForkPoolEngine(jobs)
    if engine == "ray":
        from modelwarden.engine.ray_engine import RayEngine

        return RayEngine(address=address or "auto")
    raise UsageError(f"unknown scan engine {engine!r} (choose local or ray)")


def make_store(cache: "ResultStore | str | os.PathLike[str] | None") -> "ResultStore | None":
    if cache is None:
        return None
    from modelwarden.engine.store import ResultStore  # sqlite3 and hashing only when a store is used

    return cache if isinstance(cache, ResultStore) else ResultStore(cache)


def run_ordered(candidates: Sequence[Candidate], job: ScanJob, *, engine: Engine | None = None,
                store: "ResultStore | None" = None, progress: Progress | None = None) -> Iterator[ArtifactResult]:
    """Every candidate's result in candidate order; stored results are reused, new ones stored."""
    import contextlib

    from modelwarden.engine.local import SerialEngine

    with store.batch() if store is not None else contextlib.nullcontext():
        yield from _run_ordered(candidates, job, engine or SerialEngine(), store, progress)


def _run_ordered(candidates: Sequence[Candidate], job: ScanJob, engine: Engine, store: "ResultStore | None",
                 progress: Progress | None) -> Iterator[ArtifactResult]:
    total = len(candidates)
    results: dict[int, ArtifactResult] = {}
    keys: dict[int, str] = {}
    todo: list[int] = []

    def misses() -> Iterator[Candidate]:
        """The candidates to analyse, found while the engine runs: each artifact is hashed and
        looked up when the engine asks for more work, so hashing overlaps analysis."""
        for i, cand in enumerate(candidates):
            key = store.key(cand, job) if store is not None else None
            hit = store.get(key) if store is not None and key is not None else None
            if hit is not None:
                results[i] = hit
                engine.stats.cached += 1
                continue
            todo.append(i)
            if key is not None:
                keys[i] = key
            yield cand

    done = 0
    nxt = 0
    # no progress call before the engine starts: a fork pool must fork before the bar's thread exists
    try:
        for j, result in engine.run_lazily(misses(), total, job):
            i = todo[j]
            results[i] = result
            if store is not None and i in keys:
                store.put(keys[i], result)
            done += 1
            if progress:
                progress(done + engine.stats.cached, total, candidates[i].display)
            while nxt in results:
                yield results.pop(nxt)
                nxt += 1
        while nxt < total:
            yield results.pop(nxt)
            nxt += 1
    finally:
        if progress:
            progress(total, total, "")
