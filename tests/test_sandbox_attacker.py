"""The attacker-code harness itself: Python source really executes inside a hardened worker.

Every sandbox property test builds on this positive control (tests/attacker.py).
"""

from __future__ import annotations

import pytest

from modelwarden.sandbox.namespaces import probe_namespaces
from tests.attacker import CONTROL, AttackerWorker, spawn_mode, spawn_mode_all  # noqa: F401 - fixtures

_NS_OK, _NS_WHY = probe_namespaces()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(not _NS_OK, reason=f"namespaces unavailable: {_NS_WHY}")]
pytestmark = [*pytestmark, pytest.mark.usefixtures("spawn_mode")]  # workers booted fresh and forked from the template


def test_attacker_code_runs_after_every_restriction():
    with AttackerWorker(backend="namespaces") as w:
        info = w.run(CONTROL)
        assert w.run("result = 6 * 7") == 42  # the worker stays usable between attacks
    status = info["status"]
    assert info["pid"] == 1  # pid namespace
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, cap
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # filter mode
    assert info["uid_map"][1] != "0"  # never host root
