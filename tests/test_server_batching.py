"""The batcher on its own: real asyncio, real arrays, a numpy function as the model call."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from modelwarden.sandbox import errors as sberr
from modelwarden.server.batching import Batcher, BatchingConfig


class Model:
    """y = 2x + row-sum; records every call's batch size; refuses negative sums like a model error."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def __call__(self, inputs: dict, signature, deadline: float) -> dict:
        x = inputs["x"]
        self.calls.append(x.shape[0])
        await asyncio.sleep(0.001)
        if (x.sum(axis=1) < 0).any():
            raise sberr.ExecutionFailed("InvalidArgumentError: negative row")
        return {"y": 2 * x, "s": x.sum(axis=1)}


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_one_call_and_get_their_rows():
    model = Model()

    async def main():
        b = Batcher(BatchingConfig(max_batch_size=16, timeout_s=0.05), model)
        xs = [np.full((1 + i % 2, 3), float(i), np.float32) for i in range(6)]
        outs = await asyncio.gather(*(b.submit({"x": x}, None, time.monotonic() + 5) for x in xs))
        return xs, outs, b

    xs, outs, b = run(main())
    assert model.calls == [sum(x.shape[0] for x in xs)]
    for x, out in zip(xs, outs):
        np.testing.assert_array_equal(out["y"], 2 * x)
        np.testing.assert_array_equal(out["s"], x.sum(axis=1))
    assert b.batches == 1 and b.batched_requests == 6


def test_max_batch_size_flushes_and_big_requests_run_alone():
    model = Model()

    async def main():
        b = Batcher(BatchingConfig(max_batch_size=4, timeout_s=10.0), model)  # only size can flush
        small = [b.submit({"x": np.ones((2, 3), np.float32)}, None, time.monotonic() + 5) for _ in range(4)]
        big = b.submit({"x": np.ones((5, 3), np.float32)}, None, time.monotonic() + 5)
        return await asyncio.wait_for(asyncio.gather(*small, big), 5)

    run(main())
    assert sorted(model.calls) == [4, 4, 5]


def test_different_shapes_do_not_mix_and_a_failing_member_fails_alone():
    model = Model()

    async def main():
        b = Batcher(BatchingConfig(max_batch_size=32, timeout_s=0.02), model)
        good = [b.submit({"x": np.ones((1, 3), np.float32)}, None, time.monotonic() + 5) for _ in range(3)]
        other = b.submit({"x": np.ones((1, 4), np.float32)}, None, time.monotonic() + 5)
        bad = b.submit({"x": -np.ones((1, 3), np.float32)}, None, time.monotonic() + 5)
        return await asyncio.gather(*good, other, bad, return_exceptions=True)

    res = run(main())
    assert all(isinstance(r, dict) for r in res[:4])
    assert isinstance(res[4], sberr.ExecutionFailed)
    assert 4 in model.calls and 1 in model.calls  # the merged (3,) call failed, then each ran alone


def test_worker_failures_reach_every_member():
    async def crash(inputs, signature, deadline):
        raise sberr.WorkerCrashed("the worker died from SIGKILL")

    async def main():
        b = Batcher(BatchingConfig(max_batch_size=8, timeout_s=0.01), crash)
        return await asyncio.gather(*(b.submit({"x": np.ones((1, 2))}, None, time.monotonic() + 5)
                                      for _ in range(3)), return_exceptions=True)

    assert all(isinstance(r, sberr.WorkerCrashed) for r in run(main()))


@pytest.mark.parametrize("inputs", [{"x": np.float32(1.0)}, {"a": np.ones((2, 1)), "b": np.ones((3, 1))}])
def test_unbatchable_inputs_run_directly(inputs):
    seen = []

    async def call(i, signature, deadline):
        seen.append(i)
        return {"y": np.zeros(1)}

    async def main():
        return await Batcher(BatchingConfig(), call).submit({k: np.asarray(v) for k, v in inputs.items()}, None, 0)

    run(main())
    assert len(seen) == 1


def test_a_lone_request_with_an_idle_worker_does_not_wait_and_a_freed_worker_flushes():
    model = Model()
    idle = [1]

    async def main():
        b = Batcher(BatchingConfig(max_batch_size=64, timeout_s=30.0), model, lambda: idle[0])
        t = time.monotonic()
        await asyncio.wait_for(b.submit({"x": np.ones((1, 3), np.float32)}, None, t + 5), 5)
        lone = time.monotonic() - t
        idle[0] = 0  # every worker busy: requests queue up ...
        waiting = [asyncio.ensure_future(b.submit({"x": np.ones((1, 3), np.float32)}, None, t + 60))
                   for _ in range(5)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiting)
        b.worker_free()  # ... until a worker is free: then they go as one call
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        return lone

    assert run(main()) < 1.0
    assert model.calls == [1, 5]


def test_a_request_finding_an_idle_worker_skips_the_queue_and_the_next_one_queues():
    """Adaptive batching: with a worker idle the request is called at once (no queue, task or timer);
    a second request arriving while that call has taken the only idle worker is queued."""
    seen: list[tuple[int, int]] = []
    tasks: list = []

    async def main():
        gate = asyncio.Event()
        b: Batcher

        async def call(inputs, signature, deadline):
            seen.append((inputs["x"].shape[0], len(b._queues)))
            tasks.append(asyncio.current_task())
            if len(seen) == 1:
                await gate.wait()
            return {"y": inputs["x"] * 2}

        b = Batcher(BatchingConfig(max_batch_size=8, timeout_s=30.0), call, lambda: 1, lambda: 0)
        first = asyncio.ensure_future(b.submit({"x": np.ones((1, 2))}, None, time.monotonic() + 5))
        await asyncio.sleep(0.01)
        assert seen == [(1, 0)] and b._dispatched == 1  # called at once: nothing queued ...
        assert tasks == [first]  # ... in the request's own task (no batch task was created)
        second = asyncio.ensure_future(b.submit({"x": np.ones((1, 2))}, None, time.monotonic() + 5))
        await asyncio.sleep(0.01)
        assert len(b._queues) == 1 and not second.done()  # the idle worker is taken: it waits for a batch
        gate.set()
        await first
        b.worker_free()
        out = await asyncio.wait_for(second, 5)
        assert tasks[1] is not second  # the queued one ran as a batch task
        return out, b

    out, b = run(main())
    assert out["y"].tolist() == [[2.0, 2.0]] and b._dispatched == 0 and not b._queues
