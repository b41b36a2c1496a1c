"""TensorFlow Lite flatbuffers (``.tflite``) -> IR, without TensorFlow.

The model is read with the bounds-checked accessors of :mod:`~modelwarden.formats.flatbuf`
against the subset of ``tensorflow/lite/schema/schema.fbs`` listed below (field
indices are schema facts).  One :class:`~modelwarden.ir.Graph` named ``"tflite"``:
every subgraph is a ``SUBGRAPH`` function (subgraph 0 is ``main``), every operator
a node whose op is ``tfl:BUILTIN``, ``tfl-custom:CODE`` or - for Flex ops - the
embedded TensorFlow op (its NodeDef decoded from the custom options, plus
``_tflite_flex=True``).  Subgraph indices in control-flow options become
:class:`~modelwarden.ir.FuncRef` attributes so call-graph walks follow them.
"""

from __future__ import annotations

import struct

from modelwarden.errors import InputError, LimitExceeded
from modelwarden.formats import safeio, tfproto
from modelwarden.formats.flatbuf import FlatBuffer, Table, flex_string_vector
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.ir import (
    Arg,
    Artifact,
    ArtifactFormat,
    AttrValue,
    EntryKind,
    EntryPoint,
    FuncRef,
    Function,
    FunctionKind,
    Graph,
    Node,
    DType,
    Signature,
    TensorSpec,
    TensorValue,
)
from modelwarden.record import record, replace

IDENTIFIER = b"TFL3"
MAX_FILE_BYTES = 2 * 1024**3  # flatbuffers cannot address more (larger models use external buffers)
MAX_FLEX_OPTIONS = 16 * 1024**2
MAX_METADATA_VALUE = 256

