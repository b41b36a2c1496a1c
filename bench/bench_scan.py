#!/usr/bin/env python3
"""Scan benchmarks: modelwarden against baselines measured in the same run.

    python bench/bench_scan.py            # full: 7 repetitions per measurement
    python bench/bench_scan.py --quick    # 3 repetitions

Every measurement is a whole process (startup included) timed by wall clock,
with peak RSS from ``os.wait4``'s rusage of that child.  Tools are interleaved
within each repetition and the median is reported, so background noise hits
every tool alike.  Targets (issue 2, "Speed"):

  (a) ``modelwarden scan`` of a Keras MobileNetV2 SavedModel export:
      <= 1/20 of ``modelscan -p`` (0.8.8) wall time and <= 1/5 of its peak RSS;
      ``saved_model_cli scan --dir`` is timed for reference.
  (b) the same small graph with ~1 GiB vs tiny variables: time ratio <= 1.2.
  (c) a directory of >= 200 small SavedModels: >= 100 models/second.

Baselines live in their own venv (``bench/.work/venv``, created with
``--system-site-packages`` so TensorFlow is reused) from
``bench/requirements-baselines.txt``; models are built by real TensorFlow in a
subprocess of this script into ``bench/.work/models``.  The measuring process
itself never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hostinfo

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work"
VENV = WORK / "venv"
MODELS = WORK / "models"
BUILD_VERSION = "1"  # bump when _build_models changes
BIG_VAR_SHAPE = (256, 1024, 1024)  # float32: 1 GiB
# Every tool runs as installed: with its bytecode cache (pip compiles it at install time).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
# this checkout's modelwarden, not whatever an editable install elsewhere points at
ENV["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)


def compile_modelwarden() -> None:
    """Write modelwarden's .pyc files, as ``pip install`` does, so imports are not recompiled."""
    import compileall

    compileall.compile_dir(str(ROOT / "src" / "modelwarden"), quiet=1)


# --------------------------------------------------------------------------
# setup


def ensure_venv() -> Path:
    """Create ``bench/.work/venv`` and install the pinned baselines into it (never into the system)."""
    exe = VENV / "bin" / "modelscan"
    if exe.exists():
        return exe
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"creating {VENV} (system site packages, for TensorFlow) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "-r", str(HERE / "requirements-baselines.txt")],
                   check=True)
    return exe


def ensure_models(n_small: int) -> None:
    stamp = MODELS / f".complete-v{BUILD_VERSION}-{n_small}"
    if stamp.exists():
        return
    shutil.rmtree(MODELS, ignore_errors=True)
    MODELS.mkdir(parents=True)
    print(f"building benchmark models into {MODELS} with TensorFlow (one-off, ~1 min) ...", flush=True)
    t = time.monotonic()
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_build", str(MODELS), "--models", str(n_small)],
                   check=True, env=ENV)
    print(f"  built in {time.monotonic() - t:.0f}s", flush=True)
    stamp.write_text("ok")


def _build_models(out: Path, n_small: int) -> None:
    """Runs in a subprocess: the only place TensorFlow is imported."""
    import keras
    import tensorflow as tf

    model = keras.applications.MobileNetV2(weights=None, alpha=1.0, input_shape=(224, 224, 3))
    model.export(str(out / "mobilenetv2"), format="tf_saved_model", verbose=False)
    keras.backend.clear_session()

    class Weights(tf.Module):
        def __init__(self, shape):
            super().__init__()
            self.v = tf.Variable(tf.zeros(shape, tf.float32))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def serve(self, x):
            return {"out": x * tf.reduce_sum(self.v)}

    tf.saved_model.save(Weights((1,)), str(out / "weights_tiny"))
    big = Weights(BIG_VAR_SHAPE)
    tf.saved_model.save(big, str(out / "weights_1g"))
    del big

    class Small(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.normal([8, 4]))
            self.b = tf.Variable(tf.zeros([4]))

        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
        def serve(self, x):
            return {"out": tf.nn.relu(tf.matmul(x, self.w) + self.b)}

    small = out / "_small"
    tf.saved_model.save(Small(), str(small))
    many = out / "many"
    many.mkdir()
    for i in range(n_small):
        shutil.copytree(small, many / f"m{i:04d}")
    shutil.rmtree(small)


# --------------------------------------------------------------------------
# measuring


@dataclass
class Sample:
    wall_s: float
    maxrss_mib: float
    rc: int


