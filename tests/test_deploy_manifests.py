"""deploy/: the KServe manifests validate against KServe's published schema (read from the KServe
and Kubernetes SDK wheels, see tests/kserve_schema.py), and the predictor's arguments are ones
``modelwarden serve`` accepts.  No cluster runs here: what was and was not run is in
docs/scale-out.md."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import kserve_schema
from tests.conftest import ROOT

yaml = pytest.importorskip("yaml")

WHEELS = Path(os.environ.get("MODELWARDEN_KSERVE_WHEELS", ROOT / ".ci-cache" / "kserve"))
_wheels = sorted(WHEELS.glob("kserve-*.whl")) + sorted(WHEELS.glob("kubernetes-*.whl"))
pytestmark = pytest.mark.skipif(
    len(_wheels) < 2, reason=f"KServe schema wheels not in {WHEELS} "
    "(pip download --no-deps -d .ci-cache/kserve kserve kubernetes; .ci/run does this)")

KINDS = {"ServingRuntime": "V1alpha1ServingRuntime", "InferenceService": "V1beta1InferenceService"}


@pytest.fixture(scope="module")
def schema():
    return kserve_schema.load(_wheels)


def manifests() -> list[Path]:
    return sorted((ROOT / "deploy" / "kserve").glob("*.yaml"))


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_manifest_matches_the_published_schema(schema, path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"].startswith("serving.kserve.io/")
    problems = kserve_schema.validate(doc, KINDS[doc["kind"]], schema, doc["kind"])
    assert problems == []


def test_the_validator_rejects_what_kserve_would(schema):
    """Negative controls: the schema check is not vacuous."""
    doc = yaml.safe_load((ROOT / "deploy" / "kserve" / "servingruntime.yaml").read_text())
    doc["spec"]["containers"][0]["argz"] = ["--x"]
    doc["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    doc["spec"]["supportedModelFormats"] = {"name": "tensorflow"}
    problems = kserve_schema.validate(doc, "V1alpha1ServingRuntime", schema, "ServingRuntime")
    assert any("argz: not a field of V1Container" in p for p in problems)
    assert any("containerPort: expected an integer" in p for p in problems)
    assert any("supportedModelFormats: expected a list" in p for p in problems)


def test_predictor_arguments_are_accepted_by_modelwarden_serve():
    from modelwarden.cli import build_parser

    doc = yaml.safe_load((ROOT / "deploy" / "kserve" / "servingruntime.yaml").read_text())
    (container,) = doc["spec"]["containers"]
    args = [a.replace("{{.Name}}", "dense") for a in container["args"]]
    ns = build_parser(["serve", *args]).parse_args(["serve", *args])
    assert ns.model_name == "dense" and ns.model_base_path == "/mnt/models" and ns.port == 8080
    assert container["ports"][0]["containerPort"] == ns.port
    probes = {container["readinessProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["path"]}
    assert probes == {"/readyz", "/healthz"}


def test_dockerfile_entrypoint_is_the_server():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["modelwarden", "serve"]' in text
    assert "USER 10001" in text and "bubblewrap" in text and "libseccomp2" in text
