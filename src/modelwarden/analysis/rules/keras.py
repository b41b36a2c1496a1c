"""Keras config rules (MW300-MW349): Lambda code, untrusted modules, file paths and URLs.

They read :class:`~modelwarden.ir.KerasModel` only, so they cover ``.keras``,
legacy ``.h5`` and tf.keras SavedModels (``keras_metadata.pb``) alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.ir import CodeFacts, KerasModel, KerasObject

FORMATS = ("keras-v3", "keras-h5", "tf-savedmodel")

# Packages whose classes Keras itself will import and whose code ships with Keras/TF.
ALLOWED_PACKAGES = frozenset({"keras", "tf_keras", "keras_hub", "keras_cv", "keras_nlp"})
ALLOWED_MODULE_PREFIXES = ("tensorflow.keras", "tensorflow.python.keras")
TYPESPEC_MODULE_PREFIXES = ("tensorflow.python.framework", "tensorflow.python.ops")

# Modules that give a loaded model the machine: referencing them is never modelling.
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "builtins", "__builtin__", "sys", "importlib", "pickle", "_pickle",
    "cpickle", "dill", "joblib", "shutil", "socket", "ctypes", "_ctypes", "marshal", "runpy", "code", "pty",
    "multiprocessing", "webbrowser", "urllib", "urllib2", "urllib3", "requests", "http", "httplib", "ftplib",
    "telnetlib", "smtplib", "io", "_io", "pathlib", "tempfile", "types", "operator", "_posixsubprocess",
    "signal", "platform", "asyncio",
})
# Keras functions that are not modelling and that a config must never call
# (Keras' own NON_MODELING_APIS plus loaders): downloads, file IO, safe-mode switches.
KERAS_UNSAFE_FUNCTIONS = frozenset({
    "get_file", "load_model", "model_from_json", "model_from_config", "model_from_yaml", "save_model",
    "load_weights", "save_weights", "enable_unsafe_deserialization", "disable_interactive_logging",
    "deserialize_keras_object", "serialize_keras_object", "register_keras_serializable", "clear_session",
    "load_img", "save_img", "image_dataset_from_directory", "text_dataset_from_directory",
    "audio_dataset_from_directory", "func_load",
})
# Names that Lambda bytecode has no business touching.
DANGEROUS_CODE_NAMES = DANGEROUS_MODULES | frozenset({
    "system", "popen", "Popen", "spawn", "spawnl", "spawnv", "spawnve", "execv", "execve", "execl", "execvp",
    "fork", "forkpty", "kill", "check_output", "check_call", "call", "run", "getoutput", "getstatusoutput",
    "exec", "eval", "compile", "__import__", "import_module", "open", "input", "breakpoint", "__builtins__",
    "getattr", "setattr", "delattr", "globals", "locals", "vars", "__globals__", "__subclasses__", "__bases__",
    "__mro__", "__code__", "__dict__", "__getattribute__", "__reduce__", "modules", "urlopen", "urlretrieve",
    "remove", "unlink", "rmtree", "rmdir", "chmod", "chown", "rename", "write_file", "read_file", "GFile",
    "gfile", "py_func", "py_function", "numpy_function", "loads", "load", "dlopen", "CDLL", "cdll",
    "environ", "getenv", "putenv", "connect", "create_connection",
} | KERAS_UNSAFE_FUNCTIONS)

# tf.keras TFOpLambda / SlicingOpLambda layers call ``tf.<config.function>``: these reach outside the model.
TF_OP_LAMBDAS = frozenset({"TFOpLambda", "SlicingOpLambda"})
TF_CODE_FUNCTIONS = ("py_function", "numpy_function", "compat.v1.py_func", "py_func", "raw_ops.PyFunc",
                     "raw_ops.EagerPyFunc", "raw_ops.PyFuncStateless")
TF_IO_PREFIXES = ("io.", "gfile.", "compat.v1.io.", "compat.v1.gfile.", "raw_ops.", "summary.", "saved_model.",
                  "data.", "lookup.", "distribute.", "debugging.experimental.", "compat.v1.train.", "train.",
                  "keras.", "compat.v1.keras.", "experimental.dtensor.", "tpu.", "config.", "sysconfig.")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]{1,15}://\S")
_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\[^\\])")
# Config keys whose value Keras opens as a file (a relative path there is still a file read).
PATH_KEYS = frozenset({"vocabulary", "vocabulary_file", "filepath", "file_path", "path", "filename", "idf_weights"})


def _where(path: str) -> str:
    return path or "(root)"


def _location(ctx: AnalysisContext, keras: KerasModel, obj_path: str, op: str = ""):
    return ctx.location(file=keras.source_file, node=_where(obj_path), op=op)


def _lambda_layers(keras: KerasModel) -> list[KerasObject]:
    """Lambda layers and stray ``__lambda__`` objects, without reporting a layer's own function twice."""
    layers = [o for o in keras.objects if o.lambda_source_kind and o.class_name != "__lambda__"]
    owners = tuple((o.path + "." if o.path else "") + "config." for o in layers)
    stray = [
        o for o in keras.objects
        if o.class_name == "__lambda__" and not (owners and o.path.startswith(owners))
    ]
    return layers + stray


