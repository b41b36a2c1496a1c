"""Sandbox speed and memory, with every ratio measured in the same run.

    python bench/bench_sandbox.py [--rounds 15] [--calls 100] [--cold 3] [--backend auto] [--warm-only]
                                  [--no-socket] [--json OUT.json]

``--backend`` (repeatable: ``--backend auto --backend gvisor``) measures warm and cold
overhead per sandbox backend, each against in-process/unsandboxed runs of the same run;
memory and the template experiment use the first one.

1. warm predict: the same signature called in-process (TensorFlow imported in this process)
   two ways - the standard call ``signature(x=tf.constant(x))`` + ``.numpy()`` (the issue's
   baseline) and the eager flat-function call (runtime/leancall.py, the worker's route when graph
   mode refuses a model) -, the worker's own call (a session run in the calling thread,
   runtime/graphcall.py) with the worker's TensorFlow settings (thread pools not spinning, which
   is process-wide) in an unsandboxed child process (the ratio against it is the cost of the
   boundary alone), through a warm sandbox (shared-memory fast path where the backend has it)
   and through a second sandbox with the fast path off (JSON channel only; ``--no-socket``
   skips it), interleaved round by round (tiny dense model, MobileNetV2 alpha=0.35 96x96,
   weights random - no download);  ``--warm-only`` measures only this part;
2. cold start to first prediction: a fresh ``python -c "import tensorflow; load; predict"``
   vs a fresh ``python -c "Sandbox().load(...).predict(...)"`` (scan skipped, and with the
   scan gate), alternating;
3. memory: RSS/PSS of the sandbox's processes vs an unsandboxed process that loaded and ran
   the same model;
4. template-process experiment: threads alive right after ``import tensorflow`` and whether a
   ``fork()`` of that process can still load and run a model (bench/probe_fork_safety.py: the
   full fork-safety measurement, 200 children);
5. cold start from a long-lived parent with a warm worker template (sandbox/template.py): this
   process keeps the template; each round copies the model to a new directory and times
   ``Sandbox().load(copy) + predict`` (scan skipped, and with the scan gate) against a fresh
   unsandboxed ``python -c "import tensorflow; load; predict"`` of the same round;
6. serve worker replacement without a warm spare: the server's real ``WorkerPool`` (one worker,
   no spare) under a request loop; the worker (pid 1 of its sandbox) is SIGKILLed and the time until a
   request succeeds again is measured, with and without the template.

7. one-shot ``modelwarden run`` (``--only run``): whole processes, time to the output and to
   exit, a fresh ``python -c "import tensorflow; load; predict; print"`` (as is, and importing
   TensorFlow the way the worker does: runtime/imports.py) against ``python -m modelwarden run``
   without and with the scan gate, alternating, plus where the time of one sandboxed run goes.

``--only cold,run,cold-template,replace`` runs just those sections (each takes a minute or two);
a full run ends with 5 and 6 when the first backend is ``auto`` or ``namespaces``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import hostinfo

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".work" / "models-v1"
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def build(out: Path) -> None:
    import numpy as np
    import tensorflow as tf

    out.mkdir(parents=True, exist_ok=True)

    class Dense(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.nn.relu(tf.matmul(x, self.w))}

    d = Dense()
    tf.saved_model.save(d, str(out / "dense"), signatures={"serving_default": d.serve})
    import keras

    net = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None)

    class Mobile(tf.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, 96, 96, 3], tf.float32, name="x")])
        def serve(self, x):
            return {"y": self.model(x, training=False)}

    m = Mobile(net)
    tf.saved_model.save(m, str(out / "mobilenet"), signatures={"serving_default": m.serve})
    (out / ".complete").write_text("ok")


def ensure_models() -> Path:
    if not (CACHE / ".complete").exists():
        print("building benchmark models ...", file=sys.stderr)
        subprocess.run([sys.executable, __file__, "--build", str(CACHE)], check=True, env=ENV, cwd=ROOT)
    return CACHE


def inputs_for(name: str):
    import numpy as np

    rng = np.random.default_rng(1)
    if name == "dense":
        return {"x": rng.normal(size=(1, 16)).astype(np.float32)}
    return {"x": rng.normal(size=(1, 96, 96, 3)).astype(np.float32)}


# -- warm ------------------------------------------------------------------------------------------

LEAN_CHILD = r"""
import sys, time
import tensorflow as tf
from modelwarden.runtime import graphcall, leancall
sys.path.insert(0, sys.argv[3])
from bench_sandbox import inputs_for
why = leancall.no_spinning(tf)  # the worker's TensorFlow settings
assert not why, why
model, why = graphcall.load(tf, sys.argv[1])  # the worker's route: a session in the calling thread,
if model is not None:                         # else the eager flat call
    call, route = model.signatures["serving_default"], "session"
