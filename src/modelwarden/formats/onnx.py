"""ONNX models: operators, nested graphs, functions and tensor facts, without the onnx package.

The ModelProto is parsed with the schema in :mod:`~modelwarden.formats.onnxproto`;
every graph is walked iteratively — the main graph, graphs nested in node
attributes (If/Loop/Scan bodies, at any depth), training graphs and model-local
functions — recording each node's domain and op type with its scope, and each
tensor's dims and external-data location.  Tensor bytes are never decoded.
"""

from __future__ import annotations

from modelwarden.errors import LimitExceeded
from modelwarden.formats import onnxproto, safeio
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.ir import Artifact, ArtifactFormat, OnnxModel, OnnxNode, OnnxTensor
from modelwarden.formats.protoschema import read_varint

_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
MAX_DIMS = 64


def sniff_onnx(head: bytes, size: int) -> bool:
    """Does ``head`` start a ModelProto?  ir_version first, then known fields in order, up to the graph."""
    if len(head) < 4 or head[0] != 0x08:
        return False
    version, pos = read_varint(head, 1)
    if not 1 <= version <= 64:
        return False
    last = 1
    while pos < len(head):
        key, pos = read_varint(head, pos)
        if key < 0:
            return False
        number, wire = key >> 3, key & 7
        if _MODEL_FIELDS.get(number) != wire or number < last:
            return False
        last = number
        if wire == 0:
            _, pos = read_varint(head, pos)
            continue
        n, pos = read_varint(head, pos)
        if number == 7:
            return n > 0  # the graph: enough evidence (a truncated one is the reader's to report)
        if n < 0 or pos + n > size:
            return False
        if number in (2, 3, 4):
            text = head[pos : pos + n]
            if not all(32 <= c < 127 for c in text):
                return False
        pos += n
    return False


class _Walk:
    def __init__(self, path: str, limits: Limits) -> None:
        self.path = path
        self.limits = limits
        self.nodes: list[OnnxNode] = []
        self.tensors: list[OnnxTensor] = []
        self.subgraphs = 0
        self.max_depth = 0

    def tensor(self, t, scope: str, kind: str) -> None:
        location = ""
        for entry in t.external_data:
            if entry.key == "location":
                location = entry.value
        dims = tuple(t.dims[:MAX_DIMS + 1])
        self.tensors.append(OnnxTensor(t.name[:500], scope, t.data_type, dims, location[:4096], kind))

    def graphs(self, roots: list[tuple[object, str, int]]) -> None:
        stack = list(reversed(roots))
        while stack:
            graph, scope, depth = stack.pop()
            self.max_depth = max(self.max_depth, depth)
            for t in graph.initializer:
                self.tensor(t, scope, "initializer")
            for st in graph.sparse_initializer:
                self.tensor(st.values, scope, "sparse_initializer")
            stack.extend(self.nodes_of(graph.node, scope, depth))

    def nodes_of(self, nodes, scope: str, depth: int) -> list[tuple[object, str, int]]:
        nested: list[tuple[object, str, int]] = []
        for i, node in enumerate(nodes):
            if len(self.nodes) >= self.limits.max_nodes:
                raise LimitExceeded(self.path, f"ONNX model has more than {self.limits.max_nodes} nodes")
            name = node.name or f"{node.op_type}_{i}"
            self.nodes.append(OnnxNode(name[:500], node.op_type[:200], node.domain[:200], scope))
            for attr in node.attribute:
                where = f"{scope}/{name}.{attr.name}"
                if attr.HasField("t"):
                    self.tensor(attr.t, where, "attribute")
                for t in attr.tensors:
                    self.tensor(t, where, "attribute")
                if attr.HasField("sparse_tensor"):
                    self.tensor(attr.sparse_tensor.values, where, "attribute")
                graphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
                for g in graphs:
                    self.subgraphs += 1
                    nested.append((g, where, depth + 1))
        return nested


class OnnxReader(Reader):
    format = ArtifactFormat.ONNX

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        path = candidate.path
        data = safeio.read_file(path, limits.max_proto_bytes, what="ONNX model")
        model = onnxproto.parse("ModelProto", data, path)
        del data
        w = _Walk(path, limits)
        roots: list[tuple[object, str, int]] = []
        if model.HasField("graph"):
            roots.append((model.graph, "graph", 0))
        for i, ti in enumerate(model.training_info):
            if ti.HasField("initialization"):
                roots.append((ti.initialization, f"training_info[{i}].initialization", 0))
            if ti.HasField("algorithm"):
                roots.append((ti.algorithm, f"training_info[{i}].algorithm", 0))
        w.graphs(roots)
        functions = []
        for f in model.functions:
            scope = f"function:{f.domain}:{f.name}"
            functions.append(f"{f.domain}:{f.name}")
            pending = w.nodes_of(f.node, scope, 1)
            w.graphs(pending)
        onnx = OnnxModel(
            source=candidate.display, ir_version=model.ir_version,
            producer=f"{model.producer_name} {model.producer_version}".strip()[:200],
            opsets=tuple((o.domain, o.version) for o in model.opset_import),
            nodes=tuple(w.nodes), tensors=tuple(w.tensors), functions=tuple(functions),
            subgraphs=w.subgraphs, max_depth=w.max_depth,
        )
        meta = {"ir_version": str(model.ir_version), "producer": onnx.producer, "nodes": str(len(w.nodes))}
        return Artifact(path=path, display=candidate.display, format=ArtifactFormat.ONNX, onnx=onnx, metadata=meta)
