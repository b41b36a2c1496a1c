"""The shared-memory fast path of warm calls (``sandbox/shmchannel.py``), with a real worker.

Correct results for numeric dtypes in the region, JSON fallback for strings and tensors that do
not fit; and attacker code inside a real hardened worker (tests/attacker.py) that rewrites the
reply area while signalling, announces huge sizes and offsets, signals without writing, never
answers, scribbles over the request area and floods the doorbell.  Each attack has a positive
control showing that the attacker found and wrote the region the parent reads.
"""

from __future__ import annotations

import fcntl
import json
import os
import time

import numpy as np
import pytest

from modelwarden.sandbox import DeadlineExceeded, ProtocolViolation, Sandbox, SandboxError, SandboxLimits, protocol, shmchannel
from modelwarden.sandbox.bwrap import BwrapBackend
from modelwarden.sandbox.namespaces import probe_namespaces
from tests.attacker import AttackerWorker, decode, encode
from tests.conftest import build_fixtures

_NS_OK, _NS_WHY = probe_namespaces()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(not _NS_OK, reason=f"namespaces unavailable: {_NS_WHY}")]


# -- the region itself -------------------------------------------------------------------------------


def test_region_is_sealed_against_resizing():
    """The worker gets the memfd: sealed, it can neither shrink it under the parent's mapping
    (a SIGBUS in the parent) nor grow it into memory RLIMIT_AS does not count."""
    chan = shmchannel.ParentChannel(1 << 16, 1 << 16)
    try:
        fd = os.dup(chan.memfd)
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW and seals & fcntl.F_SEAL_SEAL
            for size in (0, 1 << 30):
                with pytest.raises(PermissionError):
                    os.ftruncate(fd, size)
            with pytest.raises(PermissionError):
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, 0)  # F_SEAL_SEAL: no further seal changes
            os.pwrite(fd, b"x", 100)  # control: still writable in place
            assert chan.mm[100:101] == b"x"
        finally:
            os.close(fd)
    finally:
        chan.close()


# -- correct results ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def serve_models():
    return build_fixtures("build_serve_models")


@pytest.fixture(scope="module")
def run_models():
    return build_fixtures("build_run_models")


def _model(sb: Sandbox, path):
    model = sb.load(path, scan=False)
    assert sb._worker.fast is not None  # the fast path is set up on the default backend
    return model, sb._worker.fast


def test_numeric_dtypes_take_the_fast_path(serve_models):
    with Sandbox(SandboxLimits(timeout_s=60)) as sb:
        model, fast = _model(sb, serve_models / "multi" / "1")
        a = np.arange(6, dtype=np.float32).reshape(3, 2)
        b = np.array([1, -2, 3], dtype=np.int32)
        for i in range(5):
            out = model.predict({"a": a + i, "b": b + i})
            assert out["total"].dtype == np.float32 and out["twice"].dtype == np.int32
            np.testing.assert_allclose(out["total"], (a + i).sum(axis=1))
            np.testing.assert_array_equal(out["twice"], (b + i) * 2)
        assert fast.replies == 5  # all five answered in the region
        # big-endian and non-contiguous inputs are converted, not misread
        out = model.predict({"a": np.asfortranarray(a.astype(">f4")), "b": b[::-1].copy()[::-1]})
        np.testing.assert_allclose(out["total"], a.sum(axis=1))
        assert fast.replies == 6
    with Sandbox(SandboxLimits(timeout_s=60)) as sb:
        model, fast = _model(sb, serve_models / "bytes" / "1")
        data = np.arange(24, dtype=np.uint8).reshape(4, 6)
        np.testing.assert_array_equal(model.predict({"data": data})["total"], data.astype(np.int32).sum(axis=1))
        empty = model.predict({"data": np.zeros((0, 6), np.uint8)})["total"]  # zero-size tensors too
        assert empty.shape == (0,) and empty.dtype == np.int32
        assert fast.replies == 2
    with Sandbox(SandboxLimits(timeout_s=60)) as sb:
        model, fast = _model(sb, serve_models / "slow" / "1")
        out = model.predict({"steps": np.int64(7)})  # 0-d int64 in and out
        assert out["count"].shape == () and out["count"].dtype == np.int64 and int(out["count"]) == 7
        assert fast.replies == 1


