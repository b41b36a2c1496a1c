"""TensorFlow's protobuf wire schema, declared as data, without TensorFlow.

Only the fields modelwarden reads are declared; unknown fields are skipped by
the parser.  The messages live in a private descriptor pool so they never
collide with TensorFlow's own classes when both are loaded in one process.
Field numbers are wire-format facts; ``tests/test_tfproto_schema.py`` checks
every one against TensorFlow's descriptors when TensorFlow is installed.

Usage::

    from modelwarden.formats import tfproto
    sm = tfproto.parse("SavedModel", data, path)
"""

from __future__ import annotations

from google.protobuf.message import Message

from modelwarden.formats.protoschema import ProtoSchema

PACKAGE = "tensorflow"

# Each field: (name, number, type[, oneof]).  "X*" is repeated; "map<K,V>" a map;
# "enum:E" an enum declared in ENUMS.  Nested names use dots.
MESSAGES: dict[str, list[tuple]] = {
    "VersionDef": [("producer", 1, "int32"), ("min_consumer", 2, "int32"), ("bad_consumers", 3, "int32*")],
    "TensorShapeProto": [("dim", 2, "TensorShapeProto.Dim*"), ("unknown_rank", 3, "bool")],
    "TensorShapeProto.Dim": [("size", 1, "int64"), ("name", 2, "string")],
    "TensorProto": [
        ("dtype", 1, "enum:DataType"),
        ("tensor_shape", 2, "TensorShapeProto"),
        ("version_number", 3, "int32"),
        ("tensor_content", 4, "bytes"),
        ("float_val", 5, "float*"),
        ("double_val", 6, "double*"),
        ("int_val", 7, "int32*"),
        ("string_val", 8, "bytes*"),
        ("scomplex_val", 9, "float*"),
        ("int64_val", 10, "int64*"),
        ("bool_val", 11, "bool*"),
        ("dcomplex_val", 12, "double*"),
        ("half_val", 13, "int32*"),
        ("uint32_val", 16, "uint32*"),
        ("uint64_val", 17, "uint64*"),
        ("float8_val", 18, "bytes"),
    ],
    "AttrValue": [
        ("list", 1, "AttrValue.ListValue", "value"),
        ("s", 2, "bytes", "value"),
        ("i", 3, "int64", "value"),
        ("f", 4, "float", "value"),
        ("b", 5, "bool", "value"),
        ("type", 6, "enum:DataType", "value"),
        ("shape", 7, "TensorShapeProto", "value"),
        ("tensor", 8, "TensorProto", "value"),
        ("placeholder", 9, "string", "value"),
        ("func", 10, "NameAttrList", "value"),
    ],
    "AttrValue.ListValue": [
        ("s", 2, "bytes*"),
        ("i", 3, "int64*"),
        ("f", 4, "float*"),
        ("b", 5, "bool*"),
        ("type", 6, "enum:DataType*"),
        ("shape", 7, "TensorShapeProto*"),
        ("tensor", 8, "TensorProto*"),
        ("func", 9, "NameAttrList*"),
    ],
    "NameAttrList": [("name", 1, "string"), ("attr", 2, "map<string,AttrValue>")],
    "NodeDef": [
        ("name", 1, "string"),
        ("op", 2, "string"),
        ("input", 3, "string*"),
        ("device", 4, "string"),
        ("attr", 5, "map<string,AttrValue>"),
    ],
    "OpDef": [
        ("name", 1, "string"),
        ("input_arg", 2, "OpDef.ArgDef*"),
        ("output_arg", 3, "OpDef.ArgDef*"),
        ("attr", 4, "OpDef.AttrDef*"),
        ("is_stateful", 17, "bool"),
        ("control_output", 20, "string*"),
    ],
    "OpDef.ArgDef": [
        ("name", 1, "string"),
        ("type", 3, "enum:DataType"),
        ("type_attr", 4, "string"),
        ("number_attr", 5, "string"),
        ("type_list_attr", 6, "string"),
        ("is_ref", 16, "bool"),
    ],
    "OpDef.AttrDef": [("name", 1, "string"), ("type", 2, "string"), ("default_value", 3, "AttrValue")],
    "OpList": [("op", 1, "OpDef*")],
    "FunctionDef": [
        ("signature", 1, "OpDef"),
        ("node_def", 3, "NodeDef*"),
        ("ret", 4, "map<string,string>"),
        ("attr", 5, "map<string,AttrValue>"),
        ("control_ret", 6, "map<string,string>"),
    ],
    "GradientDef": [("function_name", 1, "string"), ("gradient_func", 2, "string")],
    "FunctionDefLibrary": [("function", 1, "FunctionDef*"), ("gradient", 2, "GradientDef*")],
    "GraphDef": [
        ("node", 1, "NodeDef*"),
        ("library", 2, "FunctionDefLibrary"),
        ("version", 3, "int32"),
        ("versions", 4, "VersionDef"),
    ],
    "TensorInfo": [
        ("name", 1, "string"),
        ("dtype", 2, "enum:DataType"),
        ("tensor_shape", 3, "TensorShapeProto"),
    ],
    "SignatureDef": [
        ("inputs", 1, "map<string,TensorInfo>"),
        ("outputs", 2, "map<string,TensorInfo>"),
        ("method_name", 3, "string"),
    ],
    "AssetFileDef": [("tensor_info", 1, "TensorInfo"), ("filename", 2, "string")],
    "SaverDef": [
        ("filename_tensor_name", 1, "string"),
        ("save_tensor_name", 2, "string"),
        ("restore_op_name", 3, "string"),
        ("max_to_keep", 4, "int32"),
        ("sharded", 5, "bool"),
        ("version", 7, "enum:CheckpointFormatVersion"),
    ],
    "CollectionDef": [
        ("node_list", 1, "CollectionDef.NodeList", "kind"),
        ("bytes_list", 2, "CollectionDef.BytesList", "kind"),
        ("any_list", 5, "CollectionDef.AnyList", "kind"),
    ],
    "CollectionDef.NodeList": [("value", 1, "string*")],
    "CollectionDef.BytesList": [("value", 1, "bytes*")],
    "CollectionDef.AnyList": [("value", 1, "Any*")],  # TF1 builders keep saved_model_assets here
    "Any": [("type_url", 1, "string"), ("value", 2, "bytes")],
    "MetaGraphDef.MetaInfoDef": [
        ("meta_graph_version", 1, "string"),
        ("stripped_op_list", 2, "OpList"),
        ("tags", 4, "string*"),
        ("tensorflow_version", 5, "string"),
        ("tensorflow_git_version", 6, "string"),
        ("function_aliases", 8, "map<string,string>"),
    ],
    "MetaGraphDef": [
        ("meta_info_def", 1, "MetaGraphDef.MetaInfoDef"),
        ("graph_def", 2, "GraphDef"),
        ("saver_def", 3, "SaverDef"),
        ("collection_def", 4, "map<string,CollectionDef>"),
        ("signature_def", 5, "map<string,SignatureDef>"),
        ("asset_file_def", 6, "AssetFileDef*"),
        ("object_graph_def", 7, "SavedObjectGraph"),
    ],
    "SavedModel": [("saved_model_schema_version", 1, "int64"), ("meta_graphs", 2, "MetaGraphDef*")],
    # Object graph (TF2 SavedModels)
    "SavedObjectGraph": [
        ("nodes", 1, "SavedObject*"),
        ("concrete_functions", 2, "map<string,SavedConcreteFunction>"),
    ],
    "ObjectReference": [("node_id", 1, "int32"), ("local_name", 2, "string")],
    "SavedObject": [
        ("children", 1, "ObjectReference*"),
        ("user_object", 4, "SavedUserObject", "kind"),
        ("asset", 5, "SavedAsset", "kind"),
        ("function", 6, "SavedFunction", "kind"),
        ("variable", 7, "SavedVariable", "kind"),
        ("bare_concrete_function", 8, "SavedBareConcreteFunction", "kind"),
        ("constant", 9, "SavedConstant", "kind"),
        ("resource", 10, "SavedResource", "kind"),
        ("captured_tensor", 12, "CapturedTensor", "kind"),
        ("registered_name", 13, "string"),
        ("saveable_objects", 11, "map<string,SaveableObject>"),
    ],
    "SaveableObject": [("save_function", 2, "int32"), ("restore_function", 3, "int32")],
    "SavedUserObject": [("identifier", 1, "string"), ("version", 2, "VersionDef"), ("metadata", 3, "string")],
    "SavedAsset": [("asset_file_def_index", 1, "int32")],
    "SavedFunction": [("concrete_functions", 1, "string*")],
    "SavedConcreteFunction": [("bound_inputs", 2, "int32*")],
    "SavedBareConcreteFunction": [
        ("concrete_function_name", 1, "string"),
        ("argument_keywords", 2, "string*"),
    ],
    "SavedConstant": [("operation", 1, "string")],
    "SavedVariable": [
        ("dtype", 1, "enum:DataType"),
        ("shape", 2, "TensorShapeProto"),
        ("trainable", 3, "bool"),
        ("name", 6, "string"),
        ("device", 7, "string"),
    ],
    "SavedResource": [("device", 1, "string")],
    "CapturedTensor": [("name", 1, "string"), ("concrete_function", 2, "string")],
    # fingerprint.pb
    "FingerprintDef": [
        ("saved_model_checksum", 1, "uint64"),
        ("graph_def_program_hash", 2, "uint64"),
        ("signature_def_hash", 3, "uint64"),
        ("saved_object_graph_hash", 4, "uint64"),
        ("checkpoint_hash", 5, "uint64"),
        ("version", 6, "VersionDef"),
    ],
    # keras_metadata.pb (tf.keras SavedModel metadata)
    "KerasSavedMetadata": [("nodes", 1, "KerasSavedObject*")],
    "KerasSavedObject": [
        ("node_id", 2, "int32"),
        ("node_path", 3, "string"),
        ("identifier", 4, "string"),
        ("metadata", 5, "string"),
        ("version", 6, "VersionDef"),
    ],
    # Tensor bundle (checkpoint .index values)
    "BundleHeaderProto": [
        ("num_shards", 1, "int32"),
        ("endianness", 2, "int32"),
        ("version", 3, "VersionDef"),
    ],
    "BundleEntryProto": [
        ("dtype", 1, "enum:DataType"),
        ("shape", 2, "TensorShapeProto"),
        ("shard_id", 3, "int32"),
        ("offset", 4, "int64"),
        ("size", 5, "int64"),
        ("crc32c", 6, "fixed32"),
        ("slices", 7, "TensorSliceProto*"),
    ],
    "TensorSliceProto": [("extent", 1, "TensorSliceProto.Extent*")],
    "TensorSliceProto.Extent": [("start", 1, "int64"), ("length", 2, "int64", "has_length")],
}

