"""The intermediate representation every reader produces and every pass reads.

Readers (``modelwarden.formats``) turn bytes into these frozen objects and
never judge; analysis passes (``modelwarden.analysis``) read them and never
parse.  The IR is deliberately small: artifacts contain graphs, graphs contain
functions, functions contain nodes, nodes carry attributes.  Keras configs,
checkpoints and the files of a model directory have their own small types.

Attribute values are plain Python values wherever that is unambiguous
(``str``, ``int``, ``float``, ``bool``, ``tuple`` for lists) and small wrapper
types where it is not (:class:`DType`, :class:`Shape`, :class:`TensorValue`,
:class:`FuncRef`, :class:`AttrPlaceholder`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Union

from modelwarden.record import field, record

# --------------------------------------------------------------------------
# Attribute values


@record
class DType:
    """A TensorFlow dtype attribute, e.g. ``DType("float32")``."""

    name: str

    def __str__(self) -> str:
        return self.name


@record
class Shape:
    """A shape attribute; ``dims`` is ``None`` for unknown rank, -1 for unknown dims."""

    dims: tuple[int, ...] | None

    def __str__(self) -> str:
        if self.dims is None:
            return "<unknown rank>"
        return "[" + ", ".join("?" if d < 0 else str(d) for d in self.dims) + "]"


@record
class TensorValue:
    """A constant tensor.

    ``values`` holds the decoded elements (``str`` for strings, numbers
    otherwise) only when the tensor is small; ``truncated`` says that more
    elements exist than were decoded.  ``nbytes`` is the encoded size.
    """

    dtype: str
    shape: tuple[int, ...] | None
    values: tuple[object, ...] | None = None
    truncated: bool = False
    nbytes: int = 0

    def scalar(self) -> object | None:
        """The single element of a one-element tensor, else ``None``."""
        if self.values is not None and len(self.values) == 1 and not self.truncated:
            return self.values[0]
        return None


@record
class FuncRef:
    """A function-valued attribute (``f``, ``then_branch``, ``body`` ...)."""

    name: str
    attrs: Mapping[str, "AttrValue"] = field(default_factory=dict)


@record
class AttrPlaceholder:
    """An attribute bound later from the enclosing function's attrs."""

    name: str


AttrValue = Union[
    str, bytes, int, float, bool, DType, Shape, TensorValue, FuncRef, AttrPlaceholder, tuple, None
]


# --------------------------------------------------------------------------
# Graphs


@record
class Node:
    """One operation.

    ``inputs`` keeps TensorFlow's spelling: ``"name"``, ``"name:1"``,
    ``"name:out:0"`` inside functions, ``"^name"`` for control inputs.
    ``attrs`` may be a lazy mapping; treat it as read-only.
    """

    name: str
    op: str
    inputs: tuple[str, ...] = ()
    attrs: Mapping[str, AttrValue] = field(default_factory=dict)
    device: str = ""

    @property
    def data_inputs(self) -> tuple[str, ...]:
        inputs = self.inputs
        if "^" not in "".join(inputs):  # no control input (a hit only means "look closer")
            return inputs
        return tuple(i for i in inputs if not i.startswith("^"))

    @property
    def control_inputs(self) -> tuple[str, ...]:
        return tuple(i[1:] for i in self.inputs if i.startswith("^"))

    def func_refs(self) -> Sequence[tuple[str, FuncRef]]:
        """Every function this node references through an attribute, with the attr name."""
        fast = getattr(self.attrs, "func_refs", None)
        if fast is not None:  # lazy protobuf-backed attrs: skip converting the others (computed once)
            return fast()
        refs: list[tuple[str, FuncRef]] = []
        for key, value in self.attrs.items():
            if isinstance(value, FuncRef):
                refs.append((key, value))
            elif isinstance(value, tuple):
                refs.extend((key, item) for item in value if isinstance(item, FuncRef))
        return refs


@record
class Arg:
    """A function argument or result: its name and dtype (``""`` when polymorphic)."""

    name: str
    dtype: str = ""


class FunctionKind(enum.StrEnum):
    GRAPH = "graph"  # the top-level graph of a GraphDef / MetaGraphDef
    LIBRARY = "library"  # a FunctionDef in a function library
    SUBGRAPH = "subgraph"  # a TFLite subgraph


@record
class Function:
    """A body of nodes: a library function, a top-level graph or a TFLite subgraph."""

    name: str
    kind: FunctionKind
    nodes: tuple[Node, ...]
    args: tuple[Arg, ...] = ()
    outputs: tuple[Arg, ...] = ()
    ret: Mapping[str, str] = field(default_factory=dict)  # output name -> tensor
    control_ret: Mapping[str, str] = field(default_factory=dict)
    attrs: Mapping[str, AttrValue] = field(default_factory=dict)
    is_stateful: bool = False


