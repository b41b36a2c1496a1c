"""MW610–MW616: audit a checkpoint against the graph that will load it.

The checkpoint is the model's own ``variables/`` or, with ``--checkpoint
PREFIX``, a user-supplied one.  Variables are matched by key, dtype and shape;
then only the bytes of variables that decide gated control flow or feed
sensitive arguments are read, and the gates are evaluated to say which
dangerous branches this checkpoint arms and which it leaves dormant.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from modelwarden.analysis.graphs import node_location
from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.errors import InputError
from modelwarden.ir import Checkpoint, CheckpointEntry

MAX_VALUE_BYTES = 1 << 20
BOOKKEEPING = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/", "optimizer/", "global_step")


def _meta(id_: str, name: str, sev: Severity, summary: str, remediation: str) -> RuleMeta:
    return RuleMeta(id_, name, sev, summary, description=summary, remediation=remediation,
                    formats=("tf-savedmodel",), tags=("checkpoint", "dataflow"))


MISSING = _meta("MW610", "checkpoint-missing-variable", Severity.MEDIUM,
                "The checkpoint lacks a variable the graph restores.",
                "Loading fails or keeps initial values; make sure the checkpoint belongs to this architecture.")
EXTRA = _meta("MW611", "checkpoint-extra-variable", Severity.LOW,
              "The checkpoint holds a variable the graph does not restore.",
              "Extra tensors are ignored by the loader but may hide data; check where the checkpoint came from.")
MISMATCH = _meta("MW612", "checkpoint-variable-mismatch", Severity.MEDIUM,
                 "A checkpoint variable's dtype or shape differs from what the graph expects.",
                 "The checkpoint was not produced for this graph; reject it.")
ARMED = _meta("MW613", "checkpoint-arms-branch", Severity.CRITICAL,
              "This checkpoint's values select a gated branch that reaches ops with host capabilities.",
              "Do not load this checkpoint; the graph runs the dangerous branch with it.")
DORMANT = _meta("MW614", "checkpoint-dormant-branch", Severity.INFO,
                "This checkpoint's values leave a dangerous gated branch dormant.",
                "Another checkpoint could arm it: keep auditing every checkpoint you load into this graph.")
UNEVALUATED = _meta("MW615", "checkpoint-gate-unevaluated", Severity.MEDIUM,
                    "A checkpoint-controlled gate with a dangerous branch could not be evaluated statically.",
                    "Treat the branch as armed; run the model only in the sandbox.")
PATH_VALUE = _meta("MW616", "checkpoint-path-value", Severity.HIGH,
                   "A checkpoint variable that flows into a file path or URL holds this value.",
                   "Do not load this checkpoint unless the path is expected.")


def _prefix(ctx: AnalysisContext) -> str:
    return ctx.options.checkpoint or os.path.join(ctx.artifact.path, "variables", "variables")


@register
class CheckpointAuditRule(Rule):
    metas = (MISSING, EXTRA, MISMATCH, ARMED, DORMANT, UNEVALUATED, PATH_VALUE)
    meta = ARMED

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        if not ctx.artifact.checkpoints or not any(g.variables for g in ctx.artifact.graphs):
            return
        ckpt = ctx.artifact.checkpoints[0]
        entries = {e.name: e for e in ckpt.entries}
        yield from self._consistency(ctx, ckpt, entries)
        yield from self._gates(ctx, ckpt, entries)

    def _consistency(self, ctx, ckpt: Checkpoint, entries: dict[str, CheckpointEntry]) -> Iterable[Finding]:
        expected = {v.key: v for g in ctx.artifact.graphs for v in g.variables}
        loc = ctx.location(file=ckpt.prefix + ".index")
        for key, spec in sorted(expected.items()):
            entry = entries.get(key)
            if entry is None:
                yield ctx.finding(MISSING, f"variable {spec.name or key!r} ({key}) is not in the checkpoint", loc,
                                  evidence={"key": key})
                continue
            if (spec.dtype and entry.dtype != spec.dtype) or not _shape_matches(spec.shape, entry.shape):
                yield ctx.finding(MISMATCH, f"variable {key!r} is {entry.dtype}{list(entry.shape)} in the checkpoint, "
                                  f"the graph expects {spec.dtype}{list(spec.shape or ())}", loc, evidence={"key": key})
        for key in sorted(set(entries) - set(expected)):
            if "/.OPTIMIZER_SLOT/" in key or key.startswith(BOOKKEEPING):
                continue
            yield ctx.finding(EXTRA, f"checkpoint holds {key!r}, which the graph does not restore", loc,
                              evidence={"key": key})

    def _gates(self, ctx, ckpt: Checkpoint, entries: dict[str, CheckpointEntry]) -> Iterable[Finding]:
        from modelwarden.analysis.dataflow import sources
        from modelwarden.analysis.gating import dataflows, gating_sites, variable_label, watched_nodes

        sites = [s for s in gating_sites(ctx) if s.dangerous]
        sensitive = any(  # a variable flowing into a path argument
            sources(df.input_taint(fn, node, i), "variable")
            for view, df in dataflows(ctx)
            for fn, node, spec, active in watched_nodes(ctx, view)
            if spec is not None and spec.paths and active
            for i in spec.paths
        )
        if not sites and not sensitive:
            return  # nothing to evaluate: don't pay for numpy
        from modelwarden.analysis import evaluate as ev
        from modelwarden.formats.checkpoint import read_entry_bytes

        prefix = _prefix(ctx)
        cache: dict[str, object] = {}

        def value(key: str):
            if key not in cache:
                entry = entries.get(key)
                if entry is None:
                    raise ev.Unknown(f"variable {variable_label(key)!r} is not in the checkpoint")
                try:
                    data = read_entry_bytes(prefix, entry, MAX_VALUE_BYTES, num_shards=ckpt.num_shards or None)
                except InputError as exc:
                    raise ev.Unknown(exc.reason) from None
                cache[key] = ev.decode_tensor(data, entry.dtype, entry.shape)
            return cache[key]

        for site in sites:
            view, fn, node = site.view, site.fn, site.node
            loc = node_location(ctx, view, fn, node)
            evaluator = ev.Evaluator(view, value)
            try:
                armed = self._armed(evaluator, site)
            except ev.Unknown as exc:
                yield ctx.finding(UNEVALUATED, f"{node.op} {node.name!r}: cannot evaluate the gate with this checkpoint ({exc})",
                                  loc, evidence={"reason": str(exc)})
                continue
            shown = ", ".join(f"{variable_label(k)}={_short(cache.get(k))}" for k in sorted(evaluator.used))
            for branch in site.branches:
                if not branch.uses:
                    continue
                ops = ", ".join(sorted({u.op for u in branch.uses}))
                evidence = {"branch": branch.label, "ops": ops, "values": shown}
                if branch.label in armed:
                    sev = Severity.CRITICAL if any(u.capability in ("code-execution", "network", "file-write")
                                                   for u in branch.uses) else Severity.HIGH
                    msg = f"this checkpoint ({shown}) ARMS {node.op} {node.name!r} branch {branch.label}, which runs {ops}"
                    yield ctx.finding(ARMED, msg, loc, severity=sev, evidence=evidence)
                else:
                    msg = f"this checkpoint ({shown}) leaves {node.op} {node.name!r} branch {branch.label} ({ops}) dormant"
                    yield ctx.finding(DORMANT, msg, loc, evidence=evidence)
        yield from self._path_values(ctx, value)

    @staticmethod
    def _armed(evaluator, site) -> set[str]:
        from modelwarden.analysis import evaluate as ev

        op = site.node.op
        pred = evaluator.eval(site.predicate_fn, site.predicate)
        if op in ("If", "StatelessIf"):
            return {"then_branch" if ev.truth(pred) else "else_branch"}
        if op in ("Case", "StatelessCase"):
            n = len(site.branches)
            idx = int(pred.reshape(()).item()) if pred.size == 1 else -1
            return {f"branches[{idx if 0 <= idx < n else n - 1}]"}
        if op in ("Switch", "RefSwitch"):
            return {"output_true" if ev.truth(pred) else "output_false"}
        raise ev.Unknown(f"{op} loop conditions are not evaluated")

    def _path_values(self, ctx, value) -> Iterable[Finding]:
        from modelwarden.analysis import evaluate as ev
        from modelwarden.analysis.dataflow import sources
        from modelwarden.analysis.gating import dataflows, variable_label, watched_nodes

        for view, df in dataflows(ctx):
            for fn, node, spec, active in watched_nodes(ctx, view):
                if spec is None or not spec.paths or not active:
                    continue
                for i in spec.paths:
                    for key in sources(df.input_taint(fn, node, i), "variable"):
                        try:
                            shown = _short(value(key))
                        except ev.Unknown as exc:
                            shown = f"<{exc}>"
                        msg = f"checkpoint sets {variable_label(key)!r} = {shown}, used as {node.op} input {i}"
                        yield ctx.finding(PATH_VALUE, msg, node_location(ctx, view, fn, node),
                                          evidence={"variable": variable_label(key), "value": shown})


def _shape_matches(expected: tuple[int, ...] | None, actual: tuple[int, ...]) -> bool:
    if expected is None:
        return True
    return len(expected) == len(actual) and all(a < 0 or a == b for a, b in zip(expected, actual))


def _short(v: object) -> str:
    if v is None:
        return "?"
    try:
        items = v.reshape(-1).tolist()  # type: ignore[union-attr]
    except AttributeError:
        return repr(v)[:80]
    text = repr(items[0]) if len(items) == 1 else repr(items[:8])
    return text[:120]
