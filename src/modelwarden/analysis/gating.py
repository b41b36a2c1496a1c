"""Control flow whose decision depends on checkpoint variables, and what each branch can do.

A gating site is an If/StatelessIf/Case/While/Switch whose predicate, branch
index or loop condition is tainted by a variable.  For each branch we list the
capability ops it can reach (through any depth of calls), with the path.
"""

from __future__ import annotations

from collections import deque

from modelwarden.analysis.callgraph import tensor_node
from modelwarden.analysis.dataflow import BRANCH_OPS, LOOP_OPS, Dataflow, sources
from modelwarden.analysis.graphs import GraphView, graph_views
from modelwarden.analysis.interface import AnalysisContext
from modelwarden.analysis.rules.capabilities import CAPABILITY_META
from modelwarden.catalog import OpSpec
from modelwarden.ir import EntryKind, FuncRef, Function, Node
from modelwarden.record import record

MAX_EXPR_NODES = 24


@record
class CapabilityUse:
    capability: str
    op: str
    function: str
    node: str
    path: tuple[str, ...]  # from the branch: "fn", "node[attr]", "fn2", ...
    argument: str = ""  # where its path comes from, e.g. "'/tmp/x'"

    def call(self) -> str:
        return f"{self.op}(path={self.argument})" if self.argument else f"{self.op}({self.node})"


@record(slots=False)
class Branch:
    label: str  # "then_branch", "branches[2]", "body", "output_true"
    function: str  # "" for Switch outputs in the same body
    uses: tuple[CapabilityUse, ...]


@record(slots=False)
class GatingSite:
    view: GraphView
    fn: Function
    node: Node
    predicate: str  # tensor (for While: the cond function's output)
    predicate_fn: Function
    variables: tuple[str, ...]  # checkpoint keys
    inputs: tuple[str, ...]  # request inputs also involved
    branches: tuple[Branch, ...]

    @property
    def dangerous(self) -> bool:
        return any(b.uses for b in self.branches)


CONTROL_SINKS = frozenset(BRANCH_OPS) | LOOP_OPS | {"Switch", "RefSwitch"}


WatchedNode = tuple[Function, Node, "OpSpec | None", tuple[str, ...]]


def watched_nodes(ctx: AnalysisContext, view: GraphView) -> list[WatchedNode]:
    """The nodes graph rules look at more closely, found in one pass over every body (body order):
    ops the catalog names, with the capabilities their attributes give them; control flow; ops
    whose input sizes an allocation.  ``(fn, node, spec or None, active capabilities)``."""
    key = ("watched_nodes", id(view))
    found = ctx.cache.get(key)
    if found is None:
        from modelwarden.analysis.rules.dataflow import ALLOCATION_INPUTS

        catalog = ctx.catalog
        other = CONTROL_SINKS | ALLOCATION_INPUTS.keys()
        found = []
        for fn in view.cg.bodies():
            for node in fn.nodes:
                spec = catalog.lookup(node.op)
                if spec is not None:
                    found.append((fn, node, spec, catalog.active(node)))
                elif node.op in other:
                    found.append((fn, node, None, ()))
        ctx.cache[key] = found
    return found  # type: ignore[return-value]


def _has_sinks(ctx: AnalysisContext, view: GraphView) -> bool:
    """Does any node consume taint we report on (control flow, path or allocation arguments)?"""
    from modelwarden.analysis.rules.dataflow import ALLOCATION_INPUTS

    def constant(fn: Function, node: Node, index: int) -> bool:
        data = node.data_inputs
        if index >= len(data):
            return True
        producer = view.values.nodes(fn).get(tensor_node(data[index]))
        return producer is not None and producer.op == "Const"

    for fn, node, spec, _ in watched_nodes(ctx, view):
        op = node.op
        if op in CONTROL_SINKS:
            return True
        alloc = ALLOCATION_INPUTS.get(op)
        if alloc is not None and not constant(fn, node, alloc[0]):
            return True
        if spec is not None and spec.paths and not all(constant(fn, node, i) for i in spec.paths):
            kinds = view.cg.kinds(fn, node)
            if not kinds or not kinds <= {EntryKind.SAVER}:  # the saver's own path is its placeholder
                return True
    return False


