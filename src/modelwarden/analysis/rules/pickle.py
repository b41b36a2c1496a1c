"""Pickle rules (MW800-MW829): an allowlist of reconstructors, not a denylist.

A pickle is a program: every import it names is executed by ``find_class`` and
every REDUCE/NEWOBJ/OBJ/INST calls something.  Only imports on
:data:`ALLOWED` (plain-data constructors, NumPy array/dtype/scalar rebuilding,
torch storage/tensor rebuilding) pass silently.  Everything else is a finding:

* MW800 critical: modules and callables that give the machine away (os, posix,
  subprocess, builtins other than plain-data constructors, runpy, importlib,
  marshal, types, socket, pickle itself, ``numpy.load``, ``torch.load`` ...).
  **Submodules of a blocked module are blocked too** (``os.path``, ``subprocess.Popen``,
  ``importlib.util``): importing one imports its parent, no model state needs them,
  and an exception per submodule would be bypass surface.
* MW801 critical: imports the parser cannot resolve (STACK_GLOBAL fed by
  something other than two strings, copyreg extension codes).
* MW802 high (medium for well-known ML libraries): anything else.
* MW803 critical: dotted names that walk attributes (``collections._sys.modules``,
  ``torch.__dict__``...), which ``find_class`` follows for protocol 4+.
* MW804 medium: a stream that breaks before STOP (the unpickler runs everything before the break).
* MW805 high: calls whose callee is not a plain import (the result of another call:
  ``getattr`` chains, ``types.FunctionType(marshal.loads(...))(...)``).
* MW806 medium: pickles in unexpected places (an archive member that is not the model's pickle).
* MW807 low: NumPy object arrays (``allow_pickle=True`` needed to load).
* MW808 medium: TorchScript code in a PyTorch archive.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.ir import PickleCall, PickleImport, PickleProgram

FORMATS = ("pickle", "pytorch", "numpy", "archive", "keras-v3")

_TORCH_STORAGES = (
    "FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
    "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "ComplexFloatStorage", "ComplexDoubleStorage",
    "QInt8Storage", "QUInt8Storage", "QInt32Storage", "QUInt4x2Storage", "QUInt2x4Storage", "UntypedStorage",
)
_TORCH_DTYPES = (
    "float16", "float32", "float64", "bfloat16", "half", "float", "double", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128", "cfloat", "cdouble", "long",
    "int", "short", "qint8", "quint8", "qint32", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
    "float8_e5m2fnuz", "strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc",
    "_mkldnn", "per_tensor_affine", "per_channel_affine", "per_channel_affine_float_qparams",
    "contiguous_format", "channels_last", "channels_last_3d", "preserve_format",
)
_NUMPY_SCALARS = (
    "bool_", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
    "float32", "float64", "longdouble", "complex64", "complex128", "clongdouble", "str_", "bytes_", "intc",
    "uintc", "intp", "uintp", "longlong", "ulonglong", "half", "single", "double", "datetime64", "timedelta64",
)
_PLAIN_BUILTINS = ("set", "frozenset", "bytearray", "bytes", "complex", "slice", "range", "list", "dict",
                   "tuple", "int", "float", "bool", "str", "object",
                   # pure functions of their (already reconstructed) arguments, and constants
                   "hash", "len", "abs", "min", "max", "sum", "round", "divmod", "ord", "chr", "hex", "oct", "bin",
                   "isinstance", "Ellipsis", "NotImplemented")
_RANDOM_STATE = frozenset({"RandomState", "Generator", "MT19937", "PCG64", "PCG64DXSM", "Philox", "SFC64"})

# module -> names that are plain-data reconstructors.
ALLOWED: dict[str, frozenset[str]] = {
    "collections": frozenset({"OrderedDict", "defaultdict", "deque", "Counter"}),
    "builtins": frozenset(_PLAIN_BUILTINS),
    "__builtin__": frozenset(_PLAIN_BUILTINS + ("unicode", "long")),
    "copyreg": frozenset({"_reconstructor"}),
    "copy_reg": frozenset({"_reconstructor"}),
    "_codecs": frozenset({"encode"}),  # how protocols 0-2 spell bytes
    "numpy": frozenset({"ndarray", "dtype", "matrix", *_NUMPY_SCALARS}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy.core.numeric": frozenset({"_frombuffer"}),
    "numpy.core._internal": frozenset({"_reconstruct"}),  # ndarray pickles of NumPy < 1.0
    "numpy._core._internal": frozenset({"_reconstruct"}),
    "numpy._core.numeric": frozenset({"_frombuffer"}),
    "numpy.ma.core": frozenset({"_mareconstruct", "MaskedArray"}),
    "numpy.random._pickle": frozenset({"__randomstate_ctor", "__bit_generator_ctor", "__generator_ctor"}),
    "numpy.random": frozenset({"__RandomState_ctor", *_RANDOM_STATE}),  # how NumPy < 1.17 spelled the ctor
    "numpy.random.mtrand": frozenset({"RandomState", "__RandomState_ctor"}),
    "numpy.random._mt19937": frozenset({"MT19937"}),
    "numpy.random._pcg64": frozenset({"PCG64", "PCG64DXSM"}),
    "numpy.random._philox": frozenset({"Philox"}),
    "numpy.random._sfc64": frozenset({"SFC64"}),
    "numpy.random._generator": frozenset({"Generator"}),
    "numpy.matrixlib.defmatrix": frozenset({"matrix"}),  # an ndarray subclass
    "numpy.matrixlib": frozenset({"matrix"}),
    # scikit-learn's Bunch is a dict subclass with attribute access (its datasets module is not loaded
    # for it: the class lives in sklearn.utils, the old names are aliases)
    "sklearn.utils": frozenset({"Bunch"}),
    "sklearn.utils._bunch": frozenset({"Bunch"}),
    "sklearn.datasets.base": frozenset({"Bunch"}),
    "sklearn.datasets._base": frozenset({"Bunch"}),
    # plain value classes: constructing one runs no code beyond storing its arguments (a Path
    # touches no file); they appear in saved hyper-parameters and metadata
    "datetime": frozenset({"date", "datetime", "time", "timedelta", "timezone"}),
    "decimal": frozenset({"Decimal"}),
    "fractions": frozenset({"Fraction"}),
    "uuid": frozenset({"UUID"}),
    "pathlib": frozenset({"Path", "PurePath", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"}),
    "argparse": frozenset({"Namespace"}),
    "types": frozenset({"SimpleNamespace"}),
    # TorchScript's own list/tensor builders in data.pkl/constants.pkl: they return their argument
    "torch.jit._pickle": frozenset({"build_intlist", "build_tensorlist", "build_doublelist", "build_boollist",
                                    "build_tensor_from_id", "restore_type_tag"}),
    "numpy.dtypes": frozenset({f"{t.capitalize()}DType" for t in ("float16", "float32", "float64", "int8", "int16",
                                                                   "int32", "int64", "uint8", "uint16", "uint32",
                                                                   "uint64", "bool", "complex64", "complex128")}),
    "torch._utils": frozenset({
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
        "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor", "_rebuild_nested_tensor",
        "_rebuild_device_tensor_from_numpy", "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass",
    }),
    "torch": frozenset({*_TORCH_STORAGES, *_TORCH_DTYPES, "Size", "device", "Tensor"}),
    "torch.storage": frozenset({"UntypedStorage", "TypedStorage"}),
    "torch._tensor": frozenset({"_rebuild_from_type_v2"}),
    "torch.nn.parameter": frozenset({"Parameter"}),
    "joblib.numpy_pickle": frozenset({"NumpyArrayWrapper"}),
}

# Importing anything from these (or their submodules) gives code execution or the system.
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "sys", "builtins",
    "__builtin__", "runpy", "importlib", "imp", "pkgutil", "zipimport", "marshal", "types", "socket", "_socket",
    "ssl", "shutil", "pty", "tty", "termios", "fcntl", "resource", "webbrowser", "pickle", "_pickle", "cPickle",
    "pickletools", "shelve", "dill", "cloudpickle", "ctypes", "_ctypes", "cffi", "code", "codeop", "commands",
    "popen2", "platform", "multiprocessing", "concurrent", "threading", "_thread", "asyncio", "signal",
    "tempfile", "io", "_io", "pathlib", "glob", "fileinput", "linecache", "operator", "_operator", "functools",
    "inspect", "gc", "weakref", "atexit", "urllib", "urllib2", "urllib3", "requests", "http", "httplib",
    "ftplib", "telnetlib", "smtplib", "poplib", "imaplib", "xmlrpc", "socketserver", "bdb", "pdb", "trace",
    "profile", "cProfile", "timeit", "doctest", "unittest", "distutils", "setuptools", "pip", "venv",
    "ensurepip", "sqlite3", "dbm", "zipfile", "tarfile", "lzma", "bz2", "gzip", "copy", "site", "sysconfig",
    "_sitebuiltins", "__main__", "nturl2path", "uuid", "select", "selectors", "mmap", "_winapi", "msvcrt",
    "winreg", "_winreg", "ast", "dis", "builtins_", "pydoc", "readline", "rlcompleter", "logging",
})
# Well-known ML packages: a non-allowlisted import from one of these still runs that
# library's code at load time, but is the usual shape of a whole-object pickle (medium).
ML_PACKAGES = frozenset({
    "torch", "torchvision", "torchaudio", "torchtext", "numpy", "scipy", "sklearn", "pandas", "xgboost",
    "lightgbm", "catboost", "transformers", "tokenizers", "sentence_transformers", "timm", "diffusers",
    "accelerate", "peft", "joblib", "statsmodels", "gensim", "spacy", "fastai", "pytorch_lightning",
    "lightning", "safetensors", "onnx", "tensorflow", "keras", "jax", "flax", "optax", "numba",
})
# Callables or subpackages of otherwise-ML packages that load files, run code or reach the network.
DANGEROUS_PREFIXES = (
    "numpy.load", "numpy.loadtxt", "numpy.genfromtxt", "numpy.fromfile", "numpy.memmap", "numpy.save",
    "numpy.savez", "numpy.savez_compressed", "numpy.savetxt", "numpy.testing", "numpy.f2py", "numpy.distutils",
    "numpy.ctypeslib", "numpy.lib.npyio", "numpy.lib.format", "numpy.lib._npyio_impl", "numpy.lib.utils",
    "numpy.core._internal", "numpy._core._internal",
    "torch.load", "torch.save", "torch.hub", "torch.jit", "torch.package", "torch.serialization",
    "torch.storage._load_from_bytes", "torch.utils.cpp_extension", "torch.utils.data", "torch._C", "torch.ops",
    "torch.classes", "torch.distributed", "torch.fx", "torch._dynamo", "torch._inductor", "torch.compile",
    "torch.multiprocessing", "torch.testing", "torch.library", "torch._ops", "torch.utils.hooks",
    "torch.backends", "torch.cuda.memory",
    "pandas.read_", "pandas.io", "pandas.core.computation", "pandas.eval", "pandas.to_pickle",
    "scipy.io", "scipy._lib", "scipy.weave", "scipy.LowLevelCallable",
    "joblib.load", "joblib.dump", "joblib.parallel", "joblib.externals", "joblib._store_backends",
    "sklearn.datasets", "sklearn.utils._testing", "sklearn.externals",
    "transformers.dynamic_module_utils", "transformers.utils.hub", "transformers.pipelines",
    "tensorflow.io", "tensorflow.python.ops.script_ops", "tensorflow.python.lib.io", "tensorflow.compat",
    "keras.utils", "keras.saving", "keras.config",
    "jax.experimental", "numba.cfunc", "numba.core",
)
# Names whose appearance inside a dotted name means attribute walking to somewhere dangerous.
DANGEROUS_NAMES = frozenset({
    "system", "popen", "Popen", "spawn", "spawnl", "spawnv", "execv", "execve", "execl", "execvp", "fork",
    "exec", "eval", "compile", "__import__", "import_module", "open", "getattr", "setattr", "delattr",
    "globals", "locals", "vars", "breakpoint", "input", "loads", "load", "modules", "run", "call",
    "check_output", "check_call", "getoutput", "dlopen", "CDLL", "environ", "remove", "unlink", "rmtree",
})


def normalise(module: str) -> str:
    return {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)


# Classes that do one narrow thing, with the severity of that thing (not "runs arbitrary code").
NARROW: dict[str, tuple[Severity, str]] = {
    "joblib.numpy_pickle_compat.NDArrayWrapper": (
        Severity.LOW, "loads its array with numpy.load from a file its state names, beside the pickle "
        "(joblib < 0.10 layout; scan those files too)"),
    "joblib.numpy_pickle_compat.ZNDArrayWrapper": (
        Severity.LOW, "reads its array's bytes from a file its state names, beside the pickle (joblib < 0.10)"),
}
NARROW["joblib.numpy_pickle.NDArrayWrapper"] = NARROW["joblib.numpy_pickle_compat.NDArrayWrapper"]
NARROW["joblib.numpy_pickle.ZNDArrayWrapper"] = NARROW["joblib.numpy_pickle_compat.ZNDArrayWrapper"]
# TorchScript's data.pkl names classes compiled from the archive's code/ members; torch.jit.load
# resolves them in TorchScript, and a Python unpickler cannot import them (no module __torch__).
TORCHSCRIPT_CLASSES = "__torch__"
_PARTIAL = frozenset({"functools.partial", "_functools.partial"})


def classify_import(imp: PickleImport, calls: Iterable[PickleCall] = ()) -> tuple[str, Severity, str] | None:
    """(rule id, severity, reason) for one import, or None when it is an allowed reconstructor.

    ``calls`` are the calls made to this import; they matter for ``functools.partial``, which
    is allowed when every partial wraps a plain import (judged on its own).
    """
    if not imp.resolved:
        return "MW801", Severity.CRITICAL, f"cannot be resolved statically ({imp.detail})"
    module, name = imp.module, imp.name
    if name in ALLOWED.get(module, ()):
        return None
    if f"{module}.{name}" in _PARTIAL and all(_wraps_plain_import(c.args) for c in calls):
        return None
    narrow = NARROW.get(f"{module}.{name}")
    if narrow is not None:
        return "MW802", narrow[0], narrow[1]
    mod = normalise(module)
    mparts = [p for p in mod.split(".") if p]
    nparts = [p for p in name.split(".") if p]
    top = mparts[0] if mparts else ""
    full = f"{mod}.{name}"
    if not mparts or not nparts or any(not _identifier(p) for p in mparts + nparts):
        return "MW801", Severity.CRITICAL, "names a module or attribute that is not a plain identifier"
    if top in DANGEROUS_MODULES:
        what = "a submodule of " if len(mparts) > 1 else ""
        return "MW800", Severity.CRITICAL, f"imports from {what}'{top}', which gives code execution or system access"
    for prefix in DANGEROUS_PREFIXES:
        if full == prefix or full.startswith(prefix + ".") or full.startswith(prefix + "_") \
                or (prefix.endswith("_") and full.startswith(prefix)):
            return "MW800", Severity.CRITICAL, f"is {prefix}, which loads files, runs code or reaches the network"
    if len(nparts) > 1:
        walked = [p for p in nparts if (p.startswith("__") and p.endswith("__")) or p in DANGEROUS_MODULES
                  or p.lstrip("_") in DANGEROUS_MODULES or p in DANGEROUS_NAMES]
        if walked:
            return "MW803", Severity.CRITICAL, f"walks attributes through {', '.join(walked)} (dotted name)"
    if name.startswith("__") and name.endswith("__"):
        return "MW803", Severity.CRITICAL, "names a dunder attribute"
    if top == TORCHSCRIPT_CLASSES:
        return None  # a TorchScript class (its code members are MW808), not a Python import
    if top in ML_PACKAGES:
        return "MW802", Severity.MEDIUM, f"is not a known-safe reconstructor: loading runs {top} code for it"
    return "MW802", Severity.HIGH, "is not a known-safe reconstructor: loading imports and runs it"


def _identifier(part: str) -> bool:
    return part.isidentifier()


_PLAIN_GLOBAL = re.compile(r"\(([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)[,)]")


def _wraps_plain_import(args: str) -> bool:
    """Is a partial's first argument a plain import (rendered unquoted, as globals are)?"""
    return _PLAIN_GLOBAL.match(args) is not None