else:
    fn = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    call, why = leancall.plan(tf, fn)
    assert call is not None, why
    route = "eager"
x = inputs_for(sys.argv[2])
print("READY", float(call(x)["y"].sum()), route, flush=True)
for line in sys.stdin:
    n = int(line)
    t = time.perf_counter()
    for _ in range(n):
        call(x)
    print((time.perf_counter() - t) / n, flush=True)
"""


class LeanProcess:
    """The worker's own call (a session run in the calling thread, runtime/graphcall.py, or the eager
    flat call where graph mode refuses the model; TensorFlow's pools not spinning) in an unsandboxed
    child process: the baseline whose ratio is the boundary alone.  ``run(n)`` -> seconds per call."""

    def __init__(self, model: Path, name: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LEAN_CHILD, str(model), name, str(ROOT / "bench")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=dict(ENV, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *sys.path])),
                                     cwd=ROOT, text=True)
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "READY":
            self.close()
            raise RuntimeError("the lean-call baseline process did not start")
        self.checksum = float(line[1])
        self.route = line[2]

    def run(self, n: int) -> float:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def warm(models: Path, base_rounds: int, calls: int, backend: str = "auto", socket_too: bool = True,
         mobilenet_rounds: int | None = None) -> dict:
    """In-process vs sandboxed calls, interleaved round by round.  ``socket_too``: also a second
    sandbox with the shared-memory fast path off (every call on the JSON channel), same rounds."""
    import numpy as np
    import tensorflow as tf

    from modelwarden.runtime import leancall
    from modelwarden.sandbox import Sandbox, SandboxLimits, shmchannel

    out = {}
    # MobileNet: 4x the rounds of calls/10 each (the interval narrows; the rounds stay as long as
    # before: in 10-call rounds the sandbox measured 0.80x, in 100-call rounds 1.04-1.13x)
    for name, n, rounds in (("dense", calls, base_rounds),
                            ("mobilenet", max(10, calls // 10), mobilenet_rounds or 4 * base_rounds)):
        x = inputs_for(name)
        fn = tf.saved_model.load(str(models / name)).signatures["serving_default"]

        def inproc():
            return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in x.items()}).items()}

        lean, why = leancall.plan(tf, fn)
        if lean is None:
            raise RuntimeError(f"the lean call does not apply to {name}: {why}")
        np.testing.assert_array_equal(lean(x)["y"], inproc()["y"])
        baselines = {"inprocess": inproc, "inprocess_lean": lambda: lean(x)}
        child = LeanProcess(models / name, name)
        np.testing.assert_allclose(child.checksum, float(inproc()["y"].sum()), rtol=1e-5)

        limits = SandboxLimits(timeout_s=60, load_timeout_s=300)
        boxes = {"sandbox": Sandbox(limits, backend=backend)}
        if socket_too:
            boxes["socket"] = Sandbox(limits, backend=backend, shared_memory=False)
        try:
            loaded = {k: sb.load(models / name, scan=False) for k, sb in boxes.items()}
            ref = inproc()
            for model in loaded.values():
                np.testing.assert_allclose(model.predict(x)["y"], ref["y"], rtol=1e-4, atol=1e-5)
            for _ in range(max(20, n // 2)):
                for call in baselines.values():
                    call()
                for model in loaded.values():
                    model.predict(x)
            child.run(max(20, n // 2))
            times: dict[str, list[float]] = {**{k: [] for k in baselines}, "lean_process": [],
                                             **{k: [] for k in loaded}}
            compute: dict[str, list[float]] = {k: [] for k in loaded}
            spinning = 0  # rounds in which the sandbox's calls polled instead of sleeping (a spare core)

            def in_this_process(k: str) -> None:
                call = baselines[k]
                t = time.perf_counter()
                for _ in range(n):
                    call()
                times[k].append((time.perf_counter() - t) / n)

            def sandboxed(k: str) -> None:
                model = loaded[k]
                t = time.perf_counter()
                runs = []
                for _ in range(n):
                    model.predict(x)
                    runs.append(model.last_run_us or 0)
                times[k].append((time.perf_counter() - t) / n)
                compute[k].append(statistics.median(runs) / 1e6)

            variants = [*((in_this_process, k) for k in baselines), (lambda _k: times["lean_process"].append(child.run(n)), ""),
                        *((sandboxed, k) for k in loaded)]
            for r in range(rounds):
                spinning += shmchannel.spare_core()
                # each variant leads a round as often as the others: the first calls after a switch
                # run on caches the previous variant filled (measured: short rounds favoured whichever
                # variant did not come first)
                for measure, k in variants[r % len(variants):] + variants[:r % len(variants)]:
                    measure(k)
            fast = {k: sb._worker.fast is not None for k, sb in boxes.items()}
        finally:
            child.close()
            for sb in boxes.values():
                sb.close()
        ia, il = statistics.median(times["inprocess"]), statistics.median(times["inprocess_lean"])
        lp = statistics.median(times["lean_process"])
        sb_, wr = statistics.median(times["sandbox"]), statistics.median(compute["sandbox"])
        out[name] = {"inprocess_ms": ia * 1e3, "sandbox_ms": sb_ * 1e3, "ratio": sb_ / ia,
                     "inprocess_lean_ms": il * 1e3, "lean_process_ms": lp * 1e3, "ratio_vs_lean": sb_ / lp,
                     "worker_compute_ms": wr * 1e3, "boundary_overhead_ms": (sb_ - wr) * 1e3,
                     "worker_route": child.route,
                     "shared_memory": fast["sandbox"], "spinning_rounds": f"{spinning}/{rounds}",
                     "paired": paired_ratio(times["sandbox"], times["inprocess"])}
        if socket_too:
            so = statistics.median(times["socket"])
            out[name].update(socket_ms=so * 1e3, socket_ratio=so / ia)
    return out


def paired_ratio(a: list[float], b: list[float], resamples: int = 2000) -> dict:
    """The median of the per-round ratios a/b (rounds adjacent in time, so drift of the host's speed
    cancels) with a 95 % percentile-bootstrap interval for it (fixed seed: reproducible)."""
    ratios = [x / y for x, y in zip(a, b)]
    rng = random.Random(0)
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return {"median": statistics.median(ratios), "ci95": (boot[int(0.025 * resamples)], boot[int(0.975 * resamples) - 1]),
            "rounds": len(ratios)}


def breakdown(models: Path, calls: int = 3000, name: str = "dense") -> dict:
    """Where a warm call through shared memory goes: timers wrapped around the parent's
    doorbell and reply reading, plus the worker-reported model time and own time (medians, µs)."""
    import numpy as np

    from modelwarden.sandbox import Sandbox, SandboxLimits, shmchannel

    t: dict[str, list[float]] = {k: [] for k in ("total", "before_ring", "ring", "wait", "read", "run", "worker_busy")}
    mark = {"start": 0.0, "rung": 0.0}
    ring, read = shmchannel._ring, shmchannel.ParentChannel._read_reply

    def timed_ring(sock):
        t0 = time.perf_counter()
        t["before_ring"].append(t0 - mark["start"])
        ring(sock)
        mark["rung"] = time.perf_counter()
        t["ring"].append(mark["rung"] - t0)

    def timed_read(self, *args):
        t0 = time.perf_counter()
        t["wait"].append(t0 - mark["rung"])
        out = read(self, *args)
        t["read"].append(time.perf_counter() - t0)
        return out

    shmchannel._ring, shmchannel.ParentChannel._read_reply = timed_ring, timed_read
    try:
        with Sandbox(SandboxLimits(timeout_s=60, load_timeout_s=300)) as sb:
            model = sb.load(models / name, scan=False)
            x = inputs_for(name)
            for _ in range(min(300, calls)):
                model.predict(x)
            for v in t.values():
                v.clear()
            polled = 0  # calls made with a spare core (both sides polling instead of sleeping)
            for _ in range(calls):
                mark["start"] = time.perf_counter()
                model.predict(x)
                t["total"].append(time.perf_counter() - mark["start"])
                t["run"].append((model.last_run_us or 0) / 1e6)
                t["worker_busy"].append(sb._worker.fast.last_worker_busy_us / 1e6)
                polled += shmchannel.spare_core()
    finally:
        shmchannel._ring, shmchannel.ParentChannel._read_reply = ring, read
    return {**{k: statistics.median(v) * 1e6 for k, v in t.items()}, "polling_pct": 100 * polled / calls}


def poll_ab(models: Path, rounds: int = 10, calls: int = 200, name: str = "dense") -> dict:
    """The spin budgets alone, A/B in one sandbox: rounds alternate between both sides polling
    (``spare_core`` forced true) and both sleeping (forced false), whatever the host's load says;
    medians of the per-round call time and of the worker-reported model and own times (µs)."""
    from modelwarden.sandbox import Sandbox, SandboxLimits, shmchannel

    real = shmchannel.spare_core
    res: dict[str, dict[str, list[float]]] = {k: {"call": [], "run": [], "worker_busy": []} for k in ("sleep", "poll")}
    try:
        with Sandbox(SandboxLimits(timeout_s=60, load_timeout_s=300)) as sb:
            model = sb.load(models / name, scan=False)
            x = inputs_for(name)
            for _ in range(300):
                model.predict(x)
            for _ in range(rounds):
                for mode, r in res.items():
                    shmchannel.spare_core = (lambda: True) if mode == "poll" else (lambda: False)
                    runs, busy = [], []
                    t = time.perf_counter()
                    for _ in range(calls):
                        model.predict(x)
                        runs.append(model.last_run_us or 0)
                        busy.append(sb._worker.fast.last_worker_busy_us)
                    r["call"].append((time.perf_counter() - t) / calls * 1e6)
                    r["run"].append(statistics.median(runs))
                    r["worker_busy"].append(statistics.median(busy))
    finally:
        shmchannel.spare_core = real
    return {mode: {k: statistics.median(v) for k, v in r.items()} for mode, r in res.items()}


def gate_after_burst(models: Path, rounds: int = 2, burst_s: float = 8.0, stream_s: float = 20.0) -> dict:
    """The polling gate after a burst of real CPU pressure: MobileNet calls for ``burst_s`` (its
    TensorFlow threads keep both vCPUs busy), then a stream of dense calls for ``stream_s``, once
    with the kernel's ``avg10 < 5 %`` re-read every second (the gate before pollgate) and once with
    :class:`pollgate.PollGate`, alternating, ``rounds`` times.  Per stream: seconds until the dense
    calls polled again, the share of calls that polled, and µs per call over its last half."""
    from modelwarden.sandbox import Sandbox, SandboxLimits, pollgate, shmchannel

    def avg10_rule():
        state = [float("-inf"), False]

        def gate() -> bool:
            now = time.monotonic()
            if now - state[0] >= 1.0:
                p = pollgate.cpu_pressure()
                state[:] = [now, p is not None and p < pollgate.PRESSURE_MAX]
            return state[1]
        return gate

    real = shmchannel.spare_core
    out: dict[str, list[dict]] = {"avg10": [], "pollgate": []}
    limits = SandboxLimits(timeout_s=60, load_timeout_s=300)
    try:
        with Sandbox(limits) as sb_m, Sandbox(limits) as sb_d:
            mnet, dense = sb_m.load(models / "mobilenet", scan=False), sb_d.load(models / "dense", scan=False)
            xm, xd = inputs_for("mobilenet"), inputs_for("dense")
            for _ in range(rounds):
                for rule in out:
                    gate = shmchannel.spare_core = avg10_rule() if rule == "avg10" else pollgate.PollGate()
                    t0 = time.monotonic()
                    while time.monotonic() - t0 < burst_s:
                        mnet.predict(xm)
                    t0 = time.monotonic()
                    first, polled, calls, late = None, 0, 0, []
                    while (now := time.monotonic()) - t0 < stream_s:
                        p = gate()
                        t = time.perf_counter()
                        dense.predict(xd)
                        dt = time.perf_counter() - t
                        calls += 1
                        polled += p
                        if p and first is None:
                            first = now - t0
                        if now - t0 >= stream_s / 2:
                            late.append(dt)
                    out[rule].append({"resumed_after_s": first, "polled_pct": 100 * polled / calls,
                                      "late_call_us": statistics.mean(late) * 1e6})
    finally:
        shmchannel.spare_core = real
    return out


# -- cold ------------------------------------------------------------------------------------------

BASELINE = r"""
import sys, time, numpy as np
import tensorflow as tf
f = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
x = np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32)
f(x=tf.constant(x))["y"].numpy()
def rss():
    for ln in open("/proc/self/status"):
        if ln.startswith("VmRSS:"): return int(ln.split()[1]) * 1024
