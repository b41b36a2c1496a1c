"""MW106, MW109, MW110, MW111: what the graph is made of and how its functions connect."""

from __future__ import annotations

from collections.abc import Iterable

from modelwarden.analysis.graphs import graph_views, node_location
from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.analysis.rules.capabilities import GRAPH_FORMATS, SAVER_MACHINERY
from modelwarden.ir import EntryKind

TFLITE_PREFIXES = ("tfl:", "tfl-custom:")
# Ops TensorFlow's savers (TF1 Saver, TF2 functional saver) put in the save/restore region that
# the strict allowlist does not already hold; under --policy strict nothing else is exempt there.
SAVER_REGION_OPS = SAVER_MACHINERY | frozenset({
    "ShardedFilename", "ShardedFilespec", "StringJoin", "StaticRegexFullMatch", "RegexFullMatch", "Select",
    "SelectV2", "AssignVariableOp", "Assign", "DisableCopyOnRead", "RestoreV2", "ReadVariableOp",
})


@register
class CustomOpRule(Rule):
    meta = RuleMeta(
        "MW106", "custom-op", Severity.HIGH,
        "An op that stock TensorFlow does not register: loading needs a native shared library from somewhere.",
        description="Custom ops are native code (tf.load_op_library). A graph naming one either fails to load or "
        "runs whatever library the environment provides under that name.",
        remediation="Find out which library provides the op and audit it; otherwise reject the model.",
        formats=GRAPH_FORMATS, tags=("capability",),
    )

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        is_stock = ctx.catalog.is_stock
        for view in graph_views(ctx):
            functions = view.graph.functions
            for fn in view.cg.bodies():
                reported: set[str] = set()
                for node in fn.nodes:
                    op = node.op
                    if op in reported or op in functions or is_stock(op) or op.startswith(TFLITE_PREFIXES):
                        continue
                    reported.add(op)
                    count = sum(1 for n in fn.nodes if n.op == op)
                    reach = view.cg.reach(fn, node)
                    sev = self.meta.severity if reach.kind is not None else Severity.MEDIUM
                    msg = f"custom op {op!r} ({count} use{'s' * (count > 1)} in {fn.name}) is not a stock TensorFlow op"
                    yield ctx.finding(self.meta, msg, node_location(ctx, view, fn, node, reach), severity=sev,
                                      capability="native-code", evidence={"op": op, "uses": str(count)})


@register
class RecursionRule(Rule):
    meta = RuleMeta(
        "MW109", "function-recursion", Severity.MEDIUM,
        "Functions in the library call each other in a cycle; TensorFlow cannot inline them and loading may not terminate.",
        remediation="Reject the model: graphs produced by TensorFlow never contain call cycles.",
        formats=GRAPH_FORMATS, tags=("structure",),
    )

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        for view in graph_views(ctx):
            for cycle in view.cg.cycles:
                shown = " → ".join((*cycle[:8], cycle[0])) + (" ..." if len(cycle) > 8 else "")
                loc = ctx.location(file=view.graph.source_file, graph=view.graph.name, function=cycle[0])
                yield ctx.finding(self.meta, f"recursive call cycle of {len(cycle)} function(s): {shown}", loc,
                                  evidence={"cycle": " → ".join(cycle[:50])})


@register
class MissingFunctionRule(Rule):
    meta = RuleMeta(
        "MW111", "missing-function", Severity.MEDIUM,
        "A node refers to a function that is not in the library (not a stock op either).",
        remediation="The graph is inconsistent: TensorFlow will refuse it or resolve the name elsewhere. Reject it.",
        formats=GRAPH_FORMATS, tags=("structure",),
    )

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        for view in graph_views(ctx):
            for edge in view.cg.missing:
                fn = view.graph.function(edge.caller)
                node = next((n for n in fn.nodes if n.name == edge.node), None) if fn else None
                if fn is None or node is None:
                    continue
                attr = f" through attribute {edge.attr!r}" if edge.attr else ""
                msg = f"{node.op} node {node.name!r} calls {edge.callee!r}{attr}, which is not in the function library"
                yield ctx.finding(self.meta, msg, node_location(ctx, view, fn, node), evidence={"callee": edge.callee})


@register
class StrictAllowlistRule(Rule):
    meta = RuleMeta(
        "MW110", "op-not-allowlisted", Severity.MEDIUM,
        "Strict policy: an op outside the curated allowlist of pure-compute ops.",
        description="Only active with an allowlist policy (--policy strict). The model's own saver machinery is exempt.",
        remediation="Check what the op does; add it to your policy's strict_allow list if it is safe for you.",
        formats=GRAPH_FORMATS, tags=("policy",),
    )

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        allow = ctx.policy.allowlist
        if allow is None:
            return
        for view in graph_views(ctx):
            functions = view.graph.functions
            first: dict[str, tuple] = {}
            counts: dict[str, int] = {}
            for fn in view.cg.bodies():
                for node in fn.nodes:
                    op = node.op
                    if op in allow or op in functions:
                        continue
                    kinds = view.cg.kinds(fn, node)
                    if kinds and kinds <= {EntryKind.SAVER} and op in SAVER_REGION_OPS:
                        continue  # what TensorFlow's savers emit; any other op added there is a finding
                    counts[op] = counts.get(op, 0) + 1
                    first.setdefault(op, (fn, node))
            for op in sorted(first):
                fn, node = first[op]
                msg = f"op {op!r} is not in the strict allowlist ({counts[op]} use{'s' * (counts[op] > 1)})"
                yield ctx.finding(self.meta, msg, node_location(ctx, view, fn, node), evidence={"op": op})
