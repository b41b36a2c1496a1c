"""MW700-MW702: ops with published TensorFlow security advisories affecting the TensorFlow in question.

One finding per op per graph (with the number of nodes using it), not per node.
The TensorFlow version judged is ``--tf-version``, else the one installed beside
modelwarden, else the one recorded in the model (see :mod:`modelwarden.advisories`).
"""

from __future__ import annotations

from collections.abc import Iterable

from modelwarden import advisories as adv
from modelwarden.analysis.callgraph import Reach
from modelwarden.analysis.graphs import GraphView, graph_views, node_location
from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.ir import EntryKind, Function, Node
from modelwarden.record import field, record

FORMATS = ("tf-savedmodel", "tf-graphdef", "tflite")
MAX_LISTED = 8  # advisory ids spelled out in a message

MEMORY = RuleMeta(
    "MW700", "vulnerable-op-memory-safety", Severity.HIGH,
    "An op with a published memory-safety advisory (out-of-bounds access, use-after-free, null dereference) "
    "affecting the TensorFlow that will load the model.",
    description="The model's author controls every constant, attribute and shape the op sees, and often its "
    "inputs: a heap out-of-bounds write or use-after-free in the kernel is a code-execution primitive in the "
    "process that loads the model, a read leaks its memory. High, not critical: exploiting one takes work, "
    "and many of these are null dereferences that only crash.",
    remediation="Load the model with a TensorFlow release that has the fix (the message names the lowest one), "
    "or only inside the sandbox (modelwarden run).",
    formats=FORMATS, tags=("advisory",),
)
DOS = RuleMeta(
    "MW701", "vulnerable-op-denial-of-service", Severity.LOW,
    "An op with a published denial-of-service advisory (CHECK-failure abort, division by zero, huge allocation) "
    "affecting the TensorFlow that will load the model.",
    description="A crafted model or request can abort or exhaust the serving process; it cannot read or write "
    "memory it should not.",
    remediation="Upgrade TensorFlow to the release the message names, or isolate the model so a crash only "
    "takes down its own process.",
    formats=FORMATS, tags=("advisory",),
)
UNKNOWN = RuleMeta(
    "MW702", "advisory-version-unknown", Severity.INFO,
    "The model uses ops with published advisories but no TensorFlow version could be determined to judge them.",
    description="Neither --tf-version, an installed TensorFlow, nor a version recorded in the model was available.",
    remediation="Pass --tf-version with the TensorFlow release that will load the model.",
    formats=FORMATS, tags=("advisory",),
)
_SAVER_OR_NOWHERE = (None, EntryKind.SAVER)


@record(frozen=False, slots=False)
class _OpUse:
    first: tuple[Function, Node, Reach] | None = None
    count: int = 0
    functions: dict[str, None] = field(default_factory=dict)
    live: bool = False  # reached from an entry point other than the saver


def _model_version(ctx: AnalysisContext) -> tuple[str, str]:
    a = ctx.artifact
    if a.metadata.get("tensorflow_version"):
        return a.metadata["tensorflow_version"], "the model (meta_info_def.tensorflow_version)"
    for g in a.graphs:
        if g.tf_version:
            return g.tf_version, "the model (meta_info_def.tensorflow_version)"
    return "", ""


_CHOICES: dict[tuple[str, str, str], adv.VersionChoice] = {}  # the same few versions, artifact after artifact
MAX_CHOICES = 64


def version_choice(ctx: AnalysisContext) -> adv.VersionChoice:
    cached = ctx.cache.get("advisories.version")
    if cached is None:
        model_version, source = _model_version(ctx)
        key = (ctx.options.tf_version, model_version, source)
        cached = _CHOICES.get(key)
        if cached is None:
            try:
                cached = adv.choose_version(*key)
            except adv.VersionError as exc:
                cached = adv.VersionChoice(None, f"--tf-version: {exc}")
            if len(_CHOICES) >= MAX_CHOICES:  # model versions are the model's text: keep the memo small
                _CHOICES.clear()
            _CHOICES[key] = cached
        ctx.cache["advisories.version"] = cached
    return cached  # type: ignore[return-value]