def _describe(obj: KerasObject) -> str:
    code = obj.lambda_code
    cfg = obj.config
    if obj.lambda_source_kind == "function-name":
        return f"calls the Python function {cfg.get('module') or '?'}.{cfg.get('function') or '?'}"
    if obj.lambda_source_kind == "raw":
        return "holds a raw Python function value"
    if code is None:
        return "holds Python bytecode"
    if code.error and not code.code_objects:
        return f"holds Python bytecode that could not be decoded ({code.error})"
    names = ", ".join(code.names[:30]) or "no global names"
    return f"holds Python bytecode ({code.code_objects} code object(s), layout {code.python_layout}) using: {names}"


def _dangerous_code(code: CodeFacts | None) -> list[str]:
    if code is None:
        return []
    hits = [n for n in code.names if n in DANGEROUS_CODE_NAMES or n.split(".")[0] in DANGEROUS_MODULES]
    hits += [s for s in code.strings if s in DANGEROUS_MODULES or s in DANGEROUS_CODE_NAMES and s not in hits]
    return list(dict.fromkeys(hits))


@register
class KerasLambdaRules(Rule):
    """MW300/MW301: Lambda layers carry Python code that runs in the loading process."""

    metas = (
        RuleMeta(
            "MW300", "keras-lambda-layer", Severity.HIGH,
            "Keras Lambda layer: arbitrary Python code in the model",
            "A Lambda layer stores a Python function (marshalled bytecode, or a function name) that Keras "
            "runs when the model is loaded with safe_mode=False or when it is called. Its code is not a "
            "modelling operation and cannot be audited as a graph.",
            "Replace the Lambda layer with built-in layers or a registered custom layer whose source you "
            "have reviewed; never load the model with safe_mode=False.",
            FORMATS, ("keras", "code-execution"),
        ),
        RuleMeta(
            "MW301", "keras-lambda-dangerous-code", Severity.CRITICAL,
            "Keras Lambda bytecode references process, file, network or import facilities",
            "The Lambda layer's bytecode names modules or builtins such as os, subprocess, eval, exec, "
            "__import__, open or socket: loading this model runs code that can take over the machine.",
            "Do not load this model. If it is yours, rebuild it without the Lambda layer.",
            FORMATS, ("keras", "code-execution"),
        ),
    )

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        keras = ctx.artifact.keras
        if keras is None:
            return
        mw300, mw301 = self.metas
        for obj in _lambda_layers(keras):
            label = "Lambda layer" if obj.class_name != "__lambda__" else "Python lambda"
            name = f" '{obj.name}'" if obj.name else ""
            loc = _location(ctx, keras, obj.path, obj.class_name)
            evidence = {"path": _where(obj.path), "source": obj.lambda_source_kind}
            if obj.lambda_code is not None:
                evidence["names"] = ", ".join(obj.lambda_code.names[:50])
                evidence["strings"] = ", ".join(repr(s) for s in obj.lambda_code.strings[:20])
            yield ctx.finding(
                mw300, f"{label}{name} at {_where(obj.path)} {_describe(obj)}", loc,
                capability="python-code", evidence=evidence,
            )
            hits = _dangerous_code(obj.lambda_code)
            if obj.lambda_source_kind == "function-name":
                module = str(obj.config.get("module") or "")
                func = str(obj.config.get("function") or "")
                if module.split(".")[0] in DANGEROUS_MODULES or func in DANGEROUS_CODE_NAMES:
                    hits.append(f"{module}.{func}")
            if hits:
                yield ctx.finding(
                    mw301, f"{label}{name} at {_where(obj.path)} references {', '.join(hits[:12])}", loc,
                    capability="python-code", evidence={**evidence, "dangerous": ", ".join(hits)},
                )