print("READY", rss(), flush=True)
sys.stdin.read()
"""

SANDBOXED = r"""
import sys, numpy as np
from modelwarden.sandbox import Sandbox, SandboxLimits
sb = Sandbox(SandboxLimits(load_timeout_s=300), backend=sys.argv[3])
m = sb.load(sys.argv[1], scan=sys.argv[2] == "scan")
x = np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32)
m.predict({"x": x})
print("READY", 0, flush=True)
sb.close()
"""


def _time_to_ready(code: str, *args: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT, text=True)
    line = p.stdout.readline()
    elapsed = time.perf_counter() - t0
    p.stdin.close()
    p.wait(timeout=400)
    if not line.startswith("READY"):
        raise RuntimeError(f"cold-start child failed: {line!r}")
    return elapsed, int(line.split()[1])


def cold(models: Path, n: int, backend: str = "auto") -> dict:
    base, sand, scanned = [], [], []
    for _ in range(n):
        base.append(_time_to_ready(BASELINE, str(models / "dense"))[0])
        sand.append(_time_to_ready(SANDBOXED, str(models / "dense"), "noscan", backend)[0])
        scanned.append(_time_to_ready(SANDBOXED, str(models / "dense"), "scan", backend)[0])
    b, s, c = statistics.median(base), statistics.median(sand), statistics.median(scanned)
    return {"unsandboxed_s": b, "sandbox_s": s, "ratio": s / b, "sandbox_with_scan_s": c, "ratio_with_scan": c / b}


# -- one-shot `modelwarden run` (issue 13) ---------------------------------------------------------

BASELINE_EXIT = r"""
import json, sys, numpy as np
if sys.argv[3] == "trimmed":  # the worker's own import: no sklearn/pandas/scipy (runtime/imports.py)
    from modelwarden.runtime.imports import tensorflow_without_optional_extras
    tf = tensorflow_without_optional_extras()
