"""``modelwarden scan`` and ``modelwarden rules`` through real processes."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest

from modelwarden.analysis import registry

from .conftest import run_cli
from .test_cli_robustness import run_in_process

ROOT = Path(__file__).resolve().parents[1]
JSON_SCHEMA = json.loads((ROOT / "src/modelwarden/report/scan-report.schema.json").read_text())
SARIF_SCHEMA = json.loads((ROOT / "tests/data/sarif-2.1.0-schema.json").read_text())


# ---------------------------------------------------------------- rules


def test_rules_lists_every_rule() -> None:
    proc = run_cli("rules")
    assert proc.returncode == 0, proc.stderr
    ids = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert ids == [m.id for m in registry.all_meta()]
    mw101 = next(line for line in proc.stdout.splitlines() if line.startswith("MW101"))
    meta = registry.meta("MW101")
    assert meta.name in mw101 and meta.severity.label in mw101 and meta.summary in mw101


def test_rules_verbose_and_json() -> None:
    verbose = run_cli("rules", "-v")
    assert verbose.returncode == 0
    assert registry.meta("MW110").description in verbose.stdout
    data = json.loads(run_cli("rules", "--format", "json").stdout)
    rows = {r["id"]: r for r in data["rules"]}
    assert set(rows) == {m.id for m in registry.all_meta()}
    assert rows["MW100"]["severity"] == "critical" and rows["MW100"]["name"] == registry.meta("MW100").name


# ---------------------------------------------------------------- usage and input errors


def test_scan_nonexistent_path_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    proc = run_cli("scan", "--no-progress", str(missing))
    assert proc.returncode == 2
    assert str(missing) in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_scan_nonexistent_path_json_reports_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pb"
    proc = run_cli("scan", "--format", "json", str(missing))
    assert proc.returncode == 2
    data = json.loads(proc.stdout)
    jsonschema.Draft202012Validator(JSON_SCHEMA).validate(data)
    assert data["exit_code"] == 2 and data["verdict"] == "error"
    assert [e["path"] for e in data["errors"]] == [str(missing)]
    assert str(missing) in proc.stderr  # the person at the terminal is told too


@pytest.mark.parametrize(
    "args",
    [
        ("scan",),
        ("scan", "--format", "xml", "x"),
        ("scan", "--fail-on", "severe", "x"),
        ("scan", "--bogus-flag", "x"),
        ("rules", "--format", "sarif"),
        ("frobnicate",),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "error:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_policy_exits_2(tmp_path: Path) -> None:
    proc = run_cli("scan", "--policy", "paranoid", str(tmp_path))
    assert proc.returncode == 2
    assert "unknown policy 'paranoid'" in proc.stderr


def test_invalid_policy_file_exits_2_naming_it(tmp_path: Path) -> None:
    policy = tmp_path / "team.toml"
    policy.write_text('[[ignore]]\nrule = "MW101"\n')
    proc = run_cli("scan", "--policy", str(policy), str(tmp_path))
    assert proc.returncode == 2
    assert str(policy) in proc.stderr and "justification" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unwritable_output_exits_2(tmp_path: Path) -> None:
    proc = run_cli("scan", "--output", str(tmp_path / "no" / "dir" / "r.json"), str(tmp_path))
    assert proc.returncode == 2
    assert "cannot write report" in proc.stderr


def _tree_without_models(root: Path) -> Path:
    """A folder a CI gate could be pointed at by mistake: text, junk, a link, a FIFO; no model."""
    d = root / "no_models"
    (d / "sub").mkdir(parents=True)
    (d / "README.txt").write_text("hello")
    (d / "sub" / "payload.weird").write_bytes(b"\x00hostile bytes in an unknown wrapper")
    (d / "link").symlink_to("README.txt")
    os.mkfifo(d / "fifo")
    return d


def _in_process(capsys, *argv: str) -> subprocess.CompletedProcess:
    """The CLI in this process (no TensorFlow, no start-up cost), shaped like ``run_cli``'s result."""
    code, out, err = run_in_process(list(argv), capsys)
    return subprocess.CompletedProcess(argv, code, out, err)


