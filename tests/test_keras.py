"""Keras readers (.keras, legacy .h5, keras_metadata) and rules MW300-MW303, driven by real fixtures.

``tests/fixtures/build_keras.py`` builds the models with real Keras 3 and writes
``manifest.json``: what each fixture must produce.  The test process never
imports TensorFlow or Keras.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from modelwarden.analysis.interface import AnalysisContext, Severity
from modelwarden.analysis.registry import rule_classes
from modelwarden.catalog import load_catalog
from modelwarden.errors import InputError, LimitExceeded
from modelwarden.formats import reader_for
from modelwarden.formats.interface import Candidate, Limits
from modelwarden.formats.keras_config import model_from_keras_metadata
from modelwarden.formats.keras_h5 import run_isolated
from modelwarden.ir import Artifact, ArtifactFormat, FileKind
from modelwarden.policy.interface import Policy

ROOT = Path(__file__).resolve().parents[1]
KERAS_RULE_IDS = {"MW300", "MW301", "MW302", "MW303"}


@pytest.fixture(scope="module")
def fx(fixture_dir) -> Path:
    return fixture_dir("build_keras")


@pytest.fixture(scope="module")
def manifest(fx) -> list[dict]:
    return json.loads((fx / "manifest.json").read_text())["fixtures"]


def _entries(kind: str) -> list[str]:
    """Fixture names by kind, known at collection time; test_manifest_is_covered keeps it equal to the manifest."""
    return {
        "model": [
            "mobilenetv2.keras", "mobilenetv2.h5", "efficientnetb0.keras", "efficientnetb0.h5",
            "mobilenetv3small.keras", "mobilenetv3small.h5", "stringlookup.keras", "stringlookup.h5",
            "compiled.keras", "compiled.h5", "bilstm.keras", "bilstm.h5", "weights_only.weights.h5",
            "weights_legacy.h5", "custom_registered.keras", "lambda_os.keras", "lambda_os.h5",
            "lambda_benign.keras", "lambda_benign.h5", "lambda_nested.keras", "lambda_nested.h5",
            "lambda_keras2.h5", "lambda_funcname.h5", "module_os.keras", "module_builtins_subprocess.keras",
            "keras_get_file.keras", "module_thirdparty.keras", "vocab_etc_passwd.keras", "vocab_url.keras",
            "vocab_gs.keras", "vocab_dotdot.keras", "vocab_etc_passwd.h5",
        ],
        "hostile": [
            "bomb.keras", "bomb_liar.keras", "truncated.keras", "invalid_json.keras", "nested.keras",
            "nested_objects.keras", "no_config.keras", "not_utf8.keras", "not_a_zip.keras",
            "many_members.keras", "random.h5", "random_signature.h5", "truncated.h5",
            "bad_model_config.h5",
        ],
        "data": ["not_keras.h5"],  # HDF5 without Keras attributes: data, scanned without error
    }[kind]


def _entry(manifest: list[dict], name: str) -> dict:
    matches = [e for e in manifest if e["file"] == name]
    assert matches, f"{name} missing from the fixture manifest"
    return matches[0]


def read(path: Path | str, fmt: str, limits: Limits | None = None) -> Artifact:
    f = ArtifactFormat(fmt)
    candidate = Candidate(str(path), f, Path(path).name)
    return reader_for(f).read(candidate) if limits is None else reader_for(f).read(candidate, limits)


def findings(artifact: Artifact):
    ctx = AnalysisContext(artifact, load_catalog(), Policy())
    out = []
    for cls in rule_classes():
        if not {m.id for m in cls.all_meta()} & KERAS_RULE_IDS:
            continue
        rule = cls()
        if rule.applies_to(ctx):
            out.extend(rule.check(ctx))
    return out


def test_manifest_is_covered(manifest):
    listed = {e["file"] for e in manifest}
    assert listed == set(_entries("model")) | set(_entries("hostile")) | set(_entries("data"))


@pytest.mark.parametrize("name", _entries("data"))
def test_non_keras_hdf5_is_data(fx, manifest, name):
    artifact = read(fx / name, _entry(manifest, name)["format"])
    assert artifact.keras is None and "not a Keras model" in artifact.metadata["content"]
    assert findings(artifact) == []


@pytest.mark.parametrize("name", _entries("model"))
def test_model_fixture_findings(fx, manifest, name):
    entry = _entry(manifest, name)
    artifact = read(fx / name, entry["format"])
    assert artifact.keras is not None
    got: dict[str, Severity] = {}
    for f in findings(artifact):
        got[f.rule_id] = max(got.get(f.rule_id, Severity.INFO), f.severity)
        assert f.location.artifact == name and f.message and f.remediation
    serious = {rid for rid, sev in got.items() if sev >= Severity.MEDIUM}
    if entry["benign"]:
        assert serious == set(), f"benign {name} has findings at medium or above: {got}"
    expected = {rid: Severity.parse(sev) for rid, sev in entry["expect"].items()}
    assert serious == set(expected), f"{name}: got {got}, expected {expected}"
    for rid, sev in expected.items():
        assert got[rid] == sev, f"{name}: {rid} is {got[rid].label}, expected {sev.label}"


@pytest.mark.parametrize("name", _entries("hostile"))
def test_hostile_fixture_fails_cleanly_and_fast(fx, manifest, name):
    entry = _entry(manifest, name)
    expected = LimitExceeded if entry["error"] == "LimitExceeded" else InputError
    start = time.monotonic()
    with pytest.raises(expected) as info:
        read(fx / name, entry["format"])
    assert time.monotonic() - start < 5.0
    assert info.value.path == str(fx / name)  # the message names the file
    assert str(fx / name) in str(info.value) and info.value.reason


def test_lambda_findings_name_path_and_bytecode(fx):
    by_rule = {}
    for f in findings(read(fx / "lambda_nested.keras", "keras-v3")):
        by_rule.setdefault(f.rule_id, []).append(f)
    paths = sorted(f.evidence["path"] for f in by_rule["MW300"])
    assert paths == ["config.layers[1].config.layer", "config.layers[2].config.layers[1]"]
    (danger,) = by_rule["MW301"]
    assert "__import__" in danger.evidence["dangerous"] and "subprocess" in danger.evidence["dangerous"]
    assert danger.location.node == "config.layers[2].config.layers[1]"
    os_finding = [f for f in findings(read(fx / "lambda_os.h5", "keras-h5")) if f.rule_id == "MW301"][0]
    assert "os" in os_finding.evidence["names"] and "system" in os_finding.message


def test_every_config_object_is_recorded(fx):
    keras = read(fx / "bilstm.keras", "keras-v3").keras
    classes = {o.path: o.class_name for o in keras.objects}
    assert classes[""] == "Functional"
    assert classes["config.layers[1].config.layer"] == "LSTM"  # wrapped layer
    assert classes["config.layers[1].config.backward_layer"] == "LSTM"
    assert classes["config.layers[1].config.layer.config.recurrent_initializer"] == "Orthogonal"
    compiled = read(fx / "compiled.keras", "keras-v3").keras
    kinds = {o.class_name for o in compiled.objects}
    assert {"Adam", "L2", "MaxNorm", "Sequential", "Dense"} <= kinds
    assert any(o.path.startswith("compile_config.") for o in compiled.objects)
    h5 = read(fx / "compiled.h5", "keras-h5").keras
    assert any(o.path.startswith("training_config.") for o in h5.objects)
    assert h5.keras_version and h5.backend == "tensorflow"


def test_keras_v3_files_and_metadata(fx):
    artifact = read(fx / "mobilenetv2.keras", "keras-v3")
    assert {e.relpath for e in artifact.files} == {"metadata.json", "config.json", "model.weights.h5"}
    assert all(e.kind is FileKind.FILE for e in artifact.files)
    assert artifact.keras.weight_files == ("model.weights.h5",)
    assert artifact.metadata["keras_version"] == artifact.keras.keras_version
    assert len(artifact.keras.objects) > 500 and artifact.keras.strings


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_member_names_are_facts_not_extracted(tmp_path, fx):
    src = fx / "compiled.keras"
    evil = tmp_path / "traversal.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(evil, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
        zout.writestr("../../outside.txt", b"x")
        zout.writestr("/etc/cron.d/job", b"x")
        link = zipfile.ZipInfo("assets/link")
        link.external_attr = (0o120777 << 16)
        zout.writestr(link, "../../../etc/passwd")
        zout.writestr("config.json", b'{"class_name": "Sequential", "config": {}}')  # a duplicate: last wins
    artifact = read(evil, "keras-v3")
    rel = {e.relpath: e for e in artifact.files}
    assert "../../outside.txt" in rel and "/etc/cron.d/job" in rel
    assert rel["assets/link"].kind is FileKind.SYMLINK and not rel["assets/link"].resolves_inside
    assert rel["assets/link"].link_target == "../../../etc/passwd"
    assert artifact.metadata["duplicate_members"] == "config.json"
    assert artifact.keras.objects[0].class_name == "Sequential"
    assert not (tmp_path.parent / "outside.txt").exists()


def test_symlinked_archive_is_refused(tmp_path, fx):
    link = tmp_path / "link.keras"
    link.symlink_to(fx / "compiled.keras")
    with pytest.raises(InputError, match="symbolic link"):
        read(link, "keras-v3")
    h5link = tmp_path / "link.h5"
    h5link.symlink_to(fx / "compiled.h5")
    with pytest.raises(InputError, match="symbolic link"):
        read(h5link, "keras-h5")


def test_limits_are_honoured(fx):
    with pytest.raises(LimitExceeded, match="members"):
        read(fx / "compiled.keras", "keras-v3", Limits(max_zip_members=2))
    with pytest.raises(LimitExceeded):
        read(fx / "mobilenetv2.keras", "keras-v3", Limits(max_json_bytes=10_000))
    with pytest.raises(LimitExceeded, match="objects"):
        read(fx / "mobilenetv2.h5", "keras-h5", Limits(max_nodes=100))


_MEMORY_PROBE = """
import resource, sys, time
from modelwarden.errors import LimitExceeded
from modelwarden.formats.interface import Candidate
from modelwarden.formats.keras_v3 import KerasV3Reader
from modelwarden.ir import ArtifactFormat
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.monotonic()
try:
    KerasV3Reader().read(Candidate(sys.argv[1], ArtifactFormat.KERAS_V3, "bomb"))
    print("NO ERROR")