def dataflows(ctx: AnalysisContext) -> list[tuple[GraphView, Dataflow]]:
    """Dataflow for every graph that has sinks (demand-driven: the others cannot produce findings)."""
    cached = ctx.cache.get("dataflows")
    if cached is None:
        cached = [(v, Dataflow(v)) for v in graph_views(ctx) if _has_sinks(ctx, v)]
        ctx.cache["dataflows"] = cached
    return cached  # type: ignore[return-value]


def _use(ctx: AnalysisContext, view: GraphView, fn: Function, node: Node, cap: str, path: tuple[str, ...]) -> CapabilityUse:
    spec = ctx.catalog.lookup(node.op)
    arg = ""
    if spec is not None and spec.paths:
        arg = view.values.input_of(fn, node, spec.paths[0]).describe()
    elif spec is not None and spec.path_attrs:
        arg = repr(str(node.attrs.get(spec.path_attrs[0], "")))
    return CapabilityUse(cap, node.op, fn.name, node.name, path, arg)


MAX_WITNESSES = 8  # capability uses remembered per function (enough to show a branch is dangerous)


def _capability_index(ctx: AnalysisContext, view: GraphView) -> tuple[dict, dict]:
    """For every function, up to MAX_WITNESSES capability uses reachable from it, each with its next hop.

    One pass over the functions, callees first (twice, for recursion): linear in the library size.
    Returns (uses by key, per-function {key: None (own) | (step, callee)}).
    """
    key = ("capability_index", view.graph.name)
    cached = ctx.cache.get(key)
    if cached is not None:
        return cached  # type: ignore[return-value]
    from modelwarden.analysis.dataflow import callees_first

    functions = view.cg.callable
    base: dict[tuple[str, str, str], CapabilityUse | tuple[Function, Node, str]] = {}  # a use once shown
    hops: dict[str, dict[tuple[str, str, str], tuple[str, str] | None]] = {name: {} for name in functions}
    for fn, node, _, active in watched_nodes(ctx, view):
        if not active or functions.get(fn.name) is not fn:  # the top-level graph is not called
            continue
        own = hops[fn.name]
        for cap in active:
            if cap in CAPABILITY_META and len(own) < MAX_WITNESSES:
                k = (fn.name, node.name, cap)
                base[k] = (fn, node, cap)
                own[k] = None
    order = callees_first(view.cg)
    for _ in range(2):
        for name in order:
            table = hops[name]
            for edge in view.cg.edges.get(name, ()):
                if len(table) >= MAX_WITNESSES:
                    break
                step = edge.node if edge.attr in ("", "f") else f"{edge.node}[{edge.attr}]"
                for k in hops.get(edge.callee, {}):
                    if len(table) >= MAX_WITNESSES:
                        break
                    table.setdefault(k, (step, edge.callee))
    ctx.cache[key] = (base, hops)
    return base, hops


def _capabilities_from(ctx: AnalysisContext, view: GraphView, start: str, memo: dict) -> tuple[CapabilityUse, ...]:
    if start in memo:
        return memo[start]
    base, hops = _capability_index(ctx, view)
    uses = []
    for k in hops.get(start, {}):
        path, cur, seen = [start], start, {start}
        while (nxt := hops.get(cur, {}).get(k)) is not None and nxt[1] not in seen:
            path.extend(nxt)
            cur = nxt[1]
            seen.add(cur)
        u = base[k]
        if not isinstance(u, CapabilityUse):  # its argument resolved once, the first time it is shown
            u = base[k] = _use(ctx, view, *u, (k[0],))
        uses.append(CapabilityUse(u.capability, u.op, u.function, u.node, tuple(path), u.argument))
    memo[start] = tuple(uses)
    return memo[start]


