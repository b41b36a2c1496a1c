"""Dataflow's passes agree with each other: IR built by hand (no parsing, no TensorFlow).

Without recursion the summaries and the argument taints are computed in one ordered pass each;
with a call-graph cycle anywhere they go through the bounded worklists; a body written out of
order is sorted first.  Every route must give the same taints."""

from modelwarden.analysis.callgraph import build
from modelwarden.analysis.dataflow import Dataflow
from modelwarden.analysis.graphs import GraphView
from modelwarden.analysis.values import Resolver
from modelwarden.ir import Arg, EntryKind, EntryPoint, FuncRef, Function, FunctionKind, Graph, Node


def _fn(name, nodes, args=(), outputs=(), ret=None):
    return Function(name, FunctionKind.LIBRARY, tuple(nodes), args=tuple(Arg(a) for a in args),
                    outputs=tuple(Arg(o) for o in outputs), ret=ret or {})


def _graph(reverse_inner=False, recursive=False):
    inner_nodes = [
        Node("r", "ReadVariableOp", ("q",)),
        Node("j", "StringJoin", ("p", "r:value:0")),
        Node("rf", "ReadFile", ("j:output:0",)),
        Node("shape", "Shape", ("p",)),
        Node("fill", "Fill", ("shape:output:0", "r:value:0")),
    ]
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


def _taints(g):
    cg = build(g)
    df = Dataflow(GraphView(g, cg, Resolver(cg)))
    inner = g.functions["inner"]
    nodes = {n.name: n for n in inner.nodes}
    return (bool(cg.cycles), df.input_taint(inner, nodes["rf"], 0), df.input_taint(inner, nodes["fill"], 0),
            df.taint(g.main, "out"), df.summaries["outer"].outputs)


def test_every_route_gives_the_same_taints():
    plain = _taints(_graph())
    assert plain[0] is False
    assert plain[1] == {("input", "x"), ("variable", "flag")}  # the path: request and checkpoint
    assert plain[2] == {("input-shape", "x")}  # Fill's dims: only the request's shape
    assert plain[3] == {("input-shape", "x"), ("variable", "flag")}  # through both functions' summaries
    for variant in (_graph(reverse_inner=True), _graph(recursive=True), _graph(reverse_inner=True, recursive=True)):
        got = _taints(variant)
        assert got[1:] == plain[1:]
    assert _taints(_graph(recursive=True))[0] is True
