"""Reply formatting: TF Serving's float text, nested lists without Python lists, and the cost rule that
keeps hostile zero-element shapes ([2**24, 0]) from blocking the event loop or allocating without bound."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from modelwarden.sandbox import errors as sberr
from modelwarden.server import codec, jsonfmt
from modelwarden.server.app import render


def tf_decimal(v: float, dtype) -> str:
    """json_tensor.cc WriteDecimal, restated: %g with 6 digits if it round-trips, else max_digits10."""
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "Infinity" if v > 0 else "-Infinity"
    s = "%.6g" % v
    if dtype(float(s)) != dtype(v):
        s = ("%.9g" if dtype is np.float32 else "%.17g") % v
    return s if ("." in s or "e" in s) else s + ".0"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_text_matches_write_decimal(dtype):
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.standard_normal(500) * 10.0 ** rng.integers(-12, 12, 500),
                             [0.0, -0.0, 1.0, 0.1, 1 / 3, 9e6, 3e-5, 16777216.0, 1e300 if dtype is np.float64 else 3e38,
                              np.nan, np.inf, -np.inf]]).astype(dtype)
    got = jsonfmt.encode(values)[1:-1].split(",")
    assert got == [tf_decimal(float(v), dtype) for v in values]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_tensors_take_the_scalar_path_with_the_same_text(dtype):
    """Tensors of at most SMALL elements are written one value at a time: the same text as the
    numpy path, including values whose 6-digit form rounds past float32's range."""
    rng = np.random.default_rng(2)
    edge = [0.0, -0.0, 1.0, 0.1, 1 / 3, 9e6, 3e-5, 16777216.0, np.nan, np.inf, -np.inf,
            np.finfo(dtype).max, -np.finfo(dtype).max, np.finfo(dtype).tiny, 3.4028235e38 if dtype is np.float32 else 1e308]
    values = np.concatenate([rng.standard_normal(4000) * 10.0 ** rng.integers(-30, 30, 4000), edge]).astype(dtype)
    for i in range(0, len(values), jsonfmt.SMALL):
        chunk = values[i:i + jsonfmt.SMALL]
        small = jsonfmt._float_tokens(chunk)
        big = jsonfmt._float_tokens(np.concatenate([chunk, np.zeros(jsonfmt.SMALL + 1, dtype)]))[:len(chunk)]
        assert small == big == [tf_decimal(float(v), dtype) for v in chunk]


def test_nesting_and_zero_sizes():
    a = np.arange(24, dtype=np.int64).reshape(2, 3, 4)
    assert json.loads(jsonfmt.encode(a)) == a.tolist()
    for shape in [(0,), (3, 0), (2, 0, 5), (2, 3, 0), (0, 4)]:
        assert json.loads(jsonfmt.encode(np.zeros(shape, np.float32))) == np.zeros(shape).tolist()


def test_cost_counts_lists_of_zero_element_tensors():
    assert jsonfmt.cost(np.empty((2 ** 24, 0), np.float32)) == 2 ** 24 + 1
    huge = np.empty((2 ** 30, 2 ** 30, 0), np.int8)  # zero bytes, 2**60 lists
    assert jsonfmt.cost(huge) > 2 ** 60  # exact integer arithmetic, no overflow, no allocation


def test_hostile_zero_element_reply_is_refused_without_work():
    out = {"y": np.empty((2 ** 24, 0), np.float32)}
    req = codec.PredictRequest(None, {"x": np.zeros((1, 4), np.float32)}, True)
    t = time.perf_counter()
    with pytest.raises(sberr.OutputTooLarge):
        asyncio.run(render(out, "predict", req))
    assert time.perf_counter() - t < 0.5


def test_large_reply_is_formatted_off_the_event_loop():
    """A reply above the inline cost is written in a thread: a ticker on the loop keeps ticking meanwhile."""
    out = {"y": np.random.default_rng(0).random((400, 1000)).astype(np.float32)}  # 400,400 cells
    req = codec.PredictRequest(None, {"x": np.zeros((400, 4), np.float32)}, True)

    async def main() -> tuple[bytes, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                await asyncio.sleep(0.005)
                ticks += 1

        t = asyncio.get_running_loop().create_task(ticker())
        await asyncio.sleep(0)  # the ticker is running
        ticks = 0
        body = await render(out, "predict", req)
        during = ticks
        done.set()
        await t
        return body, during

    body, ticks_during = asyncio.run(main())
    assert len(json.loads(body)["predictions"]) == 400
    # formatted on the loop, the ticker could not have run at all while render() worked
    assert ticks_during >= 5, ticks_during
