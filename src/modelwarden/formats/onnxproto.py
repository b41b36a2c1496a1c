"""ONNX's protobuf wire schema, declared as data, without the onnx package.

Only the fields modelwarden reads are declared (unknown fields are skipped);
messages live in a private descriptor pool (package ``modelwarden_onnx``) so
they never collide with onnx's own classes.  Field numbers are wire-format
facts from ``onnx/onnx.proto3``; ``tests/test_onnx.py`` checks them against the
onnx package's descriptors when it is installed.
"""

from __future__ import annotations

from functools import cache

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from modelwarden.errors import InputError

PACKAGE = "modelwarden_onnx"
_T = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"string": _T.TYPE_STRING, "bytes": _T.TYPE_BYTES, "int32": _T.TYPE_INT32, "int64": _T.TYPE_INT64,
            "uint64": _T.TYPE_UINT64, "float": _T.TYPE_FLOAT, "double": _T.TYPE_DOUBLE}

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


@cache
def _pool() -> descriptor_pool.DescriptorPool:
    fdp = descriptor_pb2.FileDescriptorProto(name="modelwarden/onnx_subset.proto", package=PACKAGE, syntax="proto3")
    for name, fields in MESSAGES.items():
        msg = fdp.message_type.add(name=name)
        for fname, number, typ in fields:
            f = msg.field.add(name=fname, number=number, json_name=fname)
            repeated = typ.endswith("*")
            typ = typ.rstrip("*")
            f.label = _T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL
            if typ in _SCALARS:
                f.type = _SCALARS[typ]
            else:
                f.type = _T.TYPE_MESSAGE
                f.type_name = f".{PACKAGE}.{typ}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return pool


@cache
def message_class(name: str) -> type[Message]:
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(f"{PACKAGE}.{name}"))


def parse(name: str, data: bytes, path: str) -> Message:
    msg = message_class(name)()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise InputError(path, f"not a valid ONNX {name} protobuf ({exc or 'decode error'})") from None
    except RecursionError:
        raise InputError(path, f"ONNX {name} protobuf is nested too deeply") from None
    return msg
