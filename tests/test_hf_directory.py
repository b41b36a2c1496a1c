"""Directories of real projects: a Hugging Face model directory scans clean; mixed formats once each."""

from __future__ import annotations

import json

from modelwarden.formats.detect import discover
from modelwarden.scanner import scan
from tests.conftest import run_cli
from tests.test_pickle import fx  # noqa: F401 - fixture reuse


def test_hf_directory_is_clean_and_weights_are_artifacts_beside_the_directory(fx):  # noqa: F811
    r = scan(str(fx / "hf_model"))
    assert not r.errors and [(f.rule_id, f.message) for f in r.findings] == [
        ("MW936", "from_pretrained reads model.safetensors")]  # the load plan, at info
    assert sorted(a.format for a in r.artifacts) == ["hf-model", "safetensors"]
    hf = next(a for a in r.artifacts if a.format == "hf-model")
    assert hf.metadata["weights"] == "model.safetensors" and hf.metadata["remote_code"] == "0"
    p = run_cli("scan", str(fx / "hf_model"))
    assert p.returncode == 0, p.stdout + p.stderr


def test_mixed_directory_reports_each_artifact_once(fx):  # noqa: F811
    cands, errors = discover([str(fx / "mixed")])
    assert not errors
    formats = sorted((c.format.value, c.display.rsplit("/", 1)[-1]) for c in cands)
    assert formats == [("archive", "bundle.zip"), ("numpy", "weights.npy"), ("onnx", "model.onnx"),
                       ("pickle", "payload.pkl"), ("pytorch", "pytorch_model.bin"),
                       ("safetensors", "model.safetensors")]
    r = scan([str(fx / "mixed"), str(fx / "mixed" / "sub" / "payload.pkl")])
    assert len(r.artifacts) == 6
    crit = [f for f in r.findings if f.rule_id == "MW800"]
    assert len(crit) == 1 and crit[0].location.artifact.endswith("payload.pkl")
    data = json.loads(run_cli("scan", str(fx / "mixed"), "--format", "json").stdout)
    assert sorted(a["format"] for a in data["artifacts"]) == [
        "archive", "numpy", "onnx", "pickle", "pytorch", "safetensors"]