def test_strings_and_tensors_bigger_than_the_region_use_the_json_channel(serve_models, run_models):
    with Sandbox(SandboxLimits(timeout_s=60)) as sb:
        model, fast = _model(sb, serve_models / "strings" / "1")
        out = model.predict({"text": np.array([b"ab", b"xyz"], dtype=object)})
        assert out["upper"].tolist() == [b"AB", b"XYZ"] and out["length"].tolist() == [2, 3]
        assert fast.seq == 0  # string inputs never enter the region
    with Sandbox(SandboxLimits(timeout_s=60)) as sb:
        model, fast = _model(sb, run_models / "dense")
        expected = json.loads((run_models / "expected.json").read_text())
        x = np.random.default_rng(0).normal(size=(fast.req_bytes // 16 + 100, 4)).astype(np.float32)  # > region
        x[:2] = expected["x"]
        big = model.predict({"x": x})["y"]  # on the JSON channel
        small = model.predict({"x": x[:2]})["y"]  # in the region
        np.testing.assert_allclose(small, expected["y"], rtol=1e-6)
        np.testing.assert_allclose(big[:2], small, rtol=1e-6)
        assert fast.seq == 1 and fast.replies == 1  # only the small call used the region
    with Sandbox(SandboxLimits(timeout_s=60)) as sb:
        model, fast = _model(sb, run_models / "big_output")
        n = fast.rep_bytes // 4 + 1000  # the output does not fit the reply area: the worker answers on the channel
        out = model.predict({"n": np.int32(n)})["zeros"]
        assert out.shape == (n,) and not out.any()
        assert model.predict({"n": np.int32(10)})["zeros"].shape == (10,)
        assert fast.seq == 2 and fast.replies == 1


def test_worker_errors_on_the_fast_path_arrive_as_json_errors(run_models):
    from modelwarden.sandbox import OutputTooLarge

    with Sandbox(SandboxLimits(timeout_s=60, max_output_bytes=1 << 16)) as sb:
        model, fast = _model(sb, run_models / "big_output")
        with pytest.raises(OutputTooLarge):
            model.predict({"n": np.int32(1 << 15)})  # 128 KiB > 64 KiB: the worker refuses, on the channel
        assert model.predict({"n": np.int32(4)})["zeros"].shape == (4,)  # the worker is still fine
        assert fast.replies == 1


# -- attacker code inside the worker -----------------------------------------------------------------

# Runs inside the worker: the worker's channel object (found like any Python exploit would), and
# a writer of raw replies into the region.
REGION = """
import gc, struct, threading, time
from modelwarden.sandbox import shmchannel as S
CH = [o for o in gc.get_objects() if isinstance(o, S.WorkerChannel)][0]
MM, BASE, SEQ = CH.mm, CH.req_bytes, CH.seen
F32 = S.CODE_OF['float32']
def reply(entries, count=None, seq=SEQ, magic=S.MAGIC, status=0, data=(), ring=True):
    for i, e in enumerate(entries):
        S.ENTRY.pack_into(MM, BASE + S.CALL.size + i * S.ENTRY.size, *e)
    for off, raw in data:
        MM[BASE + off:BASE + off + len(raw)] = raw
    S.CALL_REST.pack_into(MM, BASE + 8, magic, len(entries) if count is None else count, status, 0, 0)
    S.SEQ.pack_into(MM, BASE, seq)
    if ring:
        CH.bell.send(b'\\x01')
def forged(text, seq=SEQ):
    raw = json.dumps(text).encode()
    import numpy
    data = numpy.array([list(raw)], dtype='<f4').tobytes()
    reply([(0, F32, 2, S.HEADER_BYTES, len(data), 1, len(raw), 0, 0, 0, 0, 0, 0)],
          data=[(S.HEADER_BYTES, data)], seq=seq)
import json
"""


def test_positive_control_a_forged_reply_in_the_region_reaches_the_parent():
    with AttackerWorker(SandboxLimits(timeout_s=10)) as w:
        fast = w.sandbox._worker.fast
        assert w.run("result = 'real'") == "real" and fast.replies == 1
        assert w.run(REGION + "forged('forged'); time.sleep(0.5); result = 'real'") == "forged"
        assert fast.replies == 2
        # the Lambda's own reply to that call lands later with the old seq: never taken for the next call
        assert w.run("result = 'next'") == "next"
        assert w.run("result = 'again'") == "again"


def _structurally_valid(out: dict, spec_name: str) -> None:
    (value,) = out.values()
    assert list(out) == [spec_name] and value.dtype == np.float32 and value.ndim == 2 and value.shape[0] == 1


def test_rewriting_the_reply_while_signalling_yields_a_checked_copy_or_a_violation():
    """A thread in the worker flips the reply header between a valid forged reply and hostile ones
    (huge shape, offset outside the area, wrong dtype, 2**31 tensors) as fast as it can, ringing
    every time, across calls.  Every call returns outputs of the signature's dtype and rank, or
    ends in ProtocolViolation - never out-of-signature data, a crash or a hang."""
    thread = REGION + """
import numpy
BAD = [
    [(0, F32, 2, S.HEADER_BYTES, 4 << 40, 1, 1 << 40, 0, 0, 0, 0, 0, 0)],
    [(0, F32, 2, 1 << 62, 8, 1, 2, 0, 0, 0, 0, 0, 0)],
    [(0, S.CODE_OF['float64'], 2, S.HEADER_BYTES, 16, 1, 2, 0, 0, 0, 0, 0, 0)],
    [(0, F32, 9, S.HEADER_BYTES, 8, 1, 2, 0, 0, 0, 0, 0, 0)],
]
STATE = {'flips': 0}
def flip():
    raw = json.dumps('forged').encode()
    data = numpy.array([list(raw)], dtype='<f4').tobytes()
    good = [(0, F32, 2, S.HEADER_BYTES, len(data), 1, len(raw), 0, 0, 0, 0, 0, 0)]
    MM[BASE + S.HEADER_BYTES:BASE + S.HEADER_BYTES + len(data)] = data
    while True:
        seq = CH.seen
        for bad in BAD:
            reply(good, seq=seq)
            reply(bad, seq=seq, ring=False)
            reply(bad, count=1 << 31, seq=seq)
        STATE['flips'] += 1
threading.Thread(target=flip, daemon=True).start()
time.sleep(0.2)
result = STATE['flips']
"""
    with AttackerWorker(SandboxLimits(timeout_s=10)) as w:
        (spec_name,) = w.model.signatures["serving_default"].outputs
        outcomes = []
        try:
            out = w.model.predict({"x": encode(thread)})
            _structurally_valid(out, spec_name)
            outcomes.append("returned")
            for _ in range(200):
                out = w.model.predict({"x": encode("result = 'real'")})
                _structurally_valid(out, spec_name)
                outcomes.append("returned")
        except ProtocolViolation as exc:
            outcomes.append("violation")
            assert "invalid reply in shared memory" in str(exc)
        except DeadlineExceeded:  # the flipping thread may starve the Lambda: still bounded
            outcomes.append("deadline")
        assert outcomes and outcomes[-1] in ("returned", "violation", "deadline")
        assert "violation" in outcomes or "deadline" in outcomes or len(outcomes) == 201
        if outcomes[-1] != "returned":
            assert not w.sandbox.alive  # the worker was killed


@pytest.mark.parametrize("entries, count, match", [
    ("[(0, F32, 2, S.HEADER_BYTES, 4 << 40, 1, 1 << 40, 0, 0, 0, 0, 0, 0)]", None, "above the limit"),
    ("[(0, F32, 2, S.HEADER_BYTES, 4 << 20, 1, 1 << 20, 0, 0, 0, 0, 0, 0)]", None, "outside the reply area"),
    ("[(0, F32, 2, 1 << 62, 8, 1, 2, 0, 0, 0, 0, 0, 0)]", None, "outside the reply area"),
    ("[(0, F32, 2, S.HEADER_BYTES + 1, 8, 1, 2, 0, 0, 0, 0, 0, 0)]", None, "outside the reply area"),
    ("[(0, F32, 2, S.HEADER_BYTES, 9, 1, 2, 0, 0, 0, 0, 0, 0)]", None, "announced"),
    ("[(7, F32, 2, S.HEADER_BYTES, 8, 1, 2, 0, 0, 0, 0, 0, 0)]", None, "out of range"),
    ("[(0, 999, 2, S.HEADER_BYTES, 8, 1, 2, 0, 0, 0, 0, 0, 0)]", None, "dtype code"),
    ("[(0, S.CODE_OF['int64'], 2, S.HEADER_BYTES, 16, 1, 2, 0, 0, 0, 0, 0, 0)]", None, "signature declares"),
    ("[(0, F32, 3, S.HEADER_BYTES, 8, 1, 2, 1, 0, 0, 0, 0, 0)]", None, "signature declares"),
    ("[(0, F32, 2, S.HEADER_BYTES, 0, 1 << 24, 0, 0, 0, 0, 0, 0, 0)]", None, "zero-size shape"),
    ("[(0, F32, 2, S.HEADER_BYTES, 8, 1, 2, 0, 0, 0, 0, 0, 0)]", 1 << 31, "2147483648 tensors"),
])
def test_hostile_reply_headers_end_in_a_protocol_violation(entries, count, match):
    source = REGION + f"reply({entries}, count={count}); time.sleep(30)\n"
    with AttackerWorker(SandboxLimits(timeout_s=10, max_output_bytes=8 << 20)) as w:
        assert w.run("result = 1") == 1  # control: a normal call through the region
        t0 = time.monotonic()
        with pytest.raises(ProtocolViolation, match=match):
            w.model.predict({"x": encode(source)})
        assert time.monotonic() - t0 < 5  # not the 30 s sleep: the parent acted on the reply
        assert not w.sandbox.alive


@pytest.mark.skipif(not BwrapBackend.availability()[0], reason="bubblewrap unavailable")
def test_on_bubblewrap_too_a_forged_reply_arrives_and_a_hostile_one_after_honest_calls_is_refused():
    """The region's guarantees do not depend on the backend that handed it over.  The tests above run
    on the default (namespaces) backend; here on bubblewrap, attacker code finds the region and its
    forged reply reaches the parent (positive control); after honest calls have made the parent
    remember their reply layout, the same entries with one field lying (an offset outside the area,
    then a wrong dtype) end in ProtocolViolation."""
    for lie, match in (("(0, F32, 2, 1 << 62, 8, 1, 2, 0, 0, 0, 0, 0, 0)", "outside the reply area"),
                       ("(0, S.CODE_OF['int64'], 2, S.HEADER_BYTES, 16, 1, 2, 0, 0, 0, 0, 0, 0)", "signature declares")):
        with AttackerWorker(SandboxLimits(timeout_s=10, max_output_bytes=8 << 20), backend="bwrap") as w:
            fast = w.sandbox._worker.fast
            assert fast is not None  # the fast path is set up on this backend
            assert w.run("result = 'real'") == "real"
            assert w.run(REGION + "forged('forged'); time.sleep(0.5); result = 'real'") == "forged"
            for _ in range(3):
                assert w.run("result = 1") == 1  # honest replies: the parent now remembers their layout
            assert fast.replies == 5 and fast._checked
            with pytest.raises(ProtocolViolation, match=match):
                w.model.predict({"x": encode(REGION + f"reply([{lie}]); time.sleep(30)\n")})
            assert not w.sandbox.alive


# a thread ringing the doorbell as fast as it can, forever (STATE['rings']: 64 KiB sends so far)
FLOOD = REGION + """
STATE = {'rings': 0}
def flood():
    CH.bell.setblocking(True)
    while True:
        CH.bell.send(b'x' * 65536)
        STATE['rings'] += 1
threading.Thread(target=flood, daemon=True).start()
"""


def test_signalling_without_writing_then_never_answering_hits_the_deadline():
    # a thread rings the doorbell as fast as it can, forever, without a reply, and the Lambda
    # stalls: the parent keeps waking and draining, finds no reply, and still ends at its
    # deadline (it cannot be kept busy or blocked past it)
    source = FLOOD + "time.sleep(60)\n"
    with AttackerWorker(SandboxLimits(timeout_s=3)) as w:
        assert w.run("result = 1") == 1
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            w.model.predict({"x": encode(source)})
        assert 2.9 < time.monotonic() - t0 < 5
        assert not w.sandbox.alive


def test_a_seq_without_its_header_is_a_violation():
    # only the seq word is the current one: the rest of the header is zero (never a valid reply)
    source = REGION + "MM[BASE:BASE + S.HEADER_BYTES] = bytes(S.HEADER_BYTES)\nS.SEQ.pack_into(MM, BASE, SEQ)\nCH.bell.send(b'x')\ntime.sleep(30)\n"
    with AttackerWorker(SandboxLimits(timeout_s=10)) as w:
        with pytest.raises(ProtocolViolation, match="does not belong"):
            w.model.predict({"x": encode(source)})


def test_scribbling_over_the_request_area_does_not_reach_the_parent():
    """The parent never reads the request area back: garbage written there (headers with huge
    counts and offsets, a bumped seq) changes nothing in the parent; the worker itself may then
    compute on garbage, and the parent still gets signature-shaped outputs or an error."""
    source = REGION + """
import os
seen = bytes(MM[S.HEADER_BYTES:S.HEADER_BYTES + 16])  # control: the parent's input, as written there
def scribble():
    junk = os.urandom(S.HEADER_BYTES)
    while True:
        MM[0:S.HEADER_BYTES] = junk
        S.CALL.pack_into(MM, 0, (1 << 64) - 1, S.MAGIC, 1 << 31, 1 << 30, 0, 0)
        S.ENTRY.pack_into(MM, S.CALL.size, 1 << 31, 999, 200, 1 << 62, 1 << 62, *([1 << 40] * 8))
        time.sleep(0.0005)
threading.Thread(target=scribble, daemon=True).start()
time.sleep(0.05)
result = {'seen': list(seen), 'header': list(bytes(MM[0:16]))}
"""
    with AttackerWorker(SandboxLimits(timeout_s=5)) as w:
        (spec_name,) = w.model.signatures["serving_default"].outputs
        x = encode(source)
        before = x.copy()
        report = decode(w.model.predict({"x": x}))
        # positive control: the attacker read the parent's input from the region and then overwrote it
        assert bytes(report["seen"]) == before.reshape(-1)[:4].tobytes()
        assert report["header"][:8] == [255] * 8
        np.testing.assert_array_equal(x, before)  # the caller's array is not shared with the worker
        for _ in range(20):
            try:
                _structurally_valid(w.model.predict({"x": encode("result = 2")}), spec_name)
            except SandboxError:
                break  # the worker read garbage and failed: an error, never a parent crash or hang


def test_the_worker_cannot_resize_the_region():
    """Python's mmap keeps a duplicate of the memfd open in the worker, so attacker code holds a
    descriptor of the region: the seals make shrinking (a SIGBUS in the parent) and growing
    (memory RLIMIT_AS does not count) fail from inside the sandbox too."""
    source = """
import os
fd = None
for f in os.listdir('/proc/self/fd'):
    try:
        if os.readlink('/proc/self/fd/' + f).startswith('/memfd:modelwarden-shm'):
            fd = int(f)
    except OSError:
        pass
size = os.fstat(fd).st_size
tries = {}
for name, call in (('shrink', lambda: os.ftruncate(fd, 4096)), ('grow', lambda: os.ftruncate(fd, size + 4096)),
                   ('append', lambda: os.pwrite(fd, b'x' * 4096, size)),
                   ('inside', lambda: os.pwrite(fd, b'x', size - 1))):
    try:
        call()
        tries[name] = 'ok'
    except OSError as exc:
        tries[name] = exc.errno
result = {'size': size, 'after': os.fstat(fd).st_size, 'tries': tries}
"""
    import errno

    with AttackerWorker(SandboxLimits(timeout_s=10)) as w:
        report = w.run(source)
        fast = w.sandbox._worker.fast
        assert report["size"] == fast.req_bytes + fast.rep_bytes  # control: the attacker holds the region
        assert report["tries"]["inside"] == "ok"  # and can write inside it (harmless: the parent checks)
        assert report["tries"]["shrink"] == errno.EPERM and report["tries"]["grow"] == errno.EPERM
        assert report["tries"]["append"] == errno.EPERM
        assert report["after"] == report["size"]
        assert w.run("result = 3") == 3  # the parent still reads its mapping (no SIGBUS)


# -- polling instead of sleeping (spin budgets) --------------------------------------------------------


def _worker_cpu_s(sb: Sandbox) -> float:
    """CPU time of the worker's whole tree so far (what its CPU watchdog counts)."""
    from modelwarden.sandbox.client import tree_cpu_seconds

    w = sb._worker
    used = w.cg.cpu_seconds_used()
    if used is None:
        w._pid_ns = w._pid_ns or w._find_pid_ns()
        used = tree_cpu_seconds(w._pid_ns)
    return used


def _fast_call(model, fast, x: np.ndarray, spin_s: float = 0.0, worker_spin_us: int = 0, timeout: float = 10.0):
    sig = model._fast["serving_default"]
    return fast.call(sig, [np.require(x, sig.in_dtypes[0], "C")], time.monotonic() + timeout, spin_s, 1 << 20,
                     worker_spin_us)


def test_the_worker_polls_for_the_next_request_only_as_long_as_the_parent_asked(run_models):
    """The request carries the parent's spin budget: the worker polls (burning CPU, which its
    watchdog counts) for that long after replying, then sleeps; asked for nothing it sleeps at once
    (the control), and a budget above MAX_SPIN_US is cut to it."""
    expected = json.loads((run_models / "expected.json").read_text())
    x = np.asarray(expected["x"], np.float32)
    with Sandbox(SandboxLimits(timeout_s=60)) as sb:
        model, fast = _model(sb, run_models / "dense")

        def cpu_after(worker_spin_us: int, calls: int = 5, gap_s: float = 0.15) -> float:
            before = _worker_cpu_s(sb)
            for _ in range(calls):
                out, _run_us = _fast_call(model, fast, x, worker_spin_us=worker_spin_us)
                np.testing.assert_allclose(out["y"], expected["y"], rtol=1e-6)
                time.sleep(gap_s)
            return _worker_cpu_s(sb) - before

        idle = cpu_after(0)
        spun = cpu_after(100_000, calls=8)  # 8 x 100 ms of polling, asked for
        assert idle < 0.1, idle  # the control: a worker told not to poll sleeps between calls
        assert spun > idle + 0.1, (idle, spun)  # it polled (at least an eighth of 0.8 s, on a shared host)
        # a budget far above the cap: the worker polls at most MAX_SPIN_US, then sleeps
        _fast_call(model, fast, x, worker_spin_us=(1 << 32) - 1)
        time.sleep(shmchannel.MAX_SPIN_US / 1e6 + 0.2)
        settled = _worker_cpu_s(sb)
        time.sleep(0.5)
        assert _worker_cpu_s(sb) - settled < 0.05
        assert fast.replies == 14


def test_a_spinning_parent_still_ends_at_its_deadline():
    """The parent's poll for the reply is bounded by the call's deadline, whatever spin it was given:
    a worker that never answers ends in ShmTimeout at the deadline; the control, a worker that
    answers, is picked up by the poll."""
    with AttackerWorker(SandboxLimits(timeout_s=10)) as w:
        fast = w.sandbox._worker.fast
        out, _run_us = _fast_call(w.model, fast, encode("result = 'polled'"), spin_s=5.0)
        assert decode(out) == "polled"  # control: answered within the poll
        t0 = time.monotonic()
        with pytest.raises(shmchannel.ShmTimeout):
            _fast_call(w.model, fast, encode("time.sleep(60)"), spin_s=30.0, timeout=1.0)
        assert 0.9 < time.monotonic() - t0 < 3


def test_a_hostile_reply_found_by_polling_is_checked_like_any():
    """The poll reads the reply through the same copy-then-check as the doorbell path: a forged reply
    of the right shape is taken (the control), one announcing a huge tensor is a violation."""
    huge = "[(0, F32, 2, S.HEADER_BYTES, 4 << 40, 1, 1 << 40, 0, 0, 0, 0, 0, 0)]"
    with AttackerWorker(SandboxLimits(timeout_s=10)) as w:
        fast = w.sandbox._worker.fast
        out, _run_us = _fast_call(w.model, fast, encode(REGION + "forged('forged'); time.sleep(0.5)"), spin_s=5.0)
        assert decode(out) == "forged"  # control: the poll picked up the attacker's well-formed reply
        time.sleep(0.6)  # the Lambda's own late reply (old seq) is ignored by the next call
        with pytest.raises((shmchannel.ShmViolation, protocol.FrameError), match="above the limit"):
            _fast_call(w.model, fast, encode(REGION + f"reply({huge}, ring=False); time.sleep(30)"), spin_s=5.0)


def _hand_reply(chan: shmchannel.ParentChannel, seq: int, entries: list[tuple], data: bytes = b"") -> None:
    """Write a reply into the parent's own region, as a worker would (no worker needed)."""
    S = shmchannel
    base = chan.req_bytes
    for i, entry in enumerate(entries):
        S.ENTRY.pack_into(chan.mm, base + S.CALL.size + i * S.ENTRY.size, *entry)
    chan.mm[base + S.HEADER_BYTES:base + S.HEADER_BYTES + len(data)] = data
    S.CALL_REST.pack_into(chan.mm, base + S.SEQ.size, S.MAGIC, len(entries), 0, 0, 7)
    S.SEQ.pack_into(chan.mm, base, seq)


def test_a_remembered_reply_layout_is_only_reused_for_identical_bytes_signature_and_limit():
    """The parent skips the field-by-field checks of a reply whose copied entries are byte-for-byte
    those that last passed for the same signature and output limit: anything else is checked again."""
    S = shmchannel
    out_spec = protocol.TensorSpec("y", "float32", (None, 2))
    sig = S.plan(0, {"x": protocol.TensorSpec("x", "float32", (None,))}, {"y": out_spec})
    other = S.plan(0, {"x": protocol.TensorSpec("x", "float32", (None,))}, {"y": protocol.TensorSpec("y", "int32", (None, 2))})
    chan = S.ParentChannel(1 << 16, 1 << 16)
    try:
        f32 = S.CODE_OF["float32"]
        good = (0, f32, 2, S.HEADER_BYTES, 16, 2, 2, 0, 0, 0, 0, 0, 0)
        data = np.arange(4, dtype="<f4").tobytes()
        _hand_reply(chan, 1, [good], data)
        out, run_us = chan._read_reply(sig, 1, 1 << 20)
        assert out["y"].tolist() == [[0, 1], [2, 3]] and run_us == 7
        _hand_reply(chan, 2, [good], np.ones(4, "<f4").tobytes())  # same layout, new values: read
        assert chan._read_reply(sig, 2, 1 << 20)[0]["y"].tolist() == [[1, 1], [1, 1]]
        with pytest.raises(protocol.FrameError, match="above the limit"):  # same bytes, a lower limit
            chan._read_reply(sig, 2, 8)
        with pytest.raises(S.ShmViolation, match="signature declares"):  # same bytes, another signature
            chan._read_reply(other, 2, 1 << 20)
        with pytest.raises(S.ShmViolation, match="does not belong"):  # same entries, a stale seq
            chan._read_reply(sig, 3, 1 << 20)
        _hand_reply(chan, 3, [(0, f32, 2, 1 << 62, 16, 2, 2, 0, 0, 0, 0, 0, 0)])  # one field changed
        with pytest.raises(S.ShmViolation, match="outside the reply area"):
            chan._read_reply(sig, 3, 1 << 20)
        _hand_reply(chan, 4, [good], data)  # and the good layout is checked afresh, then accepted
        assert chan._read_reply(sig, 4, 1 << 20)[0]["y"].tolist() == [[0, 1], [2, 3]]
    finally:
        chan.close()
