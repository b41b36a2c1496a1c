"""The TensorFlow scanner against real TF-built fixtures (``tests/fixtures/build_tf_scan.py``).

Data-driven: every fixture in the builder's ``manifest.json`` says which rules
must fire (with evidence, reachability and call-path substrings) or that the
model is benign (nothing at medium or above).  The test process never imports
TensorFlow; the builder runs in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import modelwarden
from modelwarden.analysis.interface import Finding, Severity

from .conftest import ROOT, run_cli

SCAN_TIMEOUT = 60  # seconds per in-process scan: a hang is a failure, not a stuck suite

MALICIOUS = [
    "read_file_signature", "read_file_nested", "read_file_unreachable", "read_file_init_table",
    "matching_files", "text_line_dataset", "tfrecord_dataset", "restore_v2_signature",
    "write_file", "dataset_cache_file", "dataset_snapshot", "summary_writer", "save_v2_signature",
    "merge_v2_signature", "print_to_file", "debug_identity_urls", "py_function", "numpy_function",
    "immutable_const", "data_service", "remote_gcs", "remote_http", "strict_timestamp", "custom_op",
    "recursion_self", "recursion_mutual", "missing_function", "pbtxt_read_file", "asset_absolute",
    "asset_traversal", "asset_symlink", "asset_symlink_relative", "hard_link", "fifo_in_model",
    "frozen_read_file_pb", "frozen_read_file_pbtxt",
]
BENIGN = [
    "dataset_cache_memory", "variables_benign", "print_to_stderr", "strict_timestamp_default",
    "vocab_asset_benign", "asset_symlink_inside", "tf1_builder_benign", "frozen_benign_pb",
    "cond_variable_benign", "keras_mobilenetv2", "keras_resnet50", "keras_efficientnetb0",
]
# every rule id of the TF scanner has at least one malicious fixture
RULES = {"MW100", "MW101", "MW102", "MW103", "MW104", "MW105", "MW106", "MW107", "MW109", "MW110", "MW111",
         "MW200", "MW201", "MW202", "MW203"}


# --------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="session")
def built(fixture_dir) -> Path:
    return fixture_dir("build_tf_scan")


@pytest.fixture(scope="session")
def manifest(built) -> dict[str, dict]:
    data = json.loads((built / "manifest.json").read_text())
    return {f["name"]: f for f in data["fixtures"]}


@contextlib.contextmanager
def deadline(seconds: int, what: str):
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``."""

    def boom(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"scan of {what} did not finish within {seconds}s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


_REPORTS: dict[tuple[str, str], object] = {}


def scan(path: Path, policy: str = "default"):
    key = (str(path), policy)
    if key not in _REPORTS:
        with deadline(SCAN_TIMEOUT, str(path)):
            _REPORTS[key] = modelwarden.scan(str(path), policy=policy)
    return _REPORTS[key]


def finding_text(f: Finding) -> str:
    loc = f.location
    parts = [f.message, loc.op, loc.node, loc.function, loc.file, *map(str, f.evidence.values())]
    return "\n".join(p for p in parts if p)


def matches(f: Finding, exp: dict) -> bool:
    if f.rule_id != exp["rule"] or f.severity < Severity.parse(exp["min_severity"]):
        return False
    text = finding_text(f)
    if not all(e in text for e in exp["evidence"]):
        return False
    if exp["reachability"] and exp["reachability"] not in f.location.reachability:
        return False
    joined = "/".join(f.location.call_path).lower()
    return all(c.lower() in joined for c in exp["call_path"])


def describe(findings) -> str:
    return "\n".join(
        f"  {f.rule_id} {f.severity.label} {f.message!r} reach={f.location.reachability!r} "
        f"path={f.location.call_path} evidence={dict(f.evidence)}"
        for f in findings
    ) or "  (no findings)"


def rule_ids_in_json(doc: object) -> set[str]:
    """Every ``MWnnn`` rule id a JSON report mentions under a rule-id-like key."""
    out: set[str] = set()
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("rule_id", "ruleId", "rule", "id") and isinstance(v, str) and v.startswith("MW"):
                    out.add(v)
                stack.append(v)
        elif isinstance(node, list):
            stack.extend(node)
    return out


# --------------------------------------------------------------------------
# the manifest itself


def test_manifest_lists_exactly_the_parametrized_fixtures(manifest):
    assert set(manifest) == set(MALICIOUS) | set(BENIGN)
    assert all(not manifest[n]["benign"] for n in MALICIOUS)
    assert all(manifest[n]["benign"] and not manifest[n]["expect"] for n in BENIGN)


def test_every_rule_has_a_malicious_fixture(manifest):
    covered = {e["rule"] for f in manifest.values() for e in f["expect"]}
    assert RULES <= covered, RULES - covered


def test_fixture_paths_exist(built, manifest):
    for f in manifest.values():
        p = built / f["path"]
        assert p.exists() or p.is_symlink(), f["name"]


# --------------------------------------------------------------------------
# data-driven: malicious fixtures are caught, benign ones are clean


@pytest.mark.parametrize("name", MALICIOUS)
def test_malicious_fixture_is_caught(built, manifest, name):
    fx = manifest[name]
    report = scan(built / fx["path"], fx["policy"])
    assert not report.errors, f"{name}: unexpected read errors {report.errors}"
    for exp in fx["expect"]:
        assert any(matches(f, exp) for f in report.findings), (
            f"{name} ({fx['note']}): no finding matches {exp}\nfindings:\n{describe(report.findings)}"
        )


@pytest.mark.parametrize("name", BENIGN)
def test_benign_fixture_is_clean(built, manifest, name):
    fx = manifest[name]
    report = scan(built / fx["path"], fx["policy"])
    assert not report.errors, f"{name}: unexpected read errors {report.errors}"
    assert report.artifacts, f"{name}: nothing was recognised as a model"
    loud = [f for f in report.findings if f.severity >= Severity.MEDIUM]
    assert not loud, f"{name} ({fx['note']}) should be clean at medium+:\n{describe(loud)}"


# --------------------------------------------------------------------------
# specific properties the table cannot express


def test_evidence_carries_the_constant_path(built):
    report = scan(built / "models" / "read_file_signature")
    hits = [f for f in report.findings if f.rule_id == "MW101"]
    # the constant itself is a value of the evidence (possibly quoted), not just mentioned in a message
    assert any("/etc/passwd" in {str(v).strip("'\"") for v in f.evidence.values()} for f in hits), describe(hits)


def test_signature_call_paths_start_at_the_signature(built):
    report = scan(built / "models" / "read_file_nested")
    hits = [f for f in report.findings if f.rule_id == "MW101" and "/etc/shadow" in finding_text(f)
            and f.location.reachability.startswith("signature:")]
    assert hits, describe(report.findings)  # helper is also an object method: that path may be reported too
    for f in hits:
        assert f.location.call_path[0] == f.location.reachability == "signature:serving_default", describe([f])
        # signature -> caller -> helper -> while body -> cond branch: the whole chain is shown
        assert len(f.location.call_path) >= 4, describe([f])
        assert f.location.call_path[-1].startswith("while_cond_true") or any(
            "cond_true" in p for p in f.location.call_path), describe([f])


def test_unreachable_function_is_reported_as_unreachable_only(built):
    report = scan(built / "models" / "read_file_unreachable")
    hits = [f for f in report.findings if "/etc/hostname" in finding_text(f)]
    assert hits, describe(report.findings)
    assert all(f.location.reachability.startswith("unreachable") for f in hits), describe(hits)


def test_own_saver_machinery_is_not_a_finding_but_the_same_op_in_a_signature_is(built):
    benign = scan(built / "models" / "variables_benign")
    saver_ops = {"SaveV2", "RestoreV2", "MergeV2Checkpoints"}
    assert not [f for f in benign.findings if f.location.op in saver_ops and f.severity >= Severity.MEDIUM]
    evil = scan(built / "models" / "save_v2_signature")
    sig_hits = [f for f in evil.findings if f.location.op == "SaveV2" and f.location.reachability.startswith("signature:")]
    assert sig_hits, describe(evil.findings)
    assert all("/tmp/mw_exfil_ckpt" in finding_text(f) for f in sig_hits), describe(sig_hits)


def test_recursion_is_reported_once_per_cycle_and_terminates(built):
    for name in ("recursion_self", "recursion_mutual"):
        report = scan(built / "models" / name)
        cycles = [f for f in report.findings if f.rule_id == "MW109"]
        assert cycles, f"{name}:\n{describe(report.findings)}"
        assert len(cycles) <= 8, f"{name}: cycle reported over and over:\n{describe(cycles)}"


def test_lookup_table_from_own_asset_vs_from_host_file(built):
    own = scan(built / "models" / "vocab_asset_benign")
    assert not [f for f in own.findings if f.rule_id == "MW101" and f.severity >= Severity.MEDIUM]
    host = scan(built / "models" / "read_file_init_table")
    assert [f for f in host.findings if f.rule_id == "MW101" and f.location.reachability.startswith("load-time")]


def test_directory_scan_finds_each_artifact_once(built, manifest):
    models = built / "models"
    report = scan(models)
    expected = {p.name for p in models.iterdir() if p.is_dir()}
    seen = [p.parent.name if p.name.startswith("saved_model.") else p.name
            for p in (Path(a.path) for a in report.artifacts)]
    assert sorted(seen) == sorted(expected)
    default_rules = {e["rule"] for f in manifest.values() if f["policy"] == "default" and
                     f["path"].startswith("models/") for e in f["expect"] if e["reachability"] != "unreachable"}
    assert default_rules <= {f.rule_id for f in report.findings}
    assert report.exit_code == 1


# --------------------------------------------------------------------------
# the real CLI


def test_cli_json_malicious_exits_1(built):
    proc = run_cli("scan", str(built / "models" / "read_file_signature"), "--format", "json")
    assert proc.returncode == 1, proc.stderr
    assert "MW101" in rule_ids_in_json(json.loads(proc.stdout))


def test_cli_benign_keras_export_exits_0(built):
    proc = run_cli("scan", str(built / "models" / "keras_mobilenetv2"), "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    json.loads(proc.stdout)


def test_cli_frozen_graphdef_text_and_binary(built):
    for name in ("frozen_read_file.pb", "frozen_read_file.pbtxt"):
        proc = run_cli("scan", str(built / "graphdefs" / name), "--format", "json")
        assert proc.returncode == 1, (name, proc.stderr)
        assert "MW101" in rule_ids_in_json(json.loads(proc.stdout)), name


def test_cli_fifo_in_model_does_not_block(built):
    proc = run_cli("scan", str(built / "models" / "fifo_in_model"), "--format", "json",
                   "--fail-on", "info", timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "MW203" in rule_ids_in_json(json.loads(proc.stdout))


def test_cli_strict_policy(built):
    path = str(built / "models" / "strict_timestamp")
    strict = run_cli("scan", path, "--format", "json", "--policy", "strict", "--fail-on", "low")
    default = run_cli("scan", path, "--format", "json", "--policy", "default", "--fail-on", "low")
    assert strict.returncode == 1 and "MW110" in rule_ids_in_json(json.loads(strict.stdout)), strict.stderr
    assert "MW110" not in rule_ids_in_json(json.loads(default.stdout)), default.stdout


def test_cli_missing_path_exits_2(tmp_path):
    missing = tmp_path / "nope"
    proc = run_cli("scan", str(missing))
    assert proc.returncode == 2
    assert "nope" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------
# the scan path never imports TensorFlow, Keras or h5py

_PROBE = r"""
import json, sys
import modelwarden
report = modelwarden.scan(sys.argv[1])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "tf_keras", "h5py", "torch", "jax"})
print(json.dumps({"heavy": heavy, "artifacts": len(report.artifacts), "findings": len(report.findings)}))
"""


@pytest.mark.parametrize("name", ["keras_mobilenetv2", "read_file_nested", "vocab_asset_benign"])
def test_scan_never_imports_tensorflow(built, name):
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(built / "models" / name)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["artifacts"] >= 1, out  # the scan really read the model
    assert out["heavy"] == [], out


def test_cli_scan_never_imports_tensorflow(built):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "modelwarden", "scan", str(built / "models" / "keras_mobilenetv2")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "modelwarden" in imported
    assert not imported & {"tensorflow", "keras", "tf_keras", "h5py"}, sorted(imported)