@dataclass
class Series:
    label: str
    cmd: list[str]
    ok_rcs: tuple[int, ...]
    samples: list[Sample] = field(default_factory=list)
    error: str = ""
    artifacts: int | None = None  # modelwarden: the JSON report must list exactly this many artifacts

    @property
    def wall(self) -> float | None:
        good = [s.wall_s for s in self.samples if s.rc in self.ok_rcs]
        return statistics.median(good) if good and not self.error else None

    @property
    def rss(self) -> float | None:
        good = [s.maxrss_mib for s in self.samples if s.rc in self.ok_rcs]
        return statistics.median(good) if good and not self.error else None


def measure(cmd: list[str], timeout: float = 600) -> tuple[Sample, str, bytes]:
    """Run ``cmd`` once; wall time and the child's own peak RSS (``os.wait4``); stderr tail and stdout."""
    with open(WORK / "last.stderr", "w+b") as err, open(WORK / "last.stdout", "w+b") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=ENV, cwd=ROOT)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read()[-1500:].decode("utf-8", "replace")
        out.seek(0)
        stdout = out.read()
    return Sample(wall, usage.ru_maxrss / 1024, proc.returncode), tail, stdout


def check_output(s: Series, sample: Sample, tail: str, stdout: bytes) -> str:
    """Why this run does not count ("" if it does): bad exit, a traceback, or a modelwarden report that is wrong."""
    last = tail.strip().splitlines()[-1] if tail.strip() else ""
    if sample.rc not in s.ok_rcs or "Traceback (most recent call last)" in tail:
        return f"exit {sample.rc}: {last}"
    if s.artifacts is not None:
        try:
            report = json.loads(stdout)
        except ValueError:
            return f"exit {sample.rc} without a JSON report: {last}"
        got = len(report.get("artifacts", ()))
        if got != s.artifacts or report.get("errors"):
            return f"report lists {got} artifacts (expected {s.artifacts}), errors {report.get('errors')}"
    return ""


def run_series(series: list[Series], reps: int) -> None:
    """Interleave: every repetition runs each tool once, in rotating order."""
    for rep in range(reps):
        order = series[rep % len(series):] + series[: rep % len(series)]
        for s in order:
            if s.error:
                continue
            sample, tail, stdout = measure(s.cmd)
            s.samples.append(sample)
            s.error = check_output(s, sample, tail, stdout)
        print(f"  rep {rep + 1}/{reps}: " + ", ".join(
            f"{s.label} {s.samples[-1].wall_s:.2f}s" for s in series if s.samples and not s.error), flush=True)


MW_CMD = [sys.executable, "-m", "modelwarden"]


def mw_cmd(*paths: Path) -> list[str]:
    return [*MW_CMD, "scan", *map(str, paths), "--format", "json", "--no-progress"]


def modelwarden_available() -> str:
    probe = Series("probe", mw_cmd(MODELS / "weights_tiny"), (0, 1), artifacts=1)
    sample, tail, stdout = measure(probe.cmd)
    err = check_output(probe, sample, tail, stdout)
    return f"modelwarden scan unavailable ({err})" if err else ""


# --------------------------------------------------------------------------
# report


@dataclass
class Row:
    name: str
    value: str
    target: str
    passed: bool | None  # None: could not be measured


