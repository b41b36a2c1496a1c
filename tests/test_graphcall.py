"""The worker runs SavedModels in a session in its own thread (runtime/graphcall.py), with the outputs
of the standard eager call.

The test process never imports TensorFlow: a child process loads real SavedModels (built by the
fixture builders) into a real :class:`modelwarden.runtime.worker.Worker`, and separately with a
plain eager ``tf.saved_model.load``, calls every signature both ways on the same inputs, and
reports what it saw as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, build_fixtures
from tests.test_leancall import CHILD as LEAN_CHILD

# the input maker, the comparison and the refused inputs are the lean-call test's: one standard for both routes
HELPERS = LEAN_CHILD[:LEAN_CHILD.index("report = ")]

CHILD = HELPERS + r"""
from modelwarden.runtime import graphcall
from modelwarden.runtime.worker import _signature_specs

def switches():
    with open("/proc/thread-self/status") as f:
        return int(next(ln for ln in f if ln.startswith("voluntary_ctxt_switches")).split()[1])

report = {}
for path in json.loads(sys.argv[1]):
    w = Worker(tf, {}, {})
    w.load({"path": path, "kind": "saved_model"})
    eager = tf.saved_model.load(path).signatures
    report[path] = {"skipped": w.graph_skipped, "eager_signatures": sorted(eager)}
    for name, spec in w.specs.items():
        inputs = {s["name"]: make(s, path) for s in spec["inputs"]}
        entry = report[f"{path}:{name}"] = {"graph": name in w.graph, "problems": []}
        fn = eager[name]
        for _ in range(3):
            got, _us = w._checked_run(name, inputs)
            ref = fn(**{k: tf.constant(v, dtype=tf.string) if v.dtype.kind == "O" else tf.constant(v)
                        for k, v in inputs.items()})
            problem = same(got, {k: leancall.to_numpy(tf, v) for k, v in ref.items()})
            if problem:
                entry["problems"].append(problem)
        entry["outputs"] = {k: [str(v.dtype), list(v.shape)] for k, v in got.items()}
        entry["declared"] = [s["name"] for s in spec["outputs"]]
        entry["specs_match_eager"] = spec == _signature_specs(fn)

# does a call block on another thread?  Voluntary context switches of this thread over 200 calls,
# on the session route and (positive control) on the eager route of the same model
dense = json.loads(sys.argv[1])[0]
x = {"x": np.ones((2, 4), np.float32)}
for route, cfg in (("graph", {}), ("eager", {"graph_call": False})):
    w = Worker(tf, cfg, {})
    w.load({"path": dense, "kind": "saved_model"})
    for _ in range(50):
        w._run("serving_default", x)
    before = switches()
    for _ in range(200):
        w._run("serving_default", x)
    report[f"switches_{route}"] = switches() - before

w = Worker(tf, {}, {})
w.load({"path": dense, "kind": "saved_model"})
report["refused"] = {"graph": "serving_default" in w.graph, "codes": refused_codes(w)}
report["not_a_model"] = graphcall.load(tf, sys.argv[2])[1]
w = Worker(tf, {}, {})
w.load({"path": json.loads(sys.argv[1])[-1], "kind": "saved_model"})
report["graph_refused_y"] = w._checked_run("serving_default", {"x": np.array([1.0, -2.0], np.float32)})[0]["y"].tolist()

# a TensorFlow without the private Session._make_callable_from_options: the worker says why and
# answers through the eager route, with the standard call's outputs
from tensorflow.python.client import session as tf_session
private = tf_session.BaseSession._make_callable_from_options
del tf_session.BaseSession._make_callable_from_options
try:
    w = Worker(tf, {}, {})
    w.load({"path": dense, "kind": "saved_model"})
    got, _us = w._checked_run("serving_default", x)
    ref = tf.saved_model.load(dense).signatures["serving_default"](x=tf.constant(x["x"]))
    report["no_private_api"] = {"reason": w.graph_skipped, "graph": "serving_default" in w.graph,
                                "problem": same(got, {k: leancall.to_numpy(tf, v) for k, v in ref.items()})}
