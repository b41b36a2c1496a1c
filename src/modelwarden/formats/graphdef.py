"""Frozen GraphDefs (binary ``.pb`` or text ``.pbtxt``): every node may run."""

from __future__ import annotations

from modelwarden.errors import InputError
from modelwarden.formats import safeio, tfproto
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.formats.tfgraph import graph_body
from modelwarden.ir import Artifact, ArtifactFormat, EntryKind, EntryPoint, Graph


def looks_like_text(data: bytes) -> bool:
    """Protobuf text starts with a field name or a comment; binary GraphDefs start with a tag byte."""
    head = data[:4096].lstrip()
    if not head or b"\x00" in head[:512]:
        return False
    return head[:1].isalpha() or head[:1] == b"#"


class GraphDefReader(Reader):
    format = ArtifactFormat.GRAPHDEF

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        path = candidate.path
        data = safeio.read_file(path, limits.max_proto_bytes, what="GraphDef")
        if looks_like_text(data):
            try:
                gd = tfproto.parse_text("GraphDef", data.decode("utf-8"), path)
            except UnicodeDecodeError:
                raise InputError(path, "GraphDef text file is not valid UTF-8") from None
        else:
            gd = tfproto.parse("GraphDef", data, path)
        if not gd.node and not gd.library.function:
            raise InputError(path, "GraphDef contains no nodes and no functions")
        main, functions = graph_body(gd, "<graph>", path, limits)
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
        return Artifact(path=path, display=candidate.display, format=self.format, graphs=(graph,), metadata=meta)