class EntryKind(enum.StrEnum):
    """How code in a graph gets to run."""

    LOAD_TIME = "load-time"  # runs when the model is loaded (init op, resource initialisers)
    SIGNATURE = "signature"  # a serving signature: runs on every request
    OBJECT_METHOD = "object-method"  # a tf.function reachable from the object graph
    SAVER = "saver"  # the model's own save/restore machinery
    GRAPH = "graph"  # a bare GraphDef: everything in it may run


@record
class EntryPoint:
    """A way into a graph: tensor names in the top-level graph and/or function names."""

    kind: EntryKind
    name: str
    tensors: tuple[str, ...] = ()  # roots in the top-level graph ("node:0", "^node")
    functions: tuple[str, ...] = ()  # library functions entered directly


@record
class TensorSpec:
    """A signature input or output."""

    name: str  # the key in the signature ("x")
    tensor: str  # the graph tensor ("serving_default_x:0")
    dtype: str
    shape: tuple[int, ...] | None


@record
class Signature:
    name: str
    method: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@record
class AssetRef:
    """An asset declared by the model (asset_file_def or a SavedAsset)."""

    filename: str  # as written in the model (relative to assets/ when well-formed)
    tensor: str = ""  # graph tensor that receives the path at load time


@record
class Capture:
    """What the loader binds to a function's trailing captured argument (TF2 object graph).

    ``kind`` is "asset" (value = asset filename), "constant" (value = the Const
    node in the top-level graph), "variable" (value = its checkpoint key) or "other".
    """

    kind: str
    value: str = ""


@record
class VariableSpec:
    """A variable the graph expects its checkpoint to provide."""

    key: str  # checkpoint key ("layer/kernel/.ATTRIBUTES/VARIABLE_VALUE" or a TF1 variable name)
    dtype: str
    shape: tuple[int, ...] | None
    name: str = ""  # object path or variable name, for people


@record
class SaverInfo:
    filename_tensor: str
    save_tensor: str
    restore_op: str


@record(slots=False)
class Graph:
    """One executable graph: a meta graph, a frozen GraphDef or a TFLite model.

    ``main`` is the top-level body; ``functions`` maps library names to bodies.
    """

    name: str
    main: Function
    functions: Mapping[str, Function]
    entry_points: tuple[EntryPoint, ...] = ()
    signatures: tuple[Signature, ...] = ()
    assets: tuple[AssetRef, ...] = ()
    saver: SaverInfo | None = None
    captures: Mapping[str, tuple[Capture, ...]] = field(default_factory=dict)  # function -> trailing args
    variables: tuple[VariableSpec, ...] = ()  # from the object graph (TF2) or variable nodes (TF1)
    tags: tuple[str, ...] = ()
    producer: int | None = None
    tf_version: str = ""
    source_file: str = ""  # the file inside the artifact the graph came from

    def function(self, name: str) -> Function | None:
        if name == self.main.name:
            return self.main
        return self.functions.get(name)


# --------------------------------------------------------------------------
# Keras


@record
class CodeFacts:
    """What a marshalled Python code object reveals without running it."""

    names: tuple[str, ...]  # co_names of every nested code object: globals/attrs used
    strings: tuple[str, ...]  # string constants
    code_objects: int
    python_layout: str = ""  # which marshal layout parsed ("3.11+", "3.8-3.10")
    error: str = ""  # why decoding stopped early, if it did


@record
class KerasObject:
    """Any object in a Keras config that names a class to deserialise.

    ``path`` locates it in the config (``config.layers[3].config.layer``).
    """

    path: str
    class_name: str
    module: str = ""
    registered_name: str = ""
    name: str = ""
    config: Mapping[str, object] = field(default_factory=dict)
    lambda_code: CodeFacts | None = None  # for Lambda layers with marshalled bytecode
    lambda_source_kind: str = ""  # "bytecode", "lambda-string", "function-name", ...


@record
class ConfigString:
    """A string found anywhere in a Keras config, with its location (for path rules)."""

    path: str
    value: str


@record(slots=False)
class KerasModel:
    source_file: str
    keras_version: str
    backend: str
    objects: tuple[KerasObject, ...]
    strings: tuple[ConfigString, ...]
    weight_files: tuple[str, ...] = ()


# --------------------------------------------------------------------------
# Checkpoints


@record
class CheckpointEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int | None = None
    sliced: bool = False


@record
class DataShard:
    shard: int
    path: str
    size: int | None  # None when the file is missing


@record(slots=False)
class Checkpoint:
    prefix: str  # display path of the prefix (".../variables/variables")
    num_shards: int
    entries: tuple[CheckpointEntry, ...]
    shards: tuple[DataShard, ...]
    endianness: str = "little"


