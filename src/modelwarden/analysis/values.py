"""Where does a tensor's value come from?  A bounded backward resolver used for evidence.

It follows identities, string joins and function-call arguments back along a
reach's call path to a constant, an asset, a request input, a variable or the
saver's filename placeholder.  It never guesses: anything else is "computed".
"""

from __future__ import annotations


from modelwarden.analysis.callgraph import CallGraph, CallEdge, tensor_node
from modelwarden.ir import Capture, Function, Node, TensorValue
from modelwarden.record import record

PASS_THROUGH = frozenset(
    {"Identity", "StopGradient", "Snapshot", "PreventGradient", "CheckNumerics", "EnsureShape", "Squeeze", "Reshape"}
)
VARIABLE_OPS = frozenset({"VarHandleOp", "VariableV2", "Variable", "ReadVariableOp", "_ReadVariablesOp"})
PLACEHOLDERS = frozenset({"Placeholder", "PlaceholderV2"})
# Ops whose function attributes take the call's inputs as arguments, and the offset of arg 0.
_CALL_OFFSETS = {
    "PartitionedCall": 0, "StatefulPartitionedCall": 0, "If": 1, "StatelessIf": 1,
    "Case": 1, "StatelessCase": 1, "While": 0, "StatelessWhile": 0, "RemoteCall": 1,
}  # fmt: skip
MAX_DEPTH = 64


@record
class Value:
    """``kind``: const | asset | input | variable | saver-filename | computed | unknown."""

    kind: str
    values: tuple[str, ...] = ()  # for const/asset: the strings
    detail: str = ""

    def describe(self) -> str:
        if self.kind == "const":
            shown = ", ".join(repr(v) for v in self.values[:4]) + (", ..." if len(self.values) > 4 else "")
            return shown or "''"
        if self.kind == "asset":
            return f"the model's asset {self.values[0]!r}" if self.values else "a model asset"
        if self.kind == "input":
            return f"request input {self.detail!r}"
        if self.kind == "variable":
            label = self.detail.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")
            return f"variable {label!r} (restored from the checkpoint)"
        if self.kind == "saver-filename":
            return "the saver's checkpoint path"
        return self.detail or self.kind


