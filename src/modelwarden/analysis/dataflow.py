"""Where values come from: taint tracking over the IR, across function calls.

Sources are checkpoint variables, signature (request) inputs and the saver's
filename; constants and assets carry no taint.  Each function gets a summary
("output *i* depends on these sources and on these arguments"), computed
bottom-up over the call graph; then each function's arguments get their
concrete sources top-down from every call site.  Control dependence through
If/Case/While predicates taints their outputs too.  Everything is bounded:
sweeps and fixed-point rounds stop at fixed limits, and what is not resolved
stays conservative (a union of inputs).  Where that is exact (no recursion, and
the bodies a query touches are DAGs of uniquely named nodes) a query evaluates
only what it depends on instead (see :class:`Dataflow`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from modelwarden.analysis.callgraph import tensor_node
from modelwarden.analysis.graphs import GraphView
from modelwarden.analysis.values import PLACEHOLDERS, VARIABLE_OPS
from modelwarden.ir import Function, FunctionKind, Node
from modelwarden.record import record

Source = tuple[str, str]  # ("variable", key) | ("input", name) | ("saver", "") | ("arg", "3")
Taint = frozenset[Source]
EMPTY: Taint = frozenset()

# op -> offset of the first input passed as branch/body argument 0
BRANCH_OPS = {"If": 1, "StatelessIf": 1, "Case": 1, "StatelessCase": 1}
LOOP_OPS = frozenset({"While", "StatelessWhile"})
CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
# Ops whose output is the *shape* of their input: a request controls it only within the
# bounds of its own size, so input taint becomes "input-shape" and variables drop out.
SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank", "TensorListLength", "TensorArraySizeV3"})
_NO_CALLEES: list[str] = []  # shared, never mutated
# Ops _node treats specially: a node with any other op and no callee has the union of its inputs
# (reading a variable too: only the ops that create one are sources).
_SPECIAL_OPS = frozenset({"Const", "PlaceholderWithDefault", "VarHandleOp", "VariableV2", "Variable"}) | PLACEHOLDERS | SHAPE_OPS
MAX_SWEEPS = 8
MAX_ROUNDS = 6


@record
class Summary:
    outputs: tuple[Taint, ...]  # per declared output, may contain ("arg", j)


def _is_arg(src: Source) -> bool:
    return src[0] in ("arg", "arg-shape")


def shape_of(taint: Taint) -> Taint:
    """What the *shape* of a value with this taint depends on."""
    out = set()
    for k, v in taint:
        if k in ("input", "input-shape"):
            out.add(("input-shape", v))
        elif k in ("arg", "arg-shape"):
            out.add(("arg-shape", v))
    return frozenset(out)


_ARG_SYMBOLS = tuple(frozenset({("arg", str(j))}) for j in range(64))  # shared, immutable


def _arg_symbol(j: int) -> Taint:
    """``{("arg", "j")}``: made once for the first arguments (a hostile arity allocates per scan only)."""
    return _ARG_SYMBOLS[j] if j < len(_ARG_SYMBOLS) else frozenset({("arg", str(j))})


def _subst(src: Source, actual: list[Taint]) -> Taint:
    j = int(src[1])
    if j >= len(actual):
        return EMPTY
    return actual[j] if src[0] == "arg" else shape_of(actual[j])


class _Fallback(Exception):
    """On demand is not exact for this graph (a body with a cycle or a name twice): analyse it whole."""


class Dataflow:
    """Taints of a graph's tensors.

    On demand by default: a query evaluates only the nodes, callee summaries and argument taints
    it depends on, which is exact when the call graph has no cycle and every body it touches has
    unique node names and no data cycle (checked per body as it is touched).  Otherwise (or
    ``on_demand=False``) every body is analysed up front, with bounded fixed-point rounds."""

    def __init__(self, view: GraphView, on_demand: bool = True) -> None:
        self.view = view
        self.graph = view.graph
        self._local: dict[str, dict[str, list[Taint]]] = {}  # fn -> node -> per-output taints
        self._argsyms: dict[str, dict[str, Taint]] = {}  # fn -> arg name -> {("arg", j)}
        self._plans: dict[str, list[tuple[Node, tuple[str, ...], list[str]]]] = {}
        self._readers: dict[int, Callable[[str], Taint]] = {}  # id(body) -> its _reader
        self._acyclic: dict[str, bool] = {}
        self.summaries: dict[str, Summary] = {}
        self.arg_taint: dict[str, list[Taint]] = {}
        saver = self.graph.saver
        self._saver_filename = tensor_node(saver.filename_tensor) if saver and saver.filename_tensor else ""
        graph = self.graph
        self._on_demand = (on_demand and not view.cg.cycles and graph.main.kind is not FunctionKind.SUBGRAPH
                           and graph.main.name not in graph.functions)
        self._bodies: dict[int, dict[str, Node]] = {}  # on demand: id(body) -> its nodes by name, once checked
        self._sites: dict[str, list] | None = None  # on demand: callee -> its call sites
        self._rank: dict[str, int] = {}  # on demand: callers first
        self._budget = 0
        if not self._on_demand:
            self._run()

    # ------------------------------------------------------------------ public
    def taint(self, fn: Function, tensor: str) -> Taint:
        """Concrete sources of a tensor (arguments replaced by what callers pass)."""
        if self._on_demand:
            try:
                return self._concrete(fn, self._tensor(fn, tensor))
            except _Fallback:
                self._whole()
        return self._concrete(fn, self._tensor(fn, tensor))

    def summary(self, name: str) -> Summary | None:
        """What a library function's outputs depend on (``("arg", j)`` for its arguments)."""
        fn = self.graph.functions.get(name)
        if self._on_demand and fn is not None:
            try:
                self._demand_summary(fn)
            except _Fallback:
                self._whole()
        return self.summaries.get(name)

    def input_taint(self, fn: Function, node: Node, index: int) -> Taint:
        data = node.data_inputs
        return self.taint(fn, data[index]) if index < len(data) else EMPTY

    def output_taint(self, fn: Function, output: str) -> Taint:
        """Taint of a function's return value (by output name), concrete."""
        tensor = fn.ret.get(output)
        return self.taint(fn, tensor) if tensor else EMPTY

    # ------------------------------------------------------------------ local analysis
    def _tensor(self, fn: Function, tensor: str) -> Taint:
        if tensor[:1] == "^":
            tensor = tensor.lstrip("^")
        if self._on_demand:
            producer = self._producer(fn, tensor)
            if producer is not None:
                self._demand([("node", fn, producer)])
        return self._reader(fn)(tensor)

    def _arg_symbols(self, fn: Function) -> dict[str, Taint]:
        """arg name -> ``{("arg", j)}`` for a library function (made once)."""
        syms = self._argsyms.get(fn.name)
        if syms is None:
            syms = self._argsyms[fn.name] = {a.name: _arg_symbol(j) for j, a in enumerate(fn.args)}
        return syms

    def _reader(self, fn: Function) -> Callable[[str], Taint]:
        """``tensor -> local taint`` in ``fn`` (a bare argument name: its symbol), for tensors without "^"
        (made once per body, when its table exists)."""
        read = self._readers.get(id(fn))
        if read is not None:
            return read
        table = self._local.get(fn.name)
        syms = None if fn is self.graph.main else self._arg_symbols(fn)
        get = table.get if table is not None else {}.get

        def read(tensor: str) -> Taint:
            name, _, rest = tensor.partition(":")
            if not rest and syms is not None and name in syms:
                return syms[name]
            outs = get(name)
            if not outs:
                return EMPTY
            if len(outs) == 1:  # one output: every index reads it (an index past the end too)
                return outs[0]
            idx = 0
            if rest:
                tail = rest.rsplit(":", 1)[-1]
                idx = int(tail) if tail.isdigit() else 0
            return outs[idx] if idx < len(outs) else frozenset().union(*outs)

        if table is not None:
            self._readers[id(fn)] = read
        return read

    def _plan(self, fn: Function) -> list[tuple[Node, tuple[str, ...], list[str]]]:
        """Each node with its data inputs and the library functions it calls (computed once), in an
        order where producers come first when there is one."""
        plan = self._plans.get(fn.name)
        if plan is None:
            callees_of = self._callees_of
            plan, acyclic = _topological([(node, node.data_inputs, callees_of(node)) for node in fn.nodes])
            self._plans[fn.name] = plan
            self._acyclic[fn.name] = acyclic
        return plan

    def _node(self, fn: Function, node: Node, data: tuple[str, ...], callees: list[str],
              read: Callable[[str], Taint]) -> list[Taint]:
        op = node.op
        if op == "Const":  # before reading the inputs: a constant's taint does not depend on them
            return [EMPTY]
        if fn is self.graph.main:
            if op in PLACEHOLDERS or op == "PlaceholderWithDefault":
                if node.name == self._saver_filename:
                    return [frozenset({("saver", "")})]
                return [frozenset({("input", node.name)})]
            if op in ("VarHandleOp", "VariableV2", "Variable"):
                return [frozenset({("variable", str(node.attrs.get("shared_name") or node.name))})]
        ins = [read(t) for t in data]
        union = frozenset().union(*ins) if ins else EMPTY
        if op in SHAPE_OPS:
            return [shape_of(union)]
        if op in VARIABLE_OPS and op not in ("VarHandleOp", "VariableV2", "Variable"):
            return [union]
        if not callees:
            return [union]
        if op in CALL_OPS or op in self.graph.functions:
            return self._call(callees[0], ins, 0, EMPTY)
        if op in BRANCH_OPS:
            pred = ins[0] if ins else EMPTY
            outs: list[Taint] = []
            for callee in callees:
                for i, t in enumerate(self._call(callee, ins, BRANCH_OPS[op], pred)):
                    if i < len(outs):
                        outs[i] = outs[i] | t
                    else:
                        outs.append(t)
            return outs or [union]
        if op in LOOP_OPS:  # loop outputs may carry anything from inputs, body or condition
            extra = union
            for callee in callees:
                for t in self._call(callee, ins, 0, EMPTY):
                    extra = extra | t
            return [extra]
        return [union]  # dataset functions and others: conservative

    def _call(self, callee: str, ins: list[Taint], offset: int, extra: Taint) -> list[Taint]:
        summ = self.summaries.get(callee)
        if summ is None:
            return [frozenset().union(*ins, extra) if ins else extra]
        actual = ins[offset:]
        out = []
        for t in summ.outputs:
            res = set(extra)
            for src in t:
                if _is_arg(src):
                    res |= _subst(src, actual)
                else:
                    res.add(src)
            out.append(frozenset(res))
        return out or [extra]

    def _analyse_fn(self, fn: Function) -> bool:
        table = self._local.setdefault(fn.name, {})
        changed_any = False
        plan = self._plan(fn)
        sweeps = 1 if self._acyclic[fn.name] else MAX_SWEEPS  # topological order: one sweep is exact
        read = self._reader(fn)
        special = _SPECIAL_OPS
        node_taint = self._node
        for sweep in range(sweeps):
            compare = sweep > 0 or bool(table)  # a first sweep into an empty table changes every entry
            changed = False
            for node, data, callees in plan:
                op = node.op
                if op == "Const":  # as _node answers first: a constant carries nothing, whatever it names
                    new = [EMPTY]
                elif callees or op in special:
                    new = node_taint(fn, node, data, callees, read)
                elif not data:
                    new = [EMPTY]
                elif len(data) == 1:  # the common case, as _node computes it: the union of the inputs
                    new = [read(data[0])]
                else:
                    new = [frozenset().union(*[read(t) for t in data])]
                if compare and table.get(node.name) == new:
                    continue
                table[node.name] = new
                changed = True
            changed_any |= changed
            if not changed:
                break
        outs = tuple(self._tensor(fn, fn.ret.get(o.name, "")) if fn.ret.get(o.name) else EMPTY for o in fn.outputs)
        if fn is not self.graph.main:
            old = self.summaries.get(fn.name)
            new_summary = Summary(outs)
            if old != new_summary:
                self.summaries[fn.name] = new_summary
                changed_any = True
        return changed_any

    def _run(self) -> None:
        cg = self.view.cg
        functions = self.graph.functions
        order = [n for n in callees_first(cg) if n in functions]
        if not cg.cycles:  # no recursion: callees first, each function once is exact (what the worklist does)
            for name in order:
                self._analyse_fn(functions[name])
            self._analyse_fn(self.graph.main)
            self._args_top_down()
            return
        callers: dict[str, set[str]] = {}
        for caller, edges in cg.edges.items():
            for e in edges:
                callers.setdefault(e.callee, set()).add(caller)
        position = {name: i for i, name in enumerate(order)}
        # Bottom-up summaries with a worklist: a function is redone only when a callee's summary
        # changed (recursion), at most MAX_ROUNDS times each.
        pending = set(order)
        budget = {name: MAX_ROUNDS for name in order}
        import heapq

        heap = [(position[n], n) for n in order]
        while heap:
            _, name = heapq.heappop(heap)
            if name not in pending:
                continue
            pending.discard(name)
            budget[name] -= 1
            if self._analyse_fn(functions[name]):
                for c in callers.get(name, ()):
                    if c in functions and c not in pending and budget[c] > 0:
                        pending.add(c)
                        heapq.heappush(heap, (position[c], c))
        self._analyse_fn(self.graph.main)
        self._args_top_down()

    # ------------------------------------------------------------------ arguments, top-down
    def _args_top_down(self) -> None:
        graph = self.graph
        for name, fn in graph.functions.items():
            self.arg_taint[name] = self._initial_arguments(name, fn)
        sites = []  # (caller, callee, data inputs, offset, generic)
        for caller_name, edges in self.view.cg.edges.items():
            caller = graph.function(caller_name)
            if caller is None or not edges:
                continue
            index = {n.name: n for n in caller.nodes}
            for edge in edges:
                node = index.get(edge.node)
                callee = graph.functions.get(edge.callee)
                if node is None or callee is None:
                    continue
                offset = 0 if edge.attr == "" else BRANCH_OPS.get(node.op, 0)
                generic = edge.attr not in ("", "f") and node.op not in BRANCH_OPS and node.op not in LOOP_OPS
                sites.append((caller, callee, node.data_inputs, offset, generic))
        # Worklist, callers before callees: one pass carries sources down a whole call chain;
        # a caller is revisited only when its own arguments changed (at most MAX_ROUNDS times).
        rank = {name: i for i, name in enumerate(reversed(callees_first(self.view.cg)))}
        by_caller: dict[str, list] = {}
        for site in sites:
            by_caller.setdefault(site[0].name, []).append(site)
        order = sorted(by_caller, key=lambda n: rank.get(n, -1))
        if not self.view.cg.cycles:  # no recursion: callers first, each once, is what the worklist does
            for name in order:
                for site in by_caller[name]:
                    self._pass_arguments(*site)
            return
        import heapq

        heap = [(rank.get(n, -1), n) for n in order]
        queued = set(order)
        visits: dict[str, int] = {}
        while heap:
            _, name = heapq.heappop(heap)
            queued.discard(name)
            visits[name] = visits.get(name, 0) + 1
            for site in by_caller[name]:
                c = site[1].name
                if (self._pass_arguments(*site) and c in by_caller and c not in queued
                        and visits.get(c, 0) < MAX_ROUNDS):
                    queued.add(c)
                    heapq.heappush(heap, (rank.get(c, -1), c))

    def _initial_arguments(self, name: str, fn: Function) -> list[Taint]:
        """Argument taints before any call site: the captured variables the loader binds."""
        taints = [EMPTY] * len(fn.args)
        caps = self.graph.captures.get(name, ())
        first = len(fn.args) - len(caps)
        for k, cap in enumerate(caps):
            if cap.kind == "variable" and 0 <= first + k < len(taints):
                taints[first + k] = frozenset({("variable", cap.value)})
        return taints

    def _pass_arguments(self, caller: Function, callee: Function, data: tuple[str, ...], offset: int,
                        generic: bool) -> bool:
        """Add what one call site passes to the callee's argument taints; did they grow?"""
        actual = [self._concrete(caller, self._tensor(caller, t)) for t in data]  # taint(), without its fallback
        everything = frozenset().union(*actual) if actual else EMPTY
        cur = self.arg_taint[callee.name]
        caps = len(self.graph.captures.get(callee.name, ()))
        changed = False
        for j in range(len(callee.args) - caps):
            src = everything if generic else (actual[j + offset] if j + offset < len(actual) else EMPTY)
            if not src <= cur[j]:
                cur[j] = cur[j] | src
                changed = True
        return changed

    def _concrete(self, fn: Function, taint: Taint) -> Taint:
        for kind, _ in taint:
            if kind == "arg" or kind == "arg-shape":
                break
        else:  # no argument in it (most taints are empty)
            return taint
        if self._on_demand and fn.name not in self.arg_taint and fn.name in self.graph.functions:
            self._demand_arguments(fn.name)
        args = self.arg_taint.get(fn.name, [])
        out = {s for s in taint if not _is_arg(s)}
        for s in taint:
            if _is_arg(s):
                out |= _subst(s, args)
        return frozenset(out)


    # ------------------------------------------------------------------ on demand
    def _whole(self) -> None:
        """Forget what was worked out on demand and analyse every body (the exact route for this graph)."""
        self._on_demand = False
        self._local, self._readers, self._plans, self._acyclic = {}, {}, {}, {}
        self.summaries, self.arg_taint = {}, {}
        self._run()

    def _body(self, fn: Function) -> dict[str, Node]:
        """The body's nodes by name, the first time it is touched checked to have unique names and no
        data cycle (then evaluating a node from its producers' final values is what one sweep does)."""
        index = self._bodies.get(id(fn))
        if index is None:
            nodes = fn.nodes
            index = {n.name: n for n in nodes}
            if len(index) != len(nodes):
                raise _Fallback
            if not _topological([(n, n.data_inputs, _NO_CALLEES) for n in nodes])[1]:
                raise _Fallback  # a data cycle
            edges = sum(len(n.inputs) for n in nodes)
            self._bodies[id(fn)] = index
            self._local.setdefault(fn.name, {})
            # steps a DAG of this body can take (each frame pushed once per consumer, looked at twice)
            self._budget += 4 * (len(nodes) + edges + len(fn.outputs) + len(self.view.cg.edges.get(fn.name, ()))) + 16
        return index

    def _producer(self, fn: Function, tensor: str, index: dict[str, Node] | None = None) -> Node | None:
        """The node of ``fn`` whose output ``tensor`` (no "^") reads, if any (not an argument)."""
        name, _, rest = tensor.partition(":")
        if not rest and fn is not self.graph.main and name in self._arg_symbols(fn):
            return None
        return (index if index is not None else self._body(fn)).get(name)

    def _callees_of(self, node: Node) -> list[str]:
        functions = self.graph.functions
        if node.op in functions:
            return [node.op]
        named = self.view.cg.node_calls.get(id(node))
        return [callee for attr, callee in named if attr and callee in functions] if named else _NO_CALLEES

    def _needs(self, fn: Function, node: Node, data: tuple[str, ...], callees: list[str]) -> list:
        """What ``_node`` reads for this node and is not worked out yet."""
        op = node.op
        if op == "Const":
            return []
        if fn is self.graph.main and (op in PLACEHOLDERS or op in ("PlaceholderWithDefault", "VarHandleOp",
                                                                   "VariableV2", "Variable")):
            return []
        table = self._local[fn.name]
        index = self._bodies[id(fn)]
        out: list = []
        for t in data:
            producer = self._producer(fn, t, index)
            if producer is not None and producer is not node and producer.name not in table:
                out.append(("node", fn, producer))
        if callees and op not in SHAPE_OPS and not (op in VARIABLE_OPS and op not in ("VarHandleOp", "VariableV2",
                                                                                      "Variable")):
            called = callees[:1] if (op in CALL_OPS or op in self.graph.functions) else (
                callees if (op in BRANCH_OPS or op in LOOP_OPS) else ())
            functions = self.graph.functions
            out.extend(("summary", functions[c], None) for c in called if c not in self.summaries)
        return out

    def _summary_needs(self, fn: Function) -> list:
        table = self._local.setdefault(fn.name, {})
        out: list = []
        for o in fn.outputs:
            tensor = fn.ret.get(o.name)
            if tensor:
                producer = self._producer(fn, tensor.lstrip("^"))
                if producer is not None and producer.name not in table:
                    out.append(("node", fn, producer))
        return out

    def _demand(self, work: list) -> None:
        """Evaluate what ``work`` asks for, dependencies first, with an explicit stack (no recursion)."""
        while work:
            if self._budget <= 0:  # more steps than a DAG of the touched bodies can take: not one
                raise _Fallback
            self._budget -= 1
            frame = work[-1]
            kind, fn, node = frame[0], frame[1], frame[2]
            if kind == "ready":  # its needs were pushed above it, so they are worked out now
                self._local[fn.name][node.name] = self._node(fn, node, frame[3], frame[4], self._reader(fn))
            elif kind == "node":
                table = self._local[fn.name]
                if node.name in table:
                    work.pop()
                    continue
                data = node.data_inputs
                callees = self._callees_of(node)
                needs = self._needs(fn, node, data, callees)
                if needs:
                    work[-1] = ("ready", fn, node, data, callees)
                    work.extend(needs)
                    continue
                table[node.name] = self._node(fn, node, data, callees, self._reader(fn))
            else:
                if fn.name in self.summaries:
                    work.pop()
                    continue
                needs = self._summary_needs(fn)
                if needs:
                    work.extend(needs)
                    continue
                self.summaries[fn.name] = Summary(tuple(
                    self._tensor(fn, fn.ret.get(o.name, "")) if fn.ret.get(o.name) else EMPTY for o in fn.outputs))
            work.pop()

    def _demand_summary(self, fn: Function) -> None:
        self._body(fn)
        self._demand([("summary", fn, None)])

    def _demand_arguments(self, name: str) -> None:
        """Argument taints of ``name`` and of every caller above it not worked out yet, callers first
        (what the top-down pass gives without recursion)."""
        graph = self.graph
        if self._sites is None:
            self._sites = {}
            for edges in self.view.cg.edges.values():
                for edge in edges:
                    self._sites.setdefault(edge.callee, []).append(edge)
            self._rank = {n: k for k, n in enumerate(reversed(callees_first(self.view.cg)))}
        want = [name]
        seen = {name}
        i = 0
        while i < len(want):
            for edge in self._sites.get(want[i], ()):
                c = edge.caller
                if c not in seen and c in graph.functions and c not in self.arg_taint:
                    seen.add(c)
                    want.append(c)
            i += 1
        rank = self._rank
        for callee_name in sorted(want, key=lambda n: rank.get(n, -1)) if len(want) > 1 else want:
            fn = graph.functions[callee_name]
            self.arg_taint[callee_name] = self._initial_arguments(callee_name, fn)
            for edge in self._sites.get(callee_name, ()):
                caller = graph.function(edge.caller)
                if caller is None:
                    continue
                node = self._body(caller).get(edge.node)
                if node is None:
                    continue
                offset = 0 if edge.attr == "" else BRANCH_OPS.get(node.op, 0)
                generic = edge.attr not in ("", "f") and node.op not in BRANCH_OPS and node.op not in LOOP_OPS
                self._pass_arguments(caller, fn, node.data_inputs, offset, generic)


