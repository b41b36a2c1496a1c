"""MLflow model-directory rules (MW940-MW946): what ``mlflow.pyfunc.load_model`` executes.

They read the load plan of :mod:`modelwarden.formats.hub.mlflow`.  What the shipped
Python does is judged by MW920-MW925; what the pickles import by the pickle rules.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.formats.safeio import inside

FORMATS = ("mlflow-model",)
# Modules that, shadowed from the model's code directory, replace what MLflow or the model imports next.
SHADOWABLE = frozenset({
    "mlflow", "cloudpickle", "pickle", "numpy", "pandas", "sklearn", "torch", "tensorflow", "keras", "transformers",
    "xgboost", "lightgbm", "scipy", "yaml", "json", "os", "sys", "io", "typing", "copyreg", "importlib", "site",
    "sitecustomize", "usercustomize", "requests", "urllib3", "pyarrow", "joblib", "packaging", "pydantic",
})


def _meta(id_: str, name: str, sev: Severity, summary: str, description: str, remediation: str) -> RuleMeta:
    return RuleMeta(id_, name, sev, summary, description, remediation, FORMATS, ("mlflow",))


_FIX = "Do not load the model with mlflow.pyfunc.load_model until its code and pickles are reviewed."
META = {m.id: m for m in (
    _meta("MW940", "mlflow-custom-loader", Severity.HIGH, "MLmodel names a loader module outside MLflow",
          "python_function.loader_module is imported and its _load_pyfunc() called on load: a module that is "
          "not one of MLflow's flavours is arbitrary code (shipped in the code directory or installed).", _FIX),
    _meta("MW941", "mlflow-code-path", Severity.LOW, "Model's code directory is put first on sys.path",
          "Every module in it becomes importable by the loader and the pickles; what runs is shown by the "
          "MW92x findings.", _FIX),
    _meta("MW942", "mlflow-code-shadowing", Severity.HIGH, "Model's code directory shadows a module the loader imports",
          "A module named like mlflow, cloudpickle, numpy, pandas, torch ... in the code directory replaces the "
          "real one for every import that has not happened yet.", _FIX),
    _meta("MW943", "mlflow-model-code", Severity.HIGH, "Model is defined by code executed on load (models from code)",
          "model_code_path names a Python file that mlflow.pyfunc.load_model executes to build the model.", _FIX),
    _meta("MW944", "mlflow-unpickle", Severity.MEDIUM, "MLflow unpickles a model file on load",
          "python_model is cloudpickled (classes and functions by value: code), flavour models are pickled; the "
          "pickle rules say what each imports.", "Prefer models from code or a format without pickles."),
    _meta("MW945", "mlflow-path-escape", Severity.HIGH, "MLmodel names a path outside the model directory",
          "code, data, model files or artifacts that are absolute, climb with '..' or are URIs make the loader "
          "read or import from elsewhere.", _FIX),
    _meta("MW946", "mlflow-missing-file", Severity.MEDIUM, "MLmodel names a file the directory does not have",
          "The loader fails, or finds the file somewhere else: what it loads was not scanned.",
          "Obtain the complete model directory and scan it."),
)}


@register
class MlflowRules(Rule):
    metas = tuple(META.values())

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        for step in ctx.artifact.load_plan:
            loc = ctx.location(file=step.target[:300], op=step.action)
            if step.action == "import":
                if step.target.split(".")[0] != "mlflow":
                    yield ctx.finding(META["MW940"], f"load_model imports {step.target[:200]} and calls "
                                      f"{step.detail[:200]}", loc, capability="code-execution")
                continue
            if not inside(step.target) or "://" in step.target:
                yield ctx.finding(META["MW945"], f"MLmodel {step.action} path {step.target[:300]!r} leaves the "
                                  "model directory", loc, capability="file-read")
                continue
            if not step.present:
                yield ctx.finding(META["MW946"], f"MLmodel {step.action} path {step.target[:300]!r} is missing", loc)
                continue
            if step.action == "sys.path":
                tops = [m for m in step.detail.split(", ") if m]
                shadow = [m for m in tops if m in SHADOWABLE]
                if shadow:
                    yield ctx.finding(META["MW942"], f"{step.target}/ shadows {', '.join(shadow)}", loc,
                                      capability="code-execution")
                yield ctx.finding(META["MW941"], f"{step.target}/ goes first on sys.path (modules: "
                                  f"{', '.join(tops[:10]) or 'none'})", loc)
            elif step.action == "run-code":
                yield ctx.finding(META["MW943"], f"load_model executes {step.target}", loc, capability="code-execution")
            elif step.action == "unpickle":
                yield ctx.finding(META["MW944"], f"load_model unpickles {step.target} ({step.detail})", loc,
                                  capability="code-execution")
