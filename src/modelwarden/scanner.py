"""The scan pipeline: path -> detect -> reader -> IR -> analysis passes -> findings -> policy -> Report.

Nothing here imports TensorFlow or executes anything from the artifact.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING

from modelwarden import __version__
from modelwarden.analysis.interface import AnalysisContext, Finding, ScanOptions, Severity
from modelwarden.analysis.registry import rules_for
from modelwarden.catalog import load_catalog
from modelwarden.engine.interface import ArtifactResult, ScanJob
from modelwarden.errors import InputError, ModelwardenError, UsageError
from modelwarden.formats import reader_for
from modelwarden.formats.detect import iter_discover
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits
from modelwarden.ir import Artifact
from modelwarden.policy.interface import Policy
from modelwarden.record import replace
from modelwarden.report.interface import ArtifactSummary, CallGraphSketch, Report, ScanError, SkippedFile

if TYPE_CHECKING:
    from modelwarden.engine.interface import Engine
    from modelwarden.engine.store import ResultStore

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
    for cls in rules_for(ctx.artifact.format.value):
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
    engine: "Engine | str | None" = None,
    jobs: int | None = None,
    cache: "ResultStore | str | os.PathLike[str] | None" = None,
    allow_empty: bool = False,
) -> Report:
    """Scan files and directories; never raises for a bad input (it becomes a ``Report.errors`` entry).

    ``policy``: a :class:`Policy`, a profile name ("default", "strict") or a TOML file path.
    ``fail_on``: threshold for :attr:`Report.exit_code` (default: the policy's, else medium).
    ``tf_version``: the TensorFlow that will load the models (advisories); ``checkpoint``: a
    user-supplied checkpoint prefix to audit against the graphs; ``callgraphs``: also return
    call-graph sketches (for pictures).
    ``engine``: "local" (default: this process, or a pool of ``jobs`` forked processes when there
    are many artifacts), "ray" (a Ray cluster, ``pip install 'modelwarden[ray]'``) or an
    :class:`~modelwarden.engine.interface.Engine`; ``cache``: a results-store directory, so an
    artifact whose bytes, rules and options are unchanged is not analysed again;
    ``allow_empty``: a scan that finds no model artifact passes (``exit_code`` 0) instead of
    exit 4.  Files a directory walk did not scan are listed in ``Report.skipped``.
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

    from modelwarden.engine.run import make_engine, make_store

    eng = make_engine(engine, jobs)
    store = make_store(cache)
    try:
        with paused_gc():
            report = _scan(path_list, pol, threshold, limits, progress, tf_version, checkpoint, callgraphs, started,
                           eng, store)
    finally:
        eng.close()
        if store is not None and store is not cache:
            store.close()
    return replace(report, allow_empty=allow_empty)


def scan_candidate(cand: Candidate, job: ScanJob) -> ArtifactResult:
    """Read and analyse one detected artifact; never raises for a bad input (the unit of work of
    every engine: in this process, a local pool or a Ray task)."""
    errors: tuple[ScanError, ...] = ()
    try:
        artifact = read_artifact(cand, job.limits)
        if job.options.checkpoint and artifact.graphs:
            try:
                artifact = with_checkpoint(artifact, job.options.checkpoint, job.limits)
            except ModelwardenError as exc:  # one error for the checkpoint; the model is still audited
                errors = (ScanError(getattr(exc, "path", job.options.checkpoint), getattr(exc, "reason", str(exc))),)
        ctx = _context(artifact, job.policy, job.options)
        found = _analyse(ctx)
        sketches = tuple(_sketches(ctx)) if job.callgraphs else ()
    except ModelwardenError as exc:
        return ArtifactResult(None, errors=(ScanError(getattr(exc, "path", cand.path), getattr(exc, "reason", str(exc))),))
    except (RecursionError, MemoryError) as exc:
        return ArtifactResult(None, errors=(ScanError(cand.path, f"input exhausted the scanner's resources ({type(exc).__name__})"),))
    except Exception as exc:  # a bug in modelwarden: report it as such, never as a traceback
        if os.environ.get("MODELWARDEN_DEBUG"):
            raise
        return ArtifactResult(None, errors=(ScanError(cand.path, f"internal error while scanning ({type(exc).__name__}: {exc})"),))
    return ArtifactResult(_summary(artifact), tuple(found), errors, sketches)


def _scan(path_list, pol, threshold, limits, progress, tf_version, checkpoint, callgraphs, started,
          engine: "Engine | None" = None, store: "ResultStore | None" = None) -> Report:
    skipped: list[tuple[str, str]] = []
    discover_errors: list[InputError] = []
    job = ScanJob(pol, ScanOptions(tf_version=tf_version, checkpoint=checkpoint), limits, callgraphs)
    walk = iter_discover(path_list, limits, skipped, discover_errors)
    candidates = []
    if engine is not None and engine.prestart_at and store is None:
        # a pool's worth found: its workers start (and load the rules) while the walk goes on
        candidates = list(islice(walk, engine.prestart_at))
        engine.prestart(job, len(candidates))
    candidates.extend(walk)
    candidates.sort(key=lambda c: c.display)
    errors = [ScanError(e.path, e.reason) for e in discover_errors]
    artifacts: list[ArtifactSummary] = []
    findings: list[Finding] = []
    sketches: list[CallGraphSketch] = []
    rule_names: dict[str, str] = {}
    from modelwarden.engine.run import run_ordered

    seen = set(errors)  # (not a scan of the list per error: a mirror can hold thousands of broken files)
    for result in run_ordered(candidates, job, engine=engine, store=store, progress=progress):
        for e in result.errors:
            if e not in seen:  # a bad --checkpoint: said once
                seen.add(e)
                errors.append(e)
        if result.summary is not None:
            artifacts.append(result.summary)
            findings.extend(result.findings)
            sketches.extend(result.sketches)
            for rid, name in result.rule_names.items():
                rule_names.setdefault(rid, name)
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
        engine=_engine_stats(engine, store),
        skipped=tuple(SkippedFile(p, r) for p, r in skipped),
        rule_names=rule_names,
    )


def _engine_stats(engine: "Engine | None", store: "ResultStore | None") -> dict[str, int | str]:
    if engine is None:
        return {}
    st = engine.stats
    if st.workers <= 1 and not st.retried and store is None and engine.name != "ray":
        return {}  # a plain single-process scan: nothing worth reporting
    return {"name": engine.name, "workers": st.workers, "analysed": st.analysed, "cached": st.cached,
            "retried": st.retried}
