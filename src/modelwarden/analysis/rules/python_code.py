"""Rules for Python source a loader runs (MW920-MW925): Hugging Face remote code, MLflow code paths.

``trust_remote_code=True`` imports the modules a Hugging Face ``auto_map`` names, and
``mlflow.pyfunc.load_model`` imports the model's ``loader_module`` with its ``code``
directory on ``sys.path``.  That is arbitrary Python; these rules say what it does,
from :class:`~modelwarden.ir.PythonSource` facts (``ast``, never executed): process and
code execution, network, file writes, reaching interpreter internals, and risky imports.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.ir import PyRef, PythonSource

FORMATS = ("hf-model", "mlflow-model")
CODE_ROLES = ("hf remote code", "mlflow code", "mlflow loader module")
MAX_PER_FILE = 10

EXEC_EXACT = frozenset({
    "exec", "eval", "compile", "__import__", "breakpoint", "os.system", "os.popen", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "builtins.exec", "builtins.eval", "builtins.compile", "builtins.__import__",
    "code.interact", "torch.ops.load_library", "platform.popen", "commands.getoutput",
})
EXEC_PREFIXES = ("subprocess.", "pty.", "os.exec", "os.spawn", "os.posix_spawn", "ctypes.", "_ctypes.", "cffi.",
                 "marshal.load", "pickle.load", "_pickle.load", "dill.load", "cloudpickle.load", "runpy.",
                 "importlib.", "multiprocessing.", "_posixsubprocess.", "asyncio.create_subprocess",
                 "<call>.system", "<call>.popen")
NETWORK_PREFIXES = ("socket.", "urllib.request.", "urllib.urlopen", "urllib3.", "urllib2.", "requests.",
                    "http.client.", "httplib.", "httpx.", "aiohttp.", "ftplib.", "smtplib.", "telnetlib.",
                    "paramiko.", "xmlrpc.client.", "websocket.", "websockets.")
WRITE_EXACT = frozenset({"os.remove", "os.unlink", "os.rmdir", "os.removedirs", "os.rename", "os.renames",
                         "os.replace", "os.chmod", "os.chown", "os.truncate", "os.symlink", "os.link",
                         "shutil.rmtree", "shutil.move", "shutil.copy", "shutil.copyfile", "shutil.copytree",
                         "shutil.copy2", "os.write", "os.putenv"})
WRITE_METHODS = ("write_text", "write_bytes", "unlink", "rmtree", "chmod", "symlink_to", "hardlink_to")
RISKY_MODULES = frozenset({"subprocess", "socket", "ctypes", "_ctypes", "cffi", "pty", "requests", "urllib.request",
                           "urllib3", "http.client", "httpx", "aiohttp", "ftplib", "smtplib", "telnetlib", "paramiko",
                           "marshal", "pickle", "dill", "cloudpickle", "runpy", "importlib", "code", "builtins",
                           "_posixsubprocess", "multiprocessing", "webbrowser"})
INTERNALS = frozenset({"__globals__", "__builtins__", "__subclasses__", "__code__", "__import__", "__reduce__",
                       "__reduce_ex__", "__closure__", "__getattribute__", "__mro__", "__bases__", "__base__"})


def _meta(id_: str, name: str, sev: Severity, summary: str, description: str, remediation: str,
          capability: str) -> RuleMeta:
    return RuleMeta(id_, name, sev, summary, description, remediation, FORMATS, ("python-code", capability))


_FIX = ("Do not load the model with trust_remote_code / its code path; read the code, or use a model that "
        "needs no code (safetensors weights with a stock architecture).")
META = {m.id: m for m in (
    _meta("MW920", "python-code-exec", Severity.CRITICAL, "Code run on load starts processes or executes code",
          "The Python a loader imports calls exec/eval/compile/__import__, os.system, subprocess, ctypes, "
          "unpickling or dynamic imports.", _FIX, "code-execution"),
    _meta("MW921", "python-code-network", Severity.CRITICAL, "Code run on load talks to the network",
          "The Python a loader imports opens sockets or makes HTTP/FTP/SMTP requests.", _FIX, "network"),
    _meta("MW922", "python-code-file-write", Severity.HIGH, "Code run on load writes, moves or deletes files",
          "The Python a loader imports opens files for writing, or removes, renames or chmods paths.", _FIX,
          "file-write"),
    _meta("MW923", "python-code-risky-import", Severity.MEDIUM,
          "Code run on load imports process, network or serialisation modules",
          "Modelling code has no use for subprocess, socket, ctypes, requests, pickle or importlib; what it "
          "does with them is not visible as a direct call.", _FIX, "code-execution"),
    _meta("MW924", "python-code-internals", Severity.HIGH, "Code run on load reaches interpreter internals",
          "__globals__, __builtins__, __subclasses__, __code__ and friends are how code hides what it calls.",
          _FIX, "code-execution"),
    _meta("MW925", "python-code-unparseable", Severity.MEDIUM, "Code run on load could not be analysed",
          "The source does not parse as Python or exceeds the analysis bounds: what it does is unknown.",
          _FIX, "code-execution"),
)}


def classify_call(ref: PyRef) -> str | None:
    """The rule id a call falls under, or None."""
    name = ref.name
    last = name.rsplit(".", 1)[-1]
    if name in EXEC_EXACT or name.startswith(EXEC_PREFIXES):
        return "MW920"
    if name.startswith(NETWORK_PREFIXES):
        return "MW921"
    if name in WRITE_EXACT or ("." in name and last in WRITE_METHODS):
        return "MW922"
    if last == "open" and "mode=" in ref.detail and any(c in ref.detail.rpartition("mode=")[2] for c in "wax+"):
        return "MW922"
    return None


def _when(ref: PyRef) -> str:
    return "at import" if ref.toplevel else "when called"


@register
class PythonCodeRules(Rule):
    metas = tuple(META.values())

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        for src in ctx.artifact.python:
            if src.role in CODE_ROLES:
                yield from self._source(ctx, src)

    def _source(self, ctx: AnalysisContext, src: PythonSource) -> Iterable[Finding]:
        why = f" ({src.entry})" if src.entry else ""
        if src.error:
            yield ctx.finding(META["MW925"], f"{src.source}{why}: {src.error}", ctx.location(file=src.source))
        counts: dict[str, int] = {}
        used: set[str] = set()
        for ref in src.calls:
            rid = classify_call(ref)
            if rid is None:
                continue
            used.add(ref.name.split(".")[0])
            counts[rid] = counts.get(rid, 0) + 1
            if counts[rid] > MAX_PER_FILE:
                continue
            args = f"({ref.detail})" if ref.detail else "()"
            yield ctx.finding(META[rid], f"{src.source}:{ref.line} calls {ref.name}{args} {_when(ref)}{why}",
                              ctx.location(file=src.source, node=f"line {ref.line}", op=ref.name),
                              capability=META[rid].tags[1], evidence={"role": src.role, "entry": src.entry})
        for ref in src.imports:
            top = ref.name.split(".")[0]
            if (ref.name in RISKY_MODULES or top in RISKY_MODULES) and top not in used:
                used.add(top)
                yield ctx.finding(META["MW923"], f"{src.source}:{ref.line} imports {ref.name}{why}",
                                  ctx.location(file=src.source, node=f"line {ref.line}", op=ref.name))
        seen_attrs: set[str] = set()
        for ref in src.attributes:
            if ref.name in INTERNALS and ref.name not in seen_attrs:
                seen_attrs.add(ref.name)
                yield ctx.finding(META["MW924"], f"{src.source}:{ref.line} reads {ref.name} {_when(ref)}{why}",
                                  ctx.location(file=src.source, node=f"line {ref.line}", op=ref.name))
