"""Convert parsed TensorFlow protobufs (GraphDef, FunctionDef, NodeDef) into IR.

Attributes are converted lazily (:class:`LazyAttrs`): most nodes are never
asked for their attributes, and converting every constant of a large graph
would cost more than parsing it.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Container, Iterator, Mapping
from operator import attrgetter
from typing import Any

from modelwarden.errors import InputError, LimitExceeded
from modelwarden.formats.interface import DEFAULT_LIMITS, Limits
from modelwarden.formats.tfproto import DTYPE_SIZES, dtype_name
from modelwarden.ir import (
    Arg,
    AttrPlaceholder,
    AttrValue,
    DType,
    FuncRef,
    Function,
    FunctionKind,
    Node,
    Shape,
    TensorValue,
)

# dtype enum -> array typecode for decoding tensor_content (little-endian hosts).
_ARRAY_CODES = {1: "f", 2: "d", 3: "i", 4: "B", 5: "h", 6: "b", 9: "q", 10: "B", 17: "H", 22: "I", 23: "Q"}
# dtype enum -> the TensorProto repeated field holding its values.
_VAL_FIELDS = {
    1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val", 6: "int_val",
    9: "int64_val", 10: "bool_val", 17: "int_val", 19: "half_val", 22: "uint32_val", 23: "uint64_val",
    14: "half_val", 7: "string_val",
}  # fmt: skip


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def shape_dims(shape_proto: Any) -> tuple[int, ...] | None:
    if shape_proto.unknown_rank:
        return None
    return tuple([d.size for d in shape_proto.dim])  # int64 fields are ints already


def tensor_value(tp: Any, limits: Limits = DEFAULT_LIMITS) -> TensorValue:
    """A bounded view of a TensorProto: dtype, shape and the first few elements."""
    dt = int(tp.dtype)
    dims = shape_dims(tp.tensor_shape)
    count = 1
    for d in dims or ():
        count *= max(d, 0)
    cap = limits.max_tensor_decode
    values: tuple[object, ...] | None = None
    truncated = False
    nbytes = len(tp.tensor_content)
    if dt == 7:  # string
        sv = tp.string_val
        values = tuple(_text(bytes(s)) for s in sv[:cap])
        truncated = len(sv) > cap
        nbytes = sum(map(len, sv))
    elif tp.tensor_content and dt in _ARRAY_CODES:
        size = DTYPE_SIZES[dt]
        raw = tp.tensor_content[: cap * size]
        raw = raw[: len(raw) - len(raw) % size]
        arr = array.array(_ARRAY_CODES[dt])
        arr.frombytes(raw)
        if sys.byteorder == "big":
            arr.byteswap()
        values = tuple(bool(v) for v in arr) if dt == 10 else tuple(arr)
        truncated = len(tp.tensor_content) > cap * size
    elif dt in _VAL_FIELDS:
        field = getattr(tp, _VAL_FIELDS[dt])
        if dt not in (14, 19):  # half/bfloat16 stored as raw bits: not decoded
            values = tuple(field[:cap])
            truncated = len(field) > cap
        nbytes = nbytes or len(field) * DTYPE_SIZES.get(dt, 4)
    if values is not None and count > len(values) and len(values) == 1 and dims:
        truncated = False  # a splat constant: one value broadcast to the shape
    return TensorValue(dtype=dtype_name(dt), shape=dims, values=values, truncated=truncated, nbytes=nbytes)


def attr_value(av: Any, limits: Limits = DEFAULT_LIMITS) -> AttrValue:
    """Convert one AttrValue message."""
    kind = av.WhichOneof("value")
    if kind is None:
        return None
    if kind == "s":
        return _text(av.s)
    if kind in ("i", "f", "b"):
        return getattr(av, kind)
    if kind == "type":
        return DType(dtype_name(av.type))
    if kind == "shape":
        return Shape(shape_dims(av.shape))
    if kind == "tensor":
        return tensor_value(av.tensor, limits)
    if kind == "placeholder":
        return AttrPlaceholder(av.placeholder)
    if kind == "func":
        return FuncRef(av.func.name, LazyAttrs(av.func.attr, limits))
    lv = av.list
    if lv.func:  # first: a list that also holds other kinds (malformed) must not hide a function from the call graph
        return tuple(FuncRef(f.name, LazyAttrs(f.attr, limits)) for f in lv.func)
    if lv.s:
        return tuple(_text(s) for s in lv.s)
    if lv.i:
        return tuple(lv.i)
    if lv.f:
        return tuple(lv.f)
    if lv.b:
        return tuple(lv.b)
    if lv.type:
        return tuple(DType(dtype_name(t)) for t in lv.type)
    if lv.shape:
        return tuple(Shape(shape_dims(s)) for s in lv.shape)
    if lv.tensor:
        return tuple(tensor_value(t, limits) for t in lv.tensor)
    return ()


class LazyAttrs(Mapping[str, AttrValue]):
    """A read-only mapping over a protobuf attr map, converting values on first access."""

    __slots__ = ("_proto", "_limits", "_cache", "_refs")

    def __init__(self, proto_map: Any, limits: Limits = DEFAULT_LIMITS,
                 refs: tuple[tuple[str, FuncRef], ...] | None = None) -> None:
        """``refs``: ``()`` when the map is known to hold no function-valued attribute."""
        self._proto = proto_map
        self._limits = limits
        self._cache: dict[str, AttrValue] | None = None  # made on first lookup: most nodes never have one
        self._refs = refs

    def __getitem__(self, key: str) -> AttrValue:
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        elif key in cache:
            return cache[key]
        if key not in self._proto:
            raise KeyError(key)
        value = attr_value(self._proto[key], self._limits)
        cache[key] = value
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """As :meth:`Mapping.get`, without raising and catching a KeyError for a missing key."""
        return self[key] if key in self._proto else default

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._proto.keys()))

    def __len__(self) -> int:
        return len(self._proto)

    def __contains__(self, key: object) -> bool:
        return key in self._proto

    def func_refs(self) -> tuple[tuple[str, FuncRef], ...]:
        """Function-valued attributes only (computed once), without converting any other attribute."""
        if self._refs is None:
            refs: list[tuple[str, FuncRef]] = []
            proto = self._proto
            for key in proto:  # keys, then lookups: the map's items() is the slow Mapping mixin
                av = proto[key]
                kind = av.WhichOneof("value")
                if kind == "func":
                    refs.append((key, self[key]))
                elif kind == "list" and len(av.list.func):  # its functions, whatever other kinds it holds
                    refs.extend((key, ref) for ref in self[key])  # (attr_value: a list's functions first)
            self._refs = tuple(refs)
        return self._refs

    def __repr__(self) -> str:
        return f"LazyAttrs({sorted(self._proto.keys())})"


def node_from_proto(nd: Any, limits: Limits = DEFAULT_LIMITS) -> Node:
    return _nodes((nd,), limits)[0]


def _nodes(protos: Any, limits: Limits, named: "Container[int] | None" = None) -> tuple[Node, ...]:
    """The nodes of one body; ``named``: the indices of those that may name a function in an
    attribute, when known (:mod:`funcattrs`): the others are not examined for one."""
    if named is None:
        named = range(len(protos))  # not known: every node is
    # (one comprehension, no call per node; input[:] copies the repeated field in C: half the
    # cost of iterating it into a tuple)
    return tuple([Node(nd.name, nd.op, tuple(nd.input[:]), LazyAttrs(nd.attr, limits, None if i in named else ()),
                       nd.device) for i, nd in enumerate(protos)])


def _map(proto_map: Any) -> dict[str, str]:
    """A protobuf string map as a dict (dict() over it goes through the Mapping mixin: slower)."""
    return {k: proto_map[k] for k in proto_map} if len(proto_map) else {}


def _args(protos: Any) -> tuple[Arg, ...]:
    return tuple([Arg(a.name, dtype_name(a.type) if a.type else "") for a in protos])


def function_from_proto(fd: Any, limits: Limits = DEFAULT_LIMITS,
                        calls: "dict[int, frozenset[int]] | None" = None, index: int = 0) -> Function:
    """``calls``/``index``: what :func:`graph_body` knows of the nodes naming functions, and which function this is."""
    sig = fd.signature
    return Function(
        name=sig.name,
        kind=FunctionKind.LIBRARY,
        nodes=_nodes(fd.node_def, limits, None if calls is None else calls.get(index, ())),
        args=_args(sig.input_arg),
        outputs=_args(sig.output_arg),
        ret=_map(fd.ret),
        control_ret=_map(fd.control_ret),
        attrs=LazyAttrs(fd.attr, limits),
        is_stateful=bool(sig.is_stateful),
    )


def graph_body(graph_def: Any, name: str, path: str, limits: Limits = DEFAULT_LIMITS,
               calls: "dict[int, frozenset[int]] | None" = None) -> tuple[Function, dict[str, Function]]:
    """The top-level body and the function library of a GraphDef message; ``calls``: function
    index (-1 for the top-level graph) -> the nodes that may name a function in an attribute,
    when known (:func:`~modelwarden.formats.funcattrs.nodes_with_func_attrs`): the others are
    not examined for one."""
    n_nodes = len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)
    if n_nodes > limits.max_nodes:
        raise LimitExceeded(path, f"graph has {n_nodes} nodes, over the limit of {limits.max_nodes}")
    if len(graph_def.library.function) > limits.max_functions:
        raise LimitExceeded(
            path, f"function library has {len(graph_def.library.function)} functions, over {limits.max_functions}"
        )
    main = Function(
        name=name,
        kind=FunctionKind.GRAPH,
        nodes=_nodes(graph_def.node, limits, None if calls is None else calls.get(-1, ())),
    )
    functions: dict[str, Function] = {}
    for i, fd in enumerate(graph_def.library.function):
        fn = function_from_proto(fd, limits, calls, i)
        functions.setdefault(fn.name, fn)  # TF rejects duplicates; the first wins here
    return main, functions


# --------------------------------------------------------------------------
# graphs carried as strings

# Ops whose input carries a serialized GraphDef that the op runs (TensorFlow's op definitions:
# DatasetFromGraph "graph_def: string").  The catalog says what running it means.
GRAPH_DEF_INPUTS = {"DatasetFromGraph": 0}
_OP = attrgetter("op")
MAX_EMBEDDED_DEPTH = 4
MAX_EMBEDDED = 64


def may_embed_graphs(main: Function, functions: dict[str, Function], graph_def: Any) -> bool:
    """Could :func:`embedded_graphs` find anything in ``graph_def``?  Only a node whose op runs a
    serialized graph carries one, and the IR built from ``graph_def`` holds every node unless its
    library names a function twice (the IR keeps the first): then look at the protobuf itself."""
    if len(functions) != len(graph_def.library.function):
        return True
    is_runner = GRAPH_DEF_INPUTS.__contains__
    return any(any(map(is_runner, map(_OP, fn.nodes))) for fn in (main, *functions.values()))  # (in C per body)


def embedded_graphs(graph_def: Any, owner: str, path: str, limits: Limits = DEFAULT_LIMITS,
                    depth: int = 0, budget: list[int] | None = None) -> list[Any]:
    """The serialized GraphDefs that graph-running ops of ``graph_def`` are given as constants,
    parsed and converted (recursively, bounded): one :class:`~modelwarden.ir.Graph` each, named
    ``owner/<function>/<node>``, with every node an entry point (the op runs the whole graph)."""
    from modelwarden.formats import tfproto
    from modelwarden.ir import EntryKind, EntryPoint, Graph

    out: list[Any] = []
    budget = [MAX_EMBEDDED] if budget is None else budget  # shared by the whole recursion
    bodies = [("", graph_def.node)] + [(f.signature.name, f.node_def) for f in graph_def.library.function]
    for fname, nodes in bodies:
        consts = None
        for nd in nodes:
            idx = GRAPH_DEF_INPUTS.get(nd.op)
            if idx is None:
                continue
            data = [i for i in nd.input if not i.startswith("^")]
            if idx >= len(data):
                continue
            if consts is None:
                consts = {n.name: n for n in nodes if n.op == "Const"}
            src = consts.get(data[idx].split(":", 1)[0])
            if src is None or "value" not in src.attr or len(src.attr["value"].tensor.string_val) != 1:
                continue
            if depth >= MAX_EMBEDDED_DEPTH or budget[0] <= 0:
                raise LimitExceeded(path, f"serialized graphs nested deeper than {MAX_EMBEDDED_DEPTH} "
                                          f"or more than {MAX_EMBEDDED} in all (node {nd.name!r})")
            budget[0] -= 1
            name = "/".join(p for p in (owner, fname, nd.name) if p)
            try:
                inner = tfproto.parse("GraphDef", bytes(src.attr["value"].tensor.string_val[0]),
                                      f"{path} (graph_def of node {nd.name!r})")
            except LimitExceeded:
                raise
            except InputError:
                continue  # TensorFlow cannot parse it either: the op fails, nothing runs
            main, functions = graph_body(inner, f"<{name}>", path, limits)
            out.append(Graph(name=name, main=main, functions=functions,
                             entry_points=(EntryPoint(EntryKind.GRAPH, name),), source_file=name))
            out.extend(embedded_graphs(inner, name, path, limits, depth + 1, budget))
    return out
