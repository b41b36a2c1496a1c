"""ONNX reader (schema as data, no onnx import in the scanner) and rules MW830-MW834."""

from __future__ import annotations

import pytest

from modelwarden.formats import onnxproto
from modelwarden.formats.detect import sniff
from modelwarden.formats.interface import Candidate
from modelwarden.formats.onnx import OnnxReader
from modelwarden.ir import ArtifactFormat
from modelwarden.scanner import scan
from tests.test_pickle import check_entry, fx, manifest_entries  # noqa: F401 - fixture reuse


def test_every_fixture_matches_the_manifest(fx):  # noqa: F811
    entries = manifest_entries(fx, ("onnx",))
    assert len(entries) >= 10
    for e in entries:
        check_entry(fx, e)


def test_schema_field_numbers_match_onnx():
    onnx = pytest.importorskip("onnx")
    for name, fields in onnxproto.MESSAGES.items():
        real = getattr(onnx, name).DESCRIPTOR
        for fname, number, _ in fields:
            assert real.fields_by_name[fname].number == number, (name, fname)


def test_nested_and_function_nodes_are_found_with_scopes(fx):  # noqa: F811
    art = OnnxReader().read(Candidate(str(fx / "nested_custom.onnx"), ArtifactFormat.ONNX, "n.onnx"))
    hidden = [n for n in art.onnx.nodes if n.domain == "com.evil"]
    assert hidden and hidden[0].scope == "graph/if.then_branch" and art.onnx.subgraphs == 2
    art = OnnxReader().read(Candidate(str(fx / "function_custom.onnx"), ArtifactFormat.ONNX, "f.onnx"))
    assert art.onnx.functions == ("local.fns:Wrap",)
    assert any(n.scope == "function:local.fns:Wrap" and n.domain == "com.evil" for n in art.onnx.nodes)
    f = [f for f in scan(str(fx / "function_custom.onnx")).findings if f.rule_id == "MW830"]
    assert len(f) == 1 and "com.evil::Exec" in f[0].message  # the local function call itself is not custom


def test_detection_does_not_confuse_onnx_and_savedmodel(fx, tmp_path):  # noqa: F811
    assert sniff(str(fx / "mlp.onnx")) is ArtifactFormat.ONNX
    (tmp_path / "saved_model.bin").write_bytes(b"\x08\x01\x12\x00")
    assert sniff(str(tmp_path / "saved_model.bin")) is not ArtifactFormat.ONNX


def _ld(field: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, encoded by hand."""
    n, out = len(payload), bytearray([field << 3 | 2])
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out) + payload


def _nested_model(levels: int) -> bytes:
    graph = _ld(1, _ld(4, b"Relu"))  # GraphProto{node{op_type}}
    for _ in range(levels):  # GraphProto{node{op_type: If, attribute{name, g: graph}}}
        graph = _ld(1, _ld(4, b"If") + _ld(5, _ld(1, b"then_branch") + _ld(6, graph)))
    return b"\x08\x08" + _ld(7, graph)


def test_nested_graphs_deep_is_a_finding_deeper_is_an_error(tmp_path):
    (tmp_path / "deep20.onnx").write_bytes(_nested_model(20))
    (tmp_path / "deep5000.onnx").write_bytes(_nested_model(5000))
    r = scan(str(tmp_path / "deep20.onnx"))
    assert not r.errors and any(f.rule_id == "MW834" for f in r.findings)
    r = scan(str(tmp_path / "deep5000.onnx"))
    assert r.errors and "ONNX" in r.errors[0].message
