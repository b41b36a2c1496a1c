"""ONNX's protobuf wire schema, declared as data, without the onnx package.

Only the fields modelwarden reads are declared (unknown fields are skipped);
messages live in a private descriptor pool (package ``modelwarden_onnx``) so
they never collide with onnx's own classes.  Field numbers are wire-format
facts from ``onnx/onnx.proto3``; ``tests/test_onnx.py`` checks them against the
onnx package's descriptors when it is installed.
"""

from __future__ import annotations

from google.protobuf.message import Message

from modelwarden.formats.protoschema import ProtoSchema

PACKAGE = "modelwarden_onnx"

# (name, number, type); "X*" repeated; other names are messages below.
MESSAGES: dict[str, list[tuple[str, int, str]]] = {
    "ModelProto": [
        ("ir_version", 1, "int64"), ("producer_name", 2, "string"), ("producer_version", 3, "string"),
        ("domain", 4, "string"), ("model_version", 5, "int64"), ("doc_string", 6, "string"),
        ("graph", 7, "GraphProto"), ("opset_import", 8, "OperatorSetIdProto*"),
        ("metadata_props", 14, "StringStringEntryProto*"), ("training_info", 20, "TrainingInfoProto*"),
        ("functions", 25, "FunctionProto*"),
    ],
    "OperatorSetIdProto": [("domain", 1, "string"), ("version", 2, "int64")],
    "StringStringEntryProto": [("key", 1, "string"), ("value", 2, "string")],
    "TrainingInfoProto": [("initialization", 1, "GraphProto"), ("algorithm", 2, "GraphProto")],
    "GraphProto": [
        ("node", 1, "NodeProto*"), ("name", 2, "string"), ("initializer", 5, "TensorProto*"),
        ("sparse_initializer", 15, "SparseTensorProto*"),
    ],
    "NodeProto": [
        ("input", 1, "string*"), ("output", 2, "string*"), ("name", 3, "string"), ("op_type", 4, "string"),
        ("attribute", 5, "AttributeProto*"), ("domain", 7, "string"),
    ],
    "AttributeProto": [
        ("name", 1, "string"), ("t", 5, "TensorProto"), ("g", 6, "GraphProto"), ("tensors", 10, "TensorProto*"),
        ("graphs", 11, "GraphProto*"), ("type", 20, "int32"), ("sparse_tensor", 22, "SparseTensorProto"),
        ("sparse_tensors", 23, "SparseTensorProto*"),
    ],
    "TensorProto": [
        ("dims", 1, "int64*"), ("data_type", 2, "int32"), ("name", 8, "string"),
        ("external_data", 13, "StringStringEntryProto*"), ("data_location", 14, "int32"),
    ],
    "SparseTensorProto": [("values", 1, "TensorProto"), ("indices", 2, "TensorProto"), ("dims", 3, "int64*")],
    "FunctionProto": [
        ("name", 1, "string"), ("node", 7, "NodeProto*"), ("opset_import", 9, "OperatorSetIdProto*"),
        ("domain", 10, "string"),
    ],
}


SCHEMA = ProtoSchema(PACKAGE, "modelwarden/onnx_subset.proto", MESSAGES, label="ONNX ")


def message_class(name: str) -> type[Message]:
    return SCHEMA.message_class(name)


def parse(name: str, data: bytes, path: str) -> Message:
    return SCHEMA.parse(name, data, path)
