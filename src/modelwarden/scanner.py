"""The scan pipeline: path -> detect -> reader -> IR -> analysis passes -> findings -> policy -> Report.

Nothing here imports TensorFlow or executes anything from the artifact.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import replace
import os
import time
from collections.abc import Callable, Iterator, Sequence

from modelwarden import __version__
from modelwarden.analysis.interface import AnalysisContext, Finding, ScanOptions, Severity
from modelwarden.analysis.registry import rule_classes
from modelwarden.catalog import load_catalog
from modelwarden.errors import ModelwardenError, UsageError
from modelwarden.formats import reader_for
from modelwarden.formats.detect import discover
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits
from modelwarden.ir import Artifact
from modelwarden.policy.interface import Policy
from modelwarden.report.interface import ArtifactSummary, CallGraphSketch, Report, ScanError, SkippedFile

Progress = Callable[[int, int, str], None]
_SEVERITY_DEFAULT = Severity.MEDIUM


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: a scan builds many acyclic objects and no cycles
    worth collecting, and repeated collections otherwise cost up to 3x the scan itself."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def resolve_policy(policy: "Policy | str | None") -> Policy:
    if isinstance(policy, Policy):
        return policy
    if policy is None or policy == "default":
        try:
            from modelwarden.policy import load_policy
        except ImportError:
            return Policy()
        return load_policy("default")
    from modelwarden.policy import load_policy

    return load_policy(policy)


def read_artifact(candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
    """Read one detected artifact into IR (raises InputError on malformed input)."""
    return reader_for(candidate.format).read(candidate, limits)


def with_checkpoint(artifact: Artifact, prefix: str, limits: Limits = DEFAULT_LIMITS) -> Artifact:
    """The artifact as it will be loaded with a user-supplied checkpoint instead of its own variables."""
    from modelwarden.formats.checkpoint import read_checkpoint

    if prefix.endswith(".index"):
        prefix = prefix[: -len(".index")]
    return replace(artifact, checkpoints=(read_checkpoint(prefix, prefix, limits),))


def analyse(artifact: Artifact, policy: Policy, options: ScanOptions | None = None) -> list[Finding]:
    """Run every applicable rule on one artifact; findings sorted most severe first."""
    return _analyse(_context(artifact, policy, options or ScanOptions()))


def _context(artifact: Artifact, policy: Policy, options: ScanOptions) -> AnalysisContext:
    return AnalysisContext(artifact=artifact, catalog=load_catalog().with_policy(policy), policy=policy, options=options)


def _sketches(ctx: AnalysisContext) -> list[CallGraphSketch]:
    from modelwarden.analysis.callgraph import entry_label
    from modelwarden.analysis.graphs import graph_views

    out = []
    for view in graph_views(ctx):
        g = view.graph
        edges = tuple(
            (e.caller, e.callee, e.node if e.attr in ("", "f") else f"{e.node}[{e.attr}]")
            for es in view.cg.edges.values()
            for e in es
        )
        entries = []
        for ep in g.entry_points:
            targets = set(ep.functions)
            if ep.tensors or ep.kind.value == "graph":
                targets.add(g.main.name)
            entries.extend((entry_label(ep), t) for t in sorted(targets))
        out.append(CallGraphSketch(ctx.artifact.display, g.name, (g.main.name, *g.functions), edges, tuple(entries)))
    return out


def _analyse(ctx: AnalysisContext) -> list[Finding]:
    findings: dict[str, Finding] = {}
    for cls in rule_classes():
        rule = cls()
        if rule.applies_to(ctx):
            for f in rule.check(ctx):
                findings.setdefault(f.fingerprint, f)
    return sorted(findings.values(), key=lambda f: (-f.severity, f.rule_id, f.location.function, f.location.node))


def _summary(a: Artifact) -> ArtifactSummary:
    functions = sum(len(g.functions) for g in a.graphs)
    nodes = sum(len(g.main.nodes) + sum(len(f.nodes) for f in g.functions.values()) for g in a.graphs)
    return ArtifactSummary(a.display, a.path, a.format.value, len(a.graphs), functions, nodes, dict(a.metadata))


def scan(
    paths: "str | os.PathLike[str] | Sequence[str | os.PathLike[str]]",
    policy: "Policy | str | None" = None,
    fail_on: "Severity | str | None" = None,
    limits: Limits = DEFAULT_LIMITS,
    progress: Progress | None = None,
    *,
    tf_version: str = "",
    checkpoint: str = "",
    callgraphs: bool = False,
    allow_empty: bool = False,
) -> Report:
    """Scan files and directories; never raises for a bad input (it becomes a ``Report.errors`` entry).

    ``policy``: a :class:`Policy`, a profile name ("default", "strict") or a TOML file path.
    ``fail_on``: threshold for :attr:`Report.exit_code` (default: the policy's, else medium).
    ``tf_version``: the TensorFlow that will load the models (advisories); ``checkpoint``: a
    user-supplied checkpoint prefix to audit against the graphs; ``callgraphs``: also return
    call-graph sketches (for pictures); ``allow_empty``: a scan that finds no model artifact
    passes (``exit_code`` 0) instead of exit 4.  Files a directory walk did not scan are
    listed in ``Report.skipped``.
    """
    started = time.perf_counter()
    path_list = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    if not path_list:
        raise UsageError("no paths to scan")
    pol = resolve_policy(policy)
    try:
        threshold = Severity.parse(fail_on) if isinstance(fail_on, str) else fail_on
    except ValueError as exc:
        raise UsageError(f"fail_on: {exc}") from None
    threshold = threshold if threshold is not None else (pol.fail_on or _SEVERITY_DEFAULT)

    with paused_gc():
        report = _scan(path_list, pol, threshold, limits, progress, tf_version, checkpoint, callgraphs, started)
    return replace(report, allow_empty=allow_empty)


def _scan(path_list, pol, threshold, limits, progress, tf_version, checkpoint, callgraphs, started) -> Report:
    skipped: list[tuple[str, str]] = []
    candidates, discover_errors = discover(path_list, limits, skipped)
    candidates.sort(key=lambda c: c.display)
    errors = [ScanError(e.path, e.reason) for e in discover_errors]
    artifacts: list[ArtifactSummary] = []
    findings: list[Finding] = []
    sketches: list[CallGraphSketch] = []
    options = ScanOptions(tf_version=tf_version, checkpoint=checkpoint)
    for i, cand in enumerate(candidates):
        if progress:
            progress(i, len(candidates), cand.display)
        try:
            artifact = read_artifact(cand, limits)
            if checkpoint and artifact.graphs:
                try:
                    artifact = with_checkpoint(artifact, checkpoint, limits)
                except ModelwardenError as exc:  # one error for the checkpoint; the model is still audited
                    err = ScanError(getattr(exc, "path", checkpoint), getattr(exc, "reason", str(exc)))
                    if err not in errors:
                        errors.append(err)
            ctx = _context(artifact, pol, options)
            found = _analyse(ctx)
            if callgraphs:
                sketches.extend(_sketches(ctx))
        except ModelwardenError as exc:
            errors.append(ScanError(getattr(exc, "path", cand.path), getattr(exc, "reason", str(exc))))
            continue
        except (RecursionError, MemoryError) as exc:
            errors.append(ScanError(cand.path, f"input exhausted the scanner's resources ({type(exc).__name__})"))
            continue
        except Exception as exc:  # a bug in modelwarden: report it as such, never as a traceback
            if os.environ.get("MODELWARDEN_DEBUG"):
                raise
            errors.append(ScanError(cand.path, f"internal error while scanning ({type(exc).__name__}: {exc})"))
            continue
        artifacts.append(_summary(artifact))
        findings.extend(found)
    if progress:
        progress(len(candidates), len(candidates), "")
    kept, suppressed = pol.apply(findings)
    return Report(
        tool_version=__version__,
        policy=pol.name,
        fail_on=threshold,
        artifacts=tuple(artifacts),
        findings=kept,
        suppressed=suppressed,
        errors=tuple(errors),
        duration_s=time.perf_counter() - started,
        inputs=tuple(path_list),
        callgraphs=tuple(sketches),
        skipped=tuple(SkippedFile(p, r) for p, r in skipped),
    )
