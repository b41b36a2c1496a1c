"""Call graph and reachability over a :class:`~modelwarden.ir.Graph`.

Every function — reachable or not — is visited exactly once per entry kind
(multi-source BFS), so recursion and huge libraries stay linear.  For each
function and top-level node we keep the *best* way in (load time beats a
signature beats an object method beats the saver) with its shortest call
path, plus the set of every kind that reaches it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from modelwarden.ir import EntryKind, EntryPoint, Function, FunctionKind, Graph, Node
from modelwarden.record import field, record

# Order of importance: the first kind that reaches a function is its "best" reach.
KIND_ORDER = (EntryKind.LOAD_TIME, EntryKind.SIGNATURE, EntryKind.GRAPH, EntryKind.OBJECT_METHOD, EntryKind.SAVER)
UNREACHABLE = "unreachable"


def tensor_node(tensor: str) -> str:
    """``"^a"``, ``"a:0"``, ``"a:out:0"`` -> ``"a"``."""
    return tensor.lstrip("^").split(":", 1)[0]


def entry_label(ep: EntryPoint) -> str:
    return f"{ep.kind.value}:{ep.name}"


@record
class CallEdge:
    caller: str  # function name
    node: str  # calling node
    attr: str  # "f", "then_branch", ... or "" when the node's op is the function
    callee: str


MAX_PATH_STEPS = 41  # longer call paths are shown with their middle elided
HEAD_STEPS, TAIL_STEPS = 16, 24


@record
class Reach:
    """How a function is reached: one hop, linked to the previous one (paths cost O(1) memory each)."""

    kind: EntryKind | None  # None: not reachable from any entry point
    entry: str  # "signature:serving_default"
    steps: tuple[str, ...]  # what this hop adds to the path: (entry label) or (caller node, callee)
    parent: CallEdge | None = None  # the edge this reach arrived by (None at a root)
    prev: "Reach | None" = None
    nsteps: int = 0  # length of the whole path
    head: tuple[str, ...] = ()  # its first HEAD_STEPS steps, shared along the chain

    @property
    def label(self) -> str:
        return self.entry if self.kind is not None else UNREACHABLE

    @property
    def path(self) -> tuple[str, ...]:
        """Entry label, then caller node / callee function pairs; the middle elided when very deep."""
        want = self.nsteps if self.nsteps <= MAX_PATH_STEPS else TAIL_STEPS
        hops: list[tuple[str, ...]] = []
        got = 0
        r: Reach | None = self
        while r is not None and got < want:
            hops.append(r.steps)
            got += len(r.steps)
            r = r.prev
        tail = [step for hop in reversed(hops) for step in hop]
        if self.nsteps <= MAX_PATH_STEPS:
            return tuple(tail)
        tail = tail[-TAIL_STEPS:]
        return (*self.head, f"… {self.nsteps - len(self.head) - len(tail)} more steps …", *tail)

    def hop(self, edge: CallEdge, step: str) -> "Reach":
        steps = (step, edge.callee)
        head = self.head if len(self.head) >= HEAD_STEPS else (self.head + steps)[:HEAD_STEPS]
        return Reach(self.kind, self.entry, steps, edge, self, self.nsteps + 2, head)

    @staticmethod
    def root(kind: EntryKind, label: str, steps: tuple[str, ...]) -> "Reach":
        return Reach(kind, label, steps, None, None, len(steps), steps[:HEAD_STEPS])


NOT_REACHED = Reach(None, UNREACHABLE, ())


@record(frozen=False, slots=False)
class CallGraph:
    graph: Graph
    edges: dict[str, list[CallEdge]] = field(default_factory=dict)
    missing: list[CallEdge] = field(default_factory=list)
    function_reach: dict[str, Reach] = field(default_factory=dict)
    function_kinds: dict[str, set[EntryKind]] = field(default_factory=dict)
    main_reach: dict[str, Reach] = field(default_factory=dict)
    main_kinds: dict[str, set[EntryKind]] = field(default_factory=dict)
    cycles: list[tuple[str, ...]] = field(default_factory=list)
    main_index: dict[str, Node] = field(default_factory=dict)
    callable: dict[str, Function] = field(default_factory=dict)  # library (+ a TFLite main subgraph)
    # id(node) -> every (attr, callee) the node names, for the nodes that name any: read once from
    # the attributes here and shared by the passes that walk calls (BFS, dataflow)
    node_calls: dict[int, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    # ------------------------------------------------------------------ queries
    def bodies(self) -> Iterator[Function]:
        yield self.graph.main
        yield from self.graph.functions.values()

    def reach(self, fn: Function, node: Node) -> Reach:
        if fn is self.graph.main:
            return self.main_reach.get(node.name, NOT_REACHED)
        return self.function_reach.get(fn.name, NOT_REACHED)

    def calls(self, node: Node) -> tuple[tuple[str, str], ...]:
        """``(attr, callee)`` for every function ``node`` names (``attr`` "" when its op is one)."""
        return self.node_calls.get(id(node), ())

    def kinds(self, fn: Function, node: Node) -> set[EntryKind]:
        if fn is self.graph.main:
            return self.main_kinds.get(node.name, set())
        return self.function_kinds.get(fn.name, set())


def _callees(node: Node, functions: dict[str, Function]) -> tuple[tuple[str, str], ...]:
    """``(attr, callee)`` for every function ``node`` names (``attr`` "" when its op is one)."""
    refs = node.func_refs()
    if not refs:  # most nodes
        return (("", node.op),) if node.op in functions else ()
    named = tuple((attr, ref.name) for attr, ref in refs)
    return (("", node.op), *named) if node.op in functions else named


def build(graph: Graph, is_stock_op=lambda op: False) -> CallGraph:  # noqa: C901 - one linear pass
    cg = CallGraph(graph)
    functions = dict(graph.functions)
    if graph.main.kind is FunctionKind.SUBGRAPH:  # TFLite ops may call subgraph 0 like any other
        functions.setdefault(graph.main.name, graph.main)
    cg.callable = functions
    cg.main_index = {n.name: n for n in graph.main.nodes}
    node_calls = cg.node_calls
    for fn in (graph.main, *graph.functions.values()):
        out: list[CallEdge] = []
        for node in fn.nodes:
            calls = _callees(node, functions)
            if not calls:
                continue
            node_calls[id(node)] = calls
            for attr, callee in calls:
                edge = CallEdge(fn.name, node.name, attr, callee)
                if callee in functions:
                    out.append(edge)
                elif callee and not is_stock_op(callee):
                    cg.missing.append(edge)
        cg.edges[fn.name] = out

    by_kind: dict[EntryKind, list[EntryPoint]] = {}
    for ep in graph.entry_points:
        by_kind.setdefault(ep.kind, []).append(ep)
    for kind in KIND_ORDER:
        if kind in by_kind:
            _bfs(cg, kind, by_kind[kind])
    cg.cycles = _cycles(cg)
    return cg


def _step(edge: CallEdge) -> str:
    return edge.node if edge.attr in ("", "f") else f"{edge.node}[{edge.attr}]"


def _bfs(cg: CallGraph, kind: EntryKind, entries: list[EntryPoint]) -> None:
    graph = cg.graph
    main = graph.main
    seen_main: set[str] = set()
    seen_fn: set[str] = set()
    fn_queue: deque[tuple[str, Reach]] = deque()

    def visit_main(name: str, reach: Reach, queue: deque[tuple[str, Reach]]) -> None:
        if name in seen_main or name not in cg.main_index:
            return
        seen_main.add(name)
        cg.main_kinds.setdefault(name, set()).add(kind)
        cg.main_reach.setdefault(name, reach)
        queue.append((name, reach))

    def enter_fn(name: str, reach: Reach) -> None:
        if name in seen_fn or name not in cg.callable:
            return
        seen_fn.add(name)
        cg.function_kinds.setdefault(name, set()).add(kind)
        cg.function_reach.setdefault(name, reach)
        fn_queue.append((name, reach))

    main_index = cg.main_index
    node_calls = cg.node_calls
    for ep in entries:
        label = entry_label(ep)
        node_queue: deque[tuple[str, Reach]] = deque()
        roots = [n.name for n in main.nodes] if kind is EntryKind.GRAPH else [tensor_node(t) for t in ep.tensors]
        root = Reach.root(kind, label, (label,))  # immutable: one for every root of the entry point
        for r in roots:
            visit_main(r, root, node_queue)
        while node_queue:  # backward over data and control inputs in the top-level graph
            name, reach = node_queue.popleft()
            node = main_index[name]
            for inp in node.inputs:
                visit_main(tensor_node(inp), reach, node_queue)
            for attr, callee in node_calls.get(id(node), ()):
                if callee not in seen_fn and callee in cg.callable:  # the reach is made only to be kept
                    edge = CallEdge(main.name, name, attr, callee)
                    enter_fn(callee, reach.hop(edge, _step(edge)))
        for fname in ep.functions:
            if fname not in seen_fn and fname in cg.callable:
                enter_fn(fname, Reach.root(kind, label, (label, fname)))
    while fn_queue:  # a reached function runs whole: every callee in it is reached
        fname, reach = fn_queue.popleft()
        for edge in cg.edges.get(fname, ()):
            if edge.callee not in seen_fn:  # (every edge's callee is callable)
                enter_fn(edge.callee, reach.hop(edge, _step(edge)))


def _cycles(cg: CallGraph) -> list[tuple[str, ...]]:
    """Strongly connected components with a cycle (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[tuple[str, ...]] = []
    counter = 0
    succ = {f: [e.callee for e in es] for f, es in cg.edges.items() if f in cg.callable}
    for start in succ:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            children = succ.get(v, [])
            if i < len(children):
                work.append((v, i + 1))
                w = children[i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in succ.get(v, ()):
                    result.append(tuple(sorted(comp)))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return sorted(result)
