"""Call graph, reachability and value resolution on IR built by hand (no parsing involved)."""

import time

from modelwarden.analysis.callgraph import build
from modelwarden.analysis.values import Resolver
from modelwarden.ir import (
    Arg, AssetRef, Capture, EntryKind, EntryPoint, FuncRef, Function, FunctionKind, Graph, Node, SaverInfo, TensorValue,
)


def const(name, *values):
    return Node(name, "Const", attrs={"value": TensorValue("string", (), tuple(values))})


def fn(name, nodes, args=()):
    return Function(name, FunctionKind.LIBRARY, tuple(nodes), args=tuple(Arg(a) for a in args))


def graph(main_nodes, functions, entries, **kw):
    main = Function("<graph>", FunctionKind.GRAPH, tuple(main_nodes))
    return Graph("g", main, {f.name: f for f in functions}, tuple(entries), **kw)


def test_signature_reaches_nested_branch_with_call_path():
    leaf = fn("branch_true", [const("p", "/etc/passwd"), Node("rf", "ReadFile", ("p:output:0",))])
    body = fn("body", [Node("if", "If", ("c",), {"then_branch": FuncRef("branch_true"), "else_branch": FuncRef("noop")})])
    noop = fn("noop", [])
    serve = fn("serve", [Node("w", "While", ("x",), {"body": FuncRef("body"), "cond": FuncRef("noop")})])
    g = graph(
        [Node("x", "Placeholder"), Node("call", "StatefulPartitionedCall", ("x",), {"f": FuncRef("serve")})],
        [leaf, body, noop, serve],
        [EntryPoint(EntryKind.SIGNATURE, "serving_default", tensors=("call:0",))],
    )
    cg = build(g)
    r = cg.function_reach["branch_true"]
    assert r.kind is EntryKind.SIGNATURE
    assert r.path == ("signature:serving_default", "call", "serve", "w[body]", "body", "if[then_branch]", "branch_true")
    node = leaf.nodes[1]
    assert Resolver(cg).input_of(leaf, node, 0).values == ("/etc/passwd",)


def test_unreachable_and_best_kind():
    a = fn("a", [])
    b = fn("b", [])
    g = graph([], [a, b], [EntryPoint(EntryKind.SAVER, "saver", functions=("a",)),
                           EntryPoint(EntryKind.LOAD_TIME, "init", functions=("a",))])
    cg = build(g)
    assert cg.function_reach["a"].kind is EntryKind.LOAD_TIME
    assert cg.function_kinds["a"] == {EntryKind.SAVER, EntryKind.LOAD_TIME}
    assert "b" not in cg.function_reach


def test_cycles_found_and_linear_on_large_library():
    n = 10_000
    funcs = [fn(f"f{i}", [Node("c", "PartitionedCall", attrs={"f": FuncRef(f"f{(i + 1) % n}")})]) for i in range(n)]
    selfrec = fn("self", [Node("c", "PartitionedCall", attrs={"f": FuncRef("self")})])
    g = graph([], [*funcs, selfrec], [EntryPoint(EntryKind.SIGNATURE, "s", functions=("f0",))])
    t = time.perf_counter()
    cg = build(g)
    assert time.perf_counter() - t < 5
    assert len(cg.function_reach) == n
    assert ("self",) in cg.cycles
    assert any(len(c) == n for c in cg.cycles)
    assert cg.function_reach["f9999"].path[-1] == "f9999"


def test_missing_function_recorded_but_stock_op_names_are_not():
    f = fn("f", [Node("c", "PartitionedCall", attrs={"f": FuncRef("ghost")}),
                 Node("g", "SymbolicGradient", attrs={"f": FuncRef("Square")})])
    cg = build(graph([], [f], []), is_stock_op=lambda op: op == "Square")
    assert [e.callee for e in cg.missing] == ["ghost"]


def test_resolver_follows_args_assets_captures_and_saver():
    init = fn("init", [Node("t", "InitializeTableFromTextFileV2", ("table", "fname"))], args=("table", "fname"))
    restore = fn("restore", [Node("r", "RestoreV2", ("prefix",))], args=("prefix",))
    g = graph(
        [const("asset_const", "/export/time/vocab.txt"), Node("saver_filename", "Placeholder"),
         Node("callinit", "StatefulPartitionedCall", ("tbl", "asset_const"), {"f": FuncRef("init")}),
         Node("callrestore", "StatefulPartitionedCall", ("saver_filename",), {"f": FuncRef("restore")}),
         Node("tbl", "HashTableV2")],
        [init, restore],
        [EntryPoint(EntryKind.LOAD_TIME, "init", tensors=("callinit",)),
         EntryPoint(EntryKind.SAVER, "saver", tensors=("callrestore",))],
        assets=(AssetRef("vocab.txt", "asset_const:0"),),
        saver=SaverInfo("saver_filename:0", "", "callrestore"),
    )
    cg = build(g)
    res = Resolver(cg)
    assert res.input_of(init, init.nodes[0], 1).kind == "asset"
    assert res.input_of(restore, restore.nodes[0], 0).kind == "saver-filename"
    # TF2 object-graph captures: trailing args bound to an asset
    cap = fn("cap", [Node("t", "InitializeTableFromTextFileV2", ("h", "path"))], args=("h", "path"))
    g2 = graph([], [cap], [EntryPoint(EntryKind.LOAD_TIME, "r", functions=("cap",))],
               captures={"cap": (Capture("other"), Capture("asset", "vocab.txt"))})
    assert Resolver(build(g2)).input_of(cap, cap.nodes[0], 1).values == ("vocab.txt",)


def test_string_join_of_constants_is_resolved():
    f = fn("f", [const("a", "/etc"), const("b", "passwd"),
                 Node("j", "StringJoin", ("a:output:0", "b:output:0"), {"separator": "/"}),
                 Node("rf", "ReadFile", ("j:output:0",))])
    cg = build(graph([], [f], [EntryPoint(EntryKind.SIGNATURE, "s", functions=("f",))]))
    assert Resolver(cg).input_of(f, f.nodes[3], 0).values == ("/etc/passwd",)
