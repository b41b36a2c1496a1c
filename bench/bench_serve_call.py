"""Where a small model's request time goes: one sandboxed worker call vs the same TensorFlow call in-process.

    python bench/bench_serve_call.py [--calls 2000] [--model dense]

Prints the mean wall time per call of (a) ``SandboxedModel.predict`` from the parent (encode, the
parent<->worker channel, decode in the worker, TensorFlow, and back) and (b) the model's
``serving_default`` called in this process with a ``tf.constant`` input, both on the same 1-row input,
and their difference: the per-call cost of the sandbox transport and worker loop.

Then the same sandboxed call as the server makes it, from a coroutine on a uvloop event loop (what
uvicorn runs): (c) ``predict`` in a thread, ``await loop.run_in_executor(...)`` (the server before the
event-loop wait), and (d) ``await predict_async(...)`` (the request written into shared memory, the loop
waiting for the doorbell).  (c) and (d) alternate in rounds so that the host's load hits both alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def loop_calls(model, inputs: dict, calls: int, rounds: int = 10) -> tuple[float, float]:
    """Mean seconds per call: (thread hop, awaited on the loop), alternating rounds on one uvloop loop."""
    import asyncio
    import concurrent.futures

    import uvloop

    pool = concurrent.futures.ThreadPoolExecutor(1)
    per = max(1, calls // rounds)

    async def run() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        totals = [0.0, 0.0]
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(per):
                await loop.run_in_executor(pool, model.predict, inputs, "serving_default", 30)
            totals[0] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(per):
                await model.predict_async(inputs, "serving_default", 30, pool)
            totals[1] += time.perf_counter() - t0
        return totals[0] / (per * rounds), totals[1] / (per * rounds)

    try:
        return uvloop.run(run())
    finally:
        pool.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from modelwarden.sandbox.client import Sandbox
    from modelwarden.server.pool import pool_limits
    from tests.conftest import build_fixtures

    path = build_fixtures("build_serve_models") / "dense" / "1"
    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    sb = Sandbox(pool_limits(2 << 30, None, 64))
    try:
        model = sb.load(str(path), scan=False, recheck=True)
        name = next(iter(model.signatures["serving_default"].inputs))
        for _ in range(50):
            model.predict({name: x}, "serving_default", 30)
        t0 = time.perf_counter()
        for _ in range(args.calls):
            model.predict({name: x}, "serving_default", 30)
        sandboxed = (time.perf_counter() - t0) / args.calls
        hop, on_loop = loop_calls(model, {name: x}, args.calls)
    finally:
        sb.close()
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    for _ in range(50):
        fn(**{name: tf.constant(x)})
    t0 = time.perf_counter()
    for _ in range(args.calls):
        {k: v.numpy() for k, v in fn(**{name: tf.constant(x)}).items()}
    inproc = (time.perf_counter() - t0) / args.calls
    print(f"load average {os.getloadavg()[0]:.2f}; {args.calls} calls, 1 row of the dense model")
    print(f"sandboxed worker call (parent view)  {sandboxed * 1e3:7.3f} ms")
    print(f"TensorFlow in-process                {inproc * 1e3:7.3f} ms")
    print(f"transport + worker loop per call     {(sandboxed - inproc) * 1e3:7.3f} ms "
          f"({(sandboxed - inproc) / sandboxed:.0%} of the sandboxed call)")
    print(f"from an event loop, thread hop       {hop * 1e3:7.3f} ms  (await run_in_executor(predict))")
    print(f"from an event loop, no thread        {on_loop * 1e3:7.3f} ms  (await predict_async: doorbell on the loop; "
          f"{on_loop / hop:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