def _package(name: str) -> str:
    return name.split(">", 1)[0].split(".", 1)[0] if name else ""


def _allowed_module(module: str, class_name: str) -> bool:
    if module.split(".", 1)[0] in ALLOWED_PACKAGES or module.startswith(ALLOWED_MODULE_PREFIXES):
        return True
    return class_name == "__typespec__" and module.startswith(TYPESPEC_MODULE_PREFIXES)


def classify_reference(obj: KerasObject) -> tuple[Severity, str] | None:
    """How dangerous the class/function an object names is, with a reason; None when it is Keras' own."""
    class_name = obj.class_name
    module = obj.module
    if class_name in TF_OP_LAMBDAS and isinstance(obj.config.get("function"), str):
        return _tf_op_lambda(obj.config["function"])
    target = obj.name if class_name == "function" and obj.name else class_name
    if not module and "." in class_name.strip("."):
        module, _, target = class_name.rpartition(".")  # "os.system" spelled in class_name
    registered = obj.registered_name
    reg_package = _package(registered) if ">" in registered else ""
    dotted = f"{module}.{target}" if module else target
    if module.split(".", 1)[0] in DANGEROUS_MODULES:
        return Severity.CRITICAL, f"references {dotted} from module '{module}', which gives code execution or system access"
    if reg_package in DANGEROUS_MODULES:
        return Severity.CRITICAL, f"is registered as '{registered}', naming dangerous package '{reg_package}'"
    if module and _allowed_module(module, class_name):
        if target in KERAS_UNSAFE_FUNCTIONS:
            return Severity.CRITICAL, f"calls {dotted}, a Keras API that is not modelling (file/network IO or safe-mode switch)"
        if reg_package and reg_package not in ALLOWED_PACKAGES:
            return Severity.MEDIUM, f"is the registered custom object '{registered}': loading needs its code, which you must trust"
        return None
    if class_name.startswith("__") and class_name.endswith("__") and not module:
        return None  # Keras' own markers: __keras_tensor__, __lambda__ (MW300), __numpy__ ...
    if reg_package and reg_package not in ALLOWED_PACKAGES:
        where = f" (module '{module}')" if module else ""
        return Severity.MEDIUM, f"is the registered custom object '{registered}'{where}: loading needs its code, which you must trust"
    if module:
        return Severity.HIGH, f"references {dotted} from module '{module}', outside Keras and TensorFlow"
    return None


def _tf_op_lambda(function: str) -> tuple[Severity, str] | None:
    fn = function.removeprefix("tf.")
    if fn.startswith(TF_CODE_FUNCTIONS):
        return Severity.CRITICAL, f"calls tf.{fn}, which runs arbitrary Python"
    if fn.startswith(TF_IO_PREFIXES) or fn.split(".")[0] in DANGEROUS_MODULES:
        return Severity.HIGH, f"calls tf.{fn}, which reaches files, the network or process state"
    return None


