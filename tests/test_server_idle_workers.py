"""The server's idle-worker hand-off (server/pool.py ``IdleWorkers``) is first come, first served.

``asyncio.Queue`` let a request that arrived after a worker was released take that worker before
the request woken for it ran; under load (bench_serve.py, 8 clients) groups of requests then waited
13-66 ms for a worker while every call took under 10 ms.  These run the real class on a real loop.
"""

from __future__ import annotations

import asyncio

import pytest

from modelwarden.server.pool import IdleWorkers


def run(coro):
    return asyncio.run(coro)


def test_a_released_worker_goes_to_the_longest_waiting_request_not_a_newcomer():
    async def main() -> list[str]:
        idle, order = IdleWorkers(), []

        async def request(name: str) -> None:
            worker = await idle.get(5.0)
            order.append(name)
            await asyncio.sleep(0)
            idle.put(worker)

        first = asyncio.create_task(request("waited"))
        second = asyncio.create_task(request("waited too"))
        await asyncio.sleep(0)  # both are waiting: no worker yet
        newcomer = asyncio.create_task(request("newcomer"))  # its first step is queued before the wake-up below
        idle.put("worker")  # released: the first waiter is woken, but the newcomer runs first
        await asyncio.gather(first, second, newcomer)
        return order

    assert run(main()) == ["waited", "waited too", "newcomer"]


def test_asyncio_queue_lets_the_newcomer_barge_in():
    """Positive control: the same sequence on asyncio.Queue (what the pool used) serves the newcomer first."""
    async def main() -> list[str]:
        idle: asyncio.Queue[str] = asyncio.Queue()
        order = []

        async def request(name: str) -> None:
            worker = idle.get_nowait() if not idle.empty() else await idle.get()
            order.append(name)
            await asyncio.sleep(0)
            idle.put_nowait(worker)

        first = asyncio.create_task(request("waited"))
        await asyncio.sleep(0)
        newcomer = asyncio.create_task(request("newcomer"))
        idle.put_nowait("worker")
        await asyncio.gather(first, newcomer)
        return order

    assert run(main()) == ["newcomer", "waited"]


def test_an_idle_worker_is_taken_at_once_and_sizes_are_reported():
    async def main() -> tuple[int, str, int]:
        idle = IdleWorkers()
        idle.put("a")
        idle.put("b")
        before = idle.qsize()
        got = await idle.get(0.0)
        return before, got, idle.qsize()

    assert run(main()) == (2, "a", 1)


def test_a_request_that_times_out_leaves_the_line_and_the_next_one_is_served():
    async def main() -> tuple[bool, str, int]:
        idle = IdleWorkers()
        with pytest.raises(TimeoutError):
            await idle.get(0.01)  # nobody releases a worker in time
        waiting = asyncio.create_task(idle.get(5.0))
        await asyncio.sleep(0)
        idle.put("worker")
        got = await waiting
        return not idle._waiters, got, idle.qsize()

    assert run(main()) == (True, "worker", 0)


def test_a_worker_handed_to_a_cancelled_request_goes_to_the_next_in_line():
    async def main() -> tuple[str, int]:
        idle = IdleWorkers()
        doomed = asyncio.create_task(idle.get(5.0))
        patient = asyncio.create_task(idle.get(5.0))
        await asyncio.sleep(0)
        idle.put("worker")  # handed to `doomed`, which is cancelled before it runs
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        got = await asyncio.wait_for(patient, 1.0)
        return got, idle.qsize()

    assert run(main()) == ("worker", 0)
