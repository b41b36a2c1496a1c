"""TorchScript rules (MW950-MW954): what the ``code/`` of a TorchScript archive calls.

``torch.jit.load`` compiles the archive's source; ``__setstate__`` runs during the load,
``forward`` on every call.  Stock ATen/prim ops are computation; these are not:

* ops in a namespace PyTorch does not register (``ops.myns.op``): loading needs a native
  library (``torch.ops.load_library``) from somewhere;
* ``aten::save`` / ``aten::from_file`` (``torch.save``/``torch.from_file`` in TorchScript):
  write or read host files;
* distributed collectives (``c10d``, ``_c10d_functional``, ``symm_mem``): other processes
  and machines;
* anything TorchScript never emits (imports, ``eval``, ``os.*``, interpreter internals):
  the source was edited by hand, to attack a loader that treats it as Python.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.analysis.rules.python_code import INTERNALS
from modelwarden.ir import TORCHSCRIPT_ROLE as ROLE
from modelwarden.ir import PyRef, PythonSource

FORMATS = ("pytorch",)
MAX_PER_FILE = 10
# Operator namespaces stock PyTorch registers (torch._C._jit_get_all_schemas()), minus the ones below.
STOCK_NAMESPACES = frozenset({
    "aten", "prim", "prims", "quantized", "_quantized", "mkldnn", "mkldnn_prepacked", "onednn", "mkl", "sparse",
    "quantization", "rngprims", "_native", "profiler", "inductor", "inductor_prims", "export", "onnx", "_dtensor",
    "static_runtime", "debug_mode_ops", "_test", "xnnpack", "vulkan", "vulkan_prepack", "_caffe2", "fbgemm",
})
NETWORK_NAMESPACES = frozenset({"c10d", "_c10d_functional", "_c10d_functional_autograd", "symm_mem", "c10d_functional"})
FILE_OPS = {"aten.save": "writes a file", "aten.from_file": "reads (maps) a file",
            "debugprims.load_tensor": "loads a tensor from storage"}
TORCH_FILE_CALLS = {"torch.save": "aten.save", "torch.from_file": "aten.from_file"}
FOREIGN_CALLS = frozenset({"eval", "exec", "compile", "open", "__import__", "input", "breakpoint", "globals",
                           "locals", "vars", "setattr", "delattr"})
FOREIGN_ROOTS = frozenset({"os", "sys", "subprocess", "builtins", "__builtins__", "socket", "importlib", "ctypes",
                           "shutil", "pickle", "marshal", "pty", "urllib", "requests", "<call>"})


def _meta(id_: str, name: str, sev: Severity, summary: str, description: str, remediation: str) -> RuleMeta:
    return RuleMeta(id_, name, sev, summary, description, remediation, FORMATS, ("torchscript",))


_FIX = "Do not torch.jit.load the archive; ask for the weights as safetensors and the architecture as code you review."
META = {m.id: m for m in (
    _meta("MW950", "torchscript-custom-op", Severity.HIGH, "TorchScript code calls an operator PyTorch does not ship",
          "An op outside PyTorch's own namespaces needs a native library loaded into the process "
          "(torch.ops.load_library) before the archive loads: native code from somewhere.", _FIX),
    _meta("MW951", "torchscript-file-op", Severity.HIGH, "TorchScript code reads or writes host files",
          "torch.save (aten::save) and torch.from_file (aten::from_file) in TorchScript touch the file system when "
          "the method runs; __setstate__ runs during torch.jit.load.", _FIX),
    _meta("MW952", "torchscript-network-op", Severity.HIGH, "TorchScript code uses distributed collectives",
          "c10d / _c10d_functional / symm_mem ops exchange tensors with other processes and machines.", _FIX),
    _meta("MW953", "torchscript-foreign-code", Severity.CRITICAL, "TorchScript source holds code TorchScript never emits",
          "Imports, eval/exec/open, os/sys/subprocess or interpreter internals in code/: the source was edited, "
          "to attack tools that execute it as Python.", _FIX),
    _meta("MW954", "torchscript-code-unparseable", Severity.MEDIUM, "TorchScript source could not be analysed",
          "A code/ member does not parse or exceeds the analysis bounds: what it calls is unknown.", _FIX),
)}


def _op(ref: PyRef) -> str:
    """``ns.op`` for operator calls (``ops.ns.op``, ``torch.ops.ns.op``, ``torch.save``), else ""."""
    name = ref.name
    if name in TORCH_FILE_CALLS:
        return TORCH_FILE_CALLS[name]
    for prefix in ("torch.ops.", "ops."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return ""


def _foreign(ref: PyRef) -> bool:
    root = ref.name.split(".")[0]
    return ref.name in FOREIGN_CALLS or root in FOREIGN_ROOTS


@register
class TorchScriptRules(Rule):
    metas = tuple(META.values())

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        for src in ctx.artifact.python:
            if src.role == ROLE:
                yield from self._source(ctx, src)

    def _source(self, ctx: AnalysisContext, src: PythonSource) -> Iterable[Finding]:
        if src.error:
            yield ctx.finding(META["MW954"], f"{src.source}: {src.error}", ctx.location(file=src.source))
        counts: dict[str, int] = {}

        def emit(rid: str, ref: PyRef, what: str) -> list[Finding]:
            counts[rid] = counts.get(rid, 0) + 1
            if counts[rid] > MAX_PER_FILE:
                return []
            return [ctx.finding(META[rid], f"{src.source}:{ref.line} {what}",
                                ctx.location(file=src.source, node=f"line {ref.line}", op=ref.name))]

        for ref in src.calls:
            op = _op(ref)
            ns = op.split(".")[0]
            if op in FILE_OPS:
                yield from emit("MW951", ref, f"calls {ref.name}({ref.detail}): {FILE_OPS[op]}")
            elif op and ns in NETWORK_NAMESPACES:
                yield from emit("MW952", ref, f"calls {ref.name}")
            elif op and ns not in STOCK_NAMESPACES:
                yield from emit("MW950", ref, f"calls custom op {ns}::{op.partition('.')[2] or '?'}")
            elif _foreign(ref):
                yield from emit("MW953", ref, f"calls {ref.name}({ref.detail})")
        for ref in src.imports:
            if not ref.name.startswith(("__torch__", "torch")):
                yield from emit("MW953", ref, f"imports {ref.name}")
        for ref in src.attributes:
            if ref.name in INTERNALS:
                yield from emit("MW953", ref, f"reads {ref.name}")
