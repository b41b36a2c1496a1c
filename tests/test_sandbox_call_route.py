"""How a real sandboxed worker calls a SavedModel: in a TensorFlow session in its calling thread by
default (runtime/graphcall.py), eagerly with ``Sandbox(session_call=False)`` (what the one-shot
``modelwarden run`` uses: a quicker load for a single call).  Same outputs either way."""

from __future__ import annotations

import numpy as np
import pytest

from modelwarden.sandbox import Sandbox, SandboxLimits
from modelwarden.sandbox.namespaces import probe_namespaces
from tests.conftest import build_fixtures

_NS_OK, _NS_WHY = probe_namespaces()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(not _NS_OK, reason=f"namespaces unavailable: {_NS_WHY}")]


@pytest.fixture(scope="module")
def serve_models():
    return build_fixtures("build_serve_models")


@pytest.mark.parametrize("model", ["dense", "multi", "strings"])
def test_the_session_and_the_eager_route_give_the_same_outputs(serve_models, model):
    path = serve_models / model / "1"
    results, routes = [], []
    for session in (True, False):
        with Sandbox(SandboxLimits(timeout_s=60, load_timeout_s=300), session_call=session) as sb:
            m = sb.load(path, scan=False)
            routes.append(m.call_route)
            sig = m.signature(None)
            rng = np.random.default_rng(3)
            inputs = {}
            for name, spec in sig.inputs.items():
                shape = [2 if d is None else d for d in (spec.shape or [2])]
                if spec.dtype == "string":
                    inputs[name] = np.array([b"ab%d" % i for i in range(int(np.prod(shape)))], dtype=object).reshape(shape)
                else:
                    inputs[name] = rng.normal(size=shape).astype(spec.dtype)
            results.append(m.predict(inputs))
    assert routes == ["session", "eager"]
    session_out, eager_out = results
    assert session_out.keys() == eager_out.keys()
    for k in session_out:
        assert session_out[k].dtype == eager_out[k].dtype and session_out[k].shape == eager_out[k].shape, k
        assert session_out[k].tolist() == eager_out[k].tolist(), k


def test_a_model_graph_mode_refuses_runs_eagerly_in_the_sandbox():
    """TensorFlow's graph-mode loader refuses a SavedModel with a registered checkpoint saver: the
    sandboxed worker falls back to the eager route by itself, with the checkpoint's values (2.5; the
    variable's initial value was 1.0), and says so."""
    path = build_fixtures("build_lean_models") / "graph_refused"
    with Sandbox(SandboxLimits(timeout_s=60, load_timeout_s=300)) as sb:
        m = sb.load(path, scan=False)
        assert m.call_route == "eager"
        for _ in range(3):  # the shared-memory path, warm
            out = m.predict({"x": np.array([1.0, -2.0, 0.5], np.float32)})
            assert out["y"].dtype == np.float32 and out["y"].tolist() == [2.5, -5.0, 1.25]