# BuiltinOperator enum, in value order (schema.fbs; checked against TF in the tests).
BUILTIN_OPS: tuple[str, ...] = tuple(
    """
ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE
EMBEDDING_LOOKUP FLOOR FULLY_CONNECTED HASHTABLE_LOOKUP L2_NORMALIZATION L2_POOL_2D
LOCAL_RESPONSE_NORMALIZATION LOGISTIC LSH_PROJECTION LSTM MAX_POOL_2D MUL RELU RELU_N1_TO_1 RELU6
RESHAPE RESIZE_BILINEAR RNN SOFTMAX SPACE_TO_DEPTH SVDF TANH CONCAT_EMBEDDINGS SKIP_GRAM CALL CUSTOM
EMBEDDING_LOOKUP_SPARSE PAD UNIDIRECTIONAL_SEQUENCE_RNN GATHER BATCH_TO_SPACE_ND SPACE_TO_BATCH_ND
TRANSPOSE MEAN SUB DIV SQUEEZE UNIDIRECTIONAL_SEQUENCE_LSTM STRIDED_SLICE BIDIRECTIONAL_SEQUENCE_RNN
EXP TOPK_V2 SPLIT LOG_SOFTMAX DELEGATE BIDIRECTIONAL_SEQUENCE_LSTM CAST PRELU MAXIMUM ARG_MAX
MINIMUM LESS NEG PADV2 GREATER GREATER_EQUAL LESS_EQUAL SELECT SLICE SIN TRANSPOSE_CONV
SPARSE_TO_DENSE TILE EXPAND_DIMS EQUAL NOT_EQUAL LOG SUM SQRT RSQRT SHAPE POW ARG_MIN FAKE_QUANT
REDUCE_PROD REDUCE_MAX PACK LOGICAL_OR ONE_HOT LOGICAL_AND LOGICAL_NOT UNPACK REDUCE_MIN FLOOR_DIV
REDUCE_ANY SQUARE ZEROS_LIKE FILL FLOOR_MOD RANGE RESIZE_NEAREST_NEIGHBOR LEAKY_RELU
SQUARED_DIFFERENCE MIRROR_PAD ABS SPLIT_V UNIQUE CEIL REVERSE_V2 ADD_N GATHER_ND COS WHERE RANK ELU
REVERSE_SEQUENCE MATRIX_DIAG QUANTIZE MATRIX_SET_DIAG ROUND HARD_SWISH IF WHILE
NON_MAX_SUPPRESSION_V4 NON_MAX_SUPPRESSION_V5 SCATTER_ND SELECT_V2 DENSIFY SEGMENT_SUM BATCH_MATMUL
PLACEHOLDER_FOR_GREATER_OP_CODES CUMSUM CALL_ONCE BROADCAST_TO RFFT2D CONV_3D IMAG REAL COMPLEX_ABS
HASHTABLE HASHTABLE_FIND HASHTABLE_IMPORT HASHTABLE_SIZE REDUCE_ALL CONV_3D_TRANSPOSE VAR_HANDLE
READ_VARIABLE ASSIGN_VARIABLE BROADCAST_ARGS RANDOM_STANDARD_NORMAL BUCKETIZE RANDOM_UNIFORM
MULTINOMIAL GELU DYNAMIC_UPDATE_SLICE RELU_0_TO_1 UNSORTED_SEGMENT_PROD UNSORTED_SEGMENT_MAX
UNSORTED_SEGMENT_SUM ATAN2 UNSORTED_SEGMENT_MIN SIGN BITCAST BITWISE_XOR RIGHT_SHIFT
STABLEHLO_LOGISTIC STABLEHLO_ADD STABLEHLO_DIVIDE STABLEHLO_MULTIPLY STABLEHLO_MAXIMUM
STABLEHLO_RESHAPE STABLEHLO_CLAMP STABLEHLO_CONCATENATE STABLEHLO_BROADCAST_IN_DIM
STABLEHLO_CONVOLUTION STABLEHLO_SLICE STABLEHLO_CUSTOM_CALL STABLEHLO_REDUCE STABLEHLO_ABS
STABLEHLO_AND STABLEHLO_COSINE STABLEHLO_EXPONENTIAL STABLEHLO_FLOOR STABLEHLO_LOG STABLEHLO_MINIMUM
STABLEHLO_NEGATE STABLEHLO_OR STABLEHLO_POWER STABLEHLO_REMAINDER STABLEHLO_RSQRT STABLEHLO_SELECT
STABLEHLO_SUBTRACT STABLEHLO_TANH STABLEHLO_SCATTER STABLEHLO_COMPARE STABLEHLO_CONVERT
STABLEHLO_DYNAMIC_SLICE STABLEHLO_DYNAMIC_UPDATE_SLICE STABLEHLO_PAD STABLEHLO_IOTA
STABLEHLO_DOT_GENERAL STABLEHLO_REDUCE_WINDOW STABLEHLO_SORT STABLEHLO_WHILE STABLEHLO_GATHER
STABLEHLO_TRANSPOSE DILATE STABLEHLO_RNG_BIT_GENERATOR REDUCE_WINDOW STABLEHLO_COMPOSITE
STABLEHLO_SHIFT_LEFT STABLEHLO_CBRT STABLEHLO_CASE
""".split()
)
# TensorType enum, in value order.
TENSOR_TYPES: tuple[str, ...] = tuple(
    """float32 float16 int32 uint8 int64 string bool int16 complex64 int8 float64 complex128 uint64
    resource variant uint32 uint16 int4 bfloat16 int2 uint4""".split()
)

# Field indices (schema.fbs).
class _F:
    MODEL_VERSION, MODEL_OPCODES, MODEL_SUBGRAPHS, MODEL_DESCRIPTION, MODEL_BUFFERS = 0, 1, 2, 3, 4
    MODEL_METADATA, MODEL_SIGNATURES = 6, 7
    OPCODE_DEPRECATED, OPCODE_CUSTOM, OPCODE_VERSION, OPCODE_BUILTIN = 0, 1, 2, 3
    SG_TENSORS, SG_INPUTS, SG_OUTPUTS, SG_OPERATORS, SG_NAME = 0, 1, 2, 3, 4
    T_SHAPE, T_TYPE, T_BUFFER, T_NAME, T_IS_VARIABLE = 0, 1, 2, 3, 5
    OP_OPCODE, OP_INPUTS, OP_OUTPUTS, OP_OPTIONS_TYPE, OP_OPTIONS, OP_CUSTOM_OPTIONS = 0, 1, 2, 3, 4, 5
    OP_LARGE_OFFSET, OP_LARGE_SIZE, OP_OPTIONS2_TYPE, OP_OPTIONS2 = 9, 10, 11, 12
    BUF_DATA, BUF_OFFSET, BUF_SIZE = 0, 1, 2
    META_NAME, META_BUFFER = 0, 1
    SIG_INPUTS, SIG_OUTPUTS, SIG_KEY, SIG_SUBGRAPH = 0, 1, 2, 4
    TMAP_NAME, TMAP_TENSOR = 0, 1