def fmt(x: float | None, unit: str, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}{unit}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def print_table(rows: list[Row]) -> None:
    w = [max(len(r.name) for r in rows), max(len(r.value) for r in rows), max(len(r.target) for r in rows)]
    print()
    print(f"{'measurement':<{w[0]}}  {'value':>{w[1]}}  {'target':<{w[2]}}  result")
    print("-" * (sum(w) + 14))
    for r in rows:
        res = {True: "PASS", False: "FAIL", None: "n/a"}[r.passed]
        print(f"{r.name:<{w[0]}}  {r.value:>{w[1]}}  {r.target:<{w[2]}}  {res}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 repetitions instead of 7")
    ap.add_argument("--reps", type=int, help="repetitions per measurement (overrides --quick)")
    ap.add_argument("--models", type=int, default=200, help="small SavedModels for the throughput test (>= 200)")
    ap.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    ap.add_argument("--modelwarden-cmd", metavar="CMD", default=" ".join(MW_CMD),
                    help="how to start modelwarden (default: %(default)s; e.g. the 'modelwarden' console script)")
    ap.add_argument("--_build", metavar="OUT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._build:
        _build_models(Path(args._build), args.models)
        return 0
    reps = args.reps or (3 if args.quick else 7)
    MW_CMD[:] = shlex.split(args.modelwarden_cmd)

    modelscan = ensure_venv()
    compile_modelwarden()
    ensure_models(args.models)
    mnet, tiny, big, many = MODELS / "mobilenetv2", MODELS / "weights_tiny", MODELS / "weights_1g", MODELS / "many"
    big_bytes = sum(p.stat().st_size for p in (big / "variables").iterdir())
    mw_error = modelwarden_available()
    where = subprocess.run([*MW_CMD[:-2], "-c", "import modelwarden; print(modelwarden.__file__)"], env=ENV,
                           capture_output=True, text=True).stdout.strip() if MW_CMD[-2:] == ["-m", "modelwarden"] else ""
    print(f"measuring {shlex.join(MW_CMD)}" + (f" ({where})" if where else "") + f" on {hostinfo.describe()}", flush=True)
    if mw_error:
        print(f"NOTE: {mw_error}; measuring baselines only", flush=True)

    def mw(label: str, *paths: Path, artifacts: int = 1) -> Series:
        return Series(label, mw_cmd(*paths), (0, 1), error=mw_error, artifacts=artifacts)

    print(f"(a) MobileNetV2 SavedModel export, {reps} interleaved repetitions", flush=True)
    a_mw = mw("modelwarden", mnet)
    a_ms = Series("modelscan", [str(modelscan), "-p", str(mnet)], (0, 1))
    a_cli = Series("saved_model_cli", [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli",
                                       "scan", "--dir", str(mnet)], (0,))
    run_series([a_mw, a_ms, a_cli], reps)

    print(f"(b) weight-size independence: {big_bytes / 2**30:.2f} GiB vs tiny variables", flush=True)
    b_big, b_tiny = mw("modelwarden 1GiB", big), mw("modelwarden tiny", tiny)
    run_series([b_big, b_tiny], 3 * reps)  # ~0.1 s each: more samples to beat startup noise

    n = sum(1 for p in many.iterdir() if p.is_dir())
    print(f"(c) throughput: {n} SavedModels in one directory", flush=True)
    c_mw = mw("modelwarden dir", many, artifacts=n)
    run_series([c_mw], 2 * reps)

    t_ratio, m_ratio = ratio(a_mw.wall, a_ms.wall), ratio(a_mw.rss, a_ms.rss)
    w_ratio = ratio(b_big.wall, b_tiny.wall)
    rate = None if c_mw.wall is None else n / c_mw.wall
    rows = [
        Row("modelscan 0.8.8 -p (wall, peak RSS)", f"{fmt(a_ms.wall, ' s')}, {fmt(a_ms.rss, ' MiB', 0)}", "baseline",
            None if a_ms.wall is None else True),
        Row("saved_model_cli scan (wall, peak RSS)", f"{fmt(a_cli.wall, ' s')}, {fmt(a_cli.rss, ' MiB', 0)}",
            "reference", None if a_cli.wall is None else True),
        Row("modelwarden scan (wall, peak RSS)", f"{fmt(a_mw.wall, ' s', 3)}, {fmt(a_mw.rss, ' MiB', 0)}", "", None),
        Row("(a) time: modelwarden / modelscan", fmt(t_ratio, "", 4), "<= 0.05 (1/20)",
            None if t_ratio is None else t_ratio <= 1 / 20),
        Row("(a) peak RSS: modelwarden / modelscan", fmt(m_ratio, "", 4), "<= 0.20 (1/5)",
            None if m_ratio is None else m_ratio <= 1 / 5),
        Row("(a) modelwarden / saved_model_cli (time)", fmt(ratio(a_mw.wall, a_cli.wall), "", 4), "info", None),
        Row("(b) 1 GiB vars / tiny vars (time)", fmt(w_ratio, "", 3), "<= 1.2",
            None if w_ratio is None else w_ratio <= 1.2),
        Row("(b) walls: 1 GiB, tiny", f"{fmt(b_big.wall, ' s', 3)}, {fmt(b_tiny.wall, ' s', 3)}", "", None),
        Row(f"(c) throughput, {n} SavedModels", fmt(rate, " models/s", 1), ">= 100 models/s",
            None if rate is None else rate >= 100),
    ]
    for s in (a_mw, a_ms, a_cli, b_big, b_tiny, c_mw):
        if s.error and s.error != mw_error:
            rows.append(Row(f"ERROR {s.label}", s.error[:80], "", False))
    print_table(rows)
    if mw_error:
        print(f"\nmodelwarden not measured: {mw_error}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "reps": reps, "n_models": n, "big_var_bytes": big_bytes,
            "series": {s.label: {"cmd": s.cmd, "samples": [vars(x) for x in s.samples], "error": s.error,
                                 "median_wall_s": s.wall, "median_maxrss_mib": s.rss}
                       for s in (a_mw, a_ms, a_cli, b_big, b_tiny, c_mw)},
            "rows": [vars(r) for r in rows],
        }, indent=1))
    targets = [r.passed for r in rows if r.target.startswith(("<", ">"))]
    return 0 if targets and all(t is True for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
