"""Frozen GraphDefs (binary ``.pb`` or text ``.pbtxt``): every node may run.

Whether bytes are a GraphDef, and whether binary or text, is decided once, by
:func:`graphdef_encoding`, for detection and this reader alike.  A binary
GraphDef is recognised by the structure of its first NodeDef (only NodeDef's
fields, a TensorFlow node name, a registrable op name, well-formed inputs),
never by "it parses as one": many protobufs (TensorFlow's own
``*-descriptor-set.proto.bin``) parse as a GraphDef.
"""

from __future__ import annotations

import re

from modelwarden.errors import InputError
from modelwarden.formats import safeio, tfproto
from modelwarden.formats.funcattrs import nodes_with_func_attrs
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.formats.protoschema import read_varint
from modelwarden.formats.tfgraph import embedded_graphs, graph_body, may_embed_graphs
from modelwarden.ir import Artifact, ArtifactFormat, EntryKind, EntryPoint, Graph

# TensorFlow's own naming rules: node names (python/framework/ops.py), op names
# (op_def_builder.cc: CamelCase or a leading underscore), graph-level inputs.
_NODE_NAME = re.compile(rb"[A-Za-z0-9.][A-Za-z0-9_.\-/>]*\Z")
_OP_NAME = re.compile(rb"(?:_[A-Za-z0-9_>]*|[A-Z][A-Za-z0-9_>]*)\Z")
_INPUT = re.compile(rb"\^?[A-Za-z0-9.][A-Za-z0-9_.\-/>]*(?::[0-9]+)?\Z")
_DEVICE = re.compile(rb"[\x20-\x7e]*\Z")
_NODE_STRINGS = {1: _NODE_NAME, 2: _OP_NAME, 3: _INPUT, 4: _DEVICE}
_NODE_FIELDS = frozenset(range(1, 8))  # name, op, input, device, attr, debug info, type
_GRAPH_FIELDS = {1: 2, 2: 2, 3: 0, 4: 2, 5: 2}  # node, library, version, versions, debug_info -> wire type
TEXT_KEYS = (b"node", b"library", b"versions")


def text_key(head: bytes) -> bytes:
    """First identifier of a protobuf text file, skipping blank lines and comments."""
    for line in head.splitlines():
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        return re.match(rb"[A-Za-z0-9_]*", line).group()  # type: ignore[union-attr]
    return b""


def is_function_name(name: str) -> bool:
    """Is this a name a function library entry can have (like a node name, never empty)?"""
    return bool(_NODE_NAME.match(name.encode("utf-8", "surrogateescape")))


def _fields(buf: bytes, pos: int, end: int):
    """(field, wire type, value start, value end or -1 when cut by ``end``) of a message, in order."""
    while pos < end:
        tag, pos = read_varint(buf, pos)
        if tag <= 0 or pos > end:
            yield -1, -1, pos, -1
            return
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, nxt = read_varint(buf, pos)
            if value < 0 or nxt > end:
                yield field, wire, pos, -1
                return
        elif wire == 2:
            n, start = read_varint(buf, pos)
            if n < 0:
                yield field, wire, pos, -1
                return
            pos, nxt = start, start + n
            if nxt > end:
                yield field, wire, pos, -1
                return
        elif wire in (1, 5):
            nxt = pos + (8 if wire == 1 else 4)
        else:
            yield field, wire, pos, -1
            return
        yield field, wire, pos, nxt
        pos = nxt


def _nodedef_ok(buf: bytes, pos: int, end: int) -> bool:
    """The bytes available of one NodeDef have only NodeDef's fields, well-formed; name and op first."""
    seen: list[int] = []
    for field, wire, start, stop in _fields(buf, pos, end):
        if field not in _NODE_FIELDS or wire != 2:
            return False
        if stop < 0:
            break
        check = _NODE_STRINGS.get(field)
        if check is not None and not check.match(buf[start:stop]):
            return False
        seen.append(field)
    return seen[:2] == [1, 2]


def binary_graphdef(head: bytes, size: int) -> bool:
    """Does ``head`` (the first bytes of a ``size``-byte file) start like a binary GraphDef's nodes?"""
    if head[:1] != b"\x0a":
        return False
    end = min(len(head), size)
    nodes = 0
    for field, wire, start, stop in _fields(head, 0, end):
        if _GRAPH_FIELDS.get(field) != wire:
            return False
        if field == 1:
            if not _nodedef_ok(head, start, end if stop < 0 else stop):
                return False
            nodes += 1
        if stop < 0:
            break
    return nodes > 0


def graphdef_encoding(head: bytes, size: int) -> str:
    """'binary' or 'text' when ``head`` starts a GraphDef of that encoding, else ''."""
    if binary_graphdef(head, size):
        return "binary"
    if b"\x00" not in head[:256] and text_key(head) in TEXT_KEYS and b"{" in head:
        return "text"
    return ""


class GraphDefReader(Reader):
    format = ArtifactFormat.GRAPHDEF

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        path = candidate.path
        data = safeio.read_file(path, limits.max_proto_bytes, what="GraphDef")
        calls = None
        if graphdef_encoding(data[:4096], len(data)) == "text":
            try:
                gd = tfproto.parse_text("GraphDef", data.decode("utf-8"), path)
            except UnicodeDecodeError:
                raise InputError(path, "GraphDef text file is not valid UTF-8") from None
        else:
            gd = tfproto.parse("GraphDef", data, path)
            calls = nodes_with_func_attrs("GraphDef", data)
        if not gd.node and not gd.library.function:
            raise InputError(path, "GraphDef contains no nodes and no functions")
        main, functions = graph_body(gd, "<graph>", path, limits, None if calls is None else calls.get(0, {}))
        producer = gd.versions.producer if gd.HasField("versions") else None
        graph = Graph(
            name="graph",
            main=main,
            functions=functions,
            entry_points=(EntryPoint(EntryKind.GRAPH, "graph"),),
            producer=producer,
            source_file="",
        )
        meta = {"producer": str(producer)} if producer is not None else {}
        graphs = (graph, *embedded_graphs(gd, "graph", path, limits)) if may_embed_graphs(main, functions, gd) else (graph,)
        return Artifact(path=path, display=candidate.display, format=self.format, graphs=graphs, metadata=meta)
