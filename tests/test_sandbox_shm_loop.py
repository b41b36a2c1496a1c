"""The shared-memory call awaited on an event loop (``predict_async``, what the server uses).

The server no longer waits for a worker in a thread: the request goes into the region and the
event loop watches the doorbell and the JSON channel.  The worker stays hostile, so every attack
of tests/test_sandbox_shm.py that concerns waiting is repeated here against the loop - a worker
that never answers, one that floods the doorbell, forged and malformed replies, a cancelled
call, a dead and a CPU-condemned worker - each with a positive control, and each checked for
the one new risk: a blocked event loop (a ticker coroutine measures the loop's longest stall;
its own positive control is a blocking call made on the loop, which it does catch).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from modelwarden.sandbox import (
    DeadlineExceeded, OutputTooLarge, ProtocolViolation, Sandbox, SandboxLimits, WorkerCrashed,
)
from modelwarden.sandbox.namespaces import probe_namespaces
from tests.attacker import AttackerWorker, decode, encode
from tests.conftest import build_fixtures
from tests.test_sandbox_shm import FLOOD, REGION

_NS_OK, _NS_WHY = probe_namespaces()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(not _NS_OK, reason=f"namespaces unavailable: {_NS_WHY}")]

STALL_LIMIT_S = 1.0  # the loop's longest pause allowed while a call waits (deadlines here are 3 s)


def on_loop(work):
    """Run ``work()`` (a coroutine function) on a fresh event loop beside a ticker; returns
    (result or exception, the loop's longest stall in seconds)."""

    async def main():
        stalls = [0.0]
        stop = asyncio.Event()

        async def tick():
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                stalls[0] = max(stalls[0], now - last)
                last = now

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.02)
        try:
            result = await work()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            result = exc
        stop.set()
        await ticker
        return result, stalls[0]

    return asyncio.run(main())


def run_async(w: AttackerWorker, source: str, timeout: float | None = None):
    async def call():
        return decode(await w.model.predict_async({"x": encode(source)}, timeout=timeout))
    return call


# -- correct results ---------------------------------------------------------------------------------


def test_results_on_the_loop_equal_the_thread_path_for_every_reply_route():
    serve, run = build_fixtures("build_serve_models"), build_fixtures("build_run_models")
    with Sandbox(SandboxLimits(timeout_s=60)) as sb:  # answered in the region
        model = sb.load(serve / "multi" / "1", scan=False)
        fast = sb._worker.fast
        a = np.arange(6, dtype=np.float32).reshape(3, 2)
        b = np.array([1, -2, 3], dtype=np.int32)

        async def calls():
            return [await model.predict_async({"a": a + i, "b": b + i}) for i in range(5)]

        outs, stall = on_loop(calls)
        for i, out in enumerate(outs):
            np.testing.assert_allclose(out["total"], (a + i).sum(axis=1))
            np.testing.assert_array_equal(out["twice"], (b + i) * 2)
        assert fast.replies == 5 and stall < STALL_LIMIT_S
        sync = model.predict({"a": a, "b": b})
        np.testing.assert_array_equal(sync["twice"], outs[0]["twice"])
    with Sandbox(SandboxLimits(timeout_s=60)) as sb:  # strings: the JSON channel, read in a thread
        model = sb.load(serve / "strings" / "1", scan=False)
        out, _ = on_loop(lambda: model.predict_async({"text": np.array([b"ab", b"xyz"], dtype=object)}))
        assert out["upper"].tolist() == [b"AB", b"XYZ"] and sb._worker.fast.seq == 0
    with Sandbox(SandboxLimits(timeout_s=60, max_output_bytes=1 << 16)) as sb:  # an error reply on the channel
        model = sb.load(run / "big_output", scan=False)
        err, _ = on_loop(lambda: model.predict_async({"n": np.int32(1 << 15)}))
        assert isinstance(err, OutputTooLarge)
        out, _ = on_loop(lambda: model.predict_async({"n": np.int32(4)}))
        assert out["zeros"].shape == (4,) and sb._worker.fast.replies == 1 and sb.alive


# -- a worker that never answers ---------------------------------------------------------------------


def test_the_stall_ticker_catches_a_blocked_loop():
    """Positive control for every ``stall`` assertion below: the same never-answering call made
    the blocking way on the loop stalls it for the whole deadline."""
    with AttackerWorker(SandboxLimits(timeout_s=2)) as w:
        async def blocking():
            return w.model.predict({"x": encode("import time\ntime.sleep(60)")})

        err, stall = on_loop(blocking)
        assert isinstance(err, DeadlineExceeded) and stall > 1.8


