"""TFLite reader and MW4xx rules, on models converted by the real TFLite converter."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelwarden.analysis.interface import AnalysisContext
from modelwarden.analysis.registry import rule_classes
from modelwarden.analysis.rules.tflite import TFLiteOps
from modelwarden.catalog import load_catalog
from modelwarden.errors import InputError
from modelwarden.formats.flatbuf import flex_string_vector
from modelwarden.formats.interface import Candidate, Limits
from modelwarden.formats.tflite import BUILTIN_OPS, TFLiteReader, read_tflite
from modelwarden.ir import ArtifactFormat, EntryKind, FuncRef, FunctionKind, TensorValue
from modelwarden.policy.interface import Policy


@pytest.fixture(scope="module")
def tdir(fixture_dir):
    return fixture_dir("build_tflite")


@pytest.fixture(scope="module")
def manifest(tdir):
    return json.loads((tdir / "manifest.json").read_text())


def _read(tdir, name: str):
    return TFLiteReader().read(Candidate(str(tdir / name), ArtifactFormat.TFLITE, name))


def _findings(artifact, rules=None):
    ctx = AnalysisContext(artifact, load_catalog(), Policy())
    out = []
    for cls in rules or rule_classes():
        rule = cls()
        if rule.applies_to(ctx):
            out.extend(rule.check(ctx))
    return out


def _operators(fn):
    return [n for n in fn.nodes if not n.attrs.get("_tflite_tensor")]


def test_builtin_table_matches_tensorflow_schema(tdir):
    tf_ops = {int(k): v for k, v in json.loads((tdir / "builtin_ops.json").read_text()).items()}
    for code, name in tf_ops.items():
        if code < len(BUILTIN_OPS):
            assert BUILTIN_OPS[code] == name, code
    assert len(BUILTIN_OPS) >= 200


def test_valid_models_match_tf_schema_facts(tdir, manifest):
    checked = 0
    for name, want in manifest.items():
        if want["error"] is not None or "facts" not in want:
            continue
        facts = want["facts"]
        graph = _read(tdir, name).graphs[0]
        bodies = [graph.main, *graph.functions.values()]
        assert [f.name for f in bodies] == facts["subgraphs"]
        assert all(f.kind is FunctionKind.SUBGRAPH for f in bodies)
        ops = []
        for s, fn in enumerate(bodies):
            for n in _operators(fn):
                if n.attrs.get("_tflite_flex"):
                    ops.append([s, "CUSTOM", n.attrs["_tflite_custom_code"]])
                elif n.op.startswith("tfl-custom:"):
                    ops.append([s, "CUSTOM", n.op.split(":", 1)[1]])
                else:
                    ops.append([s, n.op.removeprefix("tfl:"), ""])
        assert ops == facts["ops"], name
        assert sorted(s.name for s in graph.signatures) == facts["signatures"]
        assert sorted(ep.name for ep in graph.entry_points) == facts["signatures"]
        checked += 1
    assert checked == 5


def test_dense_model_details(tdir):
    art = _read(tdir, "dense.tflite")
    assert art.format is ArtifactFormat.TFLITE
    assert art.metadata["schema_version"] == "3"
    assert art.metadata["min_runtime_version"]
    (graph,) = art.graphs
    assert graph.name == "tflite" and graph.source_file == "dense.tflite"
    (sig,) = graph.signatures
    assert [(s.name, s.dtype, s.shape) for s in sig.inputs] == [("x", "float32", (1, 4))]
    assert [(s.name, s.dtype, s.shape) for s in sig.outputs] == [("y", "float32", (1, 3))]
    (fc,) = _operators(graph.main)
    assert fc.op == "tfl:FULLY_CONNECTED"
    # Inputs resolve to a placeholder for the signature input and a constant for the weights.
    by_name = {n.name: n for n in graph.main.nodes}
    kinds = sorted(by_name[i.split(":")[0]].op for i in fc.inputs)
    assert kinds == ["Const", "Placeholder"]
    weights = next(by_name[i] for i in fc.inputs if by_name[i].op == "Const").attrs["value"]
    assert isinstance(weights, TensorValue) and weights.shape == (3, 4) and weights.nbytes == 48
    assert graph.entry_points[0].kind is EntryKind.SIGNATURE
    assert fc.name in graph.entry_points[0].tensors


def test_control_flow_subgraphs_are_funcrefs(tdir):
    graph = _read(tdir, "control_flow.tflite").graphs[0]
    refs = {}
    for fn in (graph.main, *graph.functions.values()):
        for node in fn.nodes:
            for attr, ref in node.func_refs():
                assert isinstance(ref, FuncRef) and graph.function(ref.name) is not None
                refs[(node.op, attr)] = ref.name
    assert refs[("tfl:WHILE", "cond")] == "while_cond"
    assert refs[("tfl:WHILE", "body")] == "while_body"
    assert {("tfl:IF", "then_branch"), ("tfl:IF", "else_branch")} <= set(refs)
    assert not _findings(_read(tdir, "control_flow.tflite"))


def test_flex_ops_carry_the_tensorflow_op(tdir):
    graph = _read(tdir, "flex_read_file.tflite").graphs[0]
    (node,) = _operators(graph.main)
    assert node.op == "ReadFile" and node.attrs["_tflite_flex"] is True
    assert node.attrs["_tflite_custom_code"] == "FlexReadFile"
    graph = _read(tdir, "flex_write_file.tflite").graphs[0]
    ops = {n.op: n for n in _operators(graph.main)}
    assert set(ops) == {"WriteFile", "StringLength"}
    assert ops["StringLength"].attrs["unit"] == "BYTE"  # NodeDef attrs converted
    # The file name is a TFLite constant: it becomes a Const node with the decoded string.
    fname = {n.name: n for n in graph.main.nodes}[ops["WriteFile"].inputs[0]]
    assert fname.op == "Const" and fname.attrs["value"].values == ("/tmp/modelwarden-flex-write.txt",)


def test_rules_fire_per_manifest(tdir, manifest):
    for name, want in manifest.items():
        if want["error"] is not None or not name.startswith(("dense", "control", "flex", "custom")):
            continue
        ids = {f.rule_id for f in _findings(_read(tdir, name), [TFLiteOps])}
        assert ids == set(want["rules"]), name


def test_custom_op_finding(tdir):
    (f,) = _findings(_read(tdir, "custom_op.tflite"), [TFLiteOps])
    assert f.rule_id == "MW400" and f.severity.label == "high"
    assert f.location.op == "tfl-custom:Digamma" and f.location.file == "custom_op.tflite"
    assert f.location.reachability == "signature:serving_default"


def test_flex_file_ops_are_judged_by_tf_capability_rules(tdir):
    """The embedded TF op goes through the TF capability catalog (MW101 file read, MW102 file write)."""
    ids = {f.rule_id for f in _findings(_read(tdir, "flex_read_file.tflite"))}
    assert {"MW101", "MW401"} <= ids
    write = _findings(_read(tdir, "flex_write_file.tflite"))
    mw102 = [f for f in write if f.rule_id == "MW102"]
    assert mw102 and "/tmp/modelwarden-flex-write.txt" in mw102[0].message


def test_hostile_files_are_input_errors(tdir, manifest):
    n = 0
    for name, want in manifest.items():
        if want["error"] is None:
            continue
        start = time.monotonic()
        with pytest.raises(InputError, match=want["error"] or None) as info:
            _read(tdir, name)
        assert name in str(info.value)
        assert time.monotonic() - start < 1, name
        n += 1
    assert n >= 14


def test_self_referencing_subgraph_reads(tdir):
    """A WHILE whose body is its own subgraph is structurally valid; the call-graph rules judge it."""
    graph = _read(tdir, "hostile_while_self_reference.tflite").graphs[0]
    (while_node,) = [n for n in graph.main.nodes if n.op == "tfl:WHILE"]
    assert while_node.attrs["body"] == FuncRef("main")
    assert _findings(_read(tdir, "hostile_while_self_reference.tflite"))  # flagged by the structure rules


def test_node_limit(tdir):
    data = (tdir / "custom_op.tflite").read_bytes()
    with pytest.raises(InputError, match="more than 10 operators"):
        read_tflite(data, "m.tflite", Limits(max_nodes=10))


def test_scan_end_to_end(tdir):
    from modelwarden.scanner import scan

    report = scan([str(tdir / "flex_read_file.tflite"), str(tdir / "hostile_truncated.tflite")])
    assert {"MW101", "MW401"} <= {f.rule_id for f in report.findings}
    assert [e.path for e in report.errors] == [str(tdir / "hostile_truncated.tflite")]


def _mutate(data: bytes, draw) -> bytes:
    raw = bytearray(data)
    for _ in range(draw(st.integers(1, 12))):
        pos = draw(st.integers(0, len(raw) - 1))
        if draw(st.booleans()):
            raw[pos] = draw(st.integers(0, 255))
        else:  # plant a large or negative 32-bit value, the usual offset/length attack
            value = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFF0, len(raw), 4]))
            raw[pos : pos + 4] = value.to_bytes(4, "little")
    if draw(st.integers(0, 9)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    return bytes(raw)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_models_only_input_errors(tdir, data):
    name = data.draw(st.sampled_from(["dense.tflite", "control_flow.tflite", "flex_write_file.tflite", "custom_op.tflite"]))
    blob = _mutate((tdir / name).read_bytes(), data.draw)
    start = time.monotonic()
    try:
        read_tflite(blob, "fuzz.tflite")
    except InputError:
        pass
    assert time.monotonic() - start < 2


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=8))
def test_fuzz_flexbuffers(body, tail):
    try:
        flex_string_vector(body + tail, "f.tflite")
    except InputError:
        pass


def test_shared_huge_string_is_bounded(tdir):
    """Point every tensor name at one big string: copying must stop at the work budget, not run 100s of GB."""
    import struct as _struct

    from modelwarden.errors import LimitExceeded
    from modelwarden.formats.flatbuf import FlatBuffer

    dense = (tdir / "custom_op.tflite").read_bytes()
    model = FlatBuffer(dense, "m").root()
    sg = model.tables(2, "subgraphs")[0]
    tensors = sg.tables(0, "tensors")
    big = b"n" * (1 << 20)
    data = bytearray(dense) + _struct.pack("<I", len(big)) + big + b"\0"
    target = len(dense)
    for t in tensors:  # repoint each tensor's name field (index 3) at the big string
        pos = t._field(3)
        if pos is not None:
            _struct.pack_into("<I", data, pos, target - pos)
    start = time.monotonic()
    with pytest.raises(LimitExceeded, match="work budget"):
        read_tflite(bytes(data), "bomb.tflite")
    assert time.monotonic() - start < 5
    assert len(tensors) > 20
