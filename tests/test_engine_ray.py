"""Distributed scanning on a real multi-node Ray cluster, confined to a private network namespace
that has only loopback (Ray binds every interface and probes public addresses otherwise)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytest.importorskip("ray", reason="Ray is not installed (pip install 'modelwarden[ray]')")

NETNS = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def _netns_ok() -> tuple[bool, str]:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False, "unshare and ip (util-linux, iproute2) are needed"
    res = subprocess.run([*NETNS, "true"], capture_output=True, text=True, timeout=30)
    return res.returncode == 0, res.stderr.strip()[-200:]


_OK, _WHY = _netns_ok()
pytestmark = pytest.mark.skipif(not _OK, reason=f"cannot make a private network namespace: {_WHY}")


def test_ray_scan_matches_the_local_scan_and_survives_a_node_loss(fixture_dir, tmp_path):
    copies = tmp_path / "copies"
    for i in range(15):
        for name in ("dense_savedmodel", "evil_savedmodel"):
            shutil.copytree(ROOT / "examples" / "models" / name, copies / f"{name}-{i:02d}")
    paths = [str(fixture_dir("build_tf_scan")), str(fixture_dir("build_other_formats")), str(copies)]
    out = tmp_path / "out.json"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([*NETNS, sys.executable, "-m", "tests.ray_scenarios", str(out), *paths],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    got = json.loads(out.read_text())
    assert got["interfaces"] == ["lo"]  # nothing but loopback to bind to or talk over
    assert got["node_addresses"] == ["127.0.0.1"]
    assert got["nodes"] == 3
    assert got["node_killed_after"], "the node was never removed"
    assert got["alive_after"] == 2
    assert got["same_report"]  # every artifact exactly once, same findings and errors
    assert got["stats"]["retried"] >= 1  # the lost node's tasks ran again elsewhere
    assert got["stats"]["name"] == "ray"
    assert got["cli_same_report"] and got["cli_exit"] == got["local_exit"] == 2  # the corpus has unreadable inputs
    assert got["cli_engine"]["workers"] == 2
