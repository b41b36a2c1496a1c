"""Is forking a process that imported TensorFlow safe?  Measure it instead of assuming it.

    python bench/probe_fork_safety.py [--children 200] [--parallel 2] [--deadline 60] [--gdb] [--busy]

1. threads alive right after ``import tensorflow`` (with the worker's environment): tid, name
   (``/proc/self/task/*/comm``), kernel wait channel and, with ``--gdb``, the function each
   thread was started in (the frame under ``start_thread``), i.e. what created it;
2. the same list right after a first ``fork()`` (``pthread_atfork`` handlers run then);
3. stress: ``--children`` children forked from that one process, ``--parallel`` at a time, each
   loading a SavedModel and predicting under ``--deadline`` seconds, results compared with the
   same model run in a fresh process; every hang (deadline) and crash (signal, non-zero exit,
   wrong output) counted.  ``--busy`` keeps a TensorFlow computation running in a thread of the
   template while it forks (what a template must never do), to show what the idle case is
   compared against.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "MALLOC_ARENA_MAX": "2",
              "KERAS_BACKEND": "tensorflow"}


def threads(gdb: bool = False) -> list[dict]:
    out = []
    for tid in sorted(os.listdir("/proc/self/task"), key=int):
        base = f"/proc/self/task/{tid}"
        try:
            comm = Path(f"{base}/comm").read_text().strip()
            wchan = Path(f"{base}/wchan").read_text().strip()
        except OSError:
            continue
        out.append({"tid": int(tid), "comm": comm, "wchan": wchan})
    if gdb and len(out) > 1:
        starts = _start_routines()
        for t in out:
            t["started_in"] = starts.get(t["tid"], "?")
    return out


def _start_routines() -> dict[int, str]:
    """tid -> 'function (library)' of the frame under start_thread, read with gdb from a helper."""
    try:
        res = subprocess.run(["gdb", "-p", str(os.getpid()), "-batch", "-ex", "thread apply all bt 40"],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[int, str] = {}
    tid, last = None, ""
    for ln in res.stdout.splitlines():
        if ln.startswith("Thread ") and "LWP " in ln:
            tid = int(ln.split("LWP ")[1].split(")")[0])
            last = ""
        elif ln.startswith("#") and tid is not None:
            if "start_thread" in ln and last:
                found[tid] = last
            parts = ln.split(" in ", 1)
            name = (parts[1] if len(parts) > 1 else ln.split(None, 1)[1]).split(" (")[0]
            lib = ln.rsplit(" from ", 1)[1].rsplit("/", 1)[-1] if " from " in ln else ""
            last = f"{name} ({lib})" if lib else name
    return found


CHILD_DEADLINE_EXIT = 99


def _child(model: str, x, deadline: float) -> None:
    import signal

    import tensorflow as tf

    signal.alarm(int(deadline))  # a hang ends as SIGALRM: counted as a hang, not a crash
    try:
        fn = tf.saved_model.load(model).signatures["serving_default"]
        y = fn(x=tf.constant(x))["y"].numpy()
        with open(f"/proc/self/fd/{3}", "wb") as f:
            f.write(y.tobytes())
        os._exit(0)
    except BaseException:  # noqa: BLE001
        os._exit(3)


def stress(model: str, n: int, parallel: int, deadline: float, busy: bool) -> dict:
    import threading

    import numpy as np
    import tensorflow as tf

    x = np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32)
    ref = subprocess.run([sys.executable, "-c", REFERENCE, model], capture_output=True, env={**os.environ},
                         timeout=300).stdout
    stop = threading.Event()
    if busy:
        def burn() -> None:
            a = tf.random.normal((256, 256))
            while not stop.is_set():
                tf.linalg.matmul(a, a).numpy()
        threading.Thread(target=burn, daemon=True).start()
        time.sleep(0.5)
    counts = {"ok": 0, "hang": 0, "crash": 0, "wrong_output": 0}
    details: list[str] = []
    running: dict[int, tuple[float, int]] = {}
    started = 0
    times = []
    while started < n or running:
        while started < n and len(running) < parallel:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                os.dup2(w, 3)
                _child(model, x, deadline)
            os.close(w)
            running[pid] = (time.monotonic(), r)
            started += 1
        pid, status = os.wait()
        t0, r = running.pop(pid)
        times.append(time.monotonic() - t0)
        with os.fdopen(r, "rb") as f:
            got = f.read()
        code = os.waitstatus_to_exitcode(status)
        if code == 0 and got == ref:
            counts["ok"] += 1
        elif code == 0:
            counts["wrong_output"] += 1
        elif code == -14:
            counts["hang"] += 1
        else:
            counts["crash"] += 1
            details.append(f"exit {code}")
    stop.set()
    times.sort()
    return {**counts, "children": n, "parallel": parallel, "busy_parent": busy, "details": details[:20],
            "child_s_median": round(times[len(times) // 2], 3), "child_s_max": round(times[-1], 3)}


def sandboxed(model: str, n: int, parallel: int, deadline: float) -> dict:
    """``n`` real sandboxed workers forked from this process's worker template, ``parallel`` at a time,
    each loading the model and predicting under ``deadline`` seconds: errors counted by type."""
    import concurrent.futures

    import numpy as np

    from modelwarden.sandbox import Sandbox, SandboxLimits, template

    tmpl = template.warm()
    x = np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32)
    ref = subprocess.run([sys.executable, "-c", REFERENCE, model], capture_output=True, timeout=300).stdout
    limits = SandboxLimits(timeout_s=deadline, load_timeout_s=deadline)

    def one(_: int) -> tuple[str, float]:
        t0 = time.monotonic()
        try:
            with Sandbox(limits, template=True) as sb:
                y = sb.load(model, scan=False).predict({"x": x})["y"]
                forked = sb._worker.template is tmpl
            ok = y.tobytes() == ref
            return ("ok" if ok and forked else "not_forked" if ok else "wrong_output"), time.monotonic() - t0
        except Exception as exc:  # noqa: BLE001 - counted by type
            return type(exc).__name__, time.monotonic() - t0

    with concurrent.futures.ThreadPoolExecutor(parallel) as ex:
        results = list(ex.map(one, range(n)))
    counts: dict[str, int] = {}
    for kind, _ in results:
        counts[kind] = counts.get(kind, 0) + 1
    times = sorted(t for _, t in results)
    return {"workers": n, "parallel": parallel, "counts": counts, "template_threads": len(
        os.listdir(f"/proc/{tmpl.pid}/task")), "worker_s_median": round(times[len(times) // 2], 3),
        "worker_s_max": round(times[-1], 3)}


REFERENCE = r"""
import sys, numpy as np, tensorflow as tf
x = np.random.default_rng(1).normal(size=(1, 16)).astype(np.float32)
sys.stdout.buffer.write(tf.saved_model.load(sys.argv[1]).signatures["serving_default"](x=tf.constant(x))["y"].numpy().tobytes())
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--children", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--deadline", type=float, default=60.0)
    ap.add_argument("--gdb", action="store_true")
    ap.add_argument("--busy", action="store_true")
    ap.add_argument("--sandboxed", type=int, default=0,
                    help="instead: this many real sandboxed workers forked from the worker template")
    ap.add_argument("--model", help="SavedModel taking x float32[None,16] (default: bench_sandbox.py's dense)")
    ap.add_argument("--json")
    args = ap.parse_args()
    os.environ.update(WORKER_ENV)
    if not args.model:
        sys.path.insert(0, str(ROOT / "bench"))
        from bench_sandbox import ensure_models

        args.model = str(ensure_models() / "dense")
    if args.sandboxed:
        res = {"loadavg_before": os.getloadavg(),
               "sandboxed": sandboxed(args.model, args.sandboxed, args.parallel, args.deadline),
               "loadavg_after": os.getloadavg()}
        print(json.dumps(res, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
        return 0 if res["sandboxed"]["counts"] == {"ok": args.sandboxed} else 1
    t0 = time.monotonic()
    import tensorflow  # noqa: F401

    res: dict = {"loadavg_before": os.getloadavg(), "import_s": round(time.monotonic() - t0, 2),
                 "after_import": threads(args.gdb)}
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    time.sleep(0.2)
    res["after_first_fork"] = threads(False)
    res["stress"] = stress(args.model, args.children, args.parallel, args.deadline, args.busy)
    res["loadavg_after"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    s = res["stress"]
    return 0 if s["ok"] == s["children"] else 1


if __name__ == "__main__":
    sys.exit(main())
