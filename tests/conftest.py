"""Shared test harness.

Fixtures that need TensorFlow are *built by real TensorFlow* in a subprocess,
by builder modules under ``tests/fixtures/`` (``python -m tests.fixtures.NAME OUTDIR``),
once per builder-source version: outputs are cached in ``.fixture-cache/`` keyed
by a hash of the builder's source, so editing a builder rebuilds it.  The test
process itself never imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("MODELWARDEN_FIXTURE_CACHE", ROOT / ".fixture-cache"))


def build_fixtures(builder: str, timeout: float = 1800) -> Path:
    """Run ``tests/fixtures/<builder>.py OUTDIR`` once per source version; return OUTDIR."""
    src = ROOT / "tests" / "fixtures" / f"{builder}.py"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    out = CACHE / f"{builder}-{digest}"
    if (out / ".complete").exists():
        return out
    tmp = CACHE / f".{builder}-{digest}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-m", f"tests.fixtures.{builder}", str(tmp)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fixture builder {builder} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    (tmp / ".complete").write_text(digest)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m modelwarden ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "modelwarden", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )


@pytest.fixture(scope="session")
def fixture_dir():
    """Factory: ``fixture_dir("build_tf_scan")`` -> Path of built fixtures."""
    return build_fixtures