else:
    import tensorflow as tf
f = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
x = np.asarray(json.loads(sys.argv[2])["x"], np.float32)
print(json.dumps({"y": f(x=tf.constant(x))["y"].numpy().tolist()}), flush=True)
"""

PARTS = r"""
import json, sys, time
t0 = time.monotonic()
import numpy as np
from modelwarden.sandbox import Sandbox, SandboxLimits
import modelwarden.cli.run_cmd
t1 = time.monotonic()
with Sandbox(SandboxLimits(load_timeout_s=300), template=False) as sb:
    m = sb.load(sys.argv[1], scan=sys.argv[2] == "scan")
    t2 = time.monotonic()
    m.predict({"x": np.asarray(json.loads(sys.argv[3])["x"], np.float32)})
    t3 = time.monotonic()
print(json.dumps({"cli_imports_s": t1 - t0, **sb.timings, "worker_tf_import_s": sb._worker.ready_info.get("import_s"),
                  "predict_s": t3 - t2, "teardown_s": time.monotonic() - t3}))
"""


def _timed(cmd: list[str]) -> tuple[float, float]:
    """Seconds from start to the first line of output, and to exit, of ``cmd`` (which must succeed)."""
    env = dict(ENV, PYTHONPATH=str(ROOT / "src"))  # this checkout's modelwarden, not an installed one
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT, text=True)
    line = p.stdout.readline()
    t_out = time.perf_counter() - t0
    p.stdout.read()
    rc = p.wait(timeout=400)
    t_exit = time.perf_counter() - t0
    if rc != 0 or not line.strip():
        raise RuntimeError(f"{cmd[:4]} failed ({rc})")
    return t_out, t_exit


def oneshot(models: Path, n: int) -> dict:
    """Whole processes: ``python -c "import tensorflow; load; predict; print"`` (as is, and with the
    worker's trimmed import) against ``python -m modelwarden run`` (without and with the scan gate),
    alternating; time to the output and to exit.  Then where the time of one sandboxed run goes
    (a library run that prints its own clock)."""
    import numpy as np

    dense = str(models / "dense")
    x = json.dumps({"x": np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32).tolist()})
    run = [sys.executable, "-m", "modelwarden", "run", dense, "--inputs", x, "--backend", "namespaces"]
    variants = {"unsandboxed": [sys.executable, "-c", BASELINE_EXIT, dense, x, "plain"],
                "unsandboxed_trimmed": [sys.executable, "-c", BASELINE_EXIT, dense, x, "trimmed"],
                "run": run + ["--skip-scan"], "run_with_scan": run}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(n):
        for name, cmd in variants.items():
            times[name].append(_timed(cmd))
    out: dict = {}
    for name, ts in times.items():
        out[f"{name}_output_s"] = statistics.median(t for t, _ in ts)
        out[f"{name}_exit_s"] = statistics.median(t for _, t in ts)
        out[f"all_{name}_s"] = ts
    for what in ("output", "exit"):
        for name in ("run", "run_with_scan"):
            out[f"{name}_{what}_ratio"] = out[f"{name}_{what}_s"] / out[f"unsandboxed_{what}_s"]
            out[f"{name}_{what}_ratio_vs_trimmed"] = out[f"{name}_{what}_s"] / out[f"unsandboxed_trimmed_{what}_s"]
    out["parts"] = {}
    for mode in ("noscan", "scan"):
        env = dict(ENV, PYTHONPATH=str(ROOT / "src"))
        res = subprocess.run([sys.executable, "-c", PARTS, dense, mode, x], capture_output=True, text=True, env=env,
                             cwd=ROOT, timeout=400, check=True)
        out["parts"][mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# -- memory ----------------------------------------------------------------------------------------


def _mem(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for ln in f:
                if ln.startswith("Rss:"):
                    rss = int(ln.split()[1]) * 1024
                elif ln.startswith("Pss:"):
                    pss = int(ln.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def memory(models: Path) -> dict:
    import numpy as np

    from modelwarden.sandbox import Sandbox

    p = subprocess.Popen([sys.executable, "-c", BASELINE, str(models / "dense")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT, text=True)
    p.stdout.readline()
    base_rss, base_pss = _mem(p.pid)
    p.stdin.close()
    p.wait(timeout=60)
    with Sandbox() as sb:
        m = sb.load(models / "dense", scan=False)
        m.predict({"x": np.zeros((1, 16), np.float32)})
        w = sb._worker
        boot_rss, boot_pss = _mem(w.proc.proc.pid)
        init_rss, init_pss = _mem(w.init_pid) if w.init_pid else (0, 0)
    mib = 1 << 20
    return {
        "unsandboxed_rss_mib": base_rss / mib, "worker_rss_mib": init_rss / mib, "boot_rss_mib": boot_rss / mib,
        "boot_pss_mib": boot_pss / mib,
        "overhead_rss_mib": (init_rss + boot_rss - base_rss) / mib,
        "overhead_pss_mib": (init_pss + boot_pss - base_pss) / mib,
    }


# -- template experiment ---------------------------------------------------------------------------

FORK = r"""
import os, sys, signal, numpy as np
import tensorflow as tf
def threads():
    for ln in open("/proc/self/status"):
        if ln.startswith("Threads:"): return int(ln.split()[1])
print("THREADS_AFTER_IMPORT", threads(), flush=True)
pid = os.fork()
if pid == 0:
    signal.alarm(20)
    f = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    f(x=tf.constant(np.zeros((1, 16), np.float32)))["y"].numpy()
    print("CHILD_OK", threads(), flush=True)
    os._exit(0)
_, st = os.waitpid(pid, 0)
print("CHILD_STATUS", os.waitstatus_to_exitcode(st), flush=True)
"""


def template(models: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", FORK, str(models / "dense")], capture_output=True, text=True,
                         env=ENV, timeout=120)
    out = {"threads_after_import": None, "forked_child": "no answer"}
    for ln in res.stdout.splitlines():
        key, _, value = ln.partition(" ")
        if key == "THREADS_AFTER_IMPORT":
            out["threads_after_import"] = int(value)
        elif key == "CHILD_OK":
            out["forked_child"] = f"loaded and predicted ({value} threads)"
        elif key == "CHILD_STATUS" and value != "0":
            out["forked_child"] = f"failed: exit status {value} (negative = signal; -14 = hung until alarm)"
    return out


# -- warm template: cold start from a long-lived parent -------------------------------------------


def cold_template(models: Path, n: int) -> dict:
    import shutil
    import tempfile

    import numpy as np

    from modelwarden.sandbox import Sandbox, SandboxLimits, template

    t0 = time.perf_counter()
    tmpl = template.warm()
    start_s = time.perf_counter() - t0
    x = np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32)
    base, forked, scanned = [], [], []
    with tempfile.TemporaryDirectory(prefix="mw-bench-") as tmp:
        for i in range(n):
            base.append(_time_to_ready(BASELINE, str(models / "dense"))[0])
            for scan, out in ((False, forked), (True, scanned)):
                copy = Path(tmp) / f"m{i}-{scan}"
                shutil.copytree(models / "dense", copy)  # a model this parent never saw
                t = time.perf_counter()
                with Sandbox(SandboxLimits(load_timeout_s=300), template=True) as sb:
                    sb.load(copy, scan=scan).predict({"x": x})
                    out.append(time.perf_counter() - t)
                    assert sb._worker.template is tmpl
    b, f, c = statistics.median(base), statistics.median(forked), statistics.median(scanned)
    return {"template_start_s": start_s, "template_import_s": tmpl.info.get("import_s"), "unsandboxed_s": b,
            "template_s": f, "ratio": f / b, "template_with_scan_s": c, "ratio_with_scan": c / b,
            "all_unsandboxed_s": base, "all_template_s": forked}


# -- serve: replacing a dead worker without a spare ------------------------------------------------


def replacement(models: Path, n: int, use_template: bool) -> dict:
    import asyncio
    import concurrent.futures
    import signal

    import numpy as np

    from modelwarden.server.pool import PoolSpec, WorkerPool, pool_limits

    async def run() -> list[float]:
        loader = concurrent.futures.ThreadPoolExecutor(2)
        spec = PoolSpec(str(models / "dense"), pool_limits(2 << 30, 30, 256), "auto", None, None, size=1,
                        spares=0, template=use_template)
        pool = WorkerPool("dense", spec, loader, lambda event, data: None)
        await pool.start()
        x = {"x": np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32)}
        times = []
        try:
            for _ in range(n):
                for _ in range(20):  # serving
                    await pool.predict(x, None, time.monotonic() + 30)
                restarts = pool.restarts
                os.kill(pool.workers[0].sandbox._worker.init_pid, signal.SIGKILL)  # the worker itself (pid 1 inside)
                t0 = time.monotonic()
                while True:  # the load: requests back to back until one is served again
                    try:
                        await pool.predict(x, None, time.monotonic() + 0.5)
                        break
                    except Exception:  # noqa: BLE001 - the killed worker's error, then 503s while replacing
                        if time.monotonic() - t0 > 120:
                            raise
                times.append(time.monotonic() - t0)
                assert pool.restarts == restarts + 1, "served by the replacement, not the killed worker"
        finally:
            pool.close()
            loader.shutdown(wait=True)
        return times

    times = asyncio.run(run())
    return {"template": use_template, "median_s": statistics.median(times), "max_s": max(times), "all_s": times}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--cold", type=int, default=3, help="cold starts per variant (0: skip the cold-start part)")
    ap.add_argument("--backend", action="append", default=None,
                    help="sandbox backend to measure (repeatable; default: auto)")
    ap.add_argument("--only", default="",
                    help="comma-separated: cold, run, cold-template, replace, gate (default: everything but run "
                         "and gate)")
    ap.add_argument("--replace-rounds", type=int, default=5)
    ap.add_argument("--mobilenet-rounds", type=int, default=None,
                    help="rounds of the MobileNet warm calls (default: 4x --rounds; each max(10, calls/10) calls)")
    ap.add_argument("--warm-only", action="store_true", help="skip the cold-start, memory and template parts")
    ap.add_argument("--no-socket", action="store_true",
                    help="do not also measure a sandbox with the shared-memory fast path off")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the parts of a warm call through shared memory (instrumented; dense, then MobileNet) "
                         "and the dense call with both sides polling vs both sleeping (alternating rounds)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.build:
        build(Path(args.build))
        return 0
    os.environ.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    sys.path.insert(0, str(ROOT / "src"))
    models = ensure_models()
    results: dict = {"host": {"cpus": os.cpu_count(), "cpu_model": hostinfo.cpu_model(), "loadavg": os.getloadavg()}}
    if args.only:
        return only(args, models, results)
    full = not args.warm_only
    if full:
        results["template"] = template(models)
    backends = args.backend or ["auto"]
    for i, backend in enumerate(backends):
        suffix = "" if i == 0 else f"_{backend}"
        if full and args.cold > 0:
            results["cold" + suffix] = cold(models, args.cold, backend)
        if full and i == 0:
            results["memory"] = memory(models)
        results["warm" + suffix] = warm(models, args.rounds, args.calls, backend, socket_too=not args.no_socket,
                                        mobilenet_rounds=args.mobilenet_rounds)
    if args.breakdown:
        results["breakdown_us"] = breakdown(models)
        results["breakdown_mobilenet_us"] = breakdown(models, max(30, args.calls), "mobilenet")
        results["poll_ab_us"] = poll_ab(models)
    results["host"]["loadavg_end"] = os.getloadavg()
    print(f"host: {os.cpu_count()} CPUs ({results['host']['cpu_model']}), load average {results['host']['loadavg'][0]:.2f} at the start, "
          f"{results['host']['loadavg_end'][0]:.2f} at the end")
    for i, backend in enumerate(backends):
        suffix = "" if i == 0 else f"_{backend}"
        for name, target in (("dense", 1.10), ("mobilenet", 1.03)):
            r = results["warm" + suffix][name]
            transport = "shared memory" if r["shared_memory"] else "JSON channel"
            line = (f"[{backend}] warm predict {name:9}: in-process {r['inprocess_ms']:.3f} ms (eager flat call "
                    f"{r['inprocess_lean_ms']:.3f} ms; the worker's own call ({r['worker_route']}) with its TF settings, "
                    f"unsandboxed process {r['lean_process_ms']:.3f} ms), sandbox ({transport}) {r['sandbox_ms']:.3f} ms -> "
                    f"{r['ratio']:.3f}x the standard in-process call (target <= {target}x), {r['ratio_vs_lean']:.3f}x "
                    f"the worker's own call unsandboxed (the boundary alone: "
                    f"{(r['sandbox_ms'] - r['lean_process_ms']) * 1e3:.0f} us over it); worker compute "
                    f"{r['worker_compute_ms']:.3f} ms, boundary {r['boundary_overhead_ms']:.3f} ms; polling instead of "
                    f"sleeping in {r['spinning_rounds']} rounds (spare core); per-round paired ratio vs the "
                    f"standard call {r['paired']['median']:.3f}x (95 % CI {r['paired']['ci95'][0]:.3f}-"
                    f"{r['paired']['ci95'][1]:.3f}, {r['paired']['rounds']} rounds)")
            if "socket_ms" in r:
                line += f"; JSON channel only {r['socket_ms']:.3f} ms -> {r['socket_ratio']:.3f}x"
            print(line)
        c = results.get("cold" + suffix)
        if c:
            print(f"[{backend}] cold start: unsandboxed {c['unsandboxed_s']:.2f} s, sandbox {c['sandbox_s']:.2f} s -> "
                  f"{c['ratio']:.3f}x (target <= 1.2x); with the scan gate {c['sandbox_with_scan_s']:.2f} s -> "
                  f"{c['ratio_with_scan']:.3f}x")
    for name in ("dense", "mobilenet"):
        b = results.get("breakdown_us" if name == "dense" else "breakdown_mobilenet_us")
        if b:
            print(f"warm {name} call through shared memory, medians: "
                  + ", ".join(f"{k} {v:.0f} us" for k, v in b.items() if k != "polling_pct")
                  + f" (wait = worker run + worker_busy + the two wake-ups; polling in {b['polling_pct']:.0f}% of calls)")
    ab = results.get("poll_ab_us")
    if ab:
        print("warm dense call, both sides polling vs both sleeping (alternating rounds, one sandbox): "
              + "; ".join(f"{mode}: call {r['call']:.0f} us, worker run {r['run']:.0f} us, worker busy {r['worker_busy']:.0f} us"
                          for mode, r in ab.items()))
    if "memory" in results:
        m = results["memory"]
        print(f"memory: unsandboxed RSS {m['unsandboxed_rss_mib']:.0f} MiB, worker {m['worker_rss_mib']:.0f} MiB + boot "
              f"{m['boot_rss_mib']:.0f} MiB -> overhead {m['overhead_rss_mib']:.1f} MiB RSS, "
              f"{m['overhead_pss_mib']:.1f} MiB PSS (target <= 50 MiB)")
    if "template" in results:
        t = results["template"]
        print(f"template: {t['threads_after_import']} threads right after `import tensorflow`; "
              f"fork() child: {t['forked_child']}")
    if full and backends[0] in ("auto", "namespaces"):  # the worker template forks namespaces workers only
        return only(args, models, results, {"cold-template", "replace"})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def only(args: argparse.Namespace, models: Path, results: dict, parts: set[str] | None = None) -> int:
    """Run and print the sections in ``parts`` (default: ``--only``), then write the JSON."""
    if parts is None:
        parts = set(args.only.split(","))
        print(f"host: {os.cpu_count()} CPUs ({results['host']['cpu_model']}), load average {results['host']['loadavg'][0]:.2f} (start)")
    if "cold" in parts:
        c = results["cold"] = cold(models, args.cold)
        print(f"cold start, fresh processes: unsandboxed {c['unsandboxed_s']:.2f} s, sandbox {c['sandbox_s']:.2f} s -> "
              f"{c['ratio']:.3f}x; with the scan gate {c['sandbox_with_scan_s']:.2f} s -> {c['ratio_with_scan']:.3f}x")
    if "run" in parts:
        c = results["run"] = oneshot(models, args.cold)
        for what in ("output", "exit"):
            print(f"one-shot `modelwarden run`, time to {what}: unsandboxed {c[f'unsandboxed_{what}_s']:.2f} s "
                  f"(trimmed import {c[f'unsandboxed_trimmed_{what}_s']:.2f} s), run --skip-scan "
                  f"{c[f'run_{what}_s']:.2f} s -> {c[f'run_{what}_ratio']:.3f}x "
                  f"({c[f'run_{what}_ratio_vs_trimmed']:.3f}x), with the scan gate {c[f'run_with_scan_{what}_s']:.2f} s "
                  f"-> {c[f'run_with_scan_{what}_ratio']:.3f}x ({c[f'run_with_scan_{what}_ratio_vs_trimmed']:.3f}x) "
                  "(target < 1.0x)")
        for mode, p in c["parts"].items():
            print(f"  where the time goes ({mode}, seconds since start unless noted): " + ", ".join(
                f"{k} {v:.3f}" for k, v in p.items() if isinstance(v, (int, float))))
    if "cold-template" in parts:
        c = results["cold_template"] = cold_template(models, args.cold)
        print(f"cold start from a parent with a warm template: unsandboxed fresh process {c['unsandboxed_s']:.2f} s, "
              f"template-forked sandbox {c['template_s']:.3f} s -> {c['ratio']:.3f}x (target < 1.0x); with the scan "
              f"gate {c['template_with_scan_s']:.3f} s -> {c['ratio_with_scan']:.3f}x; the template itself started "
              f"in {c['template_start_s']:.2f} s once")
    if "replace" in parts:
        for use in (True, False):
            r = results[f"replace_template_{use}"] = replacement(models, args.replace_rounds, use)
            print(f"serve: worker SIGKILLed, no spare, template {'on ' if use else 'off'}: serving again after "
                  f"{r['median_s']:.3f} s median, {r['max_s']:.3f} s max ({len(r['all_s'])} kills; target <= 1 s)")
    if "gate" in parts:
        g = results["gate"] = gate_after_burst(models, max(1, args.rounds // 5))
        for rule, runs in g.items():
            print(f"polling gate {rule:8s} after 8 s of MobileNet, 20 s of dense calls: polled again after " + ", ".join(
                "never" if r["resumed_after_s"] is None else f"{r['resumed_after_s']:.1f} s" for r in runs)
                + "; calls polled " + ", ".join(f"{r['polled_pct']:.0f} %" for r in runs)
                + "; µs per call over the last 10 s " + ", ".join(f"{r['late_call_us']:.0f}" for r in runs))
    results["host"]["loadavg_end"] = os.getloadavg()
    print(f"load average at the end: {results['host']['loadavg_end'][0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
