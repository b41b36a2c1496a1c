"""Hugging Face (MW930-MW935, MW920-MW925) and MLflow (MW940-MW945) model directories.

Fixtures are saved by transformers / mlflow themselves (``tests/fixtures/build_hub_formats.py``);
the remote-code payload is confirmed by ``AutoConfig.from_pretrained(trust_remote_code=True)``
in the builder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modelwarden.analysis.interface import Severity
from modelwarden.formats.detect import discover
from modelwarden.formats.hub.pysource import python_source
from modelwarden.scanner import scan
from tests.test_pickle import check_entry, manifest_entries


@pytest.fixture(scope="module")
def hub(fixture_dir) -> Path:
    return fixture_dir("build_hub_formats")


def check_manifest(hub: Path, kind: str, minimum: int) -> None:
    """Every manifest entry of ``kind``: its rules present, clean or an input error, and no ``absent`` rule."""
    entries = manifest_entries(hub, (kind,))
    assert len(entries) >= minimum
    for e in entries:
        check_entry(hub, e)
        if e["absent"]:
            ids = {f.rule_id for f in scan(str(hub / e["file"])).findings}
            assert not ids & set(e["absent"]), (e["file"], ids & set(e["absent"]))


def test_every_hf_fixture_matches_the_manifest(hub):
    check_manifest(hub, "hf", 8)


def test_load_plan_says_which_weights_a_loader_picks(hub):
    r = scan(str(hub / "hf" / "safetensors_beside_evil_pickle"))
    hf = next(a for a in r.artifacts if a.format == "hf-model")
    assert hf.metadata["weights"] == "model.safetensors"
    from modelwarden.scanner import read_artifact

    cands, _ = discover([str(hub / "hf" / "safetensors_beside_evil_pickle")])
    plan = read_artifact(next(c for c in cands if c.format.value == "hf-model")).load_plan
    assert [(s.action, s.target) for s in plan if s.action != "render-template"] == [
        ("read-weights", "model.safetensors"), ("ignored", "pytorch_model.bin"),
        ("unpickle-on-resume", "training_args.bin")]
    # the ignored pickle and the resume pickle are still scanned as artifacts of their own
    crit = {Path(f.location.artifact).name for f in r.findings if f.rule_id == "MW800"}
    assert crit == {"pytorch_model.bin", "training_args.bin"}
    only = scan(str(hub / "hf" / "llama_pickle_only"))
    assert next(a for a in only.artifacts if a.format == "hf-model").metadata["weights"] == "pytorch_model.bin"


def test_remote_code_findings_follow_relative_imports(hub):
    r = scan(str(hub / "hf" / "remote_code_evil"))
    by_file = {(f.rule_id, f.location.file) for f in r.findings}
    assert ("MW920", "configuration_tiny.py") in by_file  # exec at import
    assert ("MW920", "helpers.py") in by_file and ("MW921", "helpers.py") in by_file  # via `from .helpers import`
    top = [f for f in r.findings if f.rule_id == "MW920" and "exec()" in f.message]
    assert top and "at import" in top[0].message


@pytest.mark.parametrize("src,expected", [
    ("import subprocess as sp\nsp.check_output(['id'])", "subprocess.check_output"),
    ("from os import system as s\ns('id')", "os.system"),
    ("__import__('os').system('id')", "<call>.system"),
    ("import importlib\nimportlib.import_module('os')", "importlib.import_module"),
    ("from pathlib import Path\nPath('/x').write_text('y')", "<call>.write_text"),
])
def test_python_names_resolve_through_aliases(src, expected):
    from modelwarden.analysis.rules.python_code import classify_call

    facts = python_source(src.encode(), "m.py", "hf remote code")
    names = [c.name for c in facts.calls]
    assert expected in names, names
    assert any(classify_call(c) for c in facts.calls), names


def test_reading_files_is_not_writing():
    from modelwarden.analysis.rules.python_code import classify_call

    facts = python_source(b"open('w.txt')\nopen('x', 'rb')\nopen('y', mode='a')\n", "m.py", "hf remote code")
    assert [classify_call(c) for c in facts.calls] == [None, None, "MW922"]


def test_unparseable_and_hostile_sources_are_reported_not_raised():
    assert python_source(b"def (:", "m.py", "r").error
    deep = b"x = " + b"(" * 200_000 + b"1" + b")" * 200_000
    assert python_source(deep, "m.py", "r").error
    assert python_source(b"\x00\xff", "m.py", "r").error


def test_benign_remote_code_is_high_not_critical(hub):
    r = scan(str(hub / "hf" / "remote_code_benign"))
    assert max(f.severity for f in r.findings) == Severity.HIGH
    assert {f.rule_id for f in r.findings} == {"MW930"}


def test_every_mlflow_fixture_matches_the_manifest(hub):
    check_manifest(hub, "mlflow", 8)


def test_mlflow_plan_is_what_load_model_executes(hub):
    from modelwarden.scanner import read_artifact

    def plan(name):
        cands, _ = discover([str(hub / "mlflow" / name)])
        a = read_artifact(next(c for c in cands if c.format.value == "mlflow-model"))
        return [(s.action, s.target) for s in a.load_plan], a

    steps, a = plan("custom_loader")
    assert steps[0] == ("sys.path", "code") and steps[1] == ("import", "evil_loader")
    assert [p.role for p in a.python] == ["mlflow loader module"]
    steps, a = plan("models_from_code")
    # the MLmodel names the build machine's absolute path; the loader runs the basename inside the model
    assert ("run-code", "model_code.py") in steps and a.python[0].source == "model_code.py"
    steps, _ = plan("python_model_cloudpickle")
    assert ("unpickle", "python_model.pkl") in steps
    steps, _ = plan("sklearn_pickle")
    assert ("import", "mlflow.sklearn") in steps and ("unpickle", "model.pkl") in steps


def test_mlmodel_yaml_is_bounded(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "MLmodel").write_text("a: " + "[" * 100_000 + "]" * 100_000)
    r = scan(str(d))
    assert r.errors and "MLmodel" in r.errors[0].message and r.exit_code == 2
    (d / "MLmodel").write_text("a: &a [" + ",".join(["*a"] * 0) + "x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                               "c: [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nflavors: {python_function: {loader_module: x}}\n")
    r = scan(str(d))
    assert not r.errors and {f.rule_id for f in r.findings} == {"MW940"}


def test_every_torchscript_fixture_matches_the_manifest(hub):
    check_manifest(hub, "torchscript", 7)


def test_torchscript_code_is_parsed_and_load_time_setstate_is_named(hub):
    from modelwarden.scanner import read_artifact
    from modelwarden.formats.interface import Candidate
    from modelwarden.ir import ArtifactFormat

    p = hub / "torchscript" / "save_on_load.pt"
    a = read_artifact(Candidate(str(p), ArtifactFormat.PYTORCH, p.name))
    assert a.python and all(s.role == "torchscript code" for s in a.python)
    assert any(c.name == "torch.save" for s in a.python for c in s.calls)
    f = [f for f in scan(str(p)).findings if f.rule_id == "MW951"]
    assert f and "torch.save" in f[0].message and f[0].location.file.endswith("code/__torch__.py")
    custom = [f for f in scan(str(hub / "torchscript" / "custom_op.pt")).findings if f.rule_id == "MW950"]
    assert custom and "mwevil::payload" in custom[0].message


def test_source_budget_bounds_what_one_artifact_parses():
    from modelwarden.formats.hub.pysource import SourceBudget

    budget = SourceBudget(total=100)
    assert not budget.parse(b"x = 1\n" * 10, "a.py", "r").error
    spent = budget.parse(b"y = 2\n" * 10, "b.py", "r")
    assert "budget" in spent.error and not spent.calls


def test_scanning_hub_artifacts_imports_no_loader(hub):
    """Jinja2 (parser only) and PyYAML (safe loader) are the only libraries a hub scan may import."""
    import os
    import subprocess
    import sys

    code = ("import sys; from modelwarden.scanner import scan; r = scan(sys.argv[1]); assert r.artifacts; "
            "bad = [m for m in ('tensorflow', 'torch', 'keras', 'transformers', 'mlflow', 'gguf', 'cloudpickle', "
            "'sklearn', 'llama_cpp') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(hub)], check=True, timeout=300,
                   env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src")))