# DataType enum: value -> proto name.  Short numpy-style names come from DTYPE_NAMES.
_DT = [
    "INVALID", "FLOAT", "DOUBLE", "INT32", "UINT8", "INT16", "INT8", "STRING", "COMPLEX64",
    "INT64", "BOOL", "QINT8", "QUINT8", "QINT32", "BFLOAT16", "QINT16", "QUINT16", "UINT16",
    "COMPLEX128", "HALF", "RESOURCE", "VARIANT", "UINT32", "UINT64", "FLOAT8_E5M2",
    "FLOAT8_E4M3FN", "FLOAT8_E4M3FNUZ", "FLOAT8_E4M3B11FNUZ", "FLOAT8_E5M2FNUZ", "INT4",
    "UINT4", "INT2", "UINT2", "FLOAT4_E2M1FN",
]  # fmt: skip
DATATYPE_VALUES: dict[int, str] = {i: f"DT_{n}" for i, n in enumerate(_DT)}
DATATYPE_VALUES.update({i + 100: f"DT_{n}_REF" for i, n in enumerate(_DT) if i})
ENUMS: dict[str, dict[int, str]] = {
    "DataType": DATATYPE_VALUES,
    "CheckpointFormatVersion": {0: "LEGACY", 1: "V1", 2: "V2"},  # SaverDef.version (text format spells names)
}