META = {
    m.id: m for m in (
        RuleMeta(
            "MW800", "pickle-dangerous-import", Severity.CRITICAL,
            "Pickle imports a module or callable that gives code execution or system access",
            "Unpickling imports every global the stream names and calls what REDUCE/NEWOBJ/OBJ/INST point "
            "at. This stream names os/posix/subprocess, builtins such as eval/exec/getattr/__import__, "
            "runpy, importlib, marshal, types, socket, pickle itself, numpy.load, torch.load or a submodule "
            "of one of them: loading it runs code chosen by the author.",
            "Do not load this file. Ask for the weights as safetensors (or torch.load(weights_only=True) on "
            "a file that passes this scan).",
            FORMATS, ("pickle", "code-execution"),
        ),
        RuleMeta(
            "MW801", "pickle-unresolvable-import", Severity.CRITICAL,
            "Pickle imports a global that cannot be resolved statically",
            "STACK_GLOBAL takes its module and name from the stack; here they are not two plain strings "
            "(the result of a call, a memo trick) or the import goes through copyreg's extension registry. "
            "This is how scanners that only look at string opcodes are bypassed.",
            "Do not load this file.", FORMATS, ("pickle", "code-execution", "obfuscation"),
        ),
        RuleMeta(
            "MW802", "pickle-untrusted-import", Severity.HIGH,
            "Pickle imports something outside the allowlist of data reconstructors",
            "Only plain-data constructors, NumPy array/dtype rebuilding and torch tensor/storage rebuilding "
            "are known to be safe; any other import runs that code at load time. Classes of well-known ML "
            "libraries (whole-model pickles: sklearn estimators, torch.nn modules) are medium: you must "
            "trust the library version and the object's state.",
            "Prefer weights-only formats (safetensors, torch.load(weights_only=True)); if you must load "
            "whole objects, review every import listed and load in a sandbox (modelwarden run).",
            FORMATS, ("pickle",),
        ),
        RuleMeta(
            "MW803", "pickle-attribute-traversal", Severity.CRITICAL,
            "Pickle global uses a dotted name that walks attributes",
            "For protocol 4 and later find_class follows dotted names attribute by attribute, so an "
            "allowed-looking module can reach os, sys.modules or __globals__ (collections._sys.modules ...).",
            "Do not load this file.", FORMATS, ("pickle", "code-execution", "obfuscation"),
        ),
        RuleMeta(
            "MW804", "pickle-broken-stream", Severity.MEDIUM,
            "Pickle stream is malformed or truncated",
            "The unpickler executes every opcode before the break, so a payload followed by a deliberately "
            "broken stream still runs while scanners that give up on malformed input report nothing. "
            "Everything found before the break is reported.",
            "Do not load a file that does not parse; obtain an intact copy.",
            FORMATS, ("pickle", "obfuscation"),
        ),
        RuleMeta(
            "MW805", "pickle-indirect-call", Severity.HIGH,
            "Pickle calls something that is not a plain import",
            "A REDUCE/NEWOBJ whose callee is the result of another call (builtins.getattr(...), "
            "types.FunctionType(marshal.loads(...)) ...) cannot be checked against an allowlist.",
            "Do not load this file.", FORMATS, ("pickle", "code-execution", "obfuscation"),
        ),
        RuleMeta(
            "MW806", "pickle-unexpected-location", Severity.MEDIUM,
            "A pickle is hidden where the format does not put one",
            "An archive member with an unrelated name, a second stream after the first STOP, or a PyTorch "
            "archive member other than data.pkl holds a pickle. Some loaders unpickle it; scanners that go "
            "by file names miss it. Its imports are reported by the other pickle rules.",
            "Find out which loader reads this member; remove it if nothing should.",
            FORMATS, ("pickle", "obfuscation"),
        ),
        RuleMeta(
            "MW807", "numpy-object-array", Severity.LOW,
            "NumPy file holds an object array (a pickle)",
            "Object arrays are stored as a pickle and need np.load(allow_pickle=True), which unpickles "
            "whatever the file holds. Its imports are reported by the other pickle rules.",
            "Store numeric arrays only; load with allow_pickle=False.", ("numpy", "archive"), ("pickle",),
        ),
        RuleMeta(
            "MW808", "pytorch-torchscript-code", Severity.INFO,
            "PyTorch archive contains TorchScript code",
            "TorchScript programs (code/*.py members) run inside torch.jit.load'ed models; they are not "
            "arbitrary Python but can call any registered operator, including file and process operators "
            "of loaded extensions. What the code calls is judged by MW950-MW954 (custom ops, file and "
            "process operators, collectives, source TorchScript never emits); this finding only records "
            "that code is there.",
            "Review the code members, or export weights only.", ("pytorch", "archive"), ("pytorch",),
        ),
    )
}