# --------------------------------------------------------------------------
# Files and artifacts


class FileKind(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"  # fifo, device, socket


@record
class FileEntry:
    """One entry of a model directory or archive, relative to the artifact root."""

    relpath: str
    kind: FileKind
    size: int = 0
    nlink: int = 1
    link_target: str = ""  # for symlinks: the raw target text
    resolves_inside: bool = True  # for symlinks: does the target stay inside the root?


class ArtifactFormat(enum.StrEnum):
    SAVEDMODEL = "tf-savedmodel"
    GRAPHDEF = "tf-graphdef"
    KERAS_V3 = "keras-v3"
    KERAS_H5 = "keras-h5"
    TFLITE = "tflite"
    TF_CHECKPOINT = "tf-checkpoint"
    PICKLE = "pickle"  # plain pickle, joblib, dill-style: one or more pickle streams
    PYTORCH = "pytorch"  # torch.save zip layout or the legacy magic-number pickle sequence
    NUMPY = "numpy"  # .npy, or .npz (a zip of .npy)
    ONNX = "onnx"
    SAFETENSORS = "safetensors"
    ARCHIVE = "archive"  # zip / tar (optionally gzip) that is not a known model container
    GGUF = "gguf"  # llama.cpp model file
    HF_MODEL = "hf-model"  # a Hugging Face model directory (config.json / tokenizer_config.json)
    MLFLOW = "mlflow-model"  # an MLflow model directory (MLmodel)


# --------------------------------------------------------------------------
# Pickle programs (plain pickle, joblib, PyTorch, NumPy object arrays)


@record
class PickleImport:
    """A global the unpickler would import: ``module.name`` at byte ``pos`` of its stream.

    ``resolved`` is False when the module or name is not a plain string the parser can see
    (STACK_GLOBAL fed by a call result, EXT codes): ``detail`` says what it was.
    """

    module: str
    name: str
    pos: int
    opcode: str  # GLOBAL, STACK_GLOBAL, INST, EXT1/2/4
    resolved: bool = True
    detail: str = ""

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}" if self.module else self.name


@record
class PickleCall:
    """A call the unpickler would make: ``target`` (dotted import, or ``<...>`` when not a plain
    import) at byte ``pos``; ``args`` is a short rendering of the arguments."""

    target: str
    pos: int
    opcode: str  # REDUCE, NEWOBJ, NEWOBJ_EX, OBJ, INST, BUILD (a __setstate__ call)
    args: str = ""
    resolved: bool = True


@record(slots=False)
class PickleProgram:
    """What one pickle stream would do, found by reading its opcodes (never by unpickling).

    ``source`` is the file or archive member the stream is in; ``offset``..``end`` its bytes.
    ``error`` says why parsing stopped before STOP (everything before the break is kept).
    """

    source: str
    offset: int
    protocol: int
    imports: tuple[PickleImport, ...]
    calls: tuple[PickleCall, ...]
    opcodes: int
    end: int
    error: str = ""
    persistent_ids: tuple[str, ...] = ()  # PERSID/BINPERSID payloads (short renderings, bounded)
    role: str = ""  # "torch data.pkl", "legacy torch magic", "npy object array", "joblib"...


# --------------------------------------------------------------------------
# safetensors, ONNX, archives


@record
class SafetensorsTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # data_offsets, relative to the end of the header
    end: int
    extra_keys: tuple[str, ...] = ()


@record(slots=False)
class SafetensorsHeader:
    source: str
    header_len: int
    file_size: int
    tensors: tuple[SafetensorsTensor, ...]
    metadata: Mapping[str, object] = field(default_factory=dict)  # raw JSON values (rules check the types)
    metadata_present: bool = False
    duplicate_keys: tuple[str, ...] = ()


@record
class OnnxNode:
    name: str
    op_type: str
    domain: str
    scope: str  # "graph", "graph/Loop_3.body", "function:custom.F" ...


@record
class OnnxTensor:
    name: str
    scope: str
    data_type: int
    dims: tuple[int, ...]
    external_location: str = ""  # external_data "location", when the data lives in another file
    kind: str = "initializer"  # initializer, sparse_initializer, attribute


@record(slots=False)
class OnnxModel:
    source: str
    ir_version: int
    producer: str
    opsets: tuple[tuple[str, int], ...]
    nodes: tuple[OnnxNode, ...]
    tensors: tuple[OnnxTensor, ...]
    functions: tuple[str, ...] = ()  # "domain:name" of model-local functions
    subgraphs: int = 0  # graphs nested in node attributes
    max_depth: int = 0


