"""`modelwarden run` and `modelwarden doctor` as real processes."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from modelwarden.sandbox.namespaces import probe_namespaces
from tests.conftest import run_cli

_NS_OK, _NS_WHY = probe_namespaces()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(not _NS_OK, reason=f"namespaces unavailable: {_NS_WHY}")]


@pytest.fixture(scope="module")
def benign(fixture_dir):
    d = fixture_dir("build_run_models")
    return d, json.loads((d / "expected.json").read_text())


@pytest.fixture(scope="module")
def escape(fixture_dir):
    return fixture_dir("build_escape")


def test_run_prints_outputs_as_json(benign):
    d, expected = benign
    res = run_cli("run", str(d / "dense"), "--inputs", json.dumps({"x": expected["x"]}))
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(json.loads(res.stdout)["y"], expected["y"], rtol=1e-6)


@pytest.mark.parametrize("name", ["dense.keras", "dense.tflite"])
def test_run_other_formats(benign, name):
    d, expected = benign
    res = run_cli("run", str(d / name), "--skip-scan", "--inputs", json.dumps({"x": expected["x"]}))
    assert res.returncode == 0, res.stderr
    (value,) = json.loads(res.stdout).values()
    np.testing.assert_allclose(value, expected["y"], rtol=1e-5)


def test_run_npy_input_and_npz_output(benign, tmp_path):
    d, expected = benign
    np.save(tmp_path / "x.npy", np.array(expected["x"], np.float32))
    res = run_cli("run", str(d / "dense"), "--skip-scan", "--input", f"x=@{tmp_path / 'x.npy'}",
                  "--output", str(tmp_path / "out.npz"))
    assert res.returncode == 0, res.stderr
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_allclose(out["y"], expected["y"], rtol=1e-6)


def test_run_inputs_from_file_and_json_output_file(benign, tmp_path):
    d, expected = benign
    (tmp_path / "in.json").write_text(json.dumps({"x": expected["x"]}))
    res = run_cli("run", str(d / "dense"), "--skip-scan", "--inputs", f"@{tmp_path / 'in.json'}",
                  "--output", str(tmp_path / "out.json"))
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(json.loads((tmp_path / "out.json").read_text())["y"], expected["y"], rtol=1e-6)


@pytest.mark.parametrize("inputs, match", [
    ({"x": [[1, 2, 3]]}, "shape"),
    ({"z": [[1, 2, 3, 4]]}, "unknown input 'z'"),
    ({"x": [[1, 2, 3, "a"]]}, "numbers"),
])
def test_invalid_input_exit_15(benign, inputs, match):
    d, _ = benign
    res = run_cli("run", str(d / "dense"), "--skip-scan", "--inputs", json.dumps(inputs))
    assert res.returncode == 15, res.stderr
    assert match in res.stderr


def test_deadline_exit_13(escape):
    t0 = time.monotonic()
    res = run_cli("run", str(escape / "endless"), "--skip-scan", "--timeout", "2s", "--inputs", '{"x": 0}')
    assert res.returncode == 13, res.stderr
    assert "deadline" in res.stderr
    assert time.monotonic() - t0 < 90


def test_memory_limit_exit_12(escape):
    res = run_cli("run", str(escape / "memory_bomb"), "--skip-scan", "--memory", "1536MiB", "--inputs", '{"n": 2048}')
    assert res.returncode == 12, res.stderr
    assert "memory limit" in res.stderr


def test_scan_gate_refuses_with_the_report_exit_10(escape):
    res = run_cli("run", str(escape / "fileops"), "--signature", "read", "--inputs", '{"path": [47]}')
    assert res.returncode == 10, res.stderr
    assert "refused by the static scan" in res.stderr
    assert "MW" in res.stderr  # rule ids of the findings


def test_unsandboxed_run_needs_the_scary_flag_and_warns(benign):
    d, expected = benign
    res = run_cli("run", str(d / "dense"), "--skip-scan", "--unsafe-no-sandbox-run-untrusted-code",
                  "--inputs", json.dumps({"x": expected["x"]}))
    assert res.returncode == 0, res.stderr
    assert "NO isolation" in res.stderr
    res = run_cli("run", str(d / "dense"), "--backend", "none", "--inputs", "{}")
    assert res.returncode == 2


@pytest.mark.parametrize("args, code, match", [
    (["--inputs", "{not json"], 2, "not valid JSON"),
    (["--inputs", "[1]"], 2, "JSON object"),
    (["--memory", "lots"], 2, "invalid size"),
    (["--output", "out.txt"], 2, ".json or .npz"),
])
def test_usage_errors_exit_2(benign, args, code, match):
    d, _ = benign
    res = run_cli("run", str(d / "dense"), "--skip-scan", *args)
    assert res.returncode == code, res.stderr
    assert match in res.stderr


def test_missing_model_exit_2(tmp_path):
    res = run_cli("run", str(tmp_path / "nope"), "--skip-scan", "--inputs", "{}")
    assert res.returncode == 2
    assert "no such file" in res.stderr


def test_doctor_reports_layers():
    res = run_cli("doctor", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["usable"] and data["backend"] == "namespaces"
    names = {c["name"]: c for c in data["checks"]}
    assert names["namespaces"]["ok"] and names["seccomp-bpf"]["ok"]
    text = run_cli("doctor")
    assert text.returncode == 0 and "namespaces" in text.stdout