@register
class KerasUntrustedModuleRule(Rule):
    """MW302: config objects resolved from modules outside Keras (CVE-2025-1550 class)."""

    meta = RuleMeta(
        "MW302", "keras-untrusted-module", Severity.HIGH,
        "Keras config references a class or function outside Keras and TensorFlow",
        "Keras deserialises every config object by module and class name. A module outside Keras "
        "(os, builtins, subprocess, or any third-party package) lets a config import and call arbitrary "
        "code on load (CVE-2025-1550 and its follow-ups); non-modelling Keras APIs such as "
        "keras.utils.get_file or keras.config.enable_unsafe_deserialization are abused the same way. "
        "Registered custom objects need code you must trust (medium).",
        "Load only with Keras >= 3.9 and safe_mode=True, and only after reviewing the source of every "
        "custom object; reject models that reference system modules.",
        FORMATS, ("keras", "code-execution", "CVE-2025-1550"),
    )

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        keras = ctx.artifact.keras
        if keras is None:
            return
        for obj in keras.objects:
            verdict = classify_reference(obj)
            if verdict is None:
                continue
            severity, reason = verdict
            shown = f"'{obj.class_name}'" + (f" ('{obj.name}')" if obj.name and obj.name != obj.class_name else "")
            yield ctx.finding(
                self.meta, f"Config object {shown} at {_where(obj.path)} {reason}",
                _location(ctx, keras, obj.path, obj.class_name), severity=severity,
                capability="python-import",
                evidence={"path": _where(obj.path), "module": obj.module, "class_name": obj.class_name,
                          "registered_name": obj.registered_name, "name": obj.name},
            )


def classify_string(key: str, value: str) -> tuple[Severity, str] | None:
    """Is a config string a file path or URL? Returns (severity, kind)."""
    text = value.strip()
    if len(text) < 2 or "\n" in text:
        return None
    if _URL.match(text):
        return Severity.HIGH, "URL"
    if (text.startswith("/") and len(text) > 1 and not text.startswith("//")) or text.startswith("~/") \
            or _WINDOWS_ABS.match(text):
        return Severity.HIGH, "absolute path"
    parts = re.split(r"[\\/]", text)
    if len(parts) > 1 and ".." in parts:
        return Severity.MEDIUM, "path that climbs out with '..'"
    if key in PATH_KEYS and (len(parts) > 1 or re.search(r"\.(txt|csv|tsv|json|vocab)$", text, re.I)):
        return Severity.LOW, "relative file path"
    return None


@register
class KerasConfigPathRule(Rule):
    """MW303: file paths and URLs in a Keras config (StringLookup vocabulary-file class)."""

    meta = RuleMeta(
        "MW303", "keras-config-path", Severity.HIGH,
        "Keras config holds a file path or URL",
        "Some Keras layers open files named in their config when the model is loaded: StringLookup, "
        "IntegerLookup and TextVectorization read a vocabulary file; others accept paths. A model that "
        "names /etc/passwd, a user's home directory or a remote URL reads local secrets into the model "
        "(where outputs can leak them) or fetches data from the network.",
        "Keep vocabularies and assets inside the archive; reject models whose configs name absolute "
        "paths, URLs or paths that climb out with '..'.",
        FORMATS, ("keras", "file-read"),
    )

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        keras = ctx.artifact.keras
        if keras is None:
            return
        table: dict[str, KerasObject] | None = None
        for item in keras.strings:
            key = _last_key(item.path)
            verdict = classify_string(key, item.value)
            if verdict is None:
                continue
            severity, kind = verdict
            if table is None:
                table = {o.path: o for o in keras.objects}
            owner = _owner(table, item.path)
            layer = f" of {owner.class_name} '{owner.name}'" if owner and owner.name else \
                f" of {owner.class_name}" if owner else ""
            shown = item.value if len(item.value) <= 200 else item.value[:200] + "..."
            yield ctx.finding(
                self.meta, f"Config value {item.path}{layer} is {_article(kind)} {kind}: {shown!r}",
                _location(ctx, keras, item.path, owner.class_name if owner else ""), severity=severity,
                capability="file-read" if kind != "URL" else "network",
                evidence={"path": item.path, "value": shown, "kind": kind},
            )


def _article(kind: str) -> str:
    return "an" if kind.startswith("absolute") else "a"  # "a URL", "a relative file path"


def _last_key(path: str) -> str:
    """``config.layers[2].config.vocabulary[0]`` -> ``vocabulary``."""
    tail = path.rsplit(".", 1)[-1]
    return tail.split("[", 1)[0]


def _owner(table: dict[str, KerasObject], path: str) -> KerasObject | None:
    """The innermost object whose subtree holds ``path``."""
    for prefix in _prefixes(path):
        if prefix in table:
            return table[prefix]
    return None