# Options tables that reference subgraphs: union type -> ((attr, field index, is_vector), ...).
# BuiltinOptions (builtin_options) and BuiltinOptions2 (builtin_options_2).
SUBGRAPH_OPTIONS: dict[int, tuple[tuple[str, int, bool], ...]] = {
    16: (("subgraph", 0, False),),  # CallOptions
    92: (("then_branch", 0, False), ("else_branch", 1, False)),  # IfOptions
    93: (("cond", 0, False), ("body", 1, False)),  # WhileOptions
    103: (("init", 0, False),),  # CallOnceOptions
}
SUBGRAPH_OPTIONS_2: dict[int, tuple[tuple[str, int, bool], ...]] = {
    6: (("body", 1, False),),  # StablehloReduceOptions
    7: (("update_computation", 6, False),),  # StablehloScatterOptions
    13: (("body", 5, False),),  # StablehloReduceWindowOptions
    14: (("comparator", 2, False),),  # StablehloSortOptions
    15: (("cond", 0, False), ("body", 1, False)),  # StablehloWhileOptions
    21: (("decomposition", 1, False),),  # StableHLOCompositeOptions
    23: (("branches", 0, True),),  # StablehloCaseOptions
}


@record
class OpCode:
    builtin: int
    custom: str
    version: int

    @property
    def is_custom(self) -> bool:
        return self.builtin == 32  # BuiltinOperator.CUSTOM

    def op_name(self) -> str:
        if self.is_custom:
            return "tfl-custom:" + self.custom
        if 0 <= self.builtin < len(BUILTIN_OPS):
            return "tfl:" + BUILTIN_OPS[self.builtin]
        return f"tfl:BUILTIN_{self.builtin}"


@record
class _Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...] | None
    buffer: int = 0
    is_variable: bool = False


# Marks the nodes the reader adds for subgraph-0 inputs and constant tensors (TFLite has no such ops).
_SYNTH: dict[str, AttrValue] = {"_tflite_tensor": True}
_STRUCT_CODES = {
    "float32": "f", "float64": "d", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
    "int16": "h", "uint16": "H", "int8": "b", "uint8": "B", "bool": "?",
}  # fmt: skip


def _decode_strings(data: bytes, start: int, n: int, limit: int) -> tuple[tuple[str, ...] | None, bool]:
    """TFLite string tensor: int32 count, int32 offsets[count + 1] (from the buffer start), bytes."""
    if n < 4:
        return None, True
    (count,) = struct.unpack_from("<i", data, start)
    if count < 0 or 4 + 4 * (count + 1) > n:
        return None, True
    take = min(count, limit)
    offsets = struct.unpack_from(f"<{take + 1}i", data, start + 4)
    values = []
    for a, b in zip(offsets, offsets[1:]):
        if not 0 <= a <= b <= n:
            return None, True
        values.append(data[start + a : start + b].decode("utf-8", "backslashreplace"))
    return tuple(values), count > limit


def _dtype(code: int) -> str:
    return TENSOR_TYPES[code] if 0 <= code < len(TENSOR_TYPES) else f"tflite_type({code})"