# Short, numpy-like names for reports and the IR.
DTYPE_NAMES: dict[int, str] = {
    0: "invalid", 1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
    7: "string", 8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8",
    13: "qint32", 14: "bfloat16", 15: "qint16", 16: "quint16", 17: "uint16", 18: "complex128",
    19: "float16", 20: "resource", 21: "variant", 22: "uint32", 23: "uint64",
    24: "float8_e5m2", 25: "float8_e4m3fn", 26: "float8_e4m3fnuz", 27: "float8_e4m3b11fnuz",
    28: "float8_e5m2fnuz", 29: "int4", 30: "uint4", 31: "int2", 32: "uint2", 33: "float4_e2m1fn",
}  # fmt: skip
# Bytes per element for fixed-size dtypes (0 = variable or sub-byte).
DTYPE_SIZES: dict[int, int] = {
    1: 4, 2: 8, 3: 4, 4: 1, 5: 2, 6: 1, 8: 8, 9: 8, 10: 1, 11: 1, 12: 1, 13: 4, 14: 2,
    15: 2, 16: 2, 17: 2, 18: 16, 19: 2, 22: 4, 23: 8, 24: 1, 25: 1, 26: 1, 27: 1, 28: 1,
}  # fmt: skip


def dtype_name(value: int) -> str:
    """``1 -> "float32"``; reference types get a ``_ref`` suffix; unknown -> ``"dtype(N)"``."""
    if value > 100 and value - 100 in DTYPE_NAMES:
        return DTYPE_NAMES[value - 100] + "_ref"
    return DTYPE_NAMES.get(value, f"dtype({value})")


SCHEMA = ProtoSchema(PACKAGE, "modelwarden/tensorflow_subset.proto", MESSAGES, ENUMS)


def message_class(name: str) -> type[Message]:
    """The generated class for ``name`` (e.g. ``"SavedModel"``, ``"GraphDef"``)."""
    return SCHEMA.message_class(name)


def parse(name: str, data: bytes, path: str) -> Message:
    """Parse binary ``data`` as message ``name``; malformed input raises :class:`InputError`."""
    return SCHEMA.parse(name, data, path)


def parse_text(name: str, text: str, path: str) -> Message:
    """Parse protobuf text format (``.pbtxt``); unknown fields are skipped."""
    return SCHEMA.parse_text(name, text, path)