finally:
    tf_session.BaseSession._make_callable_from_options = private
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run, serve, lean = (build_fixtures(b) for b in ("build_run_models", "build_serve_models", "build_lean_models"))
    paths = [run / "dense", run / "big_output", lean / "mixed",
             *(serve / m / "1" for m in ("dense", "multi", "slow", "bytes", "strings", "examples")),
             lean / "graph_refused"]
    junk = tmp_path_factory.mktemp("junk")
    (junk / "saved_model.pb").write_bytes(b"\x0a\x05junk!")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([str(p) for p in paths]), str(junk)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-6000:]
    return json.loads(lines[-1][len("REPORT "):])


def _signatures(report: dict) -> dict:
    return {k: v for k, v in report.items() if ":" in k and not k.startswith(("switches", "refused"))}


def test_every_fixture_model_runs_in_a_session(report):
    """Variables, several signatures, strings, TF1 graphs with v1 control flow and Example parsing;
    all but the one that graph mode refuses (next test)."""
    models = {k: v for k, v in report.items() if isinstance(v, dict) and "skipped" in v}
    assert len(models) == 10
    assert [k for k, v in models.items() if v["skipped"]] == [k for k in models if k.endswith("graph_refused")]
    sigs = _signatures(report)
    assert len(sigs) == 14  # 8 single-signature models, mixed (3 signatures), examples (3)
    assert all(v["graph"] for k, v in sigs.items() if "graph_refused" not in k)
    for path, model in models.items():  # every signature the eager loader sees, no more
        assert sorted(k.rsplit(":", 1)[1] for k in sigs if k.startswith(path + ":")) == model["eager_signatures"]


def test_a_model_graph_mode_refuses_falls_back_to_the_eager_route(report):
    """A SavedModel with a registered checkpoint saver: TensorFlow's graph-mode loader refuses it, the
    worker says why, loads it eagerly and gives the standard call's outputs (checked in the next test
    with every other signature) from the checkpoint's value, not the variable's initial one."""
    (model,) = [v for k, v in report.items() if k.endswith("graph_refused")]
    assert "registered checkpoint saver" in model["skipped"]
    (sig,) = [v for k, v in report.items() if k.endswith("graph_refused:serving_default")]
    assert sig["graph"] is False and sig["problems"] == [] and sig["outputs"] == {"y": ["float32", [3]]}
    assert report["graph_refused_y"] == [2.5, -5.0]


def test_session_outputs_are_identical_to_the_standard_eager_call(report):
    """Values, dtypes, shapes and names equal on every signature, and the published specs are the
    ones the eager loader gives."""
    for key, entry in _signatures(report).items():
        assert entry["problems"] == [], key
        assert sorted(entry["outputs"]) == sorted(entry["declared"]), key
        assert entry["specs_match_eager"], key
    mixed = next(v for k, v in report.items() if k.endswith("mixed:serving_default"))
    assert mixed["outputs"] == {"Alpha": ["int32", [3]], "b_text": ["object", [3]], "count": ["int64", []],
                                "mid": ["bool", []], "zeta": ["float64", [3]]}


def test_a_call_does_not_wait_for_another_thread(report):
    """The session runs every op in the calling thread: the caller never sleeps on a hand-off.  The eager
    route (positive control) waits for TensorFlow's inter-op thread at least once per call."""
    assert report["switches_eager"] >= 150  # 199-200 measured
    assert report["switches_graph"] < 20


def test_inputs_are_checked_before_the_session(report):
    """Wrong inner dimension, wrong dtype, wrong rank, missing and unknown inputs."""
    assert report["refused"] == {"graph": True, "codes": ["invalid_input"] * 5}


def test_what_graph_mode_cannot_load_is_reported_not_raised(report):
    assert report["not_a_model"]


def test_without_the_private_session_api_the_worker_takes_the_eager_route(report):
    """``Session._make_callable_from_options`` is private TensorFlow API: in a TensorFlow without it,
    the worker reports why graph mode was skipped and answers through the eager route, with the
    standard eager call's outputs."""
    r = report["no_private_api"]
    assert "AttributeError" in r["reason"] and "_make_callable_from_options" in r["reason"]
    assert r["graph"] is False and r["problem"] == ""
