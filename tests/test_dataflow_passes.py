"""Dataflow's passes agree with each other: IR built by hand (no parsing, no TensorFlow).

By default a query evaluates only what it depends on; analysed up front, without recursion the
summaries and the argument taints are computed in one ordered pass each, with a call-graph cycle
anywhere they go through the bounded worklists; a body written out of order is sorted first.
Every route must give the same taints."""

from modelwarden.analysis.callgraph import build
from modelwarden.analysis.dataflow import Dataflow
from modelwarden.analysis.graphs import GraphView
from modelwarden.analysis.values import Resolver
from modelwarden.ir import Arg, EntryKind, EntryPoint, FuncRef, Function, FunctionKind, Graph, Node


def _fn(name, nodes, args=(), outputs=(), ret=None):
    return Function(name, FunctionKind.LIBRARY, tuple(nodes), args=tuple(Arg(a) for a in args),
                    outputs=tuple(Arg(o) for o in outputs), ret=ret or {})


def _graph(reverse_inner=False, recursive=False, body_cycle=False, twice=False):
    inner_nodes = [
        Node("r", "ReadVariableOp", ("q",)),
        Node("j", "StringJoin", ("p", "r:value:0", *(["c2:z:0"] if body_cycle else []))),
        Node("rf", "ReadFile", ("j:output:0",)),
        Node("shape", "Shape", ("p",)),
        Node("fill", "Fill", ("shape:output:0", "r:value:0")),
    ]
    if body_cycle:  # a data cycle: that body is swept in written order, a bounded number of times
        inner_nodes += [Node("c1", "Identity", ("c2:z:0",)), Node("c2", "AddV2", ("c1:output:0", "q"))]
    if twice:  # a node name used twice: the later node's taint is the one read
        inner_nodes += [Node("r", "Identity", ("p",))]
    inner = _fn("inner", inner_nodes[::-1] if reverse_inner else inner_nodes, args=("p", "q"),
                outputs=("out",), ret={"out": "fill:output:0"})
    outer = _fn("outer", [Node("call", "PartitionedCall", ("a", "b"), {"f": FuncRef("inner")}),
                          Node("id", "Identity", ("call:output:0",))],
                args=("a", "b"), outputs=("y",), ret={"y": "id:output:0"})
    functions = [inner, outer]
    if recursive:  # a cycle elsewhere in the library sends every pass through its worklist
        functions.append(_fn("rec", [Node("c", "PartitionedCall", (), {"f": FuncRef("rec")})]))
    main = Function("<graph>", FunctionKind.GRAPH, (
        Node("x", "Placeholder"),
        Node("v", "VarHandleOp", attrs={"shared_name": "flag"}),
        Node("call", "StatefulPartitionedCall", ("x", "v"), {"f": FuncRef("outer")}),
        Node("out", "Identity", ("call",)),
    ))
    return Graph("g", main, {f.name: f for f in functions},
                 (EntryPoint(EntryKind.SIGNATURE, "serving_default", tensors=("out:0",)),))


def _taints(g, on_demand=True):
    cg = build(g)
    df = Dataflow(GraphView(g, cg, Resolver(cg)), on_demand=on_demand)
    inner = g.functions["inner"]
    nodes = {n.name: n for n in inner.nodes}
    return (bool(cg.cycles), df.input_taint(inner, nodes["rf"], 0), df.input_taint(inner, nodes["fill"], 0),
            df.taint(g.main, "out"), df.summary("outer").outputs)


def test_every_route_gives_the_same_taints():
    plain = _taints(_graph())
    assert plain[0] is False
    assert plain[1] == {("input", "x"), ("variable", "flag")}  # the path: request and checkpoint
    assert plain[2] == {("input-shape", "x")}  # Fill's dims: only the request's shape
    assert plain[3] == {("input-shape", "x"), ("variable", "flag")}  # through both functions' summaries
    assert _taints(_graph(), on_demand=False) == plain  # every body analysed up front
    for variant in (_graph(reverse_inner=True), _graph(recursive=True), _graph(reverse_inner=True, recursive=True)):
        for on_demand in (True, False):
            assert _taints(variant, on_demand)[1:] == plain[1:]
    assert _taints(_graph(recursive=True))[0] is True


def _every_taint(g, on_demand):
    cg = build(g)
    df = Dataflow(GraphView(g, cg, Resolver(cg)), on_demand=on_demand)
    out = []
    for fn in (*g.functions.values(), g.main):  # callees first: on demand starts deep in the graph
        for node in fn.nodes:
            out.extend(df.input_taint(fn, node, i) for i in range(len(node.data_inputs)))
        out.extend(df.output_taint(fn, o.name) for o in fn.outputs)
    return out, [df.summary(name) for name in g.functions]


def test_on_demand_falls_back_where_it_would_not_be_exact():
    """A body with a data cycle or a name used twice is not a DAG of unique nodes: on demand the
    query that touches it must give what the up-front analysis gives (it analyses the graph whole)."""
    for variant in (_graph(body_cycle=True), _graph(twice=True), _graph(body_cycle=True, reverse_inner=True),
                    _graph(twice=True, recursive=True)):
        on_demand, up_front = _every_taint(variant, True), _every_taint(variant, False)
        assert on_demand == up_front
    cyclic = _every_taint(_graph(body_cycle=True), False)[0]
    assert ("variable", "flag") in cyclic[3]  # j reads c2, which reads q (bound to the variable) in the cycle
