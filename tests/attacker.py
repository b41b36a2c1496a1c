"""Run attacker Python inside a real sandboxed worker (see tests/fixtures/build_attacker.py).

::

    with AttackerWorker(backend="namespaces") as w:
        info = w.run("import os; result = os.getuid()")

The code runs after pivot_root, rlimits, capability drop, no_new_privs and seccomp, exactly
where a TensorFlow memory-corruption exploit would run.  ``CONTROL`` is the positive control:
it reports what the worker is (uid map, capabilities, NoNewPrivs, Seccomp, open fds).
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import numpy as np
import pytest

from modelwarden.sandbox import Sandbox, SandboxLimits
from tests.conftest import build_fixtures

CONTROL = """
import os
def _status():
    out = {}
    for line in open('/proc/self/status'):
        k, _, v = line.partition(':')
        if k in ('Uid', 'Gid', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp',
                 'Seccomp_filters'):
            out[k] = v.strip()
    return out
result = {
    'uid_map': open('/proc/self/uid_map').read().split(),
    'gid_map': open('/proc/self/gid_map').read().split(),
    'status': _status(),
    'fds': sorted(int(x) for x in os.listdir('/proc/self/fd')),
    'pid': os.getpid(), 'sid': os.getsid(0), 'pgid': os.getpgid(0),
}
"""


def harness_model() -> str:
    return str(build_fixtures("build_attacker") / "exec.keras")


def encode(source: str) -> np.ndarray:
    raw = textwrap.dedent(source).encode()
    return np.frombuffer(raw, np.uint8).astype(np.float32).reshape(1, -1)


def decode(out: dict[str, np.ndarray]) -> Any:
    (value,) = out.values()
    return json.loads(bytes(np.asarray(value[0]).astype(np.uint8)).decode())


class AttackerWorker:
    """A warm sandboxed worker that executes attacker source on demand."""

    def __init__(self, limits: SandboxLimits | None = None, model: str | None = None, **sandbox_kwargs: Any) -> None:
        self.sandbox = Sandbox(limits or SandboxLimits(timeout_s=60), **sandbox_kwargs)
        self.path = model or harness_model()  # a copy of the harness (e.g. root-owned, mode 0600)
        self.model = None

    def __enter__(self) -> "AttackerWorker":
        self.model = self.sandbox.load(self.path, scan=False, keras_safe_mode=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.sandbox.close()

    def run(self, source: str, timeout: float | None = None) -> Any:
        """Execute ``source`` in the worker; return its ``result`` (JSON round trip)."""
        assert self.model is not None
        return decode(self.model.predict({"x": encode(source)}, timeout=timeout))


@pytest.fixture(scope="module", params=["fresh", "template"])
def spawn_mode_all(request: pytest.FixtureRequest) -> Any:
    """Workers booted fresh, then forked from the worker template (``MODELWARDEN_WORKER_TEMPLATE``,
    inherited by helper processes a test starts); module scope, so module fixtures follow it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELWARDEN_WORKER_TEMPLATE", "1" if request.param == "template" else "0")
        yield request.param


@pytest.fixture
def spawn_mode(request: pytest.FixtureRequest, spawn_mode_all: str) -> str:
    """Run a sandbox test with fresh and with template-forked workers.  Only the namespaces
    backend forks from a template: a test parametrized with another ``backend`` runs once."""
    backend = request.getfixturevalue("backend") if "backend" in request.fixturenames else "namespaces"
    if spawn_mode_all == "template" and backend != "namespaces":
        pytest.skip("only the namespaces backend forks workers from a template")
    return spawn_mode_all