class Resolver:
    def __init__(self, cg: CallGraph) -> None:
        self.cg = cg
        self.graph = cg.graph
        self._index: dict[str, dict[str, Node]] = {}
        self._args: dict[str, dict[str, int]] = {}
        self._assets = {tensor_node(a.tensor): a.filename for a in self.graph.assets if a.tensor}
        saver = self.graph.saver
        self._saver_filename = tensor_node(saver.filename_tensor) if saver and saver.filename_tensor else ""
        # answers per (body, tensor, call edge): a DAG of joins/packs sharing inputs is walked once
        self._memo: dict[tuple[str, str, int, str], object] = {}

    def nodes(self, fn: Function) -> dict[str, Node]:
        """Nodes of a body by name (indexed once)."""
        idx = self._index.get(fn.name)
        if idx is None:
            idx = self._index[fn.name] = {n.name: n for n in fn.nodes}
        return idx

    def arg_index(self, fn: Function, tensor: str) -> int | None:
        """The argument a bare tensor name refers to inside a library function, if any."""
        if fn is self.graph.main or ":" in tensor.lstrip("^"):
            return None
        idx = self._args.get(fn.name)
        if idx is None:
            idx = self._args[fn.name] = {a.name: j for j, a in enumerate(fn.args)}
        return idx.get(tensor_node(tensor))

    def capture(self, fn: Function, index: int) -> Capture | None:
        """What the loader binds to argument ``index`` when it is a trailing captured input."""
        caps = self.graph.captures.get(fn.name, ())
        first = len(fn.args) - len(caps)
        return caps[index - first] if caps and index >= first else None

    def caller_input(self, fn: Function, index: int, parent: CallEdge | None) -> tuple[Function, str, CallEdge | None] | str:
        """The caller's tensor feeding argument ``index`` through ``parent``, with the caller's own parent
        edge; or why it cannot be known (a string)."""
        name = fn.args[index].name
        if parent is None:
            return f"argument {name!r} of {fn.name}"
        caller = self.graph.function(parent.caller)
        call = self.nodes(caller).get(parent.node) if caller is not None else None
        if caller is None or call is None:
            return f"argument {name!r} has no caller"
        offset = 0 if parent.attr == "" else _CALL_OFFSETS.get(call.op)
        if offset is None:
            return f"argument {name!r} supplied by {call.op}"
        data = call.data_inputs
        if index + offset >= len(data):
            return f"argument {name!r}: call arity mismatch"
        return caller, data[index + offset], self.cg.reach(caller, call).parent

    def input_of(self, fn: Function, node: Node, index: int) -> Value:
        data = node.data_inputs
        if index >= len(data):
            return Value("unknown", detail="missing input")
        return self.resolve(fn, data[index], self.cg.reach(fn, node).parent, 0)

    def resolve(self, fn: Function, tensor: str, parent: CallEdge | None, depth: int) -> Value:
        if depth > MAX_DEPTH:
            return Value("unknown", detail="too deep")
        key = (fn.name, tensor, id(parent), "value")
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self._resolve(fn, tensor, parent, depth)
        return hit  # type: ignore[return-value]

    def _resolve(self, fn: Function, tensor: str, parent: CallEdge | None, depth: int) -> Value:
        name = tensor_node(tensor)
        arg = self.arg_index(fn, tensor)
        if arg is not None:
            return self._arg(fn, arg, parent, depth)
        node = self.nodes(fn).get(name)
        if node is None:
            return Value("unknown", detail=f"unknown tensor {tensor!r}")
        op = node.op
        if op == "Const":
            if fn is self.graph.main and name == self._saver_filename:
                return Value("saver-filename")  # TF1 savers feed their filename through a Const
            if fn is self.graph.main and name in self._assets:
                return Value("asset", (self._assets[name],))
            tv = node.attrs.get("value")
            if isinstance(tv, TensorValue) and tv.values is not None:
                return Value("const", tuple(str(v) for v in tv.values))
            return Value("computed", detail=f"constant {name!r}")
        if op in PASS_THROUGH and node.data_inputs:
            return self.resolve(fn, node.data_inputs[0], parent, depth + 1)
        if op == "PlaceholderWithDefault" and node.data_inputs:
            if fn is self.graph.main and name == self._saver_filename:
                return Value("saver-filename")  # TF1: save/Const defaults to 'model'
            return Value("input", detail=name)
        if op in PLACEHOLDERS:
            if fn is self.graph.main and name == self._saver_filename:
                return Value("saver-filename")
            return Value("input", detail=name)
        if op == "ReadVariableOp" and node.data_inputs:
            handle = self.resolve(fn, node.data_inputs[0], parent, depth + 1)
            return handle if handle.kind == "variable" else Value("variable", detail=name)
        if op in VARIABLE_OPS:
            shared = node.attrs.get("shared_name")
            return Value("variable", detail=str(shared or name))
        if op == "StringJoin":
            parts = [self.resolve(fn, t, parent, depth + 1) for t in node.data_inputs]
            sep = node.attrs.get("separator") or ""
            if parts and all(p.kind == "const" and len(p.values) == 1 for p in parts):
                return Value("const", (str(sep).join(p.values[0] for p in parts),))
            worst = next((p for p in parts if p.kind in ("input", "variable")), None)
            return worst or Value("computed", detail=f"StringJoin {name!r}")
        if op in ("ShardedFilename", "ShardedFilespec") and node.data_inputs:
            return self.resolve(fn, node.data_inputs[0], parent, depth + 1)
        return Value("computed", detail=f"computed by {op} {name!r}")

    def _arg(self, fn: Function, index: int, parent: CallEdge | None, depth: int) -> Value:
        cap = self.capture(fn, index)
        if cap is not None:
            if cap.kind == "asset":
                return Value("asset", (cap.value,))
            if cap.kind == "variable":
                return Value("variable", detail=cap.value)
            if cap.kind == "constant" and cap.value in self.nodes(self.graph.main):
                return self.resolve(self.graph.main, cap.value, None, depth + 1)
            return Value("unknown", detail=f"captured {cap.kind}")
        source = self.caller_input(fn, index, parent)
        if isinstance(source, str):
            return Value("unknown", detail=source)
        caller, tensor, caller_parent = source
        return self.resolve(caller, tensor, caller_parent, depth + 1)

    def is_saver_path(self, fn: Function, tensor: str, parent: CallEdge | None, depth: int = 0) -> bool:
        """Is ``tensor`` the saver's filename in exactly a shape TensorFlow's savers emit?

        The filename itself (through identities and function arguments), ``StringJoin`` of it
        with constant suffixes (TF1's ``_temp_<uuid>/part``; TF2's suffix chosen by
        ``Select(StaticRegexFullMatch(filename, '^s3://.*'), '.part', '_temp/part')``),
        ``ShardedFilename``/``ShardedFilespec`` of those, and ``Pack`` of them (the input of
        ``MergeV2Checkpoints``).  Anything else that transforms the path is not machinery.
        """
        if depth > MAX_DEPTH:
            return False
        key = (fn.name, tensor, id(parent), "saver")
        hit = self._memo.get(key)
        if hit is None:
            self._memo[key] = False  # a cycle back here is not a saver path
            hit = self._memo[key] = self._is_saver_path(fn, tensor, parent, depth)
        return bool(hit)

    def _is_saver_path(self, fn: Function, tensor: str, parent: CallEdge | None, depth: int) -> bool:
        arg = self.arg_index(fn, tensor)
        if arg is not None:
            if self.capture(fn, arg) is not None:
                return False
            source = self.caller_input(fn, arg, parent)
            return not isinstance(source, str) and self.is_saver_path(source[0], source[1], source[2], depth + 1)
        node = self.nodes(fn).get(tensor_node(tensor))
        if node is None:
            return False
        data = node.data_inputs
        if node.op in PLACEHOLDERS or node.op in ("Const", "PlaceholderWithDefault"):
            return fn is self.graph.main and node.name == self._saver_filename
        if node.op in ("Identity", "Snapshot") and data:
            return self.is_saver_path(fn, data[0], parent, depth + 1)
        if node.op == "StringJoin" and data and not node.attrs.get("separator"):
            return self.is_saver_path(fn, data[0], parent, depth + 1) and all(
                self._saver_suffix(fn, t, parent, depth + 1) for t in data[1:])
        if node.op in ("ShardedFilename", "ShardedFilespec") and data:
            return self.is_saver_path(fn, data[0], parent, depth + 1) and all(
                self.resolve(fn, t, parent, depth + 1).kind == "const" for t in data[1:])
        if node.op == "Pack" and data:
            return all(self.is_saver_path(fn, t, parent, depth + 1) for t in data)
        return False

    def _saver_suffix(self, fn: Function, tensor: str, parent: CallEdge | None, depth: int) -> bool:
        """A constant suffix without '..' (or TF2's s3-or-local choice between two such)."""
        value = self.resolve(fn, tensor, parent, depth)
        if value.kind == "const":
            return all(".." not in v and "://" not in v for v in value.values)
        node = self.nodes(fn).get(tensor_node(tensor))
        if node is None or node.op not in ("Select", "SelectV2") or len(node.data_inputs) != 3:
            return False
        cond = self.nodes(fn).get(tensor_node(node.data_inputs[0]))
        return (cond is not None and cond.op in ("StaticRegexFullMatch", "RegexFullMatch") and bool(cond.data_inputs)
                and self.is_saver_path(fn, cond.data_inputs[0], parent, depth + 1)
                and all(self._saver_suffix(fn, t, parent, depth + 1) for t in node.data_inputs[1:]))
