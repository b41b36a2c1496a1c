"""Pickle family (plain pickle, joblib, dill, PyTorch zip/legacy, NumPy): parser, readers, MW800-MW808.

Fixtures are built by real pickle/joblib/dill/NumPy in ``tests/fixtures/build_other_formats.py``;
``manifest.json`` says what each must produce.  Shared helpers here are reused by the other
format tests.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelwarden.analysis.interface import Severity
from modelwarden.analysis.rules.pickle import classify_import
from modelwarden.formats.detect import sniff
from modelwarden.formats.pickle_ops import parse_stream, parse_streams
from modelwarden.ir import ArtifactFormat, PickleImport
from modelwarden.scanner import scan
from tests.conftest import run_cli

KINDS = ("pickle", "pytorch", "numpy")


@pytest.fixture(scope="module")
def fx(fixture_dir) -> Path:
    return fixture_dir("build_other_formats")


def manifest_entries(fx: Path, kinds: tuple[str, ...]) -> list[dict]:
    return [e for e in json.loads((fx / "manifest.json").read_text())["fixtures"] if e["kind"] in kinds]


def check_entry(fx: Path, e: dict) -> None:
    """One manifest entry through the real scanner: rules present, clean, or an input error."""
    r = scan(str(fx / e["file"]))
    ids = {f.rule_id for f in r.findings}
    if e["error"]:
        assert r.errors and r.exit_code == 2, (e["file"], ids)
        assert all(err.message for err in r.errors)
        return
    assert not r.errors, (e["file"], r.errors)
    assert set(e["rules"]) <= ids, (e["file"], e["rules"], ids, [f.message for f in r.findings])
    if e["clean"]:
        loud = [f.message for f in r.findings if f.severity >= Severity.MEDIUM]
        assert not loud, (e["file"], loud)
        assert r.exit_code == 0
    assert r.exit_code == (1 if any(f.severity >= Severity.MEDIUM for f in r.findings) else 0)


def test_every_fixture_matches_the_manifest(fx):
    entries = manifest_entries(fx, KINDS)
    assert len(entries) >= 45
    for e in entries:
        check_entry(fx, e)


def _imports(data: bytes) -> list[str]:
    progs, _ = parse_streams(data, 0, len(data), "t")
    return [i.dotted for p in progs for i in p.imports]


@pytest.mark.parametrize("proto", range(6))
def test_parser_matches_pickletools_on_real_pickles(proto):
    import collections

    import numpy as np

    obj = {"a": [1, 2.5, "x", b"y", (1,)], "od": collections.OrderedDict(k=np.arange(3)), "s": {1}, "big": 2**90}
    data = pickle.dumps(obj, protocol=proto)
    prog = parse_stream(data, 0, len(data), "t")[0]
    assert not prog.error and prog.end == len(data)
    assert prog.opcodes == sum(1 for _ in pickletools.genops(data))
    # every GLOBAL pickletools sees is found, at the same byte, under the name find_class imports
    # (below protocol 3, Python 2 names such as __builtin__.set are mapped to Python 3 ones)
    expected = [(pos, fixed_import(arg, proto)) for op, arg, pos in pickletools.genops(data) if op.name == "GLOBAL"]
    got = {(i.pos, i.dotted) for i in prog.imports}
    assert set(expected) <= got


def fixed_import(arg: str, proto: int) -> str:
    """The ``module.name`` the unpickler imports for a GLOBAL argument ``'module name'``."""
    import _compat_pickle

    module, name = arg.split(" ", 1)
    if proto < 3:
        module, name = _compat_pickle.NAME_MAPPING.get(
            (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
    return f"{module}.{name}"


def test_payload_calls_are_reported_with_positions(fx):
    prog = parse_streams((fx / "os_system_p4.pkl").read_bytes(), 0, 10**9, "t")[0][0]
    call = next(c for c in prog.calls if c.target == "posix.system")
    assert call.opcode == "REDUCE" and "echo modelwarden-fixture" in call.args
    data = (fx / "os_system_p4.pkl").read_bytes()
    assert data[call.pos] == ord("R")


def test_memo_confusion_resolves_what_the_unpickler_would():
    from tests.fixtures.build_other_formats import memo_confusion

    data = memo_confusion()
    assert _imports(data) == ["os.system"]
    # the stream is one the real unpickler accepts: check with a harmless substitute of the target
    safe = data.replace(b"\x8c\x02os", b"\x8c\x04math").replace(b"\x8c\x06system", b"\x8c\x05floor")
    safe = safe.replace(b"\x8c\techo memo", b"\x8c\x03one")
    with pytest.raises(TypeError):  # math.floor("one"): the call happened on the resolved global
        pickle.loads(safe)


def test_broken_stream_keeps_everything_before_the_break(fx):
    progs, _ = parse_streams((fx / "broken_after_payload.pkl").read_bytes(), 0, 10**6, "t")
    assert progs[0].error.startswith("unknown opcode 0xff")
    assert [c.target for c in progs[0].calls] == ["posix.system"]


def test_several_pickles_and_the_legacy_torch_layout(fx):
    progs, _ = parse_streams((fx / "two_streams.pkl").read_bytes(), 0, 10**6, "t")
    assert len(progs) == 2 and progs[1].imports[0].dotted == "posix.system"
    r = scan(str(fx / "legacy_payload.pt"))
    assert r.artifacts[0].format == "pytorch"
    f = next(f for f in r.findings if f.rule_id == "MW800")
    assert f.location.function == "legacy torch sys info"


def test_torch_zip_storages_are_not_read(fx, tmp_path):
    from tests.fixtures.build_other_formats import torch_state_pickle, write_torch_zip

    data, storages = torch_state_pickle({"w": (1024, 1024)})
    write_torch_zip(tmp_path / "m.pt", data, storages)
    a = __import__("modelwarden.formats", fromlist=["reader_for"]).reader_for(ArtifactFormat.PYTORCH)
    from modelwarden.formats.interface import Candidate

    art = a.read(Candidate(str(tmp_path / "m.pt"), ArtifactFormat.PYTORCH, "m.pt"))
    assert [p.role for p in art.pickles] == ["torch data.pkl"]
    assert {i.dotted for i in art.pickles[0].imports} == {
        "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage"}
    assert art.pickles[0].persistent_ids[0].startswith("('storage', torch.FloatStorage, '0', 'cpu', 1048576")


@pytest.mark.parametrize("module,name,rule,severity", [
    ("collections", "OrderedDict", None, None),
    ("torch._utils", "_rebuild_tensor_v2", None, None),
    ("numpy.core.multiarray", "_reconstruct", None, None),
    ("__builtin__", "set", None, None),
    ("builtins", "eval", "MW800", Severity.CRITICAL),
    ("builtins", "print", "MW800", Severity.CRITICAL),
    ("os.path", "exists", "MW800", Severity.CRITICAL),
    ("subprocess", "Popen", "MW800", Severity.CRITICAL),
    ("importlib.util", "spec_from_file_location", "MW800", Severity.CRITICAL),
    ("numpy.testing._private.utils", "runstring", "MW800", Severity.CRITICAL),
    ("torch.serialization", "load", "MW800", Severity.CRITICAL),
    ("torch", "load", "MW800", Severity.CRITICAL),
    ("numpy", "load", "MW800", Severity.CRITICAL),
    ("collections", "_sys.modules", "MW803", Severity.CRITICAL),
    ("torch._utils", "_rebuild_tensor_v2.__globals__", "MW803", Severity.CRITICAL),
    ("sklearn.linear_model._base", "LinearRegression", "MW802", Severity.MEDIUM),
    ("mypkg.evil", "Thing", "MW802", Severity.HIGH),
    ("os system", "x", "MW801", Severity.CRITICAL),
])
def test_allowlist_classification(module, name, rule, severity):
    got = classify_import(PickleImport(module, name, 0, "GLOBAL"))
    if rule is None:
        assert got is None
    else:
        assert got is not None and got[0] == rule and got[1] == severity, got


def test_detection_is_by_content(fx, tmp_path):
    (tmp_path / "weights.txt").write_bytes((fx / "os_system_p2.pkl").read_bytes())
    (tmp_path / "notes.txt").write_text("(c) 2024 someone\ncos\nsystem\nmore text\n")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nc\n(\n")
    assert sniff(str(tmp_path / "weights.txt")) is ArtifactFormat.PICKLE
    assert sniff(str(tmp_path / "notes.txt")) is None
    assert sniff(str(tmp_path / "vocab.txt")) is None
    assert sniff(str(fx / "proto0_payload.pkl")) is ArtifactFormat.PICKLE
    assert sniff(str(fx / "state_dict.pt")) is ArtifactFormat.PYTORCH
    assert sniff(str(fx / "legacy.pt")) is ArtifactFormat.PYTORCH
    assert sniff(str(fx / "compressed.joblib")) is ArtifactFormat.PICKLE
    assert sniff(str(fx / "arrays.npz")) is ArtifactFormat.NUMPY


@pytest.mark.parametrize("data", [
    b"\x80\x04X\xff\xff\xff\xff" + b"a" * 10,  # 4 GB BINUNICODE
    b"\x80\x04\x8d" + struct.pack("<Q", 2**64 - 1) + b"x",  # BINUNICODE8 max
    b"\x80\x04\x8e" + struct.pack("<Q", 2**63) + b"x",  # BINBYTES8
    b"\x80\x04\x8b" + struct.pack("<i", -5),  # LONG4 negative
    b"\x80\x04\x8b" + struct.pack("<i", 2**31 - 1),  # LONG4 huge
    b"\x80\x04\x95" + struct.pack("<Q", 2**63),  # FRAME
    b"\x80\x02" + b"(" * 300_000 + b"t" * 300_000 + b".",  # deep tuples
    b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b".",  # deep lists
    b"\x80\x02I" + b"9" * 100_000 + b"\n.",  # huge INT text
    b"\x80\x02j\xff\xff\xff\xff.",  # LONG_BINGET missing
    b"\x80\x02N" + b"r\xff\xff\xff\x7f" * 10 + b".",  # memo far indices
    b"\x80\x06N.",  # protocol 6
    b"c" + b"a" * 100_000,  # GLOBAL without newline
    b"",
])
def test_hostile_streams_end_quickly_without_exceptions(data):
    t = time.perf_counter()
    progs, _ = parse_streams(data, 0, len(data), "h")
    assert time.perf_counter() - t < 5
    assert progs == [] or progs[0].end <= len(data)


def _mutations():
    import collections

    seeds = [pickle.dumps(obj, protocol=p) for p in range(6)
             for obj in ({"a": [1, "x", (2.5, None)]}, collections.OrderedDict(z=b"abc"), [set([1]), frozenset()])]
    from tests.fixtures.build_other_formats import getattr_chain, memo_confusion, stack_global_nonstring

    seeds += [memo_confusion(), stack_global_nonstring(), getattr_chain()]
    return st.sampled_from(seeds)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=_mutations(), edits=st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255), st.sampled_from(
    ["flip", "insert", "delete", "truncate"])), max_size=6))
def test_fuzz_mutated_real_pickles(seed, edits):
    data = bytearray(seed)
    for pos, byte, kind in edits:
        if not data:
            break
        i = pos % len(data)
        if kind == "flip":
            data[i] = byte
        elif kind == "insert":
            data.insert(i, byte)
        elif kind == "delete":
            del data[i]
        else:
            del data[i:]
    blob = bytes(data)
    progs, end = parse_streams(blob, 0, len(blob), "fuzz")
    assert 0 <= end <= len(blob)
    for p in progs:
        assert p.error or p.end <= len(blob)
        for imp in p.imports:
            assert 0 <= imp.pos < len(blob)


def test_real_unpickler_imports_are_a_subset_of_ours():
    """Differential: every find_class the real unpickler makes is one we report."""
    import collections

    import numpy as np

    seen: list[str] = []

    class Spy(pickle._Unpickler):  # the pure-Python unpickler: its protocol is visible
        def find_class(self, module, name):
            seen.append(fixed_import(f"{module} {name}", self.proto))
            return super().find_class(module, name)

    for proto in range(6):
        data = pickle.dumps([collections.OrderedDict(a=np.float32(1)), np.ones(2), {1, 2}], protocol=proto)
        seen.clear()
        Spy(io.BytesIO(data)).load()
        assert set(seen) <= set(_imports(data)), proto


def test_cli_exit_codes_and_json(fx):
    p = run_cli("scan", str(fx / "memo_confusion.pkl"), "--format", "json")
    assert p.returncode == 1
    data = json.loads(p.stdout)
    assert data["findings"][0]["rule_id"] == "MW800"
    assert run_cli("scan", str(fx / "state_dict.pt")).returncode == 0
    assert run_cli("scan", str(fx / "truncated.pkl")).returncode == 1  # MW804 is a finding


def test_no_tensorflow_imported_by_scanning_pickles(fx):
    code = ("import sys; from modelwarden.scanner import scan; scan(sys.argv[1]); "
            "assert 'tensorflow' not in sys.modules and 'torch' not in sys.modules and 'onnx' not in sys.modules")
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code, str(fx)], check=True, timeout=120,
                   env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
