"""Where values come from: taint tracking over the IR, across function calls.

Sources are checkpoint variables, signature (request) inputs and the saver's
filename; constants and assets carry no taint.  Each function gets a summary
("output *i* depends on these sources and on these arguments"), computed
bottom-up over the call graph; then each function's arguments get their
concrete sources top-down from every call site.  Control dependence through
If/Case/While predicates taints their outputs too.  Everything is bounded:
sweeps and fixed-point rounds stop at fixed limits, and what is not resolved
stays conservative (a union of inputs).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from modelwarden.analysis.callgraph import tensor_node
from modelwarden.analysis.graphs import GraphView
from modelwarden.analysis.values import PLACEHOLDERS, VARIABLE_OPS
from modelwarden.ir import Function, Node

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
MAX_SWEEPS = 8
MAX_ROUNDS = 6


@dataclass(frozen=True, slots=True)
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


def _subst(src: Source, actual: list[Taint]) -> Taint:
    j = int(src[1])
    if j >= len(actual):
        return EMPTY
    return actual[j] if src[0] == "arg" else shape_of(actual[j])


class Dataflow:
    def __init__(self, view: GraphView) -> None:
        self.view = view
        self.graph = view.graph
        self._local: dict[str, dict[str, list[Taint]]] = {}  # fn -> node -> per-output taints
        self.summaries: dict[str, Summary] = {}
        self.arg_taint: dict[str, list[Taint]] = {}
        self._inputs = {tensor_node(spec.tensor) for sig in self.graph.signatures for spec in sig.inputs}
        saver = self.graph.saver
        self._saver_filename = tensor_node(saver.filename_tensor) if saver and saver.filename_tensor else ""
        self._run()

    # ------------------------------------------------------------------ public
    def taint(self, fn: Function, tensor: str) -> Taint:
        """Concrete sources of a tensor (arguments replaced by what callers pass)."""
        return self._concrete(fn, self._tensor(fn, tensor))

    def input_taint(self, fn: Function, node: Node, index: int) -> Taint:
        data = node.data_inputs
        return self.taint(fn, data[index]) if index < len(data) else EMPTY

    def output_taint(self, fn: Function, output: str) -> Taint:
        """Taint of a function's return value (by output name), concrete."""
        tensor = fn.ret.get(output)
        return self.taint(fn, tensor) if tensor else EMPTY

    # ------------------------------------------------------------------ local analysis
    def _tensor(self, fn: Function, tensor: str) -> Taint:
        tensor = tensor.lstrip("^")
        name, _, rest = tensor.partition(":")
        if fn is not self.graph.main and not rest:
            for j, arg in enumerate(fn.args):
                if arg.name == name:
                    return frozenset({("arg", str(j))})
        outs = self._local.get(fn.name, {}).get(name)
        if not outs:
            return EMPTY
        idx = 0
        if rest:
            tail = rest.rsplit(":", 1)[-1]
            idx = int(tail) if tail.isdigit() else 0
        return outs[idx] if idx < len(outs) else outs[0] if len(outs) == 1 else frozenset().union(*outs)

    def _node(self, fn: Function, node: Node) -> list[Taint]:
        op = node.op
        data = node.data_inputs
        ins = [self._tensor(fn, t) for t in data]
        union = frozenset().union(*ins) if ins else EMPTY
        if op == "Const":
            return [EMPTY]
        if fn is self.graph.main:
            if op in PLACEHOLDERS or op == "PlaceholderWithDefault":
                if node.name == self._saver_filename:
                    return [frozenset({("saver", "")})]
                return [frozenset({("input", node.name)})]
            if op in ("VarHandleOp", "VariableV2", "Variable"):
                return [frozenset({("variable", str(node.attrs.get("shared_name") or node.name))})]
        if op in SHAPE_OPS:
            return [shape_of(union)]
        if op in VARIABLE_OPS and op not in ("VarHandleOp", "VariableV2", "Variable"):
            return [union]
        callees = [ref.name for _, ref in node.func_refs() if ref.name in self.graph.functions]
        if op in self.graph.functions:
            callees = [op]
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
        for _ in range(MAX_SWEEPS):
            changed = False
            for node in fn.nodes:
                new = self._node(fn, node)
                if table.get(node.name) != new:
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
        order = _callees_first(self.graph.functions, cg.edges)
        for _ in range(MAX_ROUNDS):  # bottom-up summaries, repeated for recursion
            changed = False
            for name in order:
                changed |= self._analyse_fn(self.graph.functions[name])
            if not changed:
                break
        self._analyse_fn(self.graph.main)
        self._args_top_down()

    # ------------------------------------------------------------------ arguments, top-down
    def _args_top_down(self) -> None:
        graph = self.graph
        for name, fn in graph.functions.items():
            taints = [EMPTY] * len(fn.args)
            caps = graph.captures.get(name, ())
            first = len(fn.args) - len(caps)
            for k, cap in enumerate(caps):
                if cap.kind == "variable" and 0 <= first + k < len(taints):
                    taints[first + k] = frozenset({("variable", cap.value)})
            self.arg_taint[name] = taints
        for _ in range(MAX_ROUNDS):
            changed = False
            for caller_name, edges in self.view.cg.edges.items():
                caller = graph.function(caller_name)
                if caller is None:
                    continue
                index = {n.name: n for n in caller.nodes} if edges else {}
                for edge in edges:
                    node = index.get(edge.node)
                    callee = graph.functions.get(edge.callee)
                    if node is None or callee is None:
                        continue
                    offset = 0 if edge.attr == "" else BRANCH_OPS.get(node.op, 0)
                    generic = edge.attr not in ("", "f") and node.op not in BRANCH_OPS and node.op not in LOOP_OPS
                    data = node.data_inputs
                    actual = [self.taint(caller, t) for t in data]
                    everything = frozenset().union(*actual) if actual else EMPTY
                    cur = self.arg_taint[callee.name]
                    caps = len(graph.captures.get(callee.name, ()))
                    for j in range(len(callee.args) - caps):
                        src = everything if generic else (actual[j + offset] if j + offset < len(actual) else EMPTY)
                        if not src <= cur[j]:
                            cur[j] = cur[j] | src
                            changed = True
            if not changed:
                break

    def _concrete(self, fn: Function, taint: Taint) -> Taint:
        if not any(_is_arg(s) for s in taint):
            return taint
        args = self.arg_taint.get(fn.name, [])
        out = {s for s in taint if not _is_arg(s)}
        for s in taint:
            if _is_arg(s):
                out |= _subst(s, args)
        return frozenset(out)


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
            nxt = next((c for c in it if c in functions and c not in state), None)
            if nxt is None:
                stack.pop()
                state[name] = 2
                order.append(name)
            else:
                state[nxt] = 1
                stack.append((nxt, iter([e.callee for e in edges.get(nxt, ())])))
    return order


def sources(taint: Iterable[Source], kind: str) -> list[str]:
    return sorted(v for k, v in taint if k == kind)
