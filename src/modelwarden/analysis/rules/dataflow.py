"""MW600–MW603: behaviour controlled by the checkpoint or by the request.

* MW600 a branch or loop decided by a checkpoint variable, gating ops with host capabilities;
* MW601 a checkpoint variable flowing into a file path, URL or other sensitive argument;
* MW602 a request input flowing into a file path or URL;
* MW603 a request value setting an allocation size or an iteration count.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelwarden.analysis.dataflow import sources
from modelwarden.analysis.gating import dataflows, gating_sites, render_expr, variable_label, watched_nodes
from modelwarden.analysis.graphs import node_location
from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.analysis.rules.capabilities import GRAPH_FORMATS

DANGEROUS = frozenset({"code-execution", "network", "file-write"})
# op -> (input index, argument name, severity when the request sets it)
ALLOCATION_INPUTS: dict[str, tuple[int, str, Severity]] = {
    "Tile": (1, "multiples", Severity.MEDIUM),
    "Fill": (0, "dims", Severity.MEDIUM),
    "Empty": (0, "shape", Severity.MEDIUM),
    "Range": (1, "limit", Severity.MEDIUM),
    "BroadcastTo": (1, "shape", Severity.MEDIUM),
    "TensorListReserve": (1, "num_elements", Severity.MEDIUM),
    "TensorArrayV3": (0, "size", Severity.MEDIUM),
    "RandomUniform": (0, "shape", Severity.MEDIUM),
    "RandomStandardNormal": (0, "shape", Severity.MEDIUM),
    "TruncatedNormal": (0, "shape", Severity.MEDIUM),
    "StatelessRandomUniformV2": (0, "shape", Severity.MEDIUM),
    "ScatterNd": (2, "shape", Severity.MEDIUM),
    "SparseToDense": (1, "output_shape", Severity.MEDIUM),
    "OneHot": (1, "depth", Severity.MEDIUM),
    "UnsortedSegmentSum": (2, "num_segments", Severity.MEDIUM),
    "ResizeBilinear": (1, "size", Severity.MEDIUM),
    "ResizeNearestNeighbor": (1, "size", Severity.MEDIUM),
    "Pad": (1, "paddings", Severity.LOW),
    "PadV2": (1, "paddings", Severity.LOW),
    "MirrorPad": (1, "paddings", Severity.LOW),
    "Reshape": (1, "shape", Severity.LOW),
    "StringNGrams": (2, "pad_width", Severity.LOW),
}


def _meta(id_: str, name: str, sev: Severity, summary: str, remediation: str) -> RuleMeta:
    return RuleMeta(id_, name, sev, summary, description=summary, remediation=remediation,
                    formats=GRAPH_FORMATS, tags=("dataflow",))


GATED = _meta(
    "MW600", "checkpoint-controlled-branch", Severity.HIGH,
    "A tf.cond/switch_case/while_loop decided by a checkpoint variable gates ops with host capabilities: "
    "whoever supplies the checkpoint chooses whether they run.",
    "Audit the checkpoint you will load (`modelwarden scan MODEL --checkpoint PREFIX`) or remove the gated ops.",
)
CKPT_ARG = _meta(
    "MW601", "checkpoint-controlled-argument", Severity.HIGH,
    "A checkpoint variable flows into a file path, URL or other sensitive argument.",
    "Paths must be constants or model assets, never variables a checkpoint can change.",
)
INPUT_ARG = _meta(
    "MW602", "input-controlled-path", Severity.CRITICAL,
    "A request input flows into a file path or URL: the caller chooses which file is read or written.",
    "Reject the model; never serve a graph that opens paths taken from requests.",
)
INPUT_ALLOC = _meta(
    "MW603", "input-controlled-allocation", Severity.MEDIUM,
    "A request value sets an allocation size or an iteration count (the tf.tile memory bomb).",
    "Bound the value in the graph (clip) or enforce request limits and a memory limit (modelwarden run/serve).",
)


def _data_path(site_path: tuple[str, ...], node_label: str, tail: Iterable[str]) -> str:
    return " → ".join((*site_path, node_label, *tail))


@register
class DataflowRule(Rule):
    metas = (GATED, CKPT_ARG, INPUT_ARG, INPUT_ALLOC)
    meta = GATED

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        yield from self._gated(ctx)
        yield from self._arguments(ctx)

    def _gated(self, ctx: AnalysisContext) -> Iterable[Finding]:
        harmless: dict[str, list] = {}
        for site in gating_sites(ctx):
            if not site.dangerous:  # reported once per graph below, with a few examples
                harmless.setdefault(site.view.graph.name, []).append(site)
                continue
            view, fn, node = site.view, site.fn, site.node
            reach = view.cg.reach(fn, node)
            predicate = render_expr(view, site.predicate_fn, site.predicate)
            loc = node_location(ctx, view, fn, node, reach)
            varnames = ", ".join(variable_label(v) for v in site.variables)
            base = {"predicate": predicate, "variables": varnames, "op": node.op}
            for branch in site.branches:
                for use in branch.uses[:5]:
                    sev = Severity.CRITICAL if use.capability in DANGEROUS else Severity.HIGH
                    label = f"{node.op}({branch.label}={branch.function})" if branch.function else f"{node.op}.{branch.label}"
                    path = _data_path(reach.path, label, (*use.path[1:], use.call()))
                    msg = (f"checkpoint variable(s) {varnames} decide whether {use.op} runs: {path}; "
                           f"predicate = {predicate}")
                    ev = dict(base, branch=branch.label, gated_op=use.op, capability=use.capability, path=path)
                    yield ctx.finding(GATED, msg, loc, severity=sev, capability=use.capability, evidence=ev)
        for sites in harmless.values():
            first = sites[0]
            view, fn, node = first.view, first.fn, first.node
            shown = [render_expr(s.view, s.predicate_fn, s.predicate) for s in sites[:3]]
            examples = "; ".join(f"{s.node.op} {s.node.name!r} in {s.fn.name}: {p}" for s, p in zip(sites, shown))
            variables = sorted({v for s in sites for v in s.variables})
            names = ", ".join(variable_label(v) for v in variables[:10]) + (" ..." if len(variables) > 10 else "")
            count = f"{len(sites)} branches/loops are" if len(sites) > 1 else f"{node.op} {node.name!r} is"
            msg = f"{count} decided by checkpoint variable(s) {names}, but no gated branch reaches a host capability"
            evidence = {"predicate": shown[0], "variables": names,
                        "sites": str(len(sites)), "examples": examples, "op": node.op}
            yield ctx.finding(GATED, msg, node_location(ctx, view, fn, node), severity=Severity.INFO, evidence=evidence)

    def _arguments(self, ctx: AnalysisContext) -> Iterable[Finding]:
        for view, df in dataflows(ctx):
            for fn, node, spec, active in watched_nodes(ctx, view):  # every other node has no sensitive input
                if spec is not None and spec.paths and active:
                    for i in spec.paths:
                        taint = df.input_taint(fn, node, i)
                        yield from self._sensitive(ctx, view, fn, node, i, taint)
                alloc = ALLOCATION_INPUTS.get(node.op)
                if alloc is not None:
                    idx, argname, sev = alloc
                    inputs = sources(df.input_taint(fn, node, idx), "input")
                    if inputs:
                        reach = view.cg.reach(fn, node)
                        msg = (f"{node.op}({argname}) is set by request input(s) {', '.join(inputs)}: "
                               f"a request can make it allocate without bound; path: {' → '.join((*reach.path, node.name))}")
                        yield ctx.finding(INPUT_ALLOC, msg, node_location(ctx, view, fn, node, reach), severity=sev,
                                          capability="resource-amplification",
                                          evidence={"op": node.op, "argument": argname, "inputs": ", ".join(inputs)})
                if node.op in ("While", "StatelessWhile"):
                    yield from self._loop(ctx, view, df, fn, node)

    def _sensitive(self, ctx, view, fn, node, index, taint) -> Iterable[Finding]:
        variables = sources(taint, "variable")
        inputs = sources(taint, "input")
        if not variables and not inputs:
            return  # the usual case: where it is and how it is reached are only worked out for a finding
        reach = view.cg.reach(fn, node)
        loc = node_location(ctx, view, fn, node, reach)
        path = " → ".join((*reach.path, f"{node.op}({node.name})"))
        if variables:
            names = ", ".join(variable_label(v) for v in variables)
            yield ctx.finding(CKPT_ARG, f"checkpoint variable(s) {names} flow into {node.op} input {index}: {path}",
                              loc, evidence={"op": node.op, "variables": names, "input": str(index)})
        if inputs:
            yield ctx.finding(INPUT_ARG, f"request input(s) {', '.join(inputs)} flow into {node.op} input {index}: {path}",
                              loc, capability="file-read" if "read" in node.op.lower() else "", 
                              evidence={"op": node.op, "inputs": ", ".join(inputs), "input": str(index)})

    def _loop(self, ctx, view, df, fn, node) -> Iterable[Finding]:
        cond = node.attrs.get("cond")
        cond_fn = view.graph.functions.get(getattr(cond, "name", ""))
        if cond_fn is None or not cond_fn.outputs:
            return
        inputs = sources(df.output_taint(cond_fn, cond_fn.outputs[0].name), "input")
        if inputs:
            reach = view.cg.reach(fn, node)
            msg = (f"the iteration count of {node.op} {node.name!r} is decided by request input(s) {', '.join(inputs)}; "
                   f"path: {' → '.join((*reach.path, node.name))}")
            yield ctx.finding(INPUT_ALLOC, msg, node_location(ctx, view, fn, node, reach), severity=Severity.LOW,
                              capability="resource-amplification", evidence={"op": node.op, "inputs": ", ".join(inputs)})
