"""The worker's lean call (runtime/leancall.py) returns exactly what the standard signature call returns.

The test process never imports TensorFlow: a child process loads real SavedModels (built by the
fixture builders) into a real :class:`modelwarden.runtime.worker.Worker`, calls every signature
through the lean call and through the standard ``signature(**tensors)`` call on the same
inputs, and reports what it saw as JSON.  The worker runs SavedModels in a session when it can
(``runtime/graphcall.py``, tests/test_graphcall.py); the lean call is its eager route, taken
here with ``graph_call`` off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, build_fixtures

CHILD = r"""
import json, sys
import numpy as np
import tensorflow as tf
from modelwarden.runtime import leancall
from modelwarden.runtime.worker import Worker
from modelwarden.sandbox import protocol

rng = np.random.default_rng(7)

def example(i):
    f = tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5 * i, -1.25])),
        "n": tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),
        "tag": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"t" * i]))})
    return tf.train.Example(features=f).SerializeToString()

def make(spec, model):
    shape = [3 if d is None else d for d in spec["shape"]] if spec["shape"] is not None else [2]
    if spec["dtype"] == "string":
        if model.endswith("examples/1"):
            return protocol.string_array([example(i) for i in range(3)], (3,))
        return protocol.string_array([bytes(rng.integers(0, 256, i + 1, dtype=np.uint8)) for i in range(int(np.prod(shape)))], shape)
    dt = np.dtype(spec["dtype"])
    if spec["name"] in ("steps", "n"):  # while-loop length, output size: small
        return np.array(5, dt)
    if dt.kind == "f":
        return rng.normal(size=shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(-100 if dt.kind == "i" else 0, 100, shape).astype(dt)

def same(a, b):
    if a.keys() != b.keys():
        return f"names {sorted(a)} vs {sorted(b)}"
    for k in a:
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape or type(x) is not type(y):
            return f"{k}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        if x.dtype == object:
            if x.tolist() != y.tolist() or not all(type(e) is bytes for e in x.reshape(-1)):
                return f"{k}: {x.tolist()!r} vs {y.tolist()!r}"
        elif not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
            return f"{k}: {x!r} vs {y!r}"
    return ""

def refused_codes(w):
    # the error codes of five inputs TensorFlow's cast would refuse, on the dense model's signature
    from modelwarden.runtime.worker import WorkerError
    codes = []
    for bad in ({"x": np.zeros((2, 5), np.float32)}, {"x": np.zeros((2, 4), np.float64)}, {"x": np.zeros(4, np.float32)},
                {}, {"x": np.zeros((2, 4), np.float32), "extra": np.zeros(1, np.float32)}):
        try:
            w._checked_run("serving_default", bad)
        except WorkerError as exc:
            codes.append(exc.code)
    return codes

report = {"spinning": []}
for path in json.loads(sys.argv[1]):
    w = Worker(tf, {"graph_call": False}, {})
    report["spinning"].append(w.no_spinning_skipped)
    from tensorflow.python.eager import context
    report["spinning_disabled"] = context.context().config.experimental.disable_thread_spinning
    w.load({"path": path, "kind": "saved_model"})
    for name, spec in w.specs.items():
        inputs = {s["name"]: make(s, path) for s in spec["inputs"]}
        entry = report[f"{path}:{name}"] = {"lean": name in w.lean, "why": w.lean_skipped.get(name, ""),
                                            "problems": [], "outputs": {}}
        lean = w.lean.get(name)
        # interleaved; the lean call's first 2 * (TUNE_CALLS + 1) calls alternate between the default
        # and the single-threaded executor, so both are compared, then the one it settled on
        for _ in range(2 * (leancall.TUNE_CALLS + 1) + 2):
            fast, _us = w._checked_run(name, inputs)
            w.lean.pop(name, None)
            standard, _us = w._checked_run(name, inputs)
            if lean is not None:
                w.lean[name] = lean
            problem = same(fast, standard)
            if problem:
                entry["problems"].append(problem)
        entry["outputs"] = {k: [str(v.dtype), list(v.shape)] for k, v in fast.items()}
        entry["declared"] = [s["name"] for s in spec["outputs"]]
        entry["executor"] = lean.executor if lean is not None else None

# the lean call relies on the worker's input checks: what TensorFlow's cast would refuse never reaches it
w = Worker(tf, {"graph_call": False}, {})
w.load({"path": json.loads(sys.argv[1])[0], "kind": "saved_model"})
report["refused"] = {"lean": "serving_default" in w.lean, "codes": refused_codes(w)}

spec = tf.TensorSpec([None], tf.float32)
nested = tf.function(lambda d: {"y": d["a"] + d["b"][0]}).get_concrete_function({"a": spec, "b": [spec]})
report["nested"] = {"lean": leancall.plan(tf, nested)[0] is not None, "why": leancall.plan(tf, nested)[1]}
report["not_a_function"] = {"lean": leancall.plan(tf, object())[0] is not None, "why": leancall.plan(tf, object())[1]}
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def report():
    run, serve, lean = (build_fixtures(b) for b in ("build_run_models", "build_serve_models", "build_lean_models"))
    paths = [run / "dense", run / "big_output", lean / "mixed",
             *(serve / m / "1" for m in ("dense", "multi", "slow", "bytes", "strings", "examples"))]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([str(p) for p in paths])], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-6000:]
    return json.loads(lines[-1][len("REPORT "):])


