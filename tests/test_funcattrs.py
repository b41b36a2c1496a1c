"""Which nodes name a function (``formats/funcattrs.py``): the one-pass skeleton answer must never
miss a node that the real parse gives a function-valued attribute, on real TensorFlow models
and on hostile wire bytes written to make the two parses disagree."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelwarden.formats import funcattrs, tfproto
from modelwarden.formats.funcattrs import nodes_with_func_attrs
from modelwarden.formats.interface import Candidate
from modelwarden.formats.savedmodel import SavedModelReader
from modelwarden.formats.tfgraph import graph_body, node_from_proto
from modelwarden.ir import ArtifactFormat

from .conftest import build_fixtures


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _int(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value)


def _func(name: str, extra: bytes = b"") -> bytes:
    return _len(1, name.encode()) + extra  # NameAttrList.name


def _attr(key: str, value: bytes) -> bytes:
    return _len(5, _len(1, key.encode()) + _len(2, value))  # NodeDef.attr entry: key 1, AttrValue 2


def _node(name: str, *attrs: bytes) -> bytes:
    return _len(1, name.encode()) + _len(2, b"NoOp") + b"".join(attrs)


def _graph(*nodes: bytes, functions: tuple[tuple[bytes, ...], ...] = ()) -> bytes:
    lib = b"".join(_len(1, b"".join(_len(3, n) for n in fn)) for fn in functions)  # FunctionDef.node_def 3
    return b"".join(_len(1, n) for n in nodes) + (_len(2, lib) if lib else b"")


def _slow_refs(gd) -> dict[tuple[int, int], tuple]:
    """Every node examined, attribute by attribute."""
    bodies = [gd.node, *[fd.node_def for fd in gd.library.function]]
    return {(f - 1, i): tuple((k, r.name) for k, r in node_from_proto(nd).func_refs())
            for f, body in enumerate(bodies) for i, nd in enumerate(body)}


def _fast_refs(gd, calls) -> dict[tuple[int, int], tuple]:
    main, functions = graph_body(gd, "<graph>", "x", calls=calls)
    bodies = [main, *[functions[fd.signature.name] for fd in gd.library.function]]
    return {(f - 1, i): tuple((k, r.name) for k, r in n.func_refs())
            for f, body in enumerate(bodies) for i, n in enumerate(body.nodes)}


def _agree(data: bytes) -> dict[int, frozenset[int]] | None:
    """The skeleton's answer for a GraphDef, after checking that the IR built with it equals the IR
    built by examining every node."""
    gd = tfproto.parse("GraphDef", data, "x")
    calls = nodes_with_func_attrs("GraphDef", data)
    if calls is not None:
        calls = calls.get(0, {})
        slow = _slow_refs(gd)
        assert {k for k, v in slow.items() if v} <= {(f, n) for f, ns in calls.items() for n in ns}
        if len(gd.library.function) == len({fd.signature.name for fd in gd.library.function}):
            assert _fast_refs(gd, calls) == slow
    return calls


def test_self_check_passes_on_this_protobuf():
    assert funcattrs._works()


def test_plain_func_and_list_func_are_found():
    data = _graph(_node("a", _attr("T", _int(6, 1))),
                  _node("b", _attr("f", _len(10, _func("g")))),
                  functions=((_node("c"), _node("d", _attr("branches", _len(1, _len(9, _func("h")))))),))
    assert _agree(data) == {-1: frozenset({1}), 0: frozenset({1})}


def test_no_function_anywhere_is_an_empty_answer():
    assert _agree(_graph(_node("a", _attr("T", _int(6, 1))), _node("b"))) == {}


@pytest.mark.parametrize("entries", [
    (_attr("f", _len(10, _func("g"))), _attr("f", _int(3, 1))),  # map: the last "f" wins (an int)
    (_attr("f", _int(3, 1)), _attr("f", _len(10, _func("g")))),  # map: the last "f" wins (a function)
    (_attr("f", _len(10, _func("g")) + _len(2, b"s")),),  # oneof: the last kind wins (a string)
    (_attr("f", _len(2, b"s") + _len(10, _func("g"))),),  # oneof: the last kind wins (a function)
    (_attr("f", _len(1, _len(9, _func("g"))) + _int(3, 7)),),  # a list, then an int
    (_attr("f", _len(1, _int(3, 1) + _len(9, _func("g")) + _len(2, b"x"))),),  # a list of mixed kinds
    (_attr("f", _len(10, _func("g")) + _len(10, _func("h"))),),  # a func given twice: merged
])
def test_real_parse_and_skeleton_agree_on_hostile_spellings(entries):
    calls = _agree(_graph(_node("a", *entries)))
    assert calls == {-1: frozenset({0})}  # a superset: reported whether or not the real parse keeps it


@pytest.mark.parametrize("depth", [1, 3, 40])
def test_a_forged_unsatisfiable_field_cannot_hide_a_function(depth):
    chain = b""
    for _ in range(depth):
        chain = _len(funcattrs._UNSATISFIABLE, chain)
    calls = _agree(_graph(_node("a", _attr("f", _len(10, _func("evil", chain))))))
    assert calls is None or calls == {-1: frozenset({0})}


def test_too_deep_for_the_skeleton_means_no_answer():
    chain = b""
    for _ in range(200):  # past protobuf's nesting limit for the skeleton, not for the real parse
        chain = _len(funcattrs._UNSATISFIABLE, chain)
    assert _agree(_graph(_node("a", _attr("f", _len(10, _func("evil", chain)))))) is None


def test_large_input_means_no_answer(monkeypatch):
    data = _graph(_node("b", _attr("f", _len(10, _func("g")))))
    monkeypatch.setattr(funcattrs, "MAX_BYTES", len(data) - 1)
    assert nodes_with_func_attrs("GraphDef", data) is None


def test_saved_model_meta_graphs_are_told_apart():
    sm = tfproto.message_class("SavedModel")()
    sm.meta_graphs.add().graph_def.node.add(name="a")
    g1 = sm.meta_graphs.add().graph_def
    g1.node.add(name="a")
    g1.library.function.add().node_def.add(name="b").attr["f"].func.name = "g"
    assert nodes_with_func_attrs("SavedModel", sm.SerializeToString()) == {1: {0: frozenset({0})}}


def _saved_models() -> list[Path]:
    roots = [build_fixtures(b) for b in ("build_tf_scan", "build_tf_depth", "build_dataflow")]
    return sorted({p.parent for r in roots for p in r.rglob("saved_model.pb")})


def test_real_models_read_the_same_with_and_without_the_skeleton(monkeypatch):
    models = _saved_models()
    assert len(models) > 10
    reader = SavedModelReader()
    named = 0
    for d in models:
        cand = Candidate(str(d), ArtifactFormat.SAVEDMODEL, d.name)
        try:
            fast = reader.read(cand)
        except Exception:  # noqa: BLE001 - hostile fixtures that do not read: the same below
            fast = None
        with monkeypatch.context() as m:
            m.setattr(funcattrs, "MAX_BYTES", -1)  # every node examined
            try:
                slow = reader.read(cand)
            except Exception:  # noqa: BLE001
                slow = None
        assert (fast is None) == (slow is None), d
        if fast is None:
            continue
        for gf, gs in zip(fast.graphs, slow.graphs, strict=True):
            for bf, bs in zip((gf.main, *gf.functions.values()), (gs.main, *gs.functions.values()), strict=True):
                for nf, ns in zip(bf.nodes, bs.nodes, strict=True):
                    assert nf.func_refs() == ns.func_refs(), (d, bf.name, nf.name)
                    named += bool(ns.func_refs())
    assert named > 50  # the models do call functions through attributes