@record
class ArchiveMember:
    """One member of a zip/tar container (``container`` is "" for the outer archive, else the
    chain of members it is nested in, joined with "!")."""

    name: str
    kind: FileKind
    size: int = 0  # declared uncompressed size
    compressed: int = 0
    container: str = ""
    encrypted: bool = False
    link_target: str = ""
    content: str = ""  # what the first bytes are: "pickle", "zip", "tar", "npy", "safetensors", "onnx", ""
    hardlink: bool = False

    @property
    def display(self) -> str:
        return f"{self.container}!{self.name}" if self.container else self.name


@record(slots=False)
class ArchiveFacts:
    kind: str  # "zip", "tar", "tar.gz"
    members: tuple[ArchiveMember, ...]
    total_members: int
    max_depth: int = 0  # deepest nested archive reached
    skipped: tuple[str, ...] = ()  # why some content was not inspected (limits), for people


# --------------------------------------------------------------------------
# Model-hub formats: GGUF, chat templates, Python source run on load, loader plans


@record
class GgufArray:
    """A GGUF metadata array, summarised: its element type and declared count (elements are not kept)."""

    item_type: str
    count: int


@record
class GgufTensor:
    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the start of the data section
    nbytes: int | None  # None: unknown type, or element count not a whole number of blocks


@record(slots=False)
class GgufFile:
    """A GGUF header: metadata (scalars and strings kept, arrays summarised) and the tensor table.

    ``data_offset`` is where the (aligned) data section starts; ``alignment`` is the value the
    loader uses (``general.alignment`` if it is a valid uint32, else 32).
    """

    source: str
    version: int
    file_size: int
    data_offset: int
    alignment: int
    tensors: tuple[GgufTensor, ...]
    metadata: Mapping[str, object]
    value_types: Mapping[str, str]  # key -> GGUF value type name
    duplicate_keys: tuple[str, ...] = ()
    duplicate_tensors: tuple[str, ...] = ()


@record
class TemplateFacts:
    """What a Jinja template reads, found by parsing it with Jinja's own parser (never rendering).

    ``attributes`` are attribute names and constant subscripts (``x.__class__``, ``x["__globals__"]``);
    ``dynamic_attrs`` are ``|attr(...)`` lookups whose name is not a constant.
    """

    source: str  # file or metadata key the template came from
    name: str  # "default", or the named template ("tool_use")
    size: int
    names: tuple[str, ...] = ()  # global names read (not set by the template itself)
    attributes: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()
    dynamic_attrs: tuple[str, ...] = ()
    loads: tuple[str, ...] = ()  # include / import / extends targets
    error: str = ""  # why parsing failed


@record
class PyRef:
    """A name Python source imports or calls, resolved through its import aliases."""

    name: str  # "os.system", "subprocess", "eval", "<call>.system"
    line: int
    toplevel: bool = False  # runs at import time (module body, not inside a def)
    detail: str = ""  # for calls: first constant string arguments, shortened


TORCHSCRIPT_ROLE = "torchscript code"  # PythonSource.role of a TorchScript archive's code/ member


@record(slots=False)
class PythonSource:
    """Python (or TorchScript) source a loader runs, analysed with :mod:`ast` (never executed)."""

    source: str  # file or archive member
    role: str  # "hf remote code", "torchscript code", "mlflow code", "mlflow loader module"
    imports: tuple[PyRef, ...] = ()
    calls: tuple[PyRef, ...] = ()
    attributes: tuple[PyRef, ...] = ()  # dunder attribute reads (__globals__, __subclasses__ ...)
    entry: str = ""  # what makes the loader run it ("AutoModel -> modeling_x.Model")
    error: str = ""  # why parsing failed


@record
class LoadStep:
    """One thing a loader does when it loads a hub directory, in order."""

    action: str  # "import", "sys.path", "unpickle", "read-weights", "render-template", "run-remote-code"
    target: str
    detail: str = ""
    present: bool = True  # the file it needs is in the directory


@record(slots=False)
class Artifact:
    """One model artifact, found once, with everything its reader learned."""

    path: str  # filesystem path of the artifact (file, or directory for SavedModel)
    display: str  # how reports name it
    format: ArtifactFormat
    graphs: tuple[Graph, ...] = ()
    keras: KerasModel | None = None
    checkpoints: tuple[Checkpoint, ...] = ()
    files: tuple[FileEntry, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    pickles: tuple[PickleProgram, ...] = ()
    safetensors: tuple[SafetensorsHeader, ...] = ()
    onnx: OnnxModel | None = None
    archive: ArchiveFacts | None = None
    gguf: GgufFile | None = None
    templates: tuple[TemplateFacts, ...] = ()
    python: tuple[PythonSource, ...] = ()
    load_plan: tuple[LoadStep, ...] = ()