except LimitExceeded as exc:
    print("LimitExceeded", exc.reason)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024, time.monotonic() - start)
print(int("tensorflow" in sys.modules or "keras" in sys.modules))
"""


@pytest.mark.parametrize("name", ["bomb.keras", "bomb_liar.keras"])
def test_zip_bomb_memory_stays_bounded(fx, name):
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(fx / name)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    verdict, growth, flags = proc.stdout.strip().splitlines()
    assert verdict.startswith("LimitExceeded"), proc.stdout + proc.stderr
    grown_mib, seconds = growth.split()
    # The bomb inflates to 1 GiB; reading stops at the ratio bound (<= 60 MiB here) in chunks.
    assert int(grown_mib) < 150 and float(seconds) < 5
    assert flags == "0"


_IMPORT_PROBE = """
import sys
from modelwarden.formats.interface import Candidate
from modelwarden.formats import reader_for
from modelwarden.ir import ArtifactFormat
from modelwarden.analysis.registry import rule_classes
rule_classes()
for path, fmt in zip(sys.argv[1::2], sys.argv[2::2]):
    reader_for(ArtifactFormat(fmt)).read(Candidate(path, ArtifactFormat(fmt), path))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras")))
"""


def test_readers_never_import_tensorflow_or_keras(fx):
    args = [str(fx / "lambda_os.keras"), "keras-v3", str(fx / "lambda_os.h5"), "keras-h5"]
    proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --------------------------------------------------------------------------
# The HDF5 child process


def _segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


def _hang():
    while True:
        pass


def _allocate():
    return len(bytearray(64 * 1024**3))


def _answer(x):
    return {"x": x, "pid": os.getpid()}


def test_isolated_call_returns_json_data():
    result = run_isolated(_answer, [1, "two"], timeout=10, max_output=1 << 20)
    assert result.error == "" and result.data["x"] == [1, "two"] and result.data["pid"] != os.getpid()


def test_isolated_crash_becomes_an_error():
    result = run_isolated(_segfault, timeout=10, max_output=1 << 20)
    assert result.error.startswith(f"crashed (signal {int(signal.SIGSEGV)}")


def test_isolated_hang_is_killed():
    start = time.monotonic()
    result = run_isolated(_hang, timeout=1.0, max_output=1 << 20)
    assert "timed out" in result.error or "signal" in result.error
    assert time.monotonic() - start < 4


def test_isolated_memory_is_limited():
    result = run_isolated(_allocate, timeout=10, max_output=1 << 20)
    assert "MemoryError" in result.error


def test_isolated_reply_is_bounded():
    result = run_isolated(_answer, "y" * 100_000, timeout=10, max_output=1000)
    assert "reply over" in result.error


# --------------------------------------------------------------------------
# tf.keras SavedModel metadata (keras_metadata.pb nodes) and the rules on it


def test_keras_metadata_nodes(fx):
    with zipfile.ZipFile(fx / "lambda_os.keras") as z:
        config = json.loads(z.read("config.json"))
    lam = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Lambda")
    # tf.keras writes one JSON object per layer node; Keras 2 spells Lambda code as a list.
    lam_cfg = dict(lam["config"], function=[lam["config"]["function"]["config"]["code"], None, None],
                   function_type="lambda", module="__main__")
    nodes = [
        ("root", 0, json.dumps({"class_name": "Functional", "name": "model", "config": {"layers": []}})),
        ("root.layer-1", 1, json.dumps({"class_name": "Lambda", "name": "pwn", "config": lam_cfg})),
        ("root.layer-2", 2, json.dumps({"class_name": "Dense", "name": "d", "config": {
            "kernel_initializer": {"module": "os", "class_name": "system", "config": {}}}})),
    ]
    model = model_from_keras_metadata(nodes, "keras_metadata.pb", Limits())
    assert model is not None and model.source_file == "keras_metadata.pb"
    paths = {o.path: o for o in model.objects}
    assert paths["root.layer-1"].lambda_code.names == ("os", "system")
    assert paths["root.layer-2.config.kernel_initializer"].module == "os"
    artifact = Artifact(path="sm", display="sm", format=ArtifactFormat.SAVEDMODEL, keras=model)
    got = {f.rule_id: f.severity for f in findings(artifact)}
    assert got == {"MW300": Severity.HIGH, "MW301": Severity.CRITICAL, "MW302": Severity.CRITICAL}
    assert model_from_keras_metadata([], "keras_metadata.pb", Limits()) is None
    with pytest.raises(InputError, match="keras_metadata.pb"):
        model_from_keras_metadata([("root", 0, "{not json")], "keras_metadata.pb", Limits())


def test_rules_ignore_artifacts_without_keras():
    artifact = Artifact(path="g", display="g", format=ArtifactFormat.GRAPHDEF)
    assert findings(artifact) == []


# --------------------------------------------------------------------------
# End to end: detection + reader + rules + policy through the scanner and the CLI


def test_scanner_end_to_end(fx, tmp_path):
    from modelwarden.scanner import scan

    for name in ("lambda_os.keras", "lambda_os.h5", "mobilenetv2.keras", "mobilenetv2.h5", "bomb.keras"):
        (tmp_path / name).write_bytes((fx / name).read_bytes())
    report = scan(str(tmp_path))
    by_file: dict[str, set[str]] = {}
    for f in report.findings:
        if f.severity >= Severity.MEDIUM:
            by_file.setdefault(Path(f.location.artifact).name, set()).add(f.rule_id)
    assert {"MW300", "MW301"} <= by_file["lambda_os.keras"]
    assert {"MW300", "MW301"} <= by_file["lambda_os.h5"]
    assert "mobilenetv2.keras" not in by_file and "mobilenetv2.h5" not in by_file
    assert [Path(e.path).name for e in report.errors] == ["bomb.keras"]
    assert report.exit_code == 2


def test_cli_scan_exit_codes(fx):
    from tests.conftest import run_cli

    bad = run_cli("scan", str(fx / "module_os.keras"))
    if "No module named 'modelwarden.cli." in bad.stderr:
        pytest.skip("CLI subcommands still being written")  # the scanner test above covers the pipeline
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "MW302" in bad.stdout
    good = run_cli("scan", str(fx / "efficientnetb0.keras"))
    assert good.returncode == 0, good.stdout + good.stderr


def test_tf_op_lambda_and_root_lambda():
    from modelwarden.formats.keras_config import model_from_config

    config = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "TFOpLambda", "config": {"name": "tf.io.write_file", "function": "io.write_file"}},
        {"class_name": "TFOpLambda", "config": {"name": "tf.math.add", "function": "math.add"}},
        {"class_name": "TFOpLambda", "config": {"name": "pf", "function": "numpy_function"}},
    ]}}
    model = model_from_config([("", config)], "config.json")
    artifact = Artifact(path="m", display="m", format=ArtifactFormat.KERAS_V3, keras=model)
    got = sorted((f.location.node, f.severity.label) for f in findings(artifact))
    assert got == [("config.layers[0]", "high"), ("config.layers[2]", "critical")]
    # A bare Lambda at the root: its own function is reported once, not again as a stray __lambda__.
    root = {"class_name": "Lambda", "config": {"function": {"class_name": "__lambda__", "config": {"code": "AA=="}}}}
    artifact = Artifact(path="m", display="m", format=ArtifactFormat.KERAS_V3,
                        keras=model_from_config([("", root)], "config.json"))
    assert [(f.rule_id, f.location.node) for f in findings(artifact)] == [("MW300", "(root)")]
