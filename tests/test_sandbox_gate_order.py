"""The scan gate comes first: a worker never sees a byte of a model the gate refuses.

With the built-in backend the worker starts (and imports TensorFlow) while the parent scans,
and the model is copied in only once the gate passed (docs/sandbox.md, "Cold start").  Each
test waits, at the gate, until the worker is fully up, then asks it what it sees where its
model goes; the parent's hand-over (``snapshot.send``) is watched as well.  Positive control:
a model the gate accepts shows up in the same worker after the gate, and runs.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from modelwarden.sandbox import OpBlocked, Sandbox, SandboxLimits, ScanRefused, snapshot, template
from modelwarden.sandbox.namespaces import probe_namespaces

_NS_OK, _NS_WHY = probe_namespaces()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(not _NS_OK, reason=f"namespaces unavailable: {_NS_WHY}")]


@pytest.fixture(params=["fresh", "template"])
def spawn(request, monkeypatch):
    """Both ways a built-in worker starts: a fresh interpreter, or forked from the template."""
    if request.param == "template":
        monkeypatch.setenv("MODELWARDEN_WORKER_TEMPLATE", "1")
        template.warm()
    else:
        monkeypatch.setenv("MODELWARDEN_WORKER_TEMPLATE", "0")
    return request.param


@pytest.fixture
def watch(monkeypatch):
    """At the gate: wait for the worker (TensorFlow imported, hardened), record what it sees in its
    model directory; record every file the parent hands over and when."""
    seen: dict = {"sent": [], "gate_passed": False}
    real_scan, real_send = Sandbox._host_scan, snapshot.send

    def gate(self, path):
        self._worker.wait_ready(time.monotonic() + 300)
        seen["at_gate"] = self.introspect()
        real_scan(self, path)
        seen["gate_passed"] = True

    def send(sock, copies):
        seen["sent"].append((seen["gate_passed"], [rel for c in copies for rel, _ in c["files"]]))
        real_send(sock, copies)

    monkeypatch.setattr(Sandbox, "_host_scan", gate)
    monkeypatch.setattr(snapshot, "send", send)
    return seen


def test_a_model_the_in_sandbox_recheck_refuses_is_refused_and_the_worker_killed(fixture_dir, spawn):
    """The re-check runs in a child of the worker while it imports TensorFlow; its verdict still
    stops the load (scan gate off, re-check on: only the re-check can refuse)."""
    with Sandbox(SandboxLimits(load_timeout_s=300), backend="namespaces") as sb:
        with pytest.raises(OpBlocked, match="re-check refused"):
            sb.load(fixture_dir("build_escape") / "fileops", scan=False, recheck=True)
        assert not sb.alive


def test_a_refused_model_never_reaches_the_worker(fixture_dir, spawn, watch):
    model = fixture_dir("build_escape") / "fileops"  # ReadFile/WriteFile: the gate refuses it
    sb = Sandbox(SandboxLimits(load_timeout_s=300), backend="namespaces")
    with pytest.raises(ScanRefused):
        sb.load(model)
    info = watch["at_gate"]
    assert info["layers"]["template"] is (spawn == "template")
    assert info["status"]["Seccomp"] == "2"  # the worker was up and hardened while the parent scanned
    assert info["model_dir"] == []  # ... and its model directory was empty
    assert watch["sent"] == []  # nothing was ever handed over
    assert not sb.alive
    sb.close()


def test_control_an_accepted_model_arrives_after_the_gate_and_runs(fixture_dir, spawn, watch):
    d = fixture_dir("build_run_models")
    expected = json.loads((d / "expected.json").read_text())
    with Sandbox(SandboxLimits(load_timeout_s=300), backend="namespaces") as sb:
        model = sb.load(d / "dense")
        assert watch["at_gate"]["model_dir"] == []
        assert watch["sent"] == [(True, watch["sent"][0][1])] and "saved_model.pb" in watch["sent"][0][1]
        info = sb.introspect()
        assert info["model_dir"] == sorted(os.listdir(d / "dense"))  # the same worker sees it now
        assert info["proc_pids"] == ["1"]  # the early re-check's child is gone (reaped at load)
        assert any(m.startswith("tmpfs /model tmpfs ro,") for m in info["mounts"]), info["mounts"]  # read-only
        out = model.predict({"x": np.asarray(expected["x"], np.float32)})
        np.testing.assert_allclose(out["y"], expected["y"], rtol=1e-5)
