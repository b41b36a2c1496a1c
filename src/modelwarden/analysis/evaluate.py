"""Evaluate a small predicate expression from constants and checkpoint values, without TensorFlow.

Supports what gating predicates are made of: constants, variable reads, casts,
comparisons, logic, arithmetic and reductions over small tensors.  Anything
else raises :class:`Unknown` with a reason; nothing is guessed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from modelwarden.analysis.callgraph import tensor_node
from modelwarden.analysis.graphs import GraphView
from modelwarden.ir import DType, Function, TensorValue

MAX_ELEMENTS = 4096
MAX_DEPTH = 32

_NP_DTYPES = {
    "float32": np.float32, "float64": np.float64, "float16": np.float16, "int8": np.int8, "int16": np.int16,
    "int32": np.int32, "int64": np.int64, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
    "uint64": np.uint64, "bool": np.bool_,
}  # fmt: skip
_BINARY: dict[str, Callable] = {
    "Greater": np.greater, "GreaterEqual": np.greater_equal, "Less": np.less, "LessEqual": np.less_equal,
    "Equal": np.equal, "NotEqual": np.not_equal, "LogicalAnd": np.logical_and, "LogicalOr": np.logical_or,
    "Add": np.add, "AddV2": np.add, "Sub": np.subtract, "Mul": np.multiply, "RealDiv": np.true_divide,
    "Div": np.true_divide, "FloorDiv": np.floor_divide, "FloorMod": np.mod, "Maximum": np.maximum,
    "Minimum": np.minimum, "Pow": np.power,
}  # fmt: skip
_UNARY: dict[str, Callable] = {"LogicalNot": np.logical_not, "Neg": np.negative, "Abs": np.abs, "Sign": np.sign}
_REDUCE: dict[str, Callable] = {
    "Sum": np.sum, "Prod": np.prod, "Max": np.max, "Min": np.min, "Mean": np.mean, "All": np.all, "Any": np.any,
}
_PASS = frozenset({"Identity", "StopGradient", "Snapshot", "ReadVariableOp", "Squeeze"})


class Unknown(Exception):
    """The expression cannot be evaluated statically; the message says why."""


def decode_tensor(data: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Checkpoint bytes -> array (fixed-size dtypes and strings)."""
    count = 1
    for d in shape:
        count *= d
    if count > MAX_ELEMENTS:
        raise Unknown(f"tensor of {count} elements is too large to evaluate")
    if dtype == "string":
        lengths, pos = [], 0
        for _ in range(count):
            n = shift = 0
            while True:
                if pos >= len(data):
                    raise Unknown("truncated string tensor")
                b = data[pos]
                pos += 1
                n |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            lengths.append(n)
        pos += 4  # masked crc32c of the lengths
        out = []
        for n in lengths:
            out.append(data[pos : pos + n].decode("utf-8", "backslashreplace"))
            pos += n
        return np.array(out, dtype=object).reshape(shape)
    np_dtype = _NP_DTYPES.get(dtype)
    if np_dtype is None:
        raise Unknown(f"dtype {dtype} is not evaluated")
    arr = np.frombuffer(data, dtype=np.dtype(np_dtype).newbyteorder("<"), count=count)
    return arr.reshape(shape)


class Evaluator:
    def __init__(self, view: GraphView, variable: Callable[[str], np.ndarray]) -> None:
        self.view = view
        self.variable = variable  # checkpoint key -> value (raises Unknown)
        self.used: set[str] = set()

    def eval(self, fn: Function, tensor: str, depth: int = 0) -> np.ndarray:
        if depth > MAX_DEPTH:
            raise Unknown("expression too deep")
        name = tensor_node(tensor)
        j = self.view.values.arg_index(fn, tensor)
        if j is not None:
            return self._arg(fn, j, depth)
        node = self.view.values.nodes(fn).get(name)
        if node is None:
            raise Unknown(f"unknown tensor {tensor!r}")
        op, data = node.op, node.data_inputs
        if op == "Const":
            tv = node.attrs.get("value")
            if not isinstance(tv, TensorValue) or tv.values is None or tv.truncated:
                raise Unknown(f"constant {name!r} not decoded")
            arr = np.array(tv.values, dtype=object if tv.dtype == "string" else _NP_DTYPES.get(tv.dtype, None))
            shape = tv.shape or ()
            size = int(np.prod(shape)) if shape else 1
            return np.broadcast_to(arr, shape) if arr.size == 1 and size != 1 else arr.reshape(shape)
        if op in ("VarHandleOp", "VariableV2"):
            key = str(node.attrs.get("shared_name") or name)
            self.used.add(key)
            return self.variable(key)
        if op in ("Placeholder", "PlaceholderWithDefault"):
            raise Unknown(f"depends on request input {name!r}")
        if op in _PASS and data:
            return self.eval(fn, data[0], depth + 1)
        if op == "Cast" and data:
            dst = node.attrs.get("DstT")
            target = _NP_DTYPES.get(dst.name if isinstance(dst, DType) else "")
            if target is None:
                raise Unknown(f"cast to {dst}")
            return self.eval(fn, data[0], depth + 1).astype(target)
        if op in _BINARY and len(data) == 2:
            return _BINARY[op](self.eval(fn, data[0], depth + 1), self.eval(fn, data[1], depth + 1))
        if op in _UNARY and data:
            return _UNARY[op](self.eval(fn, data[0], depth + 1))
        if op in _REDUCE and len(data) == 2:
            value = self.eval(fn, data[0], depth + 1)
            axis = self.eval(fn, data[1], depth + 1)
            axes = tuple(int(a) % max(value.ndim, 1) for a in np.atleast_1d(axis)) if value.ndim else None
            return _REDUCE[op](value, axis=axes, keepdims=bool(node.attrs.get("keep_dims")))
        raise Unknown(f"op {op} is not evaluated")

    def _arg(self, fn: Function, j: int, depth: int) -> np.ndarray:
        cap = self.view.values.capture(fn, j)
        if cap is not None:
            if cap.kind == "variable":
                self.used.add(cap.value)
                return self.variable(cap.value)
            raise Unknown(f"captured {cap.kind}")
        reach = self.view.cg.function_reach.get(fn.name)
        source = self.view.values.caller_input(fn, j, reach.parent if reach else None)
        if isinstance(source, str):
            raise Unknown(source)
        caller, tensor, _ = source
        return self.eval(caller, tensor, depth + 1)


def truth(value: np.ndarray) -> bool:
    """TensorFlow's If semantics: scalars by value (strings: non-empty), other tensors by non-emptiness."""
    if value.ndim == 0 or value.size == 1:
        v = value.reshape(()).item()
        return bool(v) if not isinstance(v, (str, bytes)) else len(v) > 0
    return value.size > 0
