"""``modelwarden serve --ray``: the server's replicas on a real multi-node Ray Serve deployment,
confined to a private network namespace that has only loopback."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.conftest import ROOT
from tests.test_engine_ray import NETNS, _OK, _WHY
from tests.test_server_e2e import namespaces_available

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'modelwarden[ray]')")
pytestmark = [pytest.mark.sandbox,
              pytest.mark.skipif(not _OK, reason=f"cannot make a private network namespace: {_WHY}"),
              pytest.mark.skipif(not namespaces_available(), reason="sandbox namespaces unavailable")]


def test_serve_on_ray_replicas_survive_a_node_loss_and_share_revocations(fixture_dir, tmp_path):
    import subprocess

    out = tmp_path / "out.json"
    # Ray Serve's proxy prefers replicas on its own node while they keep up; the simulated nodes share
    # one host, and a fast replica next to the proxy would then take every request: spread them.
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING="0", PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([*NETNS, sys.executable, "-m", "tests.ray_serve_scenario", str(out),
                          str(fixture_dir("build_serve_models")), str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    got = json.loads(out.read_text()) if out.exists() else {}
    server_out = (tmp_path / "server.out").read_text(errors="replace")[-3000:] if (tmp_path / "server.out").exists() else ""
    assert res.returncode == 0, res.stderr[-3000:] + server_out
    assert got["answer_ok"]
    assert got["no_token_status"] == 401 and got["no_token_json"]
    # both replicas answered (the audit log carries the replica id); the replacement Ray Serve starts
    # after the node loss may have answered too
    assert got["replicas_serving"] >= 2
    # a node holding a replica was removed under load: at most the in-flight requests failed
    assert got["load_requests"] > got["load_before_kill"] > 0
    assert got["load_failures"] <= 8, got
    assert got["ok_after"] > 0
    assert got["after_revoke"] == [401] * 20  # revocation reached every replica within a second
    assert not got["log_has_token"]
    assert got["server_exit"] == 0
