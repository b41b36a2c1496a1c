"""The unit of work every engine runs, its result, and the Engine interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from modelwarden.analysis.interface import Finding, ScanOptions
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits
from modelwarden.policy.interface import Policy
from modelwarden.record import field, record
from modelwarden.report.interface import ArtifactSummary, CallGraphSketch, ScanError


@record(slots=False)
class ScanJob:
    """What every artifact of one scan is analysed with (shared by all its units of work)."""

    policy: Policy
    options: ScanOptions = field(default_factory=ScanOptions)
    limits: Limits = DEFAULT_LIMITS
    callgraphs: bool = False


@record(slots=False)
class ArtifactResult:
    """The outcome of scanning one candidate: a summary and pre-policy findings, or errors."""

    summary: ArtifactSummary | None
    findings: tuple[Finding, ...] = ()
    errors: tuple[ScanError, ...] = ()
    sketches: tuple[CallGraphSketch, ...] = ()
    cached: bool = False  # served from the results store, not analysed again
    # rule id -> rule name for the findings, when the result came from another process (a record):
    # the parent of a pool then renders names without importing every rule module itself
    rule_names: Mapping[str, str] = field(default_factory=dict)


Progress = Callable[[int, int, str], None]


@record(frozen=False, slots=False)
class EngineStats:
    """What an engine did beyond the results themselves (shown in reports and bench/)."""

    workers: int = 1
    analysed: int = 0
    cached: int = 0
    retried: int = 0  # units of work resubmitted after a worker or node was lost


class Engine(ABC):
    """Runs ``scan_one`` over candidates and yields ``(index, result)`` as they complete."""

    name: str = ""

    def __init__(self) -> None:
        self.stats = EngineStats()

    @abstractmethod
    def run(self, candidates: Sequence[Candidate], job: ScanJob) -> Iterator[tuple[int, ArtifactResult]]:
        """Every candidate's result exactly once, in completion order (the caller re-orders)."""

    def run_lazily(self, candidates: Iterable[Candidate], expected: int,
                   job: ScanJob) -> Iterator[tuple[int, ArtifactResult]]:
        """:meth:`run` over candidates produced while it runs (at most ``expected``; indices in
        the order they were produced).  Engines that can start before the last one override it."""
        return self.run(list(candidates), job)

    prestart_at: int = 0  # artifacts found that make :meth:`prestart` worth calling (0: never)

    def prestart(self, job: ScanJob, found: int) -> None:
        """Get ready for ``job`` while the caller is still finding artifacts (``found`` so far);
        engines that have nothing to get ready ignore it."""

    def close(self) -> None:
        """Release workers (idempotent)."""