def _signatures(report: dict) -> dict:
    return {k: v for k, v in report.items() if ":" in k}


def test_thread_pools_do_not_spin(report):
    """The first worker of the process configures the eager context before it starts; later ones
    (same process, context running) report that they could not."""
    assert report["spinning_disabled"] is True
    assert report["spinning"][0] == "" and all("already initialized" in why for why in report["spinning"][1:])


def test_every_fixture_signature_takes_the_lean_call(report):
    sigs = _signatures(report)
    assert len(sigs) == 13  # 7 single-signature models, mixed (3 signatures), examples (3)
    skipped = {k: v["why"] for k, v in sigs.items() if not v["lean"]}
    assert not skipped
    unsettled = {k for k, v in sigs.items() if v["executor"] not in ("default", "single-threaded")}
    assert not unsettled  # each settled on an executor after its first calls
    slow = next(v for k, v in sigs.items() if k.endswith("slow/1:serving_default"))
    assert slow["executor"] == "default"  # its while loop is v1 control flow: the single-threaded executor refuses it


def test_lean_outputs_are_identical_to_the_standard_call(report):
    """Values, dtypes, shapes and names equal on every signature, on both executors: variables
    (dense, mixed), several inputs and outputs (multi, mixed), strings in and out (strings, mixed,
    the TF1 examples graph), 0-d tensors (slow, big_output, mixed), int8/uint8/int32/int64/bool/float64."""
    for key, entry in _signatures(report).items():
        assert entry["problems"] == [], key
        assert sorted(entry["outputs"]) == sorted(entry["declared"]), key


def test_flat_output_order_is_mapped_to_names(report):
    mixed = next(v for k, v in report.items() if k.endswith("mixed:serving_default"))
    assert mixed["outputs"] == {"Alpha": ["int32", [3]], "b_text": ["object", [3]], "count": ["int64", []],
                                "mid": ["bool", []], "zeta": ["float64", [3]]}
    strings = next(v for k, v in report.items() if k.endswith("strings/1:serving_default"))
    assert strings["outputs"] == {"echo_bytes": ["object", [3]], "length": ["int32", [3]], "upper": ["object", [3]]}
    single = next(v for k, v in report.items() if k.endswith("mixed:single"))
    assert single["outputs"] == {"output_0": ["float64", [3, 3]]}


def test_inputs_tensorflow_would_refuse_are_refused_before_the_lean_call(report):
    """Wrong inner dimension, wrong dtype, wrong rank, missing and unknown inputs on a lean signature."""
    assert report["refused"] == {"lean": True, "codes": ["invalid_input"] * 5}


def test_structures_it_cannot_flatten_keep_the_standard_call(report):
    assert report["nested"]["lean"] is False and "flat dict" in report["nested"]["why"]
    assert report["not_a_function"]["lean"] is False and report["not_a_function"]["why"]
