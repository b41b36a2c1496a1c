"""The human report: findings grouped by artifact, then errors and a summary line.

Plain text by default; on a colour terminal the same lines are styled with
``rich`` (imported lazily: a plain render must not pay rich's import time).
Every string that came from an artifact goes through :func:`clean` so a node
name cannot carry terminal escape sequences.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from modelwarden.analysis.interface import Finding, Severity
from modelwarden.report import clean
from modelwarden.report.interface import EXIT_EMPTY, ArtifactSummary, Renderer, Report

Segment = tuple[str, str]  # (text, rich style or "")
Line = list[Segment]

SEVERITY_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.HIGH: "bold red",
    Severity.MEDIUM: "bold yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}
UNREACHABLE = "not reachable from any signature"


def use_color(stream: IO[str] | None = None) -> bool:
    """Colour on a terminal unless ``NO_COLOR`` is set (https://no-color.org) or TERM is dumb."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _call_path(f: Finding) -> str:
    loc = f.location
    if loc.call_path:
        return " → ".join(clean(p) for p in loc.call_path)
    if loc.reachability.startswith("unreachable"):
        return UNREACHABLE
    return ""


def _where(f: Finding) -> str:
    loc = f.location
    parts = []
    if loc.file:
        parts.append(clean(loc.file))
    if loc.graph:
        parts.append(f"graph {clean(loc.graph)}")
    if loc.function:
        parts.append(f"function {clean(loc.function)}")
    if loc.node:
        node = f"node {clean(loc.node)}"
        parts.append(f"{node} ({clean(loc.op)})" if loc.op else node)
    elif loc.op:
        parts.append(f"op {clean(loc.op)}")
    return " › ".join(parts)


def _artifact_header(a: ArtifactSummary | None, name: str) -> Line:
    line: Line = [(clean(name), "bold")]
    if a is not None:
        bits = [clean(a.format)] if a.format else []
        if a.graphs or a.functions or a.nodes:
            bits += [_plural(a.graphs, "graph"), _plural(a.functions, "function"), _plural(a.nodes, "node")]
        if bits:
            line.append(("  (" + " · ".join(bits) + ")", "dim"))
    return line


def _finding_lines(f: Finding) -> list[Line]:
    style = SEVERITY_STYLE[f.severity]
    out: list[Line] = [
        [("  ", ""), (f" {f.severity.label.upper():<8} ", style), (" ", ""), (clean(f.rule_id), "bold")]
        + ([(" " + clean(f.capability), "magenta")] if f.capability else [])
        + [("  " + clean(f.message), "")]
    ]
    rows: list[tuple[str, str]] = []
    where = _where(f)
    if where:
        rows.append(("at", where))
    path = _call_path(f)
    if path:
        rows.append(("call path", path))
    reach = f.location.reachability
    if reach and not (reach.startswith("unreachable") and path == UNREACHABLE):
        rows.append(("reachable", clean(reach)))
    for key, value in f.evidence.items():
        rows.append(("evidence", f"{clean(key)}: {clean(value)}"))
    if f.remediation:
        rows.append(("fix", clean(f.remediation)))
    for label, value in rows:
        out.append([(f"      {label:<10} ", "dim"), (value, "green" if label == "fix" else "")])
    return out


def _suppressed_lines(items: list[Finding]) -> list[Line]:
    groups: dict[tuple[str, str], int] = {}
    for f in items:
        key = (f.rule_id, f.suppressed_by)
        groups[key] = groups.get(key, 0) + 1
    out: list[Line] = [[(f"  {_plural(len(items), 'suppressed finding')}:", "dim")]]
    for (rule, why), n in sorted(groups.items()):
        out.append([(f"      {clean(rule)} ×{n}", "dim"), (f"  justification: {clean(why)}", "dim italic")])
    return out


def summary_line(report: Report) -> Line:
    counts = report.counts()
    code = report.exit_code
    verdict = {0: ("PASS", "bold green"), 1: ("FAIL", "bold red"),
               EXIT_EMPTY: ("EMPTY", "bold red")}.get(code, ("ERROR", "bold red"))
    sev = ", ".join(f"{counts[s.label]} {s.label}" for s in sorted(Severity, reverse=True))
    extra = [_plural(len(report.artifacts), "artifact") + " scanned"]
    if report.skipped:
        extra.append(f"{_plural(len(report.skipped), 'file')} not scanned")
    if report.suppressed:
        extra.append(f"{len(report.suppressed)} suppressed")
    if report.errors:
        extra.append(_plural(len(report.errors), "error"))
    return [
        ("summary: ", "bold"),
        (sev, ""),
        (" · " + " · ".join(extra), ""),
        (f" · policy {clean(report.policy)} · threshold {report.fail_on.label} → ", ""),
        (verdict[0], verdict[1]),
        (f" (exit {code})", "dim"),
    ]


def report_lines(report: Report, verbose: bool = False) -> list[Line]:
    """The report as styled lines (styles ignored in plain output)."""
    order = sorted(Severity, reverse=True)
    by_artifact: dict[str, list[Finding]] = {a.display: [] for a in report.artifacts}
    suppressed: dict[str, list[Finding]] = {}
    for f in report.findings:
        by_artifact.setdefault(f.location.artifact, []).append(f)
    for f in report.suppressed:
        by_artifact.setdefault(f.location.artifact, [])
        suppressed.setdefault(f.location.artifact, []).append(f)
    summaries = {a.display: a for a in report.artifacts}
    lines: list[Line] = []
    for name, findings in by_artifact.items():
        lines.append(_artifact_header(summaries.get(name), name))
        findings.sort(key=lambda f: (order.index(f.severity), f.rule_id, f.location.logical()))
        for f in findings:
            lines.extend(_finding_lines(f))
        if not findings:
            lines.append([("  no findings", "green")])
        if name in suppressed:
            lines.extend(_suppressed_lines(suppressed[name]))
        lines.append([])
    if report.errors:
        lines.append([("errors (inputs that could not be read):", "bold red")])
        for e in report.errors:
            lines.append([("  " + clean(e.path), "bold"), (": " + clean(e.message), "")])
        lines.append([])
    lines.extend(_skipped_lines(report, verbose))
    if report.empty:
        hint = "" if report.allow_empty else " (exit 4: is this the right path? --allow-empty accepts an empty scan)"
        lines.append([("no model artifacts found", "bold red" if not report.allow_empty else "yellow"), (hint, "")])
        lines.append([])
    lines.append(summary_line(report))
    return lines


def _skipped_lines(report: Report, verbose: bool) -> list[Line]:
    """Files the directory walk did not scan: counts per reason, every name with ``verbose``."""
    if not report.skipped:
        return []
    reasons = ", ".join(f"{n} {clean(r)}" for r, n in report.skipped_reasons().items())
    head = f"not scanned: {_plural(len(report.skipped), 'file')} ({reasons})"
    out: list[Line] = [[(head, "yellow"), ("" if verbose else " — --verbose lists them", "dim")]]
    if verbose:
        out += [[("  " + clean(s.path), ""), (f"  {clean(s.reason)}", "dim")] for s in report.skipped]
    out.append([])
    return out


class TextRenderer(Renderer):
    """``color=None`` decides from stdout (terminal, NO_COLOR)."""

    name = "text"

    def __init__(self, color: bool | None = None, width: int | None = None, verbose: bool = False) -> None:
        self.color = use_color() if color is None else color
        self.width = width
        self.verbose = verbose  # list every file that was not scanned

    def render(self, report: Report) -> str:
        lines = report_lines(report, self.verbose)
        if not self.color:
            return "".join("".join(text for text, _ in line) + "\n" for line in lines)
        return _render_rich(lines, self.width)


def _render_rich(lines: list[Line], width: int | None) -> str:
    import io
    import shutil

    from rich.console import Console
    from rich.text import Text

    buf = io.StringIO()
    console = Console(
        file=buf, force_terminal=True, width=width or shutil.get_terminal_size().columns,
        highlight=False, emoji=False, markup=False, soft_wrap=True,
    )
    for line in lines:
        console.print(Text.assemble(*((t, s or "") for t, s in line)))
    return buf.getvalue()


class ScanProgress:
    """A ``progress(done, total, current)`` callback drawing a transient bar on ``stream``.

    Nothing is drawn (and rich is not imported) until a scan has at least
    ``min_total`` inputs.  Use as a context manager so the bar is removed.
    """

    def __init__(self, stream: IO[str] | None = None, min_total: int = 2) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.min_total = min_total
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int, current: str) -> None:
        if self._bar is None:
            if total < self.min_total:
                return
            self._start()
        label = clean(current)
        if len(label) > 48:
            label = "…" + label[-47:]
        from rich.markup import escape

        self._bar.update(self._task, completed=done, total=total, description=escape(label))

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(file=self.stream), transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("", total=None)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "ScanProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_for(stream: IO[str] | None = None, enabled: bool = True) -> "ScanProgress | None":
    """A progress callback when ``stream`` is an interactive terminal, else ``None``."""
    stream = sys.stderr if stream is None else stream
    if not enabled or os.environ.get("TERM") == "dumb":
        return None
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return ScanProgress(stream)
