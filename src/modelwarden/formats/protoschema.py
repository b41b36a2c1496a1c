"""Protobuf schemas declared as data, in private descriptor pools, without protoc or the owning library.

A schema is a dict of messages, each a list of ``(name, number, type[, oneof])``:
``"X*"`` is repeated, ``"X!"`` required (``syntax="proto2"`` schemas only),
``"map<K,V>"`` a map, ``"enum:E"`` an enum declared in ``enums``; other names are
messages of the same schema (nested with dots), or, with a leading dot
(``".tensorflow.TensorProto"``), fully qualified messages of a schema or protobuf
file named in ``deps``.
Field numbers are wire-format facts; each schema's tests check them against
the owning library's own descriptors.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import DecodeError, Message

from modelwarden.errors import InputError

_T = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _T.TYPE_STRING,
    "bytes": _T.TYPE_BYTES,
    "int32": _T.TYPE_INT32,
    "int64": _T.TYPE_INT64,
    "uint32": _T.TYPE_UINT32,
    "uint64": _T.TYPE_UINT64,
    "fixed32": _T.TYPE_FIXED32,
    "float": _T.TYPE_FLOAT,
    "double": _T.TYPE_DOUBLE,
    "bool": _T.TYPE_BOOL,
}


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A base-128 varint at ``pos`` (at most 10 bytes): ``(value, next)``, or ``(-1, pos)`` if cut short."""
    result = shift = 0
    while pos < len(buf) and shift < 70:
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return result, pos
        shift += 7
    return -1, pos


class ProtoSchema:
    """Message classes for one declared schema; parse errors become :class:`InputError`."""

    def __init__(
        self,
        package: str,
        filename: str,
        messages: dict[str, list[tuple]],
        enums: dict[str, dict[int, str]] | None = None,
        label: str = "",
        deps: Sequence["ProtoSchema | descriptor.FileDescriptor"] = (),
        syntax: str = "proto3",
    ) -> None:
        self.package = package
        self.syntax = syntax
        self.filename = filename
        self.messages = messages
        self.enums = enums or {}
        self.label = label  # "ONNX " -> "not a valid ONNX ModelProto protobuf"
        self.deps = tuple(deps)
        self._classes: dict[str, type[Message]] = {}

    def file_protos(self) -> list[descriptor_pb2.FileDescriptorProto]:
        """This schema's file and those of its dependencies, dependencies first (no repeats)."""
        out: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        for dep in self.deps:
            if isinstance(dep, ProtoSchema):
                protos = dep.file_protos()
            else:
                protos = [descriptor_pb2.FileDescriptorProto()]
                dep.CopyToProto(protos[0])
            for fdp in protos:
                out.setdefault(fdp.name, fdp)
        out[self.filename] = self.file_proto
        return list(out.values())

    @cached_property
    def file_proto(self) -> descriptor_pb2.FileDescriptorProto:
        fdp = descriptor_pb2.FileDescriptorProto(name=self.filename, package=self.package, syntax=self.syntax)
        fdp.dependency.extend(d.filename if isinstance(d, ProtoSchema) else d.name for d in self.deps)
        for enum_name, values in self.enums.items():
            e = fdp.enum_type.add(name=enum_name)
            for number, vname in sorted(values.items()):
                e.value.add(name=vname, number=number)
        built: dict[str, descriptor_pb2.DescriptorProto] = {}
        for full in sorted(self.messages, key=lambda n: n.count(".")):
            parent, _, leaf = full.rpartition(".")
            container = built[parent].nested_type if parent else fdp.message_type
            built[full] = container.add(name=leaf)
        for full, fields in self.messages.items():
            oneofs: dict[str, int] = {}
            for spec in fields:
                self._field(built[full], full, spec, oneofs)
        return fdp

    @cached_property
    def pool(self) -> descriptor_pool.DescriptorPool:
        pool = descriptor_pool.DescriptorPool()
        for fdp in self.file_protos():
            pool.Add(fdp)
        return pool

    def _field(self, msg: descriptor_pb2.DescriptorProto, owner: str, spec: tuple, oneofs: dict[str, int]) -> None:
        name, number, typ = spec[0], spec[1], spec[2]
        f = msg.field.add(name=name, number=number, json_name=name)
        repeated, required = typ.endswith("*"), typ.endswith("!")
        typ = typ.rstrip("*!")
        f.label = _T.LABEL_REPEATED if repeated else _T.LABEL_REQUIRED if required else _T.LABEL_OPTIONAL
        if typ.startswith("map<"):
            key, value = typ[4:-1].split(",")
            entry_name = "".join(p.capitalize() for p in name.split("_")) + "Entry"
            entry = msg.nested_type.add(name=entry_name)
            entry.options.map_entry = True
            self._field(entry, f"{owner}.{entry_name}", ("key", 1, key), {})
            self._field(entry, f"{owner}.{entry_name}", ("value", 2, value), {})
            f.label = _T.LABEL_REPEATED
            f.type = _T.TYPE_MESSAGE
            f.type_name = f".{self.package}.{owner}.{entry_name}"
        elif typ in _SCALARS:
            f.type = _SCALARS[typ]
        elif typ.startswith("enum:"):
            f.type = _T.TYPE_ENUM
            f.type_name = f".{self.package}.{typ[5:]}"
        else:
            f.type = _T.TYPE_MESSAGE
            f.type_name = typ if typ.startswith(".") else f".{self.package}.{typ}"
        if len(spec) > 3:
            oneof = spec[3]
            if oneof not in oneofs:
                oneofs[oneof] = len(msg.oneof_decl)
                msg.oneof_decl.add(name=oneof)
            f.oneof_index = oneofs[oneof]

    def message_class(self, name: str) -> type[Message]:
        """The class of message ``name`` of this schema, or of a dependency given as ``".pkg.Name"``."""
        cls = self._classes.get(name)
        if cls is None:
            desc = self.pool.FindMessageTypeByName(name[1:] if name.startswith(".") else f"{self.package}.{name}")
            cls = self._classes[name] = message_factory.GetMessageClass(desc)
        return cls

    def parse(self, name: str, data: bytes, path: str) -> Message:
        """Parse binary ``data`` as message ``name``; malformed input raises :class:`InputError`."""
        msg = self.message_class(name)()
        try:
            msg.ParseFromString(data)
        except DecodeError as exc:
            raise InputError(path, f"not a valid {self.label}{name} protobuf ({exc or 'decode error'})") from None
        except RecursionError:
            raise InputError(path, f"{self.label}{name} protobuf is nested too deeply") from None
        return msg

    def parse_text(self, name: str, text: str, path: str) -> Message:
        """Parse protobuf text format; unknown fields are skipped."""
        msg = self.message_class(name)()
        try:
            text_format.Parse(text, msg, allow_unknown_field=True)
        except text_format.ParseError as exc:
            raise InputError(path, f"not a valid {self.label}{name} in protobuf text format ({exc})") from None
        except RecursionError:
            raise InputError(path, f"{self.label}{name} text is nested too deeply") from None
        return msg
