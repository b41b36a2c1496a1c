"""Hugging Face model-directory rules (MW930-MW935): code that runs on load and the weights a loader picks.

They read the directory's load plan (:class:`~modelwarden.ir.LoadStep`) from
:mod:`modelwarden.formats.hub.hf_directory`; what the remote code does is judged by the
Python-code rules (MW920-MW925), chat templates by MW910-MW914, and the weight files
themselves by the pickle and safetensors rules.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.formats.safeio import inside

FORMATS = ("hf-model",)


def _meta(id_: str, name: str, sev: Severity, summary: str, description: str, remediation: str) -> RuleMeta:
    return RuleMeta(id_, name, sev, summary, description, remediation, FORMATS, ("hugging-face",))


META = {m.id: m for m in (
    _meta("MW930", "hf-remote-code", Severity.HIGH, "Model ships Python code that runs on load (trust_remote_code)",
          "auto_map / custom_pipelines name a module in the repository: from_pretrained(trust_remote_code=True) "
          "imports it and its relative imports and runs them with the loader's privileges.",
          "Load without trust_remote_code, or read the code (see the MW92x findings) and pin the revision."),
    _meta("MW931", "hf-remote-code-elsewhere", Severity.HIGH, "Model runs code from another repository on load",
          "An auto_map entry of the form 'org/repo--module.Class' makes the loader download and run code from "
          "a repository this scan did not see.", "Do not load with trust_remote_code; scan that repository too."),
    _meta("MW932", "hf-remote-code-missing", Severity.MEDIUM, "Remote code named by the config is not in the directory",
          "The loader fetches the module from the hub at load time (or fails): the code that will run was not "
          "scanned.", "Obtain the complete repository and scan it."),
    _meta("MW933", "hf-pickle-weights", Severity.LOW, "The loader reads pickled weights (no safetensors)",
          "Only pytorch_model.bin is present: transformers unpickles it with torch.load (weights_only=True since "
          "torch 2.6, a full unpickler before). The pickle rules say what the pickle imports.",
          "Prefer a safetensors copy of the weights."),
    _meta("MW934", "hf-weight-path-escape", Severity.HIGH, "Weight index names a file outside the model directory",
          "A shard in the weight index's weight_map is absolute or climbs with '..': the loader reads a host file.",
          "Do not load the model."),
    _meta("MW936", "hf-load-plan", Severity.INFO, "Which weight files the loader reads, ignores or unpickles later",
          "from_pretrained prefers safetensors over pytorch_model.bin; pickles beside safetensors are read only "
          "with use_safetensors=False or by older loaders; training_args.bin, optimizer.pt and rng_state*.pth are "
          "unpickled when training resumes. Each file's own findings are reported with that file.",
          "Delete pickles that no loader needs before sharing or serving the model."),
    _meta("MW935", "hf-weight-missing", Severity.MEDIUM, "Weight index names a shard that is not in the directory",
          "The loader downloads it at load time or fails: those weights were not scanned.",
          "Obtain the complete repository and scan it."),
)}


@register
class HfDirectoryRules(Rule):
    metas = tuple(META.values())

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        a = ctx.artifact
        yield from self._plan(ctx)
        for step in a.load_plan:
            loc = ctx.location(file=step.target[:300], op=step.action)
            if step.action == "run-remote-code":
                if "--" in step.target:
                    yield ctx.finding(META["MW931"], f"{step.detail}: runs {step.target}", loc,
                                      capability="code-execution")
                elif step.present:
                    mods = sum(1 for p in a.python if p.source == step.target or p.entry.endswith(step.detail))
                    yield ctx.finding(META["MW930"], f"{step.detail}: {step.target} runs with trust_remote_code=True"
                                      + (f" (with {mods - 1} module(s) it imports)" if mods > 1 else ""), loc,
                                      capability="code-execution")
                else:
                    yield ctx.finding(META["MW932"], f"{step.detail}: {step.target} is not in the directory", loc)
            elif step.action in ("read-weights", "unpickle"):
                if not inside(step.target):
                    yield ctx.finding(META["MW934"], f"Weight index names {step.target[:300]!r}", loc,
                                      capability="file-read")
                elif not step.present:
                    yield ctx.finding(META["MW935"], f"Weight shard {step.target[:300]!r} is missing", loc)
                elif step.action == "unpickle" and step.target.endswith(".bin"):
                    yield ctx.finding(META["MW933"], f"The loader unpickles {step.target} (no safetensors weights)",
                                      loc)

    def _plan(self, ctx: AnalysisContext) -> Iterable[Finding]:
        groups: dict[str, list[str]] = {}
        for step in ctx.artifact.load_plan:
            groups.setdefault(step.action, []).append(step.target)
        parts = []
        for action, words in (("read-weights", "reads"), ("unpickle", "unpickles"), ("ignored", "ignores"),
                              ("other-framework", "leaves to other frameworks"),
                              ("unpickle-on-resume", "unpickles on resuming training")):
            if groups.get(action):
                shown = ", ".join(groups[action][:5]) + (f" (+{len(groups[action]) - 5})" if len(groups[action]) > 5 else "")
                parts.append(f"{words} {shown}")
        if parts:
            yield ctx.finding(META["MW936"], "from_pretrained " + "; ".join(parts), ctx.location(op="load-plan"))
        elif not any(s.action == "run-remote-code" for s in ctx.artifact.load_plan):
            yield ctx.finding(META["MW936"], "from_pretrained finds no weight files here", ctx.location(op="load-plan"))
