"""MLflow model directories: what ``mlflow.pyfunc.load_model`` would execute, read from ``MLmodel``.

``MLmodel`` is YAML (read with PyYAML's safe loader: no tags, no objects).  For the
``python_function`` flavour, ``mlflow.pyfunc.load_model``:

1. puts ``<model>/<code>`` first on ``sys.path`` when ``code`` is set, so every module
   there is importable by what follows (and shadows an installed module of the same name
   that is not yet imported);
2. imports ``loader_module`` and calls its ``_load_pyfunc(<model>/<data>)``;
3. for ``mlflow.pyfunc.model`` and its loaders: runs ``<model>/basename(model_code_path)``
   (models from code), or ``cloudpickle.load``\\ s ``python_model`` (classes and functions by value);
   other stock loaders unpickle their flavour's model file (``pickled_model``,
   ``model_path``; ``mlflow.pytorch`` ``torch.load``\\ s ``model_data``).

The reader turns this into a :class:`LoadStep` plan and parses every ``.py`` file the
plan runs or makes importable with :mod:`ast`.  The pickles themselves are separate
artifacts scanned by the pickle readers.
"""

from __future__ import annotations

import os
import posixpath

from modelwarden.errors import InputError
from modelwarden.formats import safeio
from modelwarden.formats.safeio import inside
from modelwarden.formats.hub.pysource import SourceBudget
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.ir import Artifact, ArtifactFormat, LoadStep, PythonSource

MAX_MLMODEL_BYTES = 1 << 20
MAX_CODE_FILES = 500
MAX_SOURCE = 4 * 1024 * 1024
PICKLE_KEYS = ("python_model", "pickled_model", "model_path")  # pyfunc / flavour keys naming a pickle


def load_mlmodel(path: str) -> dict:
    """``MLmodel`` as a mapping (PyYAML safe loader; anything else is an input error)."""
    import yaml

    text = safeio.read_file(path, MAX_MLMODEL_BYTES, what="MLmodel")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(path, f"MLmodel is not valid YAML ({str(exc)[:200]})") from None
    except RecursionError:
        raise InputError(path, "MLmodel nests too deeply") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("flavors"), dict):
        raise InputError(path, "MLmodel has no 'flavors' mapping")
    return doc


def _str(conf: dict, key: str) -> str:
    value = conf.get(key)
    return value if isinstance(value, str) else ""


class MlflowReader(Reader):
    format = ArtifactFormat.MLFLOW

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        root = candidate.path
        doc = load_mlmodel(os.path.join(root, "MLmodel"))
        flavors = doc["flavors"]
        pyfunc = flavors.get("python_function")
        plan: list[LoadStep] = []
        python: list[PythonSource] = []
        if isinstance(pyfunc, dict):
            self._pyfunc(root, pyfunc, flavors, plan, python, SourceBudget())
        meta = {"flavors": ", ".join(str(k)[:50] for k in list(flavors)[:20]),
                "mlflow_version": str(doc.get("mlflow_version", ""))[:50]}
        if isinstance(pyfunc, dict):
            meta["loader_module"] = _str(pyfunc, "loader_module")[:200]
        return Artifact(path=root, display=candidate.display, format=ArtifactFormat.MLFLOW, python=tuple(python),
                        load_plan=tuple(plan), metadata=meta,
                        files=safeio.walk_tree(root, limits.max_dir_entries))  # links leaving it: MW201-MW203

    def _pyfunc(self, root: str, conf: dict, flavors: dict, plan: list[LoadStep], python: list[PythonSource],
                budget: SourceBudget) -> None:
        code = _str(conf, "code")
        loader = _str(conf, "loader_module")
        if code:
            present = self._exists(root, code, directory=True)
            importable = _modules(root, code) if present else {}
            tops = sorted({m.split(".")[0] for m in importable})
            plan.append(LoadStep("sys.path", code, ", ".join(tops[:50]), present))
            for mod, rel in sorted(importable.items()):
                role = "mlflow loader module" if loader == mod else "mlflow code"
                python.append(self._source(root, rel, role, f"importable from {code}/ as {mod}", budget))
        data = _str(conf, "data")
        plan.append(LoadStep("import", loader or "(missing loader_module)",
                             f"{loader}._load_pyfunc({data or '.'})", bool(loader)))
        if data:
            plan.append(LoadStep("data", data, "passed to _load_pyfunc", self._exists(root, data)))
        code_path = _str(conf, "model_code_path")
        if code_path:  # the loader runs <model>/<basename>, whatever directory the MLmodel names
            rel = posixpath.basename(code_path.replace("\\", "/"))
            present = self._exists(root, rel)
            plan.append(LoadStep("run-code", rel, f"models from code: executed (MLmodel names {code_path[:200]})",
                                 present))
            if present:
                python.append(self._source(root, rel, "mlflow code", "model_code_path", budget))
        if loader.startswith("mlflow.pyfunc."):
            artifacts = conf.get("artifacts")
            if isinstance(artifacts, dict):
                for name, spec in list(artifacts.items())[:100]:
                    uri = spec.get("path") or spec.get("uri") if isinstance(spec, dict) else spec
                    if isinstance(uri, str):
                        plan.append(LoadStep("artifact", uri, f"context artifact {str(name)[:50]}",
                                             self._exists(root, uri)))
        for key in PICKLE_KEYS:
            rel = _str(conf, key)
            if rel and not (key == "python_model" and _str(conf, "model_code_path")):
                how = "cloudpickle.load" if key == "python_model" else f"{loader} unpickles it"
                plan.append(LoadStep("unpickle", rel, how, self._exists(root, rel)))
        torch = flavors.get("pytorch")
        if loader == "mlflow.pytorch" and isinstance(torch, dict) and _str(torch, "model_data"):
            rel = _str(torch, "model_data")
            plan.append(LoadStep("unpickle", rel, "torch.load(weights_only=False) of the pickled module",
                                 self._exists(root, rel, directory=True) or self._exists(root, rel)))

    @staticmethod
    def _exists(root: str, rel: str, directory: bool = False) -> bool:
        if not inside(rel):
            return False
        p = os.path.join(root, rel)
        return not os.path.islink(p) and (os.path.isdir(p) if directory else os.path.isfile(p))

    @staticmethod
    def _source(root: str, rel: str, role: str, entry: str, budget: SourceBudget) -> PythonSource:
        try:
            data = safeio.read_file(os.path.join(root, rel), MAX_SOURCE + 1, what="Python module")
        except InputError as exc:
            return PythonSource(rel, role, entry=entry, error=exc.reason)
        return budget.parse(data, rel, role, entry)


def _modules(root: str, code: str) -> dict[str, str]:
    """Dotted module name -> file, for every .py file below ``<root>/<code>`` (bounded, no symlinks)."""
    base = os.path.join(root, code)
    out: dict[str, str] = {}
    count = 0
    for dirpath, dirnames, filenames in os.walk(base):  # os.walk does not descend into symlinked dirs
        dirnames.sort()
        for f in sorted(filenames):
            count += 1
            if count > MAX_CODE_FILES:
                return out
            path = os.path.join(dirpath, f)
            if f.endswith(".py") and not os.path.islink(path):
                parts = posixpath.relpath(path, base)[:-3].split("/")
                dotted = ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)
                out.setdefault(dotted, posixpath.relpath(path, root))
    return out
