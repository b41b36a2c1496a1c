"""``tensorflow.TensorProto`` <-> numpy for the gRPC API, with TensorFlow's semantics and hard bounds.

Decoding follows ``Tensor::FromProto``: the dtype must be the signature's; values come from
``tensor_content`` (raw little-endian bytes, exactly ``elements x itemsize`` long) or from
the typed field of the dtype (``float_val``, ``int_val``...).  A typed field with fewer values
than the shape needs is filled with its last value (none: zeros); extra values are ignored.
Before anything is allocated the declared shape is checked: dimensions non-negative, rank at
most the sandbox protocol's, at most ``max_elements`` elements and ``max_bytes`` bytes.
Every refusal is a :class:`RequestError` (400, INVALID_ARGUMENT) naming the input.

Encoding writes the typed fields (TensorFlow Serving's default ``AsProtoField``), so clients
reading ``outputs["y"].float_val`` directly keep working.
"""

from __future__ import annotations

import numpy as np

from modelwarden.formats.tfproto import DATATYPE_VALUES, DTYPE_NAMES
from modelwarden.sandbox import protocol
from modelwarden.server.limits import RequestError

DT = {name: number for number, name in DTYPE_NAMES.items()}  # "float32" -> 1
# numpy dtype name -> (typed field, numpy dtype of the field's values, values per element)
FIELDS: dict[str, tuple[str, str, int]] = {
    "float32": ("float_val", "float32", 1), "float64": ("double_val", "float64", 1),
    "int8": ("int_val", "int64", 1), "int16": ("int_val", "int64", 1), "int32": ("int_val", "int64", 1),
    "uint8": ("int_val", "int64", 1), "uint16": ("int_val", "int64", 1),
    "int64": ("int64_val", "int64", 1), "uint32": ("uint32_val", "uint64", 1), "uint64": ("uint64_val", "uint64", 1),
    "bool": ("bool_val", "bool", 1), "float16": ("half_val", "int64", 1),
    "complex64": ("scomplex_val", "float32", 2), "complex128": ("dcomplex_val", "float64", 2),
    protocol.STRING: ("string_val", "object", 1),
}


def bad(message: str) -> RequestError:
    return RequestError(400, message, kind="invalid_argument")


def dt_name(number: int) -> str:
    return DATATYPE_VALUES.get(number, f"DataType({number})")


def declared_shape(proto, name: str, max_elements: int) -> tuple[int, ...]:
    """The tensor's shape, refused if unknown, negative, too deep or above ``max_elements``."""
    ts = proto.tensor_shape
    if ts.unknown_rank:
        raise bad(f"input {name!r}: a tensor of unknown rank cannot be a value")
    if len(ts.dim) > protocol.MAX_RANK:
        raise bad(f"input {name!r}: rank {len(ts.dim)} exceeds the limit of {protocol.MAX_RANK}")
    shape = tuple(int(d.size) for d in ts.dim)
    n = 1
    for d in shape:
        if d < 0:
            raise bad(f"input {name!r}: dimension {d} is negative (the shape of a value must be fully defined)")
        n *= d
        if n > max_elements:
            raise bad(f"input {name!r}: shape {list(shape)} declares more than {max_elements} elements")
    return shape


def decode(proto, name: str, dtype: str, max_elements: int, max_bytes: int) -> np.ndarray:
    """A request ``TensorProto`` as an array of the signature's ``dtype`` (a numpy name or ``"string"``)."""
    want = DT.get(dtype)
    if want is None or dtype not in FIELDS:
        raise bad(f"input {name!r}: dtype {dtype} is not supported by this server")
    if proto.dtype != want:
        raise bad(f"input {name!r}: expects {dt_name(want)} but {dt_name(proto.dtype)} is provided")
    shape = declared_shape(proto, name, max_elements)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    field, value_dtype, per = FIELDS[dtype]
    if dtype != protocol.STRING and n * np.dtype(dtype).itemsize > max_bytes:
        raise bad(f"input {name!r}: shape {list(shape)} of {dt_name(want)} exceeds {max_bytes} bytes")
    if proto.tensor_content:
        if dtype == protocol.STRING:
            raise bad(f"input {name!r}: DT_STRING values go in string_val, not tensor_content")
        content = proto.tensor_content
        need = n * np.dtype(dtype).itemsize
        if len(content) != need:
            raise bad(f"input {name!r}: tensor_content has {len(content)} bytes; shape {list(shape)} of "
                      f"{dt_name(want)} needs {need}")
        return np.frombuffer(content, protocol.DTYPES[dtype]).reshape(shape)
    values = getattr(proto, field)
    if dtype == protocol.STRING:
        return _strings(list(values), shape, n, name, max_bytes)
    # TensorFlow ignores extra values (and a complex field's unpaired last one): never convert them
    values = values[: min(len(values), n * per) // per * per]
    raw = np.array(values, dtype=value_dtype)
    raw = raw.reshape(-1, per) if per > 1 else raw
    raw = _fill(raw, n)
    return _cast(raw, dtype, name).reshape(shape)


def _fill(raw: np.ndarray, n: int) -> np.ndarray:
    """TensorFlow's fill: no values -> zeros; fewer than ``n`` -> repeat the last one."""
    if len(raw) >= n:
        return raw[:n]
    if len(raw) == 0:
        return np.zeros((n, *raw.shape[1:]), raw.dtype)
    return np.concatenate([raw, np.repeat(raw[-1:], n - len(raw), axis=0)])


def _cast(raw: np.ndarray, dtype: str, name: str) -> np.ndarray:
    if dtype == "float16":
        if raw.size and (raw.min() < 0 or raw.max() > 0xFFFF):
            raise bad(f"input {name!r}: half_val holds values that are not 16-bit patterns")
        return raw.astype(np.uint16).view(np.float16)
    if dtype.startswith("complex"):
        return (raw[:, 0] + 1j * raw[:, 1]).astype(dtype)
    target = np.dtype(dtype)
    if target.kind in "iu" and raw.size and raw.dtype != target:
        info = np.iinfo(target)
        if raw.min() < info.min or raw.max() > info.max:
            raise bad(f"input {name!r}: value out of range for {dt_name(DT[dtype])}")
    return raw.astype(target, copy=False)


def _strings(values: list[bytes], shape: tuple[int, ...], n: int, name: str, max_bytes: int) -> np.ndarray:
    if n * protocol.LENGTH.itemsize + sum(len(v) for v in values[:n]) > max_bytes:
        raise bad(f"input {name!r}: string values exceed {max_bytes} bytes")
    values = values[:n] if len(values) >= n else values + [values[-1] if values else b""] * (n - len(values))
    return protocol.string_array(values, shape)


def encode(arr: np.ndarray, proto) -> None:
    """Fill ``proto`` (a ``TensorProto``) from ``arr``: dtype, shape and the dtype's typed field."""
    dtype = protocol.dtype_name(arr)
    if dtype not in FIELDS:
        raise RequestError(500, f"output dtype {dtype} cannot be returned over gRPC", kind="bad_model_output")
    proto.dtype = DT[dtype]
    for d in arr.shape:
        proto.tensor_shape.dim.add(size=int(d))
    field, _, _ = FIELDS[dtype]
    flat = arr.reshape(-1)
    if dtype == protocol.STRING:
        values: list = protocol.string_elements(flat)
    elif dtype == "float16":
        values = flat.view(np.uint16).tolist()
    elif dtype.startswith("complex"):
        values = np.stack([flat.real, flat.imag], axis=-1).reshape(-1).tolist()
    else:
        values = flat.tolist()
    getattr(proto, field).extend(values)
