"""Local engines: this process, or a pool of forked scanner processes (one per core).

The pool forks after the parent has imported the scanner, so a worker starts in about a
millisecond; it loads the rules and the catalog itself (in parallel with its siblings and, when
the pool was started early with :meth:`ForkPoolEngine.prestart`, with the parent's walk of the
inputs), or inherits them from a parent that had them already.  Work is handed
out a few artifacts at a time over a pipe (the fastest worker takes the next ones), as soon as the
caller produces them: candidates may still be arriving (the results store hashing the next
artifact) while the workers analyse the first.  Results come back as length-prefixed JSON
records (:mod:`records`), never pickles, a batch at a time: a worker answers when it finishes the
last task of a batch (about 25 ms of work at the measured pace: up to 16 small artifacts, a
large one alone), while the next batch is already queued, so the parent wakes once per batch
(not per artifact) and never takes a core from the workers for long, and no worker holds a long
queue of slow artifacts that an idle sibling could have taken.  The worker encodes a batch's
records one after another (warm caches: a record encoded right after its scan cost twice as
much) and reads and decodes its tasks as many at a time as have arrived.  The parent never
blocks writing tasks: a worker may itself be blocked sending results, and paths near PATH_MAX
make both more than a pipe holds.  A worker that dies
while scanning is replaced; the artifact is retried once in a fresh worker and then reported
as an error, never lost and never counted twice.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import struct
import time
from collections.abc import Iterable, Iterator, Sequence

from modelwarden.engine import records
from modelwarden.engine.interface import ArtifactResult, Engine, ScanJob
from modelwarden.formats.interface import Candidate
from modelwarden.ir import ArtifactFormat
from modelwarden.record import field, record
from modelwarden.report.interface import ScanError

_LEN = struct.Struct(">Q")
_TASK = struct.Struct(">I")  # length of a task: [index, path, format, display, claimed, reply] as JSON
POOL_MIN_ARTIFACTS = 16  # below this a pool's start-up costs more than it saves
MAX_ATTEMPTS = 2
# A worker answers a batch of results at once, so the parent wakes once per batch, not per artifact;
# the batch is about BATCH_WORK_S of work at the pace measured so far: small artifacts go up to
# BATCH_MAX at a time, large ones one at a time (a worker never holds a long queue of slow
# artifacts that an idle sibling could have taken).  Twice a batch is queued per worker (the next
# batch waits while the parent reads one).
BATCH_MAX = 16
BATCH_FIRST = 4  # before the first results have given a pace
BATCH_WORK_S = 0.025
TAIL_DEPTH = 2  # queued per worker near the end of the work, each answered at once
READ_SIZE = 1 << 16  # per read of results (not more: a larger buffer is an mmap and munmap per read)


def auto_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class SerialEngine(Engine):
    name = "serial"

    def run(self, candidates: Sequence[Candidate], job: ScanJob) -> Iterator[tuple[int, ArtifactResult]]:
        return self.run_lazily(candidates, len(candidates), job)

    def run_lazily(self, candidates: Iterable[Candidate], expected: int,
                   job: ScanJob) -> Iterator[tuple[int, ArtifactResult]]:
        from modelwarden.scanner import scan_candidate

        for i, cand in enumerate(candidates):
            self.stats.analysed += 1
            yield i, scan_candidate(cand, job)


@record(frozen=False, slots=False)
class _Proc:
    pid: int
    tasks: int  # fd: parent -> worker, candidates
    results: int  # fd: worker -> parent, records
    buf: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)  # tasks not written yet (the pipe was full)
    queued: list[int] = field(default_factory=list)  # indices sent and not answered yet, in order
    since: float = 0.0  # when its last answer came, or its first tasks went out (the pace's clock)
    answered: int = 0  # results read since then
    replying: set[int] = field(default_factory=set)  # queued indices whose task asks for a reply


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _FrameTooLarge(ValueError):
    """A frame's length prefix says more than the reader accepts."""


def _frames(buf: bytearray, header: struct.Struct, limit: int | None = None) -> Iterator[bytes]:
    """The whole length-prefixed frames at the start of ``buf``, each removed as it is taken (a
    partial one stays for the next read); :class:`_FrameTooLarge` for one longer than ``limit``."""
    while len(buf) >= header.size:
        (size,) = header.unpack_from(buf)
        if limit is not None and size > limit:
            raise _FrameTooLarge(size)
        if len(buf) < header.size + size:
            return
        payload = bytes(buf[header.size:header.size + size])
        del buf[:header.size + size]
        yield payload


