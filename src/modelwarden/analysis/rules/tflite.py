"""TFLite rules (MW400-MW429): what a ``.tflite`` model asks the interpreter to load.

Flex ops carry the TensorFlow op name as their node op, so the TF capability
rules judge the embedded kernel (``ReadFile`` -> file read); these rules say
what the TFLite runtime itself must provide.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelwarden.analysis.graphs import graph_views, node_location
from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register

FORMATS = ("tflite",)
CUSTOM_PREFIX = "tfl-custom:"

CUSTOM_OP = RuleMeta(
    id="MW400",
    name="tflite-custom-op",
    severity=Severity.HIGH,
    summary="A TFLite custom op: the loader must register native code for it",
    description="Custom operators are not part of the TFLite runtime; running the model requires the user to "
    "register an implementation (a native library or delegate) under that name, which then runs with "
    "model-controlled inputs.",
    remediation="Identify and audit the implementation the model expects; reject the model if none is trusted.",
    formats=FORMATS,
    tags=("capability",),
)
FLEX_OP = RuleMeta(
    id="MW401",
    name="tflite-flex-op",
    severity=Severity.INFO,
    summary="A TFLite Flex op: the Flex delegate runs a full TensorFlow kernel",
    description="Flex (Select TF ops) embeds a TensorFlow NodeDef that the Flex delegate executes with the "
    "TensorFlow runtime. The embedded op is judged by the TensorFlow capability rules.",
    remediation="Run without the Flex delegate if the model does not need it, and review the TF ops it embeds.",
    formats=FORMATS,
    tags=("capability",),
)
UNKNOWN_BUILTIN = RuleMeta(
    id="MW402",
    name="tflite-unknown-builtin",
    severity=Severity.LOW,
    summary="A TFLite builtin operator code this version of modelwarden does not know",
    description="The model uses a builtin code beyond the schema modelwarden was built with: either a newer "
    "TFLite release or a crafted file. Its behaviour is not audited.",
    remediation="Update modelwarden; if the model claims to come from an older converter, treat it as suspicious.",
    formats=FORMATS,
)


@register
class TFLiteOps(Rule):
    """Custom, Flex and unknown builtin operators, one finding per op kind per subgraph."""

    metas = (CUSTOM_OP, FLEX_OP, UNKNOWN_BUILTIN)
    meta = CUSTOM_OP

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        for view in graph_views(ctx):
            for fn in view.cg.bodies():
                seen: set[str] = set()
                for node in fn.nodes:
                    key = node.attrs.get("_tflite_custom_code") if node.attrs.get("_tflite_flex") else node.op
                    if not isinstance(key, str) or key in seen:
                        continue
                    meta, message, evidence = self._classify(node.op, node.attrs)
                    if meta is None:
                        continue
                    seen.add(key)
                    uses = sum(
                        1 for n in fn.nodes if (n.attrs.get("_tflite_custom_code") if n.attrs.get("_tflite_flex") else n.op) == key
                    )
                    reach = view.cg.reach(fn, node)
                    severity = meta.severity
                    if reach.kind is None and meta is CUSTOM_OP:
                        severity = Severity.MEDIUM
                    evidence["uses"] = str(uses)
                    yield ctx.finding(
                        meta,
                        f"{message} ({uses} use{'s' * (uses > 1)} in {fn.name})",
                        node_location(ctx, view, fn, node, reach),
                        severity=severity,
                        capability="native-code" if meta is CUSTOM_OP else "",
                        evidence=evidence,
                    )

    @staticmethod
    def _classify(op: str, attrs: object) -> tuple[RuleMeta | None, str, dict[str, str]]:
        get = attrs.get  # type: ignore[attr-defined]
        if get("_tflite_flex"):
            code = str(get("_tflite_custom_code", ""))
            return FLEX_OP, f"Flex op {code} runs the TensorFlow kernel {op!r}", {"custom_code": code, "tf_op": op}
        if op.startswith(CUSTOM_PREFIX):
            code = op[len(CUSTOM_PREFIX) :]
            return CUSTOM_OP, f"custom op {code!r} needs a native implementation registered by the loader", {
                "custom_code": code
            }
        if op.startswith("tfl:BUILTIN_"):
            return UNKNOWN_BUILTIN, f"unknown builtin operator code {op[len('tfl:BUILTIN_'):]}", {"op": op}
        return None, "", {}
