"""Which NodeDefs of a serialized SavedModel or GraphDef may name a function in an attribute.

Most nodes name none, but finding that out node by node from the parsed message means looking
up every attribute and asking which kind of value it holds (about half the reading of a small
SavedModel).  Instead the serialized bytes are parsed a second time (in C) with a skeleton of the
same schema that keeps only the way from the root to a function-valued attribute
(``node``/``node_def`` -> ``attr`` -> ``func`` or ``list.func``), where every function reference
(``NameAttrList``) has a required field that no finite input can supply (it is a message whose
own required field is the same message); protobuf's ``FindInitializationErrors`` then names
every function reference with its node, in one call.

The answer is a superset, never less: the skeleton keeps every entry of an attribute map (a
map keeps the last of a repeated key) and both a ``func`` and a ``list`` however the ``value``
oneof resolves, so a node it does not name has no function-valued attribute in the real parse.
When the answer cannot be had (text format, larger than :data:`MAX_BYTES`, a parse the skeleton
refuses, a report in an unexpected shape, a protobuf whose check fails the self-test) it is
``None`` and every node is examined as before.
"""

from __future__ import annotations

import re
from functools import cache

from google.protobuf.message import DecodeError

from modelwarden.formats import tfproto
from modelwarden.formats.protoschema import ProtoSchema

# Above this the reports could be large (a function reference takes 2 bytes of input and a
# report of ~100 bytes): every node is examined instead.
MAX_BYTES = 1 << 20
_UNSATISFIABLE = 536_870_911  # the largest field number: no TensorFlow message uses it


def _keep(message: str, *names: str, **retyped: str) -> list[tuple]:
    """Fields of a tfproto message, same numbers (no oneofs: the skeleton keeps every kind)."""
    specs = {spec[0]: spec for spec in tfproto.MESSAGES[message]}
    return [(n, specs[n][1], retyped.get(n, specs[n][2])) for n in names]


SKELETON = ProtoSchema(
    "modelwarden.funcattrs",
    "modelwarden/tensorflow_funcattrs.proto",
    {
        "SavedModel": _keep("SavedModel", "meta_graphs"),
        "MetaGraphDef": _keep("MetaGraphDef", "graph_def"),
        "GraphDef": _keep("GraphDef", "node", "library"),
        "FunctionDefLibrary": _keep("FunctionDefLibrary", "function"),
        "FunctionDef": _keep("FunctionDef", "node_def"),
        # a map's entries as a repeated message (key 1, value 2 on the wire): a repeated key keeps both
        "NodeDef": _keep("NodeDef", "attr", attr="NodeDef.AttrEntry*"),
        "NodeDef.AttrEntry": [("value", 2, "AttrValue")],
        "AttrValue": _keep("AttrValue", "list", "func"),
        "AttrValue.ListValue": _keep("AttrValue.ListValue", "func"),
        "NameAttrList": [("unsatisfiable", _UNSATISFIABLE, "NameAttrList!")],
    },
    syntax="proto2",
)

_REPORT = re.compile(
    r"(?:meta_graphs\[(\d+)\]\.graph_def\.)?(?:node\[(\d+)\]|library\.function\[(\d+)\]\.node_def\[(\d+)\])"
    r"\.attr\[\d+\]\.value\.(?:func|list\.func\[\d+\])(?:\.unsatisfiable)+"
)

# graph index -> function index (-1: the top-level graph) -> node indices
Calls = dict[int, dict[int, frozenset[int]]]


def nodes_with_func_attrs(root: str, data: bytes) -> Calls | None:
    """For binary ``data`` of message ``root`` ("SavedModel" or "GraphDef", whose only graph
    is then number 0): the nodes that may name a function in an attribute, or ``None`` when
    that cannot be told cheaply (then every node must be examined)."""
    if len(data) > MAX_BYTES or not _works():
        return None
    return _find(root, data)


def _find(root: str, data: bytes) -> Calls | None:
    msg = SKELETON.message_class(root)()
    try:
        msg.ParseFromString(data)
        reports = msg.FindInitializationErrors()
    except (DecodeError, RecursionError):
        return None
    found: dict[int, dict[int, set[int]]] = {}
    for report in reports:
        m = _REPORT.fullmatch(report)
        if m is None or (m.group(1) is None) != (root == "GraphDef"):
            return None
        graph, main_node, fn, fn_node = m.groups()
        fn_index, node = (-1, main_node) if main_node is not None else (int(fn), fn_node)
        found.setdefault(int(graph or 0), {}).setdefault(fn_index, set()).add(int(node))
    return {g: {f: frozenset(nodes) for f, nodes in fns.items()} for g, fns in found.items()}


@cache
def _works() -> bool:
    """Does this protobuf report what the skeleton relies on?  (Checked once, on a message made here.)"""
    sm = tfproto.message_class("SavedModel")()
    gd = sm.meta_graphs.add().graph_def
    gd.node.add(name="a")
    gd.node.add(name="b").attr["f"].func.name = "g"
    fn_node = gd.library.function.add().node_def
    fn_node.add(name="c").attr["x"].i = 1
    fn_node.add(name="d").attr["branches"].list.func.add(name="h")
    return _find("SavedModel", sm.SerializeToString()) == {0: {-1: frozenset({1}), 0: frozenset({1})}}
