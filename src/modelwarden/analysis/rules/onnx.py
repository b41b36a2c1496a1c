"""ONNX rules (MW830-MW849): native code, files outside the model, hidden graphs, absurd shapes.

Standard ONNX operators are pure tensor math implemented by the runtime.  What
reaches outside the model is (a) operators from other domains, which need a
native custom-op library loaded into the process, and (b) tensors whose data
lives in external files, whose locations the runtime opens.  Nodes nested in
If/Loop/Scan bodies and model-local functions are checked like top-level ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register

FORMATS = ("onnx",)
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training"})
# Domains whose kernels ship inside ONNX Runtime itself (contrib ops): no extra native library.
RUNTIME_DOMAINS = frozenset({"com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental",
                             "com.microsoft.dml", "com.ms.internal.nhwc", "org.pytorch.aten"})
MAX_NESTING = 16
MAX_ELEMENTS = 1 << 40
_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:|\\\\)")


def _meta(id_: str, name: str, sev: Severity, summary: str, description: str, remediation: str) -> RuleMeta:
    return RuleMeta(id_, name, sev, summary, description, remediation, FORMATS, ("onnx",))


META = {m.id: m for m in (
    _meta("MW830", "onnx-custom-operator", Severity.HIGH, "ONNX node uses an operator outside the standard domains",
          "Operators outside ai.onnx / ai.onnx.ml need a custom-op library (native code) registered with the "
          "runtime; whoever supplies that library runs code in your process. ONNX Runtime's own contrib "
          "domains (com.microsoft) are reported low.",
          "Run only with custom-op libraries you built or trust; prefer models using standard operators."),
    _meta("MW831", "onnx-external-data-escape", Severity.HIGH,
          "ONNX tensor's external data location is absolute or escapes the model directory",
          "The runtime opens external_data locations relative to the model; an absolute path or one climbing "
          "out with '..' reads arbitrary files into the model (CVE-2022-25882, CVE-2024-27318 class).",
          "Reject the model; external data must be relative paths inside the model directory."),
    _meta("MW832", "onnx-external-data", Severity.LOW, "ONNX model keeps tensor data in external files",
          "The model reads the named files at load time; they must ship with it and be scanned too.",
          "Keep the external files next to the model and scan the directory."),
    _meta("MW833", "onnx-implausible-dims", Severity.MEDIUM, "ONNX tensor declares implausible dimensions",
          "Negative dimensions, more than 64 dimensions or more than 2^40 elements make runtimes allocate "
          "absurd buffers or overflow size computations.", "Reject the model."),
    _meta("MW834", "onnx-deep-nesting", Severity.MEDIUM, "ONNX subgraphs are nested unusually deep",
          "Control-flow bodies nested this deep are rare in real models and stress recursive loaders.",
          "Review the model's control flow."),
)}


def location_escapes(loc: str) -> bool:
    n = loc.replace("\\", "/")
    return n.startswith("/") or bool(_WINDOWS_ABS.match(loc)) or ".." in n.split("/") or n.startswith("~")


@register
class OnnxRules(Rule):
    metas = tuple(META.values())

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        m = ctx.artifact.onnx
        if m is None:
            return
        local = {f for f in m.functions}
        seen: set[tuple[str, str]] = set()
        for node in m.nodes:
            dom = node.domain
            if dom in STANDARD_DOMAINS or f"{dom}:{node.op_type}" in local:
                continue
            key = (dom, node.op_type)
            first = key not in seen
            seen.add(key)
            if not first:
                continue
            sev = Severity.LOW if dom in RUNTIME_DOMAINS else None
            count = sum(1 for n in m.nodes if (n.domain, n.op_type) == key)
            yield ctx.finding(META["MW830"], f"Operator {dom}::{node.op_type} (custom domain) used by {count} node(s), "
                              f"first {node.name!r} in {node.scope}",
                              ctx.location(file=m.source, function=node.scope, node=node.name, op=node.op_type),
                              severity=sev, capability="native-code", evidence={"domain": dom, "nodes": str(count)})
        external: list[str] = []
        for t in m.tensors:
            loc = ctx.location(file=m.source, function=t.scope, node=t.name)
            if t.external_location:
                if location_escapes(t.external_location):
                    yield ctx.finding(META["MW831"], f"Tensor {t.name!r} reads external data from "
                                      f"{t.external_location!r}", loc, capability="file-read",
                                      evidence={"location": t.external_location})
                elif t.external_location not in external:
                    external.append(t.external_location)
            n = 1
            bad = ""
            if len(t.dims) > 64:
                bad = f"{len(t.dims)}+ dimensions"
            elif any(d < 0 for d in t.dims):
                bad = f"negative dimension in {list(t.dims)}"
            else:
                for d in t.dims:
                    n *= d
                if n > MAX_ELEMENTS:
                    bad = f"{n} elements ({list(t.dims)})"
            if bad:
                yield ctx.finding(META["MW833"], f"Tensor {t.name!r} ({t.kind}) declares {bad}", loc)
        if external:
            yield ctx.finding(META["MW832"], f"Tensor data is read from {len(external)} external file(s): "
                              + ", ".join(repr(e) for e in external[:10]), ctx.location(file=m.source),
                              capability="file-read")
        if m.max_depth > MAX_NESTING:
            yield ctx.finding(META["MW834"], f"Subgraphs nested {m.max_depth} levels deep ({m.subgraphs} subgraphs)",
                              ctx.location(file=m.source))