class _ModelReader:
    def __init__(self, data: bytes, path: str, limits: Limits) -> None:
        self.data = data
        self.path = path
        self.limits = limits
        self.fb = FlatBuffer(data, path)
        self.nodes = 0
        self._tensors: list[tuple[list[_Tensor], list[str]]] = []
        self._op_names: list[tuple[str, ...]] = []
        self.buffers: list[Table] = []

    def error(self, message: str) -> InputError:
        return InputError(self.path, message)

    # -- pieces -----------------------------------------------------------

    def opcodes(self, model: Table) -> list[OpCode]:
        out = []
        for t in model.tables(_F.MODEL_OPCODES, "operator_codes"):
            deprecated = int(t.scalar(_F.OPCODE_DEPRECATED, "b"))
            builtin = int(t.scalar(_F.OPCODE_BUILTIN, "i"))
            out.append(
                OpCode(
                    builtin=max(deprecated, builtin),
                    custom=t.string(_F.OPCODE_CUSTOM, "custom_code"),
                    version=int(t.scalar(_F.OPCODE_VERSION, "i", 1)),
                )
            )
        return out

    def tensors(self, sg: Table, what: str) -> list[_Tensor]:
        out = []
        for i, t in enumerate(sg.tables(_F.SG_TENSORS, f"{what} tensors")):
            shape = t.scalars(_F.T_SHAPE, "i", f"{what} tensor {i} shape") if t.has(_F.T_SHAPE) else None
            out.append(
                _Tensor(
                    name=t.string(_F.T_NAME, f"{what} tensor {i} name") or f"t{i}",
                    dtype=_dtype(int(t.scalar(_F.T_TYPE, "b"))),
                    shape=shape,
                    buffer=int(t.scalar(_F.T_BUFFER, "I")),
                    is_variable=bool(t.scalar(_F.T_IS_VARIABLE, "?")),
                )
            )
        return out

    def subgraph_ref(self, index: int, names: list[str], what: str) -> FuncRef:
        if not 0 <= index < len(names):
            raise self.error(f"{what} references subgraph {index}, but the model has {len(names)}")
        return FuncRef(names[index])

    def option_refs(self, op: Table, names: list[str], what: str) -> dict[str, AttrValue]:
        attrs: dict[str, AttrValue] = {}
        for type_field, table_field, spec_map in (
            (_F.OP_OPTIONS_TYPE, _F.OP_OPTIONS, SUBGRAPH_OPTIONS),
            (_F.OP_OPTIONS2_TYPE, _F.OP_OPTIONS2, SUBGRAPH_OPTIONS_2),
        ):
            specs = spec_map.get(int(op.scalar(type_field, "B")))
            if not specs:
                continue
            opts = op.table(table_field, f"{what} options")
            if opts is None:
                continue
            for attr, index, is_vector in specs:
                if is_vector:
                    idx = opts.scalars(index, "i", f"{what} {attr}")
                    attrs[attr] = tuple(self.subgraph_ref(int(i), names, f"{what} {attr}") for i in idx)
                elif opts.has(index):
                    attrs[attr] = self.subgraph_ref(int(opts.scalar(index, "i")), names, f"{what} {attr}")
        return attrs

    def custom_options(self, op: Table, what: str) -> bytes:
        raw = op.bytes_(_F.OP_CUSTOM_OPTIONS, f"{what} custom_options")
        if raw is not None:
            return raw
        offset = int(op.scalar(_F.OP_LARGE_OFFSET, "Q"))
        size = int(op.scalar(_F.OP_LARGE_SIZE, "Q"))
        if not size:
            return b""
        if offset + size > len(self.data):
            raise self.error(f"{what} custom options [{offset}, +{size}) lie outside the file")
        return self.data[offset : offset + size]

    def flex_node(self, name: str, code: OpCode, options: bytes, inputs: tuple[str, ...], what: str) -> Node:
        if len(options) > MAX_FLEX_OPTIONS:
            raise LimitExceeded(self.path, f"{what}: Flex options of {len(options)} bytes")
        items = flex_string_vector(options, self.path)
        if len(items) < 2:
            raise self.error(f"{what}: Flex op {code.custom} options hold {len(items)} items, expected [op, NodeDef]")
        from modelwarden.formats.tfgraph import node_from_proto

        nd = tfproto.parse("NodeDef", items[1], self.path)
        tf_op = nd.op or items[0].decode("utf-8", "backslashreplace")
        expected = code.custom[len("Flex") :]
        if nd.op and expected and nd.op != expected:
            raise self.error(f"{what}: Flex op {code.custom} embeds a NodeDef for {nd.op!r}")
        converted = node_from_proto(nd, self.limits)
        attrs = dict(converted.attrs)
        attrs.update({"_tflite_flex": True, "_tflite_custom_code": code.custom})
        return Node(name=name, op=tf_op, inputs=inputs, attrs=attrs, device=nd.device)

    # -- the model --------------------------------------------------------

    def read(self) -> tuple[Graph, dict[str, str]]:
        if len(self.data) < 8:
            raise self.error(f"file is {len(self.data)} bytes, too short for a TFLite model")
        if self.fb.identifier() != IDENTIFIER:
            raise self.error(f"missing the TFL3 file identifier (found {self.fb.identifier()!r})")
        model = self.fb.root("Model")
        opcodes = self.opcodes(model)
        self.buffers = model.tables(_F.MODEL_BUFFERS, "buffers")
        sgs = model.tables(_F.MODEL_SUBGRAPHS, "subgraphs")
        if not sgs:
            raise self.error("model has no subgraphs")
        if len(sgs) > self.limits.max_functions:
            raise LimitExceeded(self.path, f"model has {len(sgs)} subgraphs, over {self.limits.max_functions}")
        names: list[str] = []
        seen: set[str] = set()
        for i, sg in enumerate(sgs):
            name = sg.string(_F.SG_NAME, f"subgraph {i} name") or f"subgraph_{i}"
            if name in seen:
                name = f"{name}#{i}"
            seen.add(name)
            names.append(name)
        functions = [self.subgraph(sg, i, names, opcodes) for i, sg in enumerate(sgs)]
        # The interpreter runs every operator of an invoked subgraph, so an entry into
        # subgraph 0 (``main``, entered by node names) roots all of its nodes.
        self._main_roots = self._op_names[0]
        entry_points, signatures = self.signatures(model, names, self._tensors)
        if not entry_points:
            entry_points = (EntryPoint(kind=EntryKind.SIGNATURE, name=names[0], tensors=self._main_roots),)
        graph = Graph(
            name="tflite",
            main=functions[0],
            functions={f.name: f for f in functions[1:]},
            entry_points=entry_points,
            signatures=signatures,
        )
        return graph, self.metadata(model)

    def subgraph(self, sg: Table, index: int, names: list[str], opcodes: list[OpCode]) -> Function:
        what = f"subgraph {index}"
        tensors = self.tensors(sg, what)
        ops = sg.tables(_F.SG_OPERATORS, f"{what} operators")
        self.nodes += len(ops)
        if self.nodes > self.limits.max_nodes:
            raise LimitExceeded(self.path, f"model has more than {self.limits.max_nodes} operators")
        sg_inputs = sg.scalars(_F.SG_INPUTS, "i", f"{what} inputs")
        sg_outputs = sg.scalars(_F.SG_OUTPUTS, "i", f"{what} outputs")

        def check(t: int, where: str) -> int:
            if not 0 <= t < len(tensors):
                raise self.error(f"{where} is tensor {t}, but the subgraph has {len(tensors)}")
            return t

        # Node names follow TF spelling (no ":"), so tensor references read "node" / "node:k".
        taken: set[str] = set()

        def unique(base: str, j: int) -> str:
            name = base.replace(":", "_") or f"op{j}"
            if name in taken:
                name = f"{name}#{j}"
            taken.add(name)
            return name

        outputs_of = [op.scalars(_F.OP_OUTPUTS, "i", f"{what} operator {j} outputs") for j, op in enumerate(ops)]
        node_names = []
        for j, outs in enumerate(outputs_of):
            first = outs[0] if outs else -1
            node_names.append(unique(tensors[check(first, f"{what} operator {j} output")].name if outs else "", j))
        refs: list[str | None] = [None] * len(tensors)
        for j, outs in enumerate(outputs_of):
            for k, t in enumerate(outs):
                refs[check(t, f"{what} operator {j} output {k}")] = node_names[j] if k == 0 else f"{node_names[j]}:{k}"
        synthetic: list[Node] = []
        is_main = index == 0
        for t in sg_inputs:
            check(t, f"{what} input")
            if refs[t] is None:
                refs[t] = unique(tensors[t].name, len(ops) + t)
                if is_main:  # subgraph 0 is entered from outside: its inputs are placeholders
                    synthetic.append(Node(refs[t], "Placeholder", attrs={"dtype": DType(tensors[t].dtype), **_SYNTH}))
        for t, tensor in enumerate(tensors):
            if refs[t] is None:
                refs[t] = unique(tensor.name, len(ops) + t)
                value = self.constant(tensor, f"{what} tensor {t}")
                if value is not None:
                    synthetic.append(Node(refs[t], "Const", attrs={"dtype": DType(tensor.dtype), "value": value, **_SYNTH}))
        tref: list[str] = [r or "" for r in refs]

        nodes = list(synthetic)
        for j, op in enumerate(ops):
            op_what = f"{what} operator {j}"
            code_index = int(op.scalar(_F.OP_OPCODE, "I"))
            if code_index >= len(opcodes):
                raise self.error(f"{op_what} uses opcode {code_index}, but the model has {len(opcodes)}")
            code = opcodes[code_index]
            inputs = tuple(
                tref[check(t, f"{op_what} input")]
                for t in op.scalars(_F.OP_INPUTS, "i", f"{op_what} inputs")
                if t != -1
            )
            attrs: dict[str, AttrValue] = self.option_refs(op, names, op_what)
            if code.is_custom and code.custom.startswith("Flex"):
                node = self.flex_node(node_names[j], code, self.custom_options(op, op_what), inputs, op_what)
                if attrs:
                    node = Node(node.name, node.op, node.inputs, {**node.attrs, **attrs}, node.device)
            else:
                attrs["_tflite_version"] = code.version
                if code.is_custom:
                    attrs["custom_code"] = code.custom
                    attrs["_tflite_custom_options_size"] = len(self.custom_options(op, op_what))
                node = Node(name=node_names[j], op=code.op_name(), inputs=inputs, attrs=attrs)
            nodes.append(node)
        args = tuple(Arg(tref[t], tensors[t].dtype) for t in sg_inputs)
        outs = tuple(Arg(tensors[check(t, f"{what} output")].name, tensors[t].dtype) for t in sg_outputs)
        ret = {tensors[t].name: tref[t] for t in sg_outputs}
        self._tensors.append((tensors, tref))
        self._op_names.append(tuple(node_names))
        return Function(
            name=names[index], kind=FunctionKind.SUBGRAPH, nodes=tuple(nodes), args=args, outputs=outs, ret=ret
        )

    def constant(self, tensor: _Tensor, what: str) -> TensorValue | None:
        """A constant tensor's value (first elements only), or None when the tensor has no data."""
        if tensor.buffer <= 0 or tensor.buffer >= len(self.buffers) or tensor.is_variable:
            return None
        buf = self.buffers[tensor.buffer]
        span = buf.span(_F.BUF_DATA, 1, f"{what} buffer")
        if span is None or span[1] == 0:
            size = int(buf.scalar(_F.BUF_SIZE, "Q"))
            return TensorValue(tensor.dtype, tensor.shape, None, bool(size), size) if size else None
        start, n = span
        limit = self.limits.max_tensor_decode
        if tensor.dtype == "string":
            values, truncated = _decode_strings(self.data, start, n, limit)
        elif tensor.dtype in _STRUCT_CODES:
            st = struct.Struct("<" + _STRUCT_CODES[tensor.dtype])
            count = n // st.size
            values = tuple(x[0] for x in st.iter_unpack(self.data[start : start + min(count, limit) * st.size]))
            truncated = count > limit
        else:
            values, truncated = None, True
        return TensorValue(tensor.dtype, tensor.shape, values, truncated, n)

    def signatures(
        self, model: Table, names: list[str], tensors_by_sg: list[tuple[list[_Tensor], list[str]]]
    ) -> tuple[tuple[EntryPoint, ...], tuple[Signature, ...]]:
        eps: list[EntryPoint] = []
        sigs: list[Signature] = []
        for i, sd in enumerate(model.tables(_F.MODEL_SIGNATURES, "signature_defs")):
            what = f"signature {i}"
            key = sd.string(_F.SIG_KEY, f"{what} key") or f"signature_{i}"
            index = int(sd.scalar(_F.SIG_SUBGRAPH, "I"))
            if index >= len(names):
                raise self.error(f"{what} ({key}) references subgraph {index}, but the model has {len(names)}")
            tensors, refs = tensors_by_sg[index]

            def specs(field: int, kind: str) -> tuple[TensorSpec, ...]:
                out = []
                for m in sd.tables(field, f"{what} {kind}"):
                    t = int(m.scalar(_F.TMAP_TENSOR, "I"))
                    if t >= len(tensors):
                        raise self.error(f"{what} ({key}) {kind} names tensor {t}, but the subgraph has {len(tensors)}")
                    out.append(TensorSpec(m.string(_F.TMAP_NAME, f"{what} {kind} name"), refs[t], tensors[t].dtype, tensors[t].shape))
                return tuple(out)

            sigs.append(Signature(key, "tflite", specs(_F.SIG_INPUTS, "inputs"), specs(_F.SIG_OUTPUTS, "outputs")))
            if index == 0:
                eps.append(EntryPoint(kind=EntryKind.SIGNATURE, name=key, tensors=self._main_roots))
            else:
                eps.append(EntryPoint(kind=EntryKind.SIGNATURE, name=key, functions=(names[index],)))
        return tuple(eps), tuple(sigs)

    def metadata(self, model: Table) -> dict[str, str]:
        meta = {"schema_version": str(model.scalar(_F.MODEL_VERSION, "I"))}
        desc = model.string(_F.MODEL_DESCRIPTION, "description")
        if desc:
            meta["description"] = desc[:1024]
        buffers = self.buffers
        meta["buffers"] = str(len(buffers))
        for i, m in enumerate(model.tables(_F.MODEL_METADATA, "metadata")):
            name = m.string(_F.META_NAME, f"metadata {i} name")
            index = int(m.scalar(_F.META_BUFFER, "I"))
            if name == "min_runtime_version" and index < len(buffers):
                raw = buffers[index].bytes_(_F.BUF_DATA, "min_runtime_version buffer") or b""
                version = raw[:MAX_METADATA_VALUE].split(b"\x00")[0].decode("utf-8", "replace")
                if version:
                    meta["min_runtime_version"] = version
            elif name:
                names = meta.get("metadata_names", "")
                meta["metadata_names"] = f"{names},{name[:128]}" if names else name[:128]
        return meta


def read_tflite(data: bytes, path: str, limits: Limits = DEFAULT_LIMITS) -> tuple[Graph, dict[str, str]]:
    """Parse a TFLite flatbuffer; every malformation is an :class:`InputError` naming ``path``."""
    try:
        return _ModelReader(data, path, limits).read()
    except (struct.error, IndexError, OverflowError, ValueError, UnicodeError) as exc:  # defensive backstop
        raise InputError(path, f"malformed TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
    except RecursionError:
        raise InputError(path, "TFLite flatbuffer is nested too deeply") from None


class TFLiteReader(Reader):
    format = ArtifactFormat.TFLITE

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        data = safeio.read_file(candidate.path, min(MAX_FILE_BYTES, limits.max_proto_bytes), what="TFLite model")
        graph, meta = read_tflite(data, candidate.display, limits)
        graph = replace(graph, source_file=candidate.display)
        return Artifact(
            path=candidate.path,
            display=candidate.display,
            format=ArtifactFormat.TFLITE,
            graphs=(graph,),
            metadata=meta,
        )
