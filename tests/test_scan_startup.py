"""Scan start-up (issue 13): what a whole-process ``modelwarden scan`` of a SavedModel imports.

A behaviour test, not a timing test: every module listed here was measured on the scan's
critical path (``python -X importtime``) and is not needed to audit a SavedModel, so importing
it again is a start-up regression (bench/bench_scan.py (a) measures the time itself).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# readers of other formats, renderers the JSON report does not use, engines and the results store
# a one-model scan does not start, and the run/serve halves of the package
NOT_NEEDED = {
    "modelwarden.formats.pickle_file", "modelwarden.formats.pickle_ops", "modelwarden.formats.archive",
    "modelwarden.formats.keras_v3", "modelwarden.formats.keras_h5", "modelwarden.formats.keras_config",
    "modelwarden.formats.marshal_facts", "modelwarden.formats.onnx", "modelwarden.formats.tflite",
    "modelwarden.formats.pytorch", "modelwarden.formats.safetensors", "modelwarden.formats.numpy_file",
    "modelwarden.formats.hub", "modelwarden.report.sarif", "modelwarden.report.html",
    "modelwarden.report.svg_callgraph", "modelwarden.engine.store", "modelwarden.engine.ray_engine",
    "modelwarden.policy.loader", "modelwarden.sandbox", "modelwarden.server", "modelwarden.runtime",
    # stdlib machinery the scan path used to pay for at start-up: TOML parsing (the catalog is read
    # from its compiled ops.json), dataclass creation (modelwarden.record), pkgutil/inspect (rule discovery)
    "tomllib", "dataclasses", "inspect", "pkgutil",
    # never at scan time
    "tensorflow", "keras", "tf_keras", "h5py", "torch", "numpy", "jinja2",
}


@pytest.fixture(scope="module")
def mobilenet(fixture_dir):
    return fixture_dir("build_tf_scan") / "models" / "keras_mobilenetv2"


# runs the CLI exactly as ``python -m modelwarden`` does, then lists sys.modules (``-X importtime``
# does not see modules imported through importlib.import_module, as the rule registry does); the
# scan's final os._exit becomes a SystemExit here so the listing still runs
_PROBE = """
import json, os, runpy, sys
os._exit = sys.exit  # a finished scan ends without the interpreter's teardown: keep the probe's line
try:
    runpy.run_module("modelwarden", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
sys.stderr.write("\\nMODULES " + json.dumps([code, sorted(sys.modules)]) + "\\n")
"""


def _imports(*args: str, no_site: bool = False) -> tuple[int, str, set[str]]:
    """``no_site``: the interpreter without ``site`` (``-S``; site-packages on PYTHONPATH instead),
    so the host's ``.pth`` files do not import modules of their own into the listing."""
    env = None
    flags = []
    if no_site:
        import os
        import site

        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *site.getsitepackages()]))
        flags = ["-S"]
    proc = subprocess.run([sys.executable, *flags, "-c", _PROBE, *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES ")]
    assert line, proc.stderr[-2000:]
    code, names = json.loads(line[-1][len("MODULES "):])
    return code, proc.stdout, set(names)


def _hits(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == m or n.startswith(m + ".") for m in NOT_NEEDED))


def test_savedmodel_scan_imports_only_what_it_needs(mobilenet):
    code, out, names = _imports("scan", str(mobilenet), "--format", "json", "--no-progress")
    assert code == 0
    report = json.loads(out)
    assert len(report["artifacts"]) == 1 and report["artifacts"][0]["format"] == "tf-savedmodel"
    assert report["artifacts"][0]["nodes"] > 1000  # the graphs were really read and analysed
    # positive control: the modules a SavedModel scan does need were imported (the probe sees imports)
    assert {"modelwarden.formats.savedmodel", "modelwarden.analysis.rules.capabilities",
            "modelwarden.catalog", "google.protobuf"} <= names
    assert _hits(names) == []


# the catalog's data files read through importlib.resources (it and what it imports cost ~6 ms of
# every scan's start-up on a host whose site step does not import them already), urllib.parse
# imported by every process for a rule's check of URL-like paths (~2 ms)
NOT_NEEDED_WITHOUT_SITE = {"importlib.resources", "tempfile", "urllib.parse"}  # (a rule's URL check imports it on need)


def test_catalog_data_is_read_without_importlib_resources(mobilenet):
    code, out, names = _imports("scan", str(mobilenet), "--format", "json", "--no-progress", "--policy", "strict",
                                "--tf-version", "2.10.0", no_site=True)
    assert code in (0, 1)
    report = json.loads(out)
    # positive control: the catalog, the strict allowlist and the advisories were all read
    assert {"modelwarden.catalog", "modelwarden.advisories", "modelwarden.policy.profiles"} <= names
    assert report["artifacts"][0]["nodes"] > 1000 and report["policy"] == "strict" and report["fail_on"] == "low"
    assert not NOT_NEEDED_WITHOUT_SITE & names, sorted(NOT_NEEDED_WITHOUT_SITE & names)


def test_other_formats_still_load_their_readers(tmp_path):
    """The control: the same probe does see a reader being imported when the format needs it."""
    import pickle

    (tmp_path / "model.pkl").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    code, out, names = _imports("scan", str(tmp_path / "model.pkl"), "--format", "json", "--no-progress")
    assert code == 0
    assert "modelwarden.formats.pickle_file" in names
    assert json.loads(out)["artifacts"][0]["format"] == "pickle"
