"""Every way a sandboxed run can fail ends in its own error type, fast, with nothing left behind."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from modelwarden.sandbox import (
    DeadlineExceeded, MemoryLimitExceeded, OpBlocked, OutputTooLarge, Sandbox, SandboxLimits, ScanRefused,
    WorkerCrashed,
)
from modelwarden.sandbox.namespaces import probe_namespaces
from tests.attacker import spawn_mode, spawn_mode_all  # noqa: F401 - fixtures
from tests.conftest import ROOT
from tests.test_sandbox_isolation import leftovers

_NS_OK, _NS_WHY = probe_namespaces()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(not _NS_OK, reason=f"namespaces unavailable: {_NS_WHY}"),
              pytest.mark.usefixtures("spawn_mode")]  # workers booted fresh and forked from the template

try:
    import modelwarden.scanner  # noqa: F401

    _SCANNER = True
except ImportError:
    _SCANNER = False
needs_scanner = pytest.mark.skipif(not _SCANNER, reason="modelwarden.scanner not available yet")


@pytest.fixture(scope="module")
def escape(fixture_dir):
    return fixture_dir("build_escape")


@pytest.fixture(scope="module")
def benign(fixture_dir):
    return fixture_dir("build_run_models")


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def test_memory_bomb_hits_the_memory_limit_and_the_host_stays_healthy(escape):
    before = set(leftovers())
    avail = _mem_available()
    with Sandbox(SandboxLimits(memory_bytes=1536 << 20, timeout_s=60)) as sb:
        model = sb.load(escape / "memory_bomb", scan=False)
        with pytest.raises(MemoryLimitExceeded) as exc:
            model.predict({"n": np.int32(2048)})  # 8 GiB of tiles
        assert exc.value.exit_code == 12
        assert not sb.alive
    assert set(leftovers()) <= before
    # the 8 GiB bomb never landed (tolerance for other jobs on a shared host), and its pages are gone
    assert _mem_available() > avail - (4 << 30)


def test_huge_allocation_is_reported_as_memory_limit(escape):
    with Sandbox(SandboxLimits(memory_bytes=1536 << 20, timeout_s=60)) as sb:
        model = sb.load(escape / "memory_bomb", scan=False)
        with pytest.raises(MemoryLimitExceeded):
            model.predict({"n": np.int32(1 << 20)})  # 4 TiB: refused at allocation time


def test_without_cgroups_rlimits_take_over(escape, benign):
    """Hosts that delegate no cgroup get RLIMIT_AS (sized so TF still starts) and RLIMIT_NPROC."""
    limits = SandboxLimits(memory_bytes=1 << 30, timeout_s=60, max_processes=150)
    with Sandbox(limits, use_cgroups=False) as sb:
        model = sb.load(benign / "dense", scan=False)
        assert model.predict({"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 2)
        info = sb.introspect()
        assert info["layers"]["cgroups"] == "none"
        assert info["rlimits"]["as"] == [limits.memory_bytes + limits.as_headroom()] * 2
        assert info["rlimits"]["nproc"] == [limits.max_processes] * 2
    with Sandbox(limits, use_cgroups=False) as sb:
        model = sb.load(escape / "memory_bomb", scan=False)
        with pytest.raises(MemoryLimitExceeded):
            model.predict({"n": np.int32(2048)})  # 8 GiB: refused by the address-space limit


def test_endless_loop_ends_in_the_deadline_error_within_a_second(escape):
    before = set(leftovers())
    with Sandbox(SandboxLimits(timeout_s=2.0)) as sb:
        model = sb.load(escape / "endless", scan=False)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded) as exc:
            model.predict({"x": np.int64(0)})
        elapsed = time.monotonic() - t0
        assert exc.value.exit_code == 13
        assert 2.0 <= elapsed <= 3.0, elapsed
        with pytest.raises(WorkerCrashed, match="no longer running"):
            model.predict({"x": np.int64(0)})
    assert set(leftovers()) <= before


def test_worker_crash_by_signal(escape):
    before = set(leftovers())
    with Sandbox(SandboxLimits(timeout_s=30)) as sb:
        model = sb.load(escape / "lambda_crash.keras", scan=False, keras_safe_mode=False)
        with pytest.raises(WorkerCrashed, match="SIGSEGV") as exc:
            model.predict({"x": np.zeros((1, 8), np.float32)})
        assert exc.value.exit_code == 14
    assert set(leftovers()) <= before


def test_output_too_large(benign):
    with Sandbox(SandboxLimits(max_output_bytes=1 << 20)) as sb:
        model = sb.load(benign / "big_output", scan=False)
        np.testing.assert_array_equal(model.predict({"n": np.int32(1000)})["zeros"], np.zeros(1000, np.float32))
        with pytest.raises(OutputTooLarge) as exc:
            model.predict({"n": np.int32(10_000_000)})
        assert exc.value.exit_code == 16


def test_keras_lambda_is_refused_in_safe_mode(escape):
    from modelwarden.sandbox import ModelLoadFailed

    with Sandbox() as sb:
        with pytest.raises(ModelLoadFailed, match="(?i)lambda|safe_mode|unsafe"):
            sb.load(escape / "lambda_system.keras", scan=False)  # keras_safe_mode defaults to True
    assert not sb.alive


@needs_scanner
def test_scan_gate_refuses_before_anything_runs(escape):
    before = set(leftovers())
    with Sandbox() as sb:
        t0 = time.monotonic()
        with pytest.raises(ScanRefused, match="refused by the static scan") as exc:
            sb.load(escape / "fileops")
        assert exc.value.exit_code == 10
        assert exc.value.report is not None and exc.value.report.failing()
        assert time.monotonic() - t0 < 30
    assert set(leftovers()) <= before


@needs_scanner
def test_in_sandbox_recheck_blocks_ops_at_load(escape):
    """Host scan skipped (as if a parser differential fooled it): the worker's own re-check refuses."""
    with Sandbox() as sb:
        with pytest.raises(OpBlocked, match="re-check refused") as exc:
            sb.load(escape / "fileops", scan=False, recheck=True)
        assert exc.value.exit_code == 11


