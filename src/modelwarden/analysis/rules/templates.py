"""Chat-template rules (MW910-MW914): Jinja templates that reach Python internals.

Loaders render a model's chat template with Jinja on every request.  Jinja exposes the
Python objects behind template values: ``x.__class__.__mro__[1].__subclasses__()``,
``cycler.__init__.__globals__.os.popen(...)`` and ``lipsum.__globals__`` reach ``os``
unless the loader uses Jinja's sandbox, and llama-cpp-python did not
(CVE-2024-34359).  Real chat templates read messages, tools and a few flags, and never
touch an attribute that starts with an underscore.  The facts come from Jinja's own
parser (:mod:`modelwarden.formats.hub.templates`), never from rendering.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.ir import TemplateFacts

FORMATS = ("gguf", "hf-model")
# Attributes that walk from any object to code, globals, frames or the class hierarchy.
INTROSPECTION_ATTRS = frozenset({
    "mro", "func_globals", "func_code", "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "gi_frame",
    "gi_code", "cr_frame", "cr_code", "ag_frame", "tb_frame", "tb_next", "co_code", "im_func", "im_self",
    "func_closure", "cell_contents", "_module", "_TemplateReference__context",
})
# Template globals/objects that are gadgets (their Python internals reach os), or framework
# objects that never belong in a chat template.
GADGET_NAMES = frozenset({
    "cycler", "joiner", "lipsum", "self", "config", "request", "url_for", "get_flashed_messages", "g", "session",
    "os", "__builtins__", "builtins", "subprocess", "importlib", "sys",
})
# Names reached by attribute that only make sense on the way to code execution.
EXEC_ATTRS = frozenset({"popen", "system", "spawn", "exec", "eval", "import_module", "__import__", "load_module",
                        "check_output", "Popen", "getoutput", "remove", "unlink", "rmtree", "open", "read_text",
                        "write_text", "write_bytes", "os", "builtins", "subprocess"})


def _meta(id_: str, name: str, sev: Severity, summary: str, description: str, remediation: str) -> RuleMeta:
    return RuleMeta(id_, name, sev, summary, description, remediation, FORMATS, ("chat-template",))


_FIX = ("Do not serve the model with this template; replace the chat template with the one its publisher "
        "ships, and render templates only in Jinja's ImmutableSandboxedEnvironment.")
META = {m.id: m for m in (
    _meta("MW910", "template-python-internals", Severity.CRITICAL,
          "Chat template reaches Python internals (server-side template injection)",
          "The template reads underscore attributes (__class__, __globals__, __subclasses__, __builtins__, "
          "__init__ ...) or introspection attributes (mro, f_globals, gi_frame ...): the known path from a Jinja "
          "template to os.popen in loaders that render without the sandbox (CVE-2024-34359).", _FIX),
    _meta("MW911", "template-gadget-global", Severity.HIGH, "Chat template uses a Jinja gadget object",
          "cycler, joiner, lipsum, self, config, request and friends are the objects template-injection "
          "payloads start from; chat templates have no use for them.", _FIX),
    _meta("MW912", "template-dynamic-attribute", Severity.HIGH,
          "Chat template looks up attributes by computed name",
          "|attr() with a computed name hides which attribute is read, the standard way to smuggle "
          "'__class__' past filters.", _FIX),
    _meta("MW913", "template-loads-templates", Severity.MEDIUM, "Chat template includes or imports other templates",
          "include/import/extends make the loader read template files from its search path.", _FIX),
    _meta("MW914", "template-unparseable", Severity.MEDIUM, "Chat template cannot be parsed or was not analysed",
          "Jinja rejects the template (loaders fail or fall back to another template), or it exceeds the "
          "analysis bounds: what it does is unknown.", "Inspect the template by hand before serving the model."),
)}


def _internals(t: TemplateFacts) -> list[str]:
    return [a for a in t.attributes if a.startswith("_") or a in INTROSPECTION_ATTRS]


@register
class TemplateRules(Rule):
    metas = tuple(META.values())

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        for t in ctx.artifact.templates:
            loc = ctx.location(file=t.source, node=t.name, op="chat_template")
            if t.error:
                yield ctx.finding(META["MW914"], f"Chat template {t.name!r} ({t.size} chars): {t.error}", loc)
                continue
            internals = _internals(t)
            execs = [a for a in t.attributes if a in EXEC_ATTRS]
            gadgets = [n for n in t.names if n in GADGET_NAMES]
            if internals:
                reach = f"; reaches {', '.join(execs[:5])}" if execs else ""
                yield ctx.finding(META["MW910"], f"Chat template {t.name!r} reads {', '.join(internals[:8])}{reach}",
                                  loc, capability="code-execution",
                                  evidence={"attributes": ", ".join(internals[:20]), "globals": ", ".join(gadgets)})
            if gadgets:
                yield ctx.finding(META["MW911"], f"Chat template {t.name!r} uses {', '.join(gadgets[:8])}", loc,
                                  capability="code-execution")
            if t.dynamic_attrs:
                yield ctx.finding(META["MW912"], f"Chat template {t.name!r} reads attributes named by "
                                  f"{', '.join(t.dynamic_attrs[:5])}", loc)
            if t.loads:
                yield ctx.finding(META["MW913"], f"Chat template {t.name!r} loads {', '.join(t.loads[:5])}", loc)