def _loc(ctx: AnalysisContext, prog: PickleProgram, pos: int, op: str):
    return ctx.location(file=prog.source, node=f"byte {pos}", op=op, function=prog.role)


def _calls_to(prog: PickleProgram, dotted: str) -> list[PickleCall]:
    return [c for c in prog.calls if c.target == dotted]


@register
class PickleRules(Rule):
    """MW800-MW808 over every pickle program of an artifact."""

    metas = tuple(META.values())

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        for prog in ctx.artifact.pickles:
            yield from self._program(ctx, prog)
        md = ctx.artifact.metadata
        for member in filter(None, md.get("torchscript_code", "").split("\n")):
            yield ctx.finding(META["MW808"], f"TorchScript code member {member}",
                              ctx.location(file=member), evidence={"member": member})

    def _program(self, ctx: AnalysisContext, prog: PickleProgram) -> Iterable[Finding]:
        where = prog.source or ctx.artifact.display
        seen: dict[tuple[str, str], list[PickleImport]] = {}
        for imp in prog.imports:
            seen.setdefault((imp.dotted, imp.detail), []).append(imp)
        for (dotted, _), imps in seen.items():
            imp = imps[0]
            calls = _calls_to(prog, dotted) if imp.resolved else []
            verdict = classify_import(imp, calls)
            if verdict is None:
                continue
            rule_id, severity, reason = verdict
            msg = f"{where}: {imp.opcode} at byte {imp.pos} imports {dotted}, which {reason}"
            if len(imps) > 1:
                msg += f" (imported {len(imps)} times)"
            if calls:
                c = calls[0]
                msg += f"; called at byte {c.pos} ({c.opcode}) as {dotted}{_args(c.args)}"
                if len(calls) > 1:
                    msg += f" and {len(calls) - 1} more time(s)"
            evidence = {"import": dotted, "opcode": imp.opcode, "byte": str(imp.pos), "stream_offset": str(prog.offset)}
            if calls:
                evidence["calls"] = "; ".join(f"byte {c.pos} {c.opcode} {dotted}{_args(c.args)}" for c in calls[:10])
            if imp.detail:
                evidence["detail"] = imp.detail
            yield ctx.finding(META[rule_id], msg, _loc(ctx, prog, imp.pos, imp.opcode), severity=severity,
                              capability="python-import", evidence=evidence)
        indirect = [c for c in prog.calls if not c.resolved]
        for c in indirect[:50]:
            yield ctx.finding(
                META["MW805"], f"{where}: {c.opcode} at byte {c.pos} calls {c.target}{_args(c.args)}",
                _loc(ctx, prog, c.pos, c.opcode), capability="python-code",
                evidence={"target": c.target, "args": c.args, "byte": str(c.pos)},
            )
        if prog.error:
            found = f"; {len(prog.imports)} import(s) and {len(prog.calls)} call(s) before the break are reported" \
                if prog.imports or prog.calls else ""
            yield ctx.finding(META["MW804"], f"{where}: pickle stream starting at byte {prog.offset} is broken: "
                              f"{prog.error}{found}", _loc(ctx, prog, prog.end, "stream"),
                              evidence={"error": prog.error, "offset": str(prog.offset)})
        if prog.role.startswith("unexpected") and not _torchscript_member(ctx, prog):
            yield ctx.finding(META["MW806"], f"{where}: {prog.role.removeprefix('unexpected: ')} "
                              f"(pickle at byte {prog.offset}, {len(prog.imports)} import(s))",
                              _loc(ctx, prog, prog.offset, "stream"), evidence={"role": prog.role})
        if prog.role == "npy object array":
            yield ctx.finding(META["MW807"], f"{where}: object array stored as a pickle "
                              f"(needs allow_pickle=True; {len(prog.imports)} import(s))",
                              _loc(ctx, prog, prog.offset, "stream"))


# Pickles torch.jit.load / the lite interpreter read besides data.pkl with TorchScript's own
# unpickler (their imports are still judged); traced_inputs.pkl holds a traced module's example inputs.
TORCHSCRIPT_PICKLES = ("constants.pkl", "bytecode.pkl", "traced_inputs.pkl")


def _torchscript_member(ctx: AnalysisContext, prog: PickleProgram) -> bool:
    """Is this pickle one a TorchScript archive (it has code/ members) is expected to carry?"""
    if not ctx.artifact.metadata.get("torchscript_code") or "!" in prog.source:
        return False
    base = prog.source.rsplit("/", 1)[-1]
    return base in TORCHSCRIPT_PICKLES or (base.endswith(".debug_pkl") and "/code/" in f"/{prog.source}")


def _args(args: str) -> str:
    if args.startswith("(") and args.endswith(",)"):
        return args[:-2] + ")"
    if args.startswith("(") and args.endswith(")"):
        return args
    return f"({args})"
