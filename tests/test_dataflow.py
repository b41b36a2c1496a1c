"""Dataflow rules and checkpoint audit on real TensorFlow SavedModels and checkpoints."""

import json

import pytest

import modelwarden
from modelwarden.analysis.interface import Severity


@pytest.fixture(scope="module")
def fx(fixture_dir):
    return fixture_dir("build_dataflow")


def _manifest(fx):
    return json.loads((fx / "manifest.json").read_text())


def _rules(report, at_least=Severity.INFO):
    return {f.rule_id for f in report.findings if f.severity >= at_least}


CASES = [
    "gated_write", "gated_harmless", "variable_path", "request_path", "alloc_tile", "alloc_fill", "alloc_range",
    "alloc_broadcast", "alloc_pad", "alloc_tensor_array", "alloc_loop", "alloc_shape_only", "nested_while_gate",
    "case_read", "tf1_switch", "shapes",
]  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_manifest_expectations(fx, name):
    exp = _manifest(fx)[name]
    report = modelwarden.scan(str(fx / name))
    assert not report.errors
    got = _rules(report)
    assert set(exp.get("expect", [])) <= got, (name, got)
    assert not set(exp.get("forbid", [])) & got
    for rule, sev in exp.get("severity", {}).items():
        assert max(f.severity for f in report.findings if f.rule_id == rule) == Severity.parse(sev)
    if exp.get("benign"):
        assert not report.failing(), [f.message for f in report.failing()]
    if "op" in exp:
        assert any(f.location.op.endswith(exp["op"]) for f in report.findings if f.rule_id == "MW603")


def test_gated_finding_shows_predicate_and_data_path(fx):
    report = modelwarden.scan(str(fx / "gated_write"))
    f = next(f for f in report.findings if f.rule_id == "MW600")
    assert f.evidence["predicate"] == "Greater(ReadVariableOp(flag), 0.5)"
    assert "If(then_branch=" in f.evidence["path"] and f.evidence["path"].endswith("WriteFile(path='/tmp/modelwarden-gated.txt')")
    assert f.evidence["path"].startswith("signature:serving_default → ")


def test_audit_tells_armed_from_dormant(fx):
    armed = modelwarden.scan(str(fx / "gated_write"), checkpoint=str(fx / "gated_write_armed" / "ckpt"))
    dormant = modelwarden.scan(str(fx / "gated_write"), checkpoint=str(fx / "gated_write_dormant" / "ckpt"))
    a = [f for f in armed.findings if f.rule_id == "MW613"]
    assert len(a) == 1 and a[0].severity == Severity.CRITICAL and "flag=1.0" in a[0].message
    assert "MW613" not in _rules(dormant)
    d = [f for f in dormant.findings if f.rule_id == "MW614"]
    assert len(d) == 1 and "flag=0.0" in d[0].message


def test_audit_evaluates_switch_case_and_tf1_switch(fx):
    case = modelwarden.scan(str(fx / "case_read"), checkpoint=str(fx / "case_read_armed" / "ckpt"))
    assert any(f.rule_id == "MW613" and "branches[2]" in f.message for f in case.findings)
    own = modelwarden.scan(str(fx / "case_read"))  # the model's own variables: mode=0
    assert "MW613" not in _rules(own) and "MW614" in _rules(own)
    tf1 = modelwarden.scan(str(fx / "tf1_switch"))
    assert any(f.rule_id == "MW614" and "output_true" in f.message for f in tf1.findings)


def test_audit_reports_path_value_from_checkpoint(fx):
    report = modelwarden.scan(str(fx / "variable_path"), checkpoint=str(fx / "variable_path_evil" / "ckpt"))
    f = next(f for f in report.findings if f.rule_id == "MW616")
    assert f.evidence["value"] == "'/etc/cron.d/evil'"


def test_gate_through_loop_is_reported_unevaluated_not_guessed(fx):
    report = modelwarden.scan(str(fx / "nested_while_gate"), checkpoint=str(fx / "nested_while_gate_armed" / "ckpt"))
    assert "MW613" not in _rules(report) and "MW614" not in _rules(report)
    assert any(f.rule_id == "MW615" for f in report.findings)


@pytest.mark.parametrize(
    "ckpt, rule",
    [("shapes_extra/ckpt", "MW611"), ("shapes_wrong/ckpt", "MW612"), ("shapes_missing/ckpt", "MW610"),
     ("shapes_truncated/variables", "MW500")],
)
def test_checkpoint_that_does_not_fit_the_graph(fx, ckpt, rule):
    report = modelwarden.scan(str(fx / "shapes"), checkpoint=str(fx / ckpt))
    assert rule in _rules(report)
    assert modelwarden.scan(str(fx / "shapes")).findings == ()


def test_missing_checkpoint_is_an_input_error(fx, tmp_path):
    report = modelwarden.scan(str(fx / "shapes"), checkpoint=str(tmp_path / "nope"))
    assert report.exit_code == 2 and "nope" in report.errors[0].path