def test_a_worker_that_never_answers_hits_the_deadline_without_stalling_the_loop():
    with AttackerWorker(SandboxLimits(timeout_s=3)) as w:
        ok, _ = on_loop(run_async(w, "result = 'real'"))
        assert ok == "real" and w.sandbox._worker.fast.replies == 1  # control: answered in the region
        t0 = time.monotonic()
        err, stall = on_loop(run_async(w, "import time\ntime.sleep(60)"))
        assert isinstance(err, DeadlineExceeded) and "deadline" in str(err)
        assert 2.9 < time.monotonic() - t0 < 6 and stall < STALL_LIMIT_S
        assert not w.sandbox.alive
        err, _ = on_loop(run_async(w, "result = 1"))
        assert isinstance(err, WorkerCrashed) and "no longer running" in str(err)


def test_a_doorbell_flood_neither_corrupts_replies_nor_holds_the_loop():
    flood = FLOOD + "time.sleep(0.3)\nresult = STATE['rings']\n"
    with AttackerWorker(SandboxLimits(timeout_s=3)) as w:
        rings, _ = on_loop(run_async(w, flood))
        assert isinstance(rings, int) and rings > 0  # control: the flood reaches the parent's doorbell

        async def honest_calls():
            return [decode(await w.model.predict_async({"x": encode(f"result = {i}")})) for i in range(5)]

        got, stall = on_loop(honest_calls)
        assert got == list(range(5)) and stall < STALL_LIMIT_S  # replies still found among the rings
        t0 = time.monotonic()
        err, stall = on_loop(run_async(w, "import time\ntime.sleep(60)"))
        assert isinstance(err, DeadlineExceeded)
        assert 2.9 < time.monotonic() - t0 < 6 and stall < STALL_LIMIT_S
        assert not w.sandbox.alive


# -- forged and malformed replies --------------------------------------------------------------------


def test_a_forged_reply_reaches_the_loop_and_a_malformed_one_is_a_violation():
    with AttackerWorker(SandboxLimits(timeout_s=10, max_output_bytes=8 << 20)) as w:
        forged, _ = on_loop(run_async(w, REGION + "forged('forged'); time.sleep(0.5); result = 'real'"))
        assert forged == "forged"  # control: a reply written into the region is what the parent reads
        again, _ = on_loop(run_async(w, "result = 'next'"))
        assert again == "next"  # the late genuine reply (old seq) is never taken for this call
        bad = "[(0, F32, 2, S.HEADER_BYTES, 4 << 20, 1, 1 << 20, 0, 0, 0, 0, 0, 0)]"
        t0 = time.monotonic()
        err, stall = on_loop(run_async(w, REGION + f"reply({bad}); time.sleep(30)\n"))
        assert isinstance(err, ProtocolViolation) and "outside the reply area" in str(err)
        assert time.monotonic() - t0 < 5 and stall < STALL_LIMIT_S
        assert not w.sandbox.alive


# -- cancelled, dead and condemned workers -----------------------------------------------------------


def test_a_cancelled_call_retires_its_worker():
    """The worker is still computing the abandoned request: reusing it could pair a later call with
    that request's reply, so it is killed."""
    with AttackerWorker(SandboxLimits(timeout_s=30)) as w:
        assert on_loop(run_async(w, "result = 1"))[0] == 1  # control: alive and answering on the loop

        async def cancel_midway():
            task = asyncio.ensure_future(w.model.predict_async({"x": encode("import time\ntime.sleep(20)")}))
            await asyncio.sleep(0.5)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                return "cancelled"

        assert on_loop(cancel_midway)[0] == "cancelled"
        assert not w.sandbox.alive


def test_a_killed_worker_is_reported_without_stalling_the_loop():
    with AttackerWorker(SandboxLimits(timeout_s=10)) as w:
        assert on_loop(run_async(w, "result = 1"))[0] == 1
        err, stall = on_loop(run_async(w, "import os\nos._exit(7)"))
        assert isinstance(err, WorkerCrashed) and "during predict" in str(err) and stall < STALL_LIMIT_S, err
        assert not w.sandbox.alive


def test_a_worker_the_watchdog_condemned_is_never_called_on_the_loop():
    burn = "import threading\ndef burn():\n    while True:\n        pass\n" \
           "threading.Thread(target=burn, daemon=True).start()\nresult = 'burning'"
    with AttackerWorker(SandboxLimits(timeout_s=30, cpu_seconds=12)) as w:
        assert on_loop(run_async(w, burn))[0] == "burning"
        deadline = time.monotonic() + 60
        while w.sandbox.alive and time.monotonic() < deadline:
            time.sleep(0.2)  # only the CPU watchdog can stop it
        assert w.sandbox._worker.cpu_exhausted
        err, stall = on_loop(run_async(w, "result = 1"))
        assert isinstance(err, WorkerCrashed) and "CPU-time budget" in str(err) and stall < STALL_LIMIT_S