class _TaskReader:
    """The tasks on a worker's pipe, read and decoded as many at a time as have arrived (one read
    per batch the parent wrote, not two per task; decoded together, while the decoder is warm)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()

    def batch(self) -> list[tuple[Candidate, bool]]:
        """Every task that has arrived whole (waiting for one if none has), as (candidate, whether
        to reply after it); empty at the end of the pipe (the parent is done or gone)."""
        while True:
            out = []
            for data in _frames(self.buf, _TASK):
                _, path, fmt, display, claimed, reply = json.loads(data)  # from the parent, written by _task()
                out.append((Candidate(path, ArtifactFormat(fmt), display, tuple(claimed)), reply))
            if out:
                return out
            chunk = os.read(self.fd, READ_SIZE)
            if not chunk:
                return []
            self.buf += chunk


def _task(idx: int, cand: Candidate, reply: bool) -> bytes:
    """A candidate for a worker (ASCII JSON: a path's lone surrogates survive as escapes);
    ``reply``: send the results held so far once this one is done."""
    data = json.dumps([idx, cand.path, cand.format.value, cand.display, list(cand.claimed), reply]).encode("ascii")
    return _TASK.pack(len(data)) + data


def _worker_loop(tasks: int, results: int, job: ScanJob) -> None:
    from modelwarden.scanner import scan_candidate

    _warm_up()  # (a no-op when the parent had loaded them before forking)
    reader = _TaskReader(tasks)
    held: list[tuple[str, ArtifactResult | Exception]] = []
    while batch := reader.batch():
        for cand, reply in batch:
            try:
                held.append((cand.path, scan_candidate(cand, job)))
            except Exception as exc:  # noqa: BLE001 - scan_candidate already catches input errors
                held.append((cand.path, exc))
            if reply:  # the batch's records are encoded together, one after another (warm: cheaper)
                out = []
                for path, result in held:
                    payload = _encode(path, result)
                    out += (_LEN.pack(len(payload)), payload)
                _write_all(results, b"".join(out))
                held.clear()


def _encode(path: str, result: ArtifactResult | Exception) -> bytes:
    """A result's record, or the record of an internal error for an exception (raised while
    scanning or while encoding the result)."""
    if not isinstance(result, Exception):
        try:
            return records.dumps(result).encode("utf-8", "surrogatepass")
        except Exception as exc:  # noqa: BLE001
            result = exc
    return records.dumps(ArtifactResult(None, errors=(ScanError(
        path, f"internal error while scanning ({type(result).__name__})"),))).encode("utf-8", "surrogatepass")


def _warm_up() -> None:
    """Load what every scan needs once per process (the rule registry and catalog are loaded on
    first use: a one-model scan must not pay for a pool's).  Workers do it themselves, in
    parallel, while the parent is still walking the inputs."""
    from modelwarden.analysis.registry import rule_classes
    from modelwarden.catalog import load_catalog

    rule_classes()
    load_catalog()


class ForkPoolEngine(Engine):
    """``jobs`` forked scanner processes; falls back to serial for small inputs."""

    name = "local"
    prestart_at = POOL_MIN_ARTIFACTS

    def __init__(self, jobs: int | None = None) -> None:
        super().__init__()
        self.jobs = jobs
        self._early: list[_Proc] = []  # workers forked by prestart(), not handed work yet
        self._early_job: ScanJob | None = None

    def run(self, candidates: Sequence[Candidate], job: ScanJob) -> Iterator[tuple[int, ArtifactResult]]:
        return self.run_lazily(candidates, len(candidates), job)

    def prestart(self, job: ScanJob, found: int) -> None:
        """Fork the workers now, when the caller already knows there will be at least ``found``
        artifacts (a pool's worth) but is still looking for the rest: the workers load the rules
        and catalog while the parent walks the inputs, and the first tasks find them ready."""
        if self._early or found < POOL_MIN_ARTIFACTS or not hasattr(os, "fork"):
            return
        n = min(self.jobs if self.jobs is not None else auto_jobs(), found)
        if n <= 1:
            return
        for _ in range(n):
            self._early.append(self._spawn(job, [fd for p in self._early for fd in (p.tasks, p.results)]))
        self._early_job = job

    def close(self) -> None:
        """End workers forked by :meth:`prestart` that never got work (idempotent)."""
        early, self._early = self._early, []
        for p in early:
            _kill(p.pid)
            _reap(p)

    def run_lazily(self, candidates: Iterable[Candidate], expected: int,
                   job: ScanJob) -> Iterator[tuple[int, ArtifactResult]]:
        """The pool starts with the first candidate and takes the others as they come."""
        if self._early and self._early_job is not job:
            self.close()  # forked for another job: they would analyse with its options
        n = len(self._early) or (self.jobs if self.jobs is not None
                                 else (auto_jobs() if expected >= POOL_MIN_ARTIFACTS else 1))
        n = min(n, expected)
        if n <= 1 or not hasattr(os, "fork"):
            self.close()
            serial = SerialEngine()
            yield from serial.run_lazily(candidates, expected, job)
            self.stats.analysed += serial.stats.analysed
            return
        source = iter(candidates)
        first = next(source, None)
        if first is None:  # nothing to analyse (every candidate was in the results store): no pool
            self.close()
            return
        self.stats.workers = n
        yield from self._pool(first, source, job, n, expected)

    def _spawn(self, job: ScanJob, keep: list[int]) -> _Proc:
        t_r, t_w = os.pipe()
        r_r, r_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # worker: never returns into the caller's stack
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                for fd in (t_w, r_r, *keep):
                    os.close(fd)
                _worker_loop(t_r, r_w, job)
            except BaseException:  # noqa: BLE001
                code = 70
            os._exit(code)
        os.close(t_r)
        os.close(r_w)
        os.set_blocking(r_r, False)
        os.set_blocking(t_w, False)  # never blocked on a worker that is itself blocked on its results
        return _Proc(pid, t_w, r_r)

    def _pool(self, first: Candidate, source: Iterator[Candidate], job: ScanJob,
              n: int, expected: int) -> Iterator[tuple[int, ArtifactResult]]:
        candidates = [first]  # every candidate taken from ``source`` so far, by index
        pending = [0]  # indices to hand out next (pop() takes the last): retries, then the next new one
        attempts = [0]  # times an artifact was being read when its worker died
        alone: set[int] = set()  # queued when a worker died, not known whether it was the one being read
        exhausted = False
        procs: dict[int, _Proc] = {}  # by the fd of their results
        writers: dict[int, _Proc] = {}  # by the fd of their tasks, while tasks wait to be written
        sel = selectors.DefaultSelector()
        pace = 0.0  # seconds per artifact in one worker, a moving average over its answers (0: none yet)

        def batch_size() -> int:
            if not pace:
                return BATCH_FIRST
            return max(1, min(BATCH_MAX, int(BATCH_WORK_S / pace)))

        def timed(p: _Proc, k: int) -> None:
            """``p`` answered ``k`` results: the time since its last answer is their pace (``k`` = 0:
            restart ``p``'s clock without a sample)."""
            nonlocal pace
            now = time.monotonic()
            if p.since and k:
                sample = (now - p.since) / k
                pace = sample if not pace else 0.7 * pace + 0.3 * sample
            p.since, p.answered = now, 0

        def take() -> int | None:
            """The next index to hand out: a retry, else the next candidate from ``source``."""
            nonlocal exhausted
            if pending:
                return pending.pop()
            if exhausted:
                return None
            cand = next(source, None)
            if cand is None:
                exhausted = True
                return None
            candidates.append(cand)
            attempts.append(0)
            return len(candidates) - 1

        def parent_fds() -> list[int]:
            return [fd for p in procs.values() for fd in (p.tasks, p.results)]

        def start() -> _Proc:
            p = self._spawn(job, parent_fds())
            procs[p.results] = p
            sel.register(p.results, selectors.EVENT_READ)
            return p

        def flush(p: _Proc) -> None:
            """Write what the pipe takes of ``p``'s tasks; the rest when it has room again (the
            parent must keep reading results meanwhile: the worker may be waiting to send them)."""
            try:
                while p.out:
                    del p.out[:os.write(p.tasks, p.out)]
            except BlockingIOError:
                pass
            except OSError:  # it died: its EOF hands the queue back
                p.out.clear()
            waiting = p.tasks in writers
            if p.out and not waiting:
                writers[p.tasks] = p
                sel.register(p.tasks, selectors.EVENT_WRITE)
            elif waiting and not p.out:
                del writers[p.tasks]
                sel.unregister(p.tasks)

        def feed(p: _Proc) -> None:
            """Top up ``p``'s queue; a worker with nothing queued and nothing left to hand out is retired.
            Near the end (fewer artifacts left than the queues hold) tasks go out in twos, each
            answered at once: the last artifacts go to whichever worker is free, so no worker
            still has a full queue to work through while the other waits."""
            size = batch_size()
            tail = expected - len(candidates) < n * 2 * size
            depth = TAIL_DEPTH if tail else 2 * size
            if not tail and p.queued and depth - len(p.queued) < size:
                return  # part of a batch was read: the queue is topped up a whole batch at a time
            batch = []
            while len(p.queued) + len(batch) < depth and (idx := take()) is not None:
                if idx in alone and (p.queued or batch):
                    pending.append(idx)  # it goes first in a queue of its own (see died())
                    break
                batch.append(idx)
                if idx in alone:
                    break
            if batch:
                if not p.queued:
                    timed(p, 0)  # it was idle: its pace counts from now
                p.queued.extend(batch)
                data = []
                for k, i in enumerate(batch):  # a reply every batch of tasks, and at the end of what is sent
                    reply = tail or (k + 1) % size == 0 or k == len(batch) - 1
                    if reply:
                        p.replying.add(i)
                    data.append(_task(i, candidates[i], reply))
                p.out += b"".join(data)
                flush(p)
            elif not p.queued:
                retire(p)

        def retire(p: _Proc) -> int:
            sel.unregister(p.results)
            del procs[p.results]
            if writers.pop(p.tasks, None) is not None:
                sel.unregister(p.tasks)
            return _reap(p)

        def died(p: _Proc) -> Iterator[tuple[int, ArtifactResult]]:
            """The worker is gone.  If its first queued artifact asked for a reply, nothing finished was
            held back before it: it was being read, and that is an attempt; the rest never started.
            Otherwise the worker may have finished it (and others) and held the results, so which
            artifact it died on is not known: none is charged, and each of them goes out again first
            in a queue of its own, answered at once, where a death is attributed exactly (a hostile
            artifact must not have its siblings reported in its place).  A new worker takes over
            while work is left."""
            _kill(p.pid)
            status = retire(p)
            if p.queued and p.queued[0] not in p.replying:
                alone.update(p.queued)
                pending.extend(reversed(p.queued))
                self.stats.retried += 1
            elif p.queued:
                idx, rest = p.queued[0], p.queued[1:]
                attempts[idx] += 1
                pending.extend(reversed(rest))
                if attempts[idx] < MAX_ATTEMPTS:
                    self.stats.retried += 1
                    pending.append(idx)
                else:
                    self.stats.analysed += 1
                    yield idx, ArtifactResult(None, errors=(ScanError(
                        candidates[idx].path, f"the scanner process died while reading it ({_how(status)}); "
                        f"tried {attempts[idx]} times"),))
            if not pending and (idx := take()) is not None:
                pending.append(idx)  # work is left in the source: a new worker takes it
            if pending:
                feed(start())

        try:
            early, self._early = self._early, []
            for p in early:  # forked by prestart(): already warm
                procs[p.results] = p
                sel.register(p.results, selectors.EVENT_READ)
            for _ in range(n - len(early)):
                start()
            for p in list(procs.values()):
                feed(p)
            while procs:
                for key, _ in sel.select():
                    if (w := writers.get(key.fd)) is not None:
                        flush(w)
                        continue
                    p = procs.get(key.fd)
                    if p is None:
                        continue
                    try:
                        chunk = os.read(p.results, READ_SIZE)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        yield from died(p)
                        continue
                    p.buf += chunk
                    try:
                        for payload in _frames(p.buf, _LEN, records.MAX_RECORD_BYTES):
                            if not p.queued:
                                continue  # nothing was asked of it: ignore
                            idx = p.queued.pop(0)
                            p.answered += 1
                            if idx in p.replying:  # the end of a batch
                                p.replying.discard(idx)
                                timed(p, p.answered)
                            try:
                                result = records.loads(payload)
                            except records.RecordError as exc:
                                result = ArtifactResult(None, errors=(ScanError(
                                    candidates[idx].path, f"the scanner process sent a malformed result ({exc})"),))
                            self.stats.analysed += 1
                            yield idx, result
                    except _FrameTooLarge:  # treated as a death on the next read
                        p.buf.clear()
                        _kill(p.pid)
                    if p.results in procs:
                        feed(p)
        finally:
            for p in list(procs.values()):
                _kill(p.pid)
                retire(p)
            sel.close()


def _reap(p: _Proc) -> int:
    """Close the pipes to a worker and wait for it to exit: its wait status (0 if already reaped)."""
    for fd in (p.tasks, p.results):
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        return os.waitpid(p.pid, 0)[1]
    except ChildProcessError:
        return 0


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            return signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            return f"signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