def _in_order(plan: list, names: set[str]) -> bool:
    """Does every node come after the producers of its data inputs (names unique)?  Then the
    order as written is topological already (TensorFlow usually writes bodies that way)."""
    if len(names) != len(plan):
        return False
    seen: set[str] = set()
    for node, data, _ in plan:
        name = node.name
        for t in data:
            producer = t.split(":", 1)[0]  # data inputs carry no "^"
            if producer in names and producer not in seen and producer != name:
                return False
        seen.add(name)
    return True


def _topological(plan: list) -> tuple[list, bool]:
    """Order nodes so data inputs come first (Kahn); (original order, False) if there is a cycle.
    Every topological order gives the same one-sweep result, so a body already in order is kept."""
    names = {entry[0].name for entry in plan}
    if _in_order(plan, names):
        return plan, True
    deps: dict[str, set[str]] = {}
    users: dict[str, list[str]] = {}
    for node, data, _ in plan:
        d = {tensor_node(t) for t in data} & names
        d.discard(node.name)
        deps[node.name] = d
        for x in d:
            users.setdefault(x, []).append(node.name)
    by_name = {entry[0].name: entry for entry in plan}
    ready = [entry[0].name for entry in plan if not deps[entry[0].name]]
    out = []
    while ready:
        name = ready.pop()
        out.append(by_name[name])
        for u in users.get(name, ()):
            deps[u].discard(name)
            if not deps[u]:
                ready.append(u)
    if len(out) != len(plan):
        return plan, False
    return out, True


def callees_first(cg) -> list[str]:
    """Library functions, callees before callers (computed once per call graph)."""
    order = getattr(cg, "_callees_first", None)
    if order is None:
        order = _callees_first(cg.callable, cg.edges)
        cg._callees_first = order
    return order


def _callees_first(functions: dict[str, Function], edges: dict) -> list[str]:
    """Functions ordered so callees come before callers (cycles broken arbitrarily)."""
    order: list[str] = []
    state: dict[str, int] = {}
    for root in functions:
        if root in state:
            continue
        stack = [(root, iter([e.callee for e in edges.get(root, ())]))]
        state[root] = 1
        while stack:
            name, it = stack[-1]
            for nxt in it:  # the next callee not seen yet
                if nxt in functions and nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, iter([e.callee for e in edges.get(nxt, ())])))
                    break
            else:
                stack.pop()
                state[name] = 2
                order.append(name)
    return order


def sources(taint: Iterable[Source], kind: str) -> list[str]:
    return sorted(v for k, v in taint if k == kind)