@pytest.mark.parametrize("fmt", ["text", "json", "sarif", "html"])
def test_empty_scan_exits_4_in_every_format(tmp_path: Path, fmt: str, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (empty, _tree_without_models(tmp_path)):
        proc = _in_process(capsys, "scan", "--format", fmt, str(target))
        assert proc.returncode == 4, proc.stdout + proc.stderr
        out = proc.stdout
        if fmt == "json":
            data = json.loads(out)
            jsonschema.Draft202012Validator(JSON_SCHEMA).validate(data)
            assert data["verdict"] == "empty" and data["exit_code"] == 4 and data["artifacts"] == []
        elif fmt == "sarif":
            data = json.loads(out)
            jsonschema.Draft7Validator(SARIF_SCHEMA).validate(data)
            inv = data["runs"][0]["invocations"][0]
            assert inv["exitCode"] == 4 and not inv["executionSuccessful"]
            assert any("no model artifacts found" in n["message"]["text"] for n in inv["toolExecutionNotifications"])
        else:
            assert "no model artifacts found" in out and ("exit 4" in out)
        if fmt != "text":
            assert "no model artifacts found" in proc.stderr
        allowed = _in_process(capsys, "scan", "--format", fmt, "--allow-empty", str(target))
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        if fmt == "json":
            assert json.loads(allowed.stdout)["verdict"] == "pass"


@pytest.mark.parametrize("fmt", ["text", "json", "sarif", "html"])
def test_files_not_scanned_are_counted_and_listed_with_verbose(tmp_path: Path, fmt: str, capsys) -> None:
    d = _tree_without_models(tmp_path)
    names = {"no_models/README.txt": "unrecognised format", "no_models/sub/payload.weird": "unrecognised format",
             "no_models/link": "symbolic link (never followed)", "no_models/fifo": "not a regular file"}
    quiet = _in_process(capsys, "scan", "--format", fmt, "--allow-empty", str(d))
    loud = _in_process(capsys, "scan", "--format", fmt, "--allow-empty", "--verbose", str(d))
    assert quiet.returncode == loud.returncode == 0, quiet.stderr + loud.stderr
    if fmt == "json":
        q, v = json.loads(quiet.stdout)["skipped"], json.loads(loud.stdout)["skipped"]
        assert q["count"] == v["count"] == 4 and q["files"] == []
        assert q["reasons"] == {"unrecognised format": 2, "not a regular file": 1, "symbolic link (never followed)": 1}
        assert {os.path.relpath(f["path"], tmp_path): f["reason"] for f in v["files"]} == names
        return
    if fmt == "sarif":
        jsonschema.Draft7Validator(SARIF_SCHEMA).validate(json.loads(loud.stdout))
        assert json.loads(quiet.stdout)["runs"][0]["properties"]["skipped"] == 4
    assert "4 file" in quiet.stdout and "2 unrecognised format" in quiet.stdout
    assert "payload.weird" not in quiet.stdout
    for name in names:
        assert name.rsplit("/", 1)[-1] in loud.stdout, (name, loud.stdout[-2000:])


# ---------------------------------------------------------------- end to end on real TensorFlow fixtures


@pytest.fixture(scope="module")
def models(fixture_dir) -> dict[str, Path]:
    out = fixture_dir("build_tf_scan")
    manifest = json.loads((out / "manifest.json").read_text())
    return {f["name"]: out / f["path"] for f in manifest["fixtures"]}


def scan_json(*args: str) -> tuple[int, dict]:
    proc = run_cli("scan", "--format", "json", *args)
    data = json.loads(proc.stdout)
    jsonschema.Draft202012Validator(JSON_SCHEMA).validate(data)
    assert data["exit_code"] == proc.returncode
    return proc.returncode, data


def test_e2e_malicious_model_fails_text(models) -> None:
    proc = run_cli("scan", str(models["read_file_signature"]))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "MW101" in proc.stdout and "/etc/passwd" in proc.stdout
    assert "call path" in proc.stdout and " → " in proc.stdout
    assert "threshold medium → FAIL (exit 1)" in proc.stdout
    assert "\x1b[" not in proc.stdout  # not a terminal: plain text


def test_e2e_benign_model_passes(models) -> None:
    proc = run_cli("scan", str(models["variables_benign"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no findings" in proc.stdout and "PASS (exit 0)" in proc.stdout


def test_e2e_unreachable_is_labelled(models) -> None:
    proc = run_cli("scan", "--fail-on", "info", str(models["read_file_unreachable"]))
    assert "not reachable from any signature" in proc.stdout


def test_e2e_json_and_threshold(models) -> None:
    code, data = scan_json(str(models["read_file_signature"]))
    assert code == 1
    hit = next(f for f in data["findings"] if f["rule_id"] == "MW101")
    assert hit["severity"] == "high" and hit["rule_name"] == registry.meta("MW101").name
    assert hit["location"]["reachability"].startswith("signature")
    assert any("/etc/passwd" in v for v in hit["evidence"].values()) or "/etc/passwd" in hit["message"]
    assert data["artifacts"][0]["format"] == "tf-savedmodel"
    code, data = scan_json("--fail-on", "critical", str(models["read_file_signature"]))
    assert code == 0 and data["fail_on"] == "critical" and data["verdict"] == "pass"


def test_e2e_sarif_validates(models) -> None:
    proc = run_cli("scan", "--format", "sarif", str(models["read_file_signature"]), str(models["variables_benign"]))
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    jsonschema.Draft4Validator(SARIF_SCHEMA).validate(data)
    run = data["runs"][0]
    result = next(r for r in run["results"] if r["ruleId"] == "MW101")
    uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri.endswith("read_file_signature/saved_model.pb")
    assert run["invocations"][0]["exitCode"] == 1


def test_e2e_policy_file_ignores_and_lowers(models, tmp_path: Path) -> None:
    target = str(models["read_file_signature"])
    ignore = tmp_path / "ignore.toml"
    ignore.write_text('[[ignore]]\nrule = "MW101"\njustification = "reviewed: test fixture"\nwhere = "*"\n')
    code, data = scan_json("--policy", str(ignore), target)
    assert code == 0, data
    assert data["suppressed"] and data["suppressed"][0]["justification"] == "reviewed: test fixture"
    assert data["policy"] == "default+ignore.toml"
    lower = tmp_path / "lower.toml"
    lower.write_text('[severity]\nMW101 = "low"\n')
    code, data = scan_json("--policy", str(lower), target)
    assert code == 0 and data["counts"]["low"] >= 1 and data["counts"]["high"] == 0
    stricter = tmp_path / "stricter.toml"
    stricter.write_text('[severity]\nMW101 = "low"\nfail_on = "low"\n')
    assert run_cli("scan", "--policy", str(stricter), target).returncode == 2  # fail_on inside [severity] reads as a rule id: error
    stricter.write_text('fail_on = "low"\n[severity]\nMW101 = "low"\n')
    assert run_cli("scan", "--policy", str(stricter), target).returncode == 1  # the policy's threshold applies
    assert run_cli("scan", "--policy", str(stricter), "--fail-on", "high", target).returncode == 0  # CLI wins


def test_e2e_strict_profile(models) -> None:
    target = str(models["strict_timestamp"])
    assert run_cli("scan", target).returncode == 0
    code, data = scan_json("--policy", "strict", target)
    assert code == 1 and data["policy"] == "strict" and data["fail_on"] == "low"
    assert any(f["rule_id"] == "MW110" and "Timestamp" in f["message"] for f in data["findings"])
    code, data = scan_json("--policy", "strict", str(models["variables_benign"]))
    assert code == 0, data["findings"]


def test_e2e_keras_applications_pass_strict(models) -> None:
    keras = [str(p) for name, p in models.items() if name.startswith("keras_")]
    assert keras
    code, data = scan_json("--policy", "strict", *keras)
    assert code == 0, [(f["rule_id"], f["message"]) for f in data["findings"]]


def test_e2e_output_file_and_mixed_inputs(models, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    missing = tmp_path / "missing"
    proc = run_cli("scan", "-f", "json", "-o", str(out), str(models["variables_benign"]), str(missing))
    assert proc.returncode == 2 and proc.stdout == ""
    data = json.loads(out.read_text())
    assert len(data["artifacts"]) == 1 and [e["path"] for e in data["errors"]] == [str(missing)]
    assert str(missing) in proc.stderr


def test_e2e_missing_checkpoint_exits_2_naming_it(models, tmp_path: Path) -> None:
    prefix = tmp_path / "ckpt" / "model.ckpt"
    proc = run_cli("scan", "--checkpoint", str(prefix), str(models["variables_benign"]))
    assert proc.returncode == 2
    assert str(prefix) in proc.stdout + proc.stderr


# ---------------------------------------------------------------- clean errors for bad command lines

DENSE = ROOT / "examples" / "models" / "dense_savedmodel"


def test_symlink_problems_are_named(tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    proc = run_cli("scan", "--no-progress", str(tmp_path / "dangling"), str(tmp_path / "loop"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{tmp_path / 'dangling'}: dangling symbolic link" in proc.stdout
    assert f"{tmp_path / 'loop'}: symbolic link loop" in proc.stdout


def test_bad_tf_version_and_missing_checkpoint_are_usage_errors(tmp_path: Path) -> None:
    bad = run_cli("scan", "--tf-version", "abc", str(DENSE))
    assert bad.returncode == 2 and "--tf-version: not a TensorFlow version: 'abc'" in bad.stderr
    assert bad.stdout == ""  # no report: nothing was scanned
    missing = run_cli("scan", "--format", "json", "--checkpoint", str(tmp_path / "ckpt"), str(DENSE))
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.count(f"no checkpoint index {tmp_path / 'ckpt'}.index") == 1


def test_unreadable_checkpoint_is_one_error_and_keeps_the_models_findings(tmp_path: Path) -> None:
    (tmp_path / "ckpt.index").write_bytes(b"not a tensor bundle" * 10)
    proc = run_cli("scan", "--format", "json", "--checkpoint", str(tmp_path / "ckpt"), str(DENSE))
    assert proc.returncode == 2
    data = json.loads(proc.stdout)
    assert len(data["errors"]) == 1 and "ckpt" in data["errors"][0]["path"]
    assert [a["display"] for a in data["artifacts"]] == [str(DENSE)]
    assert "MW600" in {f["rule_id"] for f in data["findings"]}  # the model was still audited
    assert proc.stderr.count("modelwarden: error:") == 1


def test_token_list_says_when_there_are_none(tmp_path: Path) -> None:
    proc = run_cli("token", "list", "--token-db", str(tmp_path / "tokens.json"))
    assert proc.returncode == 0 and f"no tokens in {tmp_path / 'tokens.json'}" in proc.stdout


def test_readme_first_command_says_what_the_user_sees() -> None:
    """README, "The two commands": evil fails on two HIGH findings, dense passes with one INFO
    finding, and under --policy strict dense fails on PrintV2 and Fill."""
    proc = run_cli("scan", "--format", "json", str(ROOT / "examples" / "models"))
    assert proc.returncode == 1, proc.stderr
    by_artifact: dict[str, list[tuple[str, str]]] = {}
    for f in json.loads(proc.stdout)["findings"]:
        by_artifact.setdefault(Path(f["location"]["artifact"]).name, []).append((f["rule_id"], f["severity"]))
    assert sorted(by_artifact["evil_savedmodel"]) == [("MW101", "high"), ("MW102", "high")]
    assert by_artifact.get("dense_savedmodel") == [("MW600", "info")]
    strict = run_cli("scan", "--format", "json", "--policy", "strict", str(DENSE))
    assert strict.returncode == 1
    ops = {f["evidence"].get("op") or f["message"] for f in json.loads(strict.stdout)["findings"]
           if f["rule_id"] == "MW110"}
    assert any("PrintV2" in o for o in ops) and any("Fill" in o for o in ops) and len(ops) == 2


def test_a_finished_scan_leaves_its_report_stderr_and_exit_code(tmp_path):
    """``scan`` ends without the interpreter's teardown: the report (stdout or -o), the error lines
    on stderr and the exit code are all there, in a real process."""
    import json as _json
    import shutil as _shutil

    from tests.conftest import ROOT as _ROOT

    tree = tmp_path / "tree"
    for i in range(3):
        _shutil.copytree(_ROOT / "examples" / "models" / "evil_savedmodel", tree / f"evil-{i}")
    broken = tmp_path / "broken.pb"
    broken.write_bytes(b"\x0a\xff\xff\xff\xff\x0f")  # named and unreadable: an error, exit 2
    proc = run_cli("scan", str(tree), str(broken), "-f", "json", "--no-progress")
    assert proc.returncode == 2, proc.stderr
    report = _json.loads(proc.stdout)
    assert len(report["artifacts"]) == 3 and report["findings"] and report["errors"]
    assert "broken.pb" in proc.stderr
    out = tmp_path / "report.json"
    proc = run_cli("scan", str(tree / "evil-0"), "-f", "json", "--no-progress", "-o", str(out))
    assert proc.returncode == 1 and proc.stdout == ""  # findings at or above the threshold
    assert _json.loads(out.read_text())["verdict"] == "fail"


def test_only_a_scan_without_ray_skips_the_interpreter_teardown():
    """Ray's client leaves the cluster in its own exit handler: a ``--ray`` scan exits normally."""
    from modelwarden import cli
    from modelwarden.cli import scan_cmd

    def parsed(*argv: str):
        return cli.build_parser(list(argv)).parse_args(list(argv))

    assert scan_cmd.ends_at_once(parsed("scan", "m"))
    assert not scan_cmd.ends_at_once(parsed("scan", "m", "--ray"))
    assert not scan_cmd.ends_at_once(parsed("scan", "m", "--ray", "127.0.0.1:6379"))
    assert not hasattr(importlib.import_module("modelwarden.cli.rules_cmd"), "ends_at_once")