def _port(tensor: str) -> int:
    tail = tensor.rsplit(":", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else 0


def _switch_cone(ctx: AnalysisContext, view: GraphView, fn: Function, node: Node, port: int, memo: dict) -> tuple[CapabilityUse, ...]:
    consumers: dict[str, list[Node]] = {}
    for n in fn.nodes:
        for inp in n.inputs:
            consumers.setdefault(tensor_node(inp), []).append(n)
    uses: list[CapabilityUse] = []
    start = [n for n in consumers.get(node.name, ()) if any(
        not i.startswith("^") and tensor_node(i) == node.name and _port(i) == port for i in n.inputs)]
    seen = {n.name for n in start}
    queue = deque(start)
    while queue:
        n = queue.popleft()
        for cap in ctx.catalog.active(n):
            if cap in CAPABILITY_META:
                uses.append(_use(ctx, view, fn, n, cap, (fn.name,)))
        for _, ref in n.func_refs():
            uses.extend(_capabilities_from(ctx, view, ref.name, memo))
        if n.op in ("Merge", "RefMerge"):
            continue
        for c in consumers.get(n.name, ()):
            if c.name not in seen:
                seen.add(c.name)
                queue.append(c)
    return tuple(uses)


def _branch_refs(node: Node) -> list[tuple[str, FuncRef]]:
    out = []
    for attr, ref in node.func_refs():
        if attr == "branches":
            out.append((f"branches[{sum(1 for a, _ in out if a.startswith('branches'))}]", ref))
        elif attr in ("then_branch", "else_branch", "body"):
            out.append((attr, ref))
    return out


def gating_sites(ctx: AnalysisContext) -> list[GatingSite]:
    cached = ctx.cache.get("gating_sites")
    if cached is not None:
        return cached  # type: ignore[return-value]
    sites: list[GatingSite] = []
    for view, df in dataflows(ctx):
        memo: dict = {}
        for fn, node, _, _ in watched_nodes(ctx, view):  # control flow among them
            op = node.op
            if op in BRANCH_OPS or op in ("Switch", "RefSwitch"):
                pidx = 1 if op in ("Switch", "RefSwitch") else 0
                data = node.data_inputs
                if pidx >= len(data):
                    continue
                taint = df.input_taint(fn, node, pidx)
                pred_tensor, pred_fn = data[pidx], fn
            elif op in LOOP_OPS:
                cond = node.attrs.get("cond")
                cond_fn = view.graph.functions.get(cond.name) if isinstance(cond, FuncRef) else None
                if cond_fn is None or not cond_fn.outputs:
                    continue
                out_name = cond_fn.outputs[0].name
                taint = df.output_taint(cond_fn, out_name)
                pred_tensor, pred_fn = cond_fn.ret.get(out_name, ""), cond_fn
            else:
                continue
            variables = tuple(sources(taint, "variable"))
            if not variables:
                continue
            if op in ("Switch", "RefSwitch"):
                branches = tuple(
                    Branch(label, "", _switch_cone(ctx, view, fn, node, port, memo))
                    for label, port in (("output_false", 0), ("output_true", 1))
                )
            else:
                branches = tuple(
                    Branch(label, ref.name, _capabilities_from(ctx, view, ref.name, memo))
                    for label, ref in _branch_refs(node)
                )
            sites.append(GatingSite(view, fn, node, pred_tensor, pred_fn, variables,
                                    tuple(sources(taint, "input")), branches))
    ctx.cache["gating_sites"] = sites
    return sites


def variable_label(key: str) -> str:
    return key.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")


def render_expr(view: GraphView, fn: Function, tensor: str, budget: list[int] | None = None, depth: int = 0) -> str:
    """A short expression for a tensor: ``Greater(ReadVariableOp(flag), 0.5)``."""
    budget = budget if budget is not None else [MAX_EXPR_NODES]
    budget[0] -= 1
    if budget[0] < 0 or depth > 6:
        return "…"
    name = tensor_node(tensor)
    j = view.values.arg_index(fn, tensor)
    if j is not None:
        cap = view.values.capture(fn, j)
        if cap is not None:
            return variable_label(cap.value) if cap.kind == "variable" else f"<{cap.kind} {cap.value}>"
        reach = view.cg.function_reach.get(fn.name)
        source = view.values.caller_input(fn, j, reach.parent if reach else None)
        if isinstance(source, str):
            return fn.args[j].name
        caller, caller_tensor, _ = source
        return render_expr(view, caller, caller_tensor, budget, depth + 1)
    node = view.values.nodes(fn).get(name)
    if node is None:
        return name
    if node.op == "Const":
        tv = node.attrs.get("value")
        v = tv.scalar() if tv is not None and hasattr(tv, "scalar") else None
        return repr(v) if v is not None else "const"
    if node.op in ("VarHandleOp", "VariableV2"):
        return variable_label(str(node.attrs.get("shared_name") or name))
    if node.op in ("Placeholder", "PlaceholderWithDefault"):
        return f"input {name}"
    if node.op in ("Identity", "ReadVariableOp") and node.data_inputs and node.op == "Identity":
        return render_expr(view, fn, node.data_inputs[0], budget, depth + 1)
    args = ", ".join(render_expr(view, fn, t, budget, depth + 1) for t in node.data_inputs[:4])
    return f"{node.op}({args})"
