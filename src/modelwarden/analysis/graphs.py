"""Per-artifact graph analyses shared by rules (built once, cached on the context)."""

from __future__ import annotations


from modelwarden.analysis.callgraph import CallGraph, Reach, build
from modelwarden.analysis.interface import AnalysisContext, Location
from modelwarden.analysis.values import Resolver
from modelwarden.ir import Function, Graph, Node
from modelwarden.record import record


@record(slots=False)
class GraphView:
    graph: Graph
    cg: CallGraph
    values: Resolver


def graph_views(ctx: AnalysisContext) -> list[GraphView]:
    views = ctx.cache.get("graph_views")
    if views is None:
        views = []
        for g in ctx.artifact.graphs:
            cg = build(g, ctx.catalog.is_stock)
            views.append(GraphView(g, cg, Resolver(cg)))
        ctx.cache["graph_views"] = views
    return views  # type: ignore[return-value]


def node_location(ctx: AnalysisContext, view: GraphView, fn: Function, node: Node, reach: Reach | None = None) -> Location:
    reach = reach or view.cg.reach(fn, node)
    return ctx.location(
        file=view.graph.source_file,
        graph=view.graph.name,
        function=fn.name,
        node=node.name,
        op=node.op,
        call_path=reach.path,
        reachability=reach.label,
    )