def _prefixes(path: str) -> Iterator[str]:
    """Ancestors of a config path, innermost first, ending with the root ``""``."""
    cut = len(path)
    while cut > 0:
        dot = path.rfind(".", 0, cut)
        bracket = path.rfind("[", 0, cut)
        cut = max(dot, bracket)
        if cut <= 0:
            break
        yield path[:cut]
    yield ""


# --------------------------------------------------------------------------
# Loader attacks of the Keras 3 advisories (MW310-MW312): layers whose deserialisation reads
# host files, loads external graphs or unpickles bytes carried in the config.

LOOKUP_LAYERS = frozenset({"StringLookup", "IntegerLookup", "TextVectorization", "IndexLookup"})
EXTERNAL_MODEL_LAYERS = frozenset({"TFSMLayer"})
PICKLING_WRAPPERS = frozenset({"TorchModuleWrapper"})
_LOADER_TAGS = ("keras", "safe-mode")
LOOKUP_META = RuleMeta(
    "MW310", "keras-lookup-file-vocabulary", Severity.HIGH,
    "Keras lookup layer reads its vocabulary from a file outside the model",
    "StringLookup, IntegerLookup and TextVectorization treat a string vocabulary as a file path and read it "
    "with tf.io.gfile when the model loads: any path (relative paths resolve against the loader's working "
    "directory) or URL (gs://, s3://, http://: network). Keras 3.12+ refuses it in safe mode; older Keras and "
    "safe_mode=False read it.", "Keep the vocabulary inside the archive (Keras saves it under assets/).",
    FORMATS, _LOADER_TAGS)
TFSM_META = RuleMeta(
    "MW311", "keras-external-savedmodel", Severity.CRITICAL,
    "Keras TFSMLayer loads a SavedModel from outside the archive",
    "TFSMLayer.from_config loads the TensorFlow SavedModel at config.filepath: its graph (file, network and "
    "Python ops) is code this scan of the .keras file did not see. Keras refuses it in safe mode since 3.12.",
    "Do not load with safe_mode=False; scan the external SavedModel too, or rebuild the model without it.",
    FORMATS, _LOADER_TAGS)
TORCH_WRAPPER_META = RuleMeta(
    "MW312", "keras-config-pickle", Severity.CRITICAL,
    "Keras config carries a pickled torch module (TorchModuleWrapper)",
    "TorchModuleWrapper.from_config base64-decodes config.module and torch.load()s it with weights_only=False: "
    "a pickle inside config.json that runs arbitrary code on load (refused in safe mode since Keras 3.12).",
    "Do not load with safe_mode=False; rebuild the model with Keras layers.", FORMATS, _LOADER_TAGS)


@register
class KerasLoaderAttackRules(Rule):
    """MW310-MW312: layers that read files, load graphs or unpickle on deserialisation."""

    metas = (LOOKUP_META, TFSM_META, TORCH_WRAPPER_META)

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        keras = ctx.artifact.keras
        if keras is None:
            return
        for obj in keras.objects:
            where = f"{obj.class_name} '{obj.name}'" if obj.name else obj.class_name
            loc = _location(ctx, keras, obj.path, obj.class_name)
            if obj.class_name in LOOKUP_LAYERS:
                vocab = obj.config.get("vocabulary")
                if isinstance(vocab, str) and vocab:
                    url = bool(_URL.match(vocab.strip()))
                    yield ctx.finding(LOOKUP_META, f"{where} reads its vocabulary from {vocab[:200]!r}"
                                      + (" over the network" if url else ""), loc,
                                      severity=Severity.CRITICAL if url else None,
                                      capability="network" if url else "file-read",
                                      evidence={"path": _where(obj.path), "vocabulary": vocab[:200]})
            elif obj.class_name in EXTERNAL_MODEL_LAYERS:
                target = obj.config.get("filepath")
                yield ctx.finding(TFSM_META, f"{where} loads the SavedModel at {str(target)[:200]!r}", loc,
                                  capability="code-execution", evidence={"path": _where(obj.path)})
            elif obj.class_name in PICKLING_WRAPPERS and isinstance(obj.config.get("module"), str):
                size = len(obj.config["module"]) * 3 // 4
                yield ctx.finding(TORCH_WRAPPER_META, f"{where} torch.load()s a {size}-byte pickle from its config",
                                  loc, capability="code-execution", evidence={"path": _where(obj.path)})
