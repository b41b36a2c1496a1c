"""The scan result model and the renderer interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

from modelwarden.analysis.interface import Finding, Severity
from modelwarden.record import field, record


@record
class ScanError:
    """An input that could not be read: the path and what is wrong with it."""

    path: str
    message: str


@record
class SkippedFile:
    """A file a directory walk did not scan, and why (unrecognised format, symbolic link, special file)."""

    path: str
    reason: str


EXIT_EMPTY = 4  # nothing to scan: no model artifact in the inputs (a CI gate pointed at the wrong folder)


@record
class ArtifactSummary:
    display: str
    path: str
    format: str
    graphs: int = 0
    functions: int = 0
    nodes: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


@record
class CallGraphSketch:
    """The shape of one graph's call graph, for pictures (HTML report).

    ``functions`` includes the top-level body ("<graph>"); ``edges`` are
    (caller, callee, label) with label like "cond/If[then_branch]"; ``entries``
    are (entry label, function or "<graph>") pairs.
    """

    artifact: str
    graph: str
    functions: tuple[str, ...]
    edges: tuple[tuple[str, str, str], ...]
    entries: tuple[tuple[str, str], ...]


@record(slots=False)
class Report:
    """Everything one scan produced.  ``findings`` excludes suppressed ones."""

    tool_version: str
    policy: str
    fail_on: Severity
    artifacts: tuple[ArtifactSummary, ...]
    findings: tuple[Finding, ...]
    suppressed: tuple[Finding, ...] = ()
    errors: tuple[ScanError, ...] = ()
    duration_s: float = 0.0
    inputs: tuple[str, ...] = ()
    callgraphs: tuple[CallGraphSketch, ...] = ()  # filled when the scan is asked for them
    engine: dict[str, int | str] = field(default_factory=dict)  # how it ran: workers, cached, retried
    skipped: tuple[SkippedFile, ...] = ()  # files under the inputs that were not scanned, and why
    allow_empty: bool = False  # a scan that found no artifact passes (exit 0) instead of exit 4
    # rule id -> name, as the processes that analysed the artifacts reported them (a pool's
    # results): renderers look up the registry only for the others
    rule_names: Mapping[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out = {s.label: 0 for s in Severity}
        for f in self.findings:
            out[f.severity.label] += 1
        return out

    def failing(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity >= self.fail_on)

    @property
    def empty(self) -> bool:
        """Nothing was scanned and nothing failed to read: no model artifact in the inputs."""
        return not self.artifacts and not self.errors

    def skipped_reasons(self) -> dict[str, int]:
        """How many files were not scanned, per reason (most common first)."""
        out: dict[str, int] = {}
        for s in self.skipped:
            out[s.reason] = out.get(s.reason, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def exit_code(self) -> int:
        """0: clean at the threshold; 1: findings at or above it; 2: an input could not be read;
        4 (:data:`EXIT_EMPTY`): no model artifact found, unless ``allow_empty``."""
        if self.errors:
            return 2
        if self.empty and not self.allow_empty:
            return EXIT_EMPTY
        return 1 if self.failing() else 0


class Renderer(ABC):
    """One module per output format implements this."""

    name: str

    @abstractmethod
    def render(self, report: Report) -> str:
        """The whole report as text (the CLI writes it to stdout or --output)."""