@needs_scanner
def test_clean_model_passes_both_scans(benign):
    with Sandbox() as sb:
        model = sb.load(benign / "dense")  # host scan + in-sandbox re-check
        assert model.predict({"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 2)
        assert sb.scan_report is not None and not sb.scan_report.failing()


@needs_scanner
@pytest.mark.parametrize("backend", ["namespaces", "bwrap"])
def test_policy_file_reaches_both_scans(benign, tmp_path, backend):
    """A user policy file is applied by the host scan and, copied in read-only, by the re-check inside."""
    from modelwarden.sandbox.bwrap import BwrapBackend

    if backend == "bwrap" and not BwrapBackend.availability()[0]:
        pytest.skip("bwrap unavailable")
    with Sandbox() as sb:
        with pytest.raises(ScanRefused, match="MW603"):
            sb.load(benign / "big_output")
    policy = tmp_path / "policy.toml"
    policy.write_text('extends = "default"\n[[ignore]]\nrule = "MW603"\njustification = "test: bounded by max_output_bytes"\n')
    with Sandbox(policy=str(policy)) as sb:
        model = sb.load(benign / "big_output")
        assert model.predict({"n": np.int32(3)})["zeros"].tolist() == [0.0, 0.0, 0.0]
    # the re-check alone (host scan skipped) uses the same file inside the sandbox
    with Sandbox(policy=str(policy), backend=backend) as sb:
        sb.load(benign / "big_output", scan=False, recheck=True)
    with Sandbox(backend=backend) as sb:
        with pytest.raises(OpBlocked, match="MW603"):
            sb.load(benign / "big_output", scan=False, recheck=True)


def test_pool_closed_while_a_replacement_starts_leaves_no_worker_or_cgroup(benign):
    """``serve`` stopping while a replacement worker starts: that worker is closed, not dropped."""
    import concurrent.futures

    from modelwarden.sandbox import SandboxLimits
    from modelwarden.server.pool import PoolSpec, WorkerPool

    spec = PoolSpec(path=str(benign / "dense"), limits=SandboxLimits(timeout_s=60), backend="namespaces",
                    policy=None, fail_on=None, size=1)
    with concurrent.futures.ThreadPoolExecutor(1) as loader:
        pool = WorkerPool("dense", spec, loader, lambda *_: None)
        starting = loader.submit(pool._start_one)
        deadline = time.monotonic() + 30
        while not leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leftovers(), "control: the replacement worker (process, cgroups) is starting"
        pool.close()
        with pytest.raises(RuntimeError, match="closed while a worker started"):
            starting.result(timeout=300)
    assert leftovers() == []


ORPHAN = r"""
import sys, threading
import numpy as np
sys.path.insert(0, sys.argv[1])
from modelwarden.sandbox import Sandbox, SandboxLimits
sb = Sandbox(SandboxLimits(timeout_s=600), backend=sys.argv[3])
m = sb.load(sys.argv[2], scan=False)
w = sb._worker
threading.Thread(target=lambda: m.predict({"x": np.int64(0)}), daemon=True).start()
print(w.proc.proc.pid, w.init_pid or 0, flush=True)
threading.Event().wait()
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("backend", ["namespaces", "bwrap"])
def test_a_worker_dies_with_its_parent_even_mid_computation(escape, backend):
    """A parent killed with SIGKILL (no clean-up runs) while its worker computes forever: the whole
    tree dies with it, also after the boot process switched to an unprivileged uid (which clears
    the parent-death signal unless it is armed again)."""
    from modelwarden.sandbox.bwrap import BwrapBackend

    if backend == "bwrap" and not BwrapBackend.availability()[0]:
        pytest.skip("bwrap unavailable")
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN, str(ROOT / "src"), str(escape / "endless"), backend],
                            stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(x) for x in proc.stdout.readline().split() if int(x) > 0]
        assert pids and all(_alive(p) for p in pids)  # control: the worker tree is running
        time.sleep(1.0)  # the endless loop is computing
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), f"worker processes outlived their parent: {pids}"
