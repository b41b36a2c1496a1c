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