def _uses(view: GraphView, known: frozenset[str]) -> dict[str, _OpUse]:
    uses: dict[str, _OpUse] = {}
    for fn in view.cg.bodies():
        for node in fn.nodes:
            if node.op not in known:
                continue
            use = uses.setdefault(node.op, _OpUse())
            use.count += 1
            if len(use.functions) < 50:
                use.functions.setdefault(fn.name)
            reach = view.cg.reach(fn, node)
            live = reach.kind not in _SAVER_OR_NOWHERE
            if use.first is None or (live and not use.live):
                use.first = (fn, node, reach)
            use.live = use.live or live
    return uses


@register
class VulnerableOpRule(Rule):
    metas = (MEMORY, DOS, UNKNOWN)
    meta = MEMORY

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        known = adv.known_ops()
        choice = version_choice(ctx)
        unjudged: dict[str, None] = {}
        for view in graph_views(ctx):
            for op, use in sorted(_uses(view, known).items()):
                if choice.version is None:
                    unjudged.setdefault(op)
                    continue
                hits = adv.affected(op, choice.version)
                if hits and use.first is not None:
                    yield self._finding(ctx, view, op, use, hits, choice)
        if unjudged:
            ops = sorted(unjudged)
            shown = ", ".join(ops[:20]) + (f" and {len(ops) - 20} more" if len(ops) > 20 else "")
            yield ctx.finding(
                UNKNOWN,
                f"{len(ops)} op(s) with published TensorFlow advisories ({shown}) not judged: {choice.source}",
                ctx.location(),
                evidence={"ops": ", ".join(ops[:200]), "version_source": choice.source},
            )

    def _finding(self, ctx: AnalysisContext, view: GraphView, op: str, use: _OpUse,
                 hits: list[adv.Advisory], choice: adv.VersionChoice) -> Finding:
        assert use.first is not None and choice.version is not None
        fn, node, reach = use.first
        memory = [a for a in hits if a.klass == "memory"]
        meta = MEMORY if memory else DOS
        severity = meta.severity
        if not use.live and severity > Severity.LOW:
            severity = severity.lowered(1, Severity.LOW)
        ordered = memory + [a for a in hits if a.klass != "memory"]
        listed = ", ".join(f"{a.id} ({a.cve})" for a in ordered[:MAX_LISTED])
        if len(ordered) > MAX_LISTED:
            listed += f" and {len(ordered) - MAX_LISTED} more"
        target = adv.upgrade_target(hits, choice.version)
        upgrade = f"upgrade to TensorFlow {target} or later" if target else "no fixed release is listed"
        kinds = f"{len(memory)} memory-safety" if memory else ""
        if len(hits) > len(memory):
            kinds += (" and " if kinds else "") + f"{len(hits) - len(memory)} denial-of-service"
        uses = f"{use.count} node{'s' * (use.count > 1)}"
        where = "" if use.live else " (only reachable from the saver or not at all)"
        msg = (f"op {op} ({uses}) has {kinds} advisor{'ies' if len(hits) > 1 else 'y'} affecting TensorFlow "
               f"{choice.version} ({choice.source}): {listed}; {upgrade}{where}")
        evidence = {
            "op": op,
            "uses": str(use.count),
            "functions": ", ".join(list(use.functions)[:10]),
            "advisories": ", ".join(a.id for a in ordered),
            "cves": ", ".join(dict.fromkeys(a.cve for a in ordered)),
            "tf_version": str(choice.version),
            "version_source": choice.source,
            "fixed_in": str(target) if target else "",
        }
        remediation = meta.remediation
        if target:
            remediation = f"Upgrade TensorFlow to {target} or later before loading this model; " + meta.remediation
        return ctx.finding(meta, msg, node_location(ctx, view, fn, node, reach), severity=severity,
                           capability="known-vulnerability", evidence=evidence, remediation=remediation)
