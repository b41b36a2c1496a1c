"""The parent against a hostile worker: a real process that answers with malformed frames.

A compromised worker controls everything it sends.  Whatever it sends, the parent must end
in a specific error, kill it, and neither crash, hang nor allocate what the worker claims.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import numpy as np
import pytest

from modelwarden.sandbox import (
    DeadlineExceeded, OutputTooLarge, ProtocolViolation, Sandbox, SandboxLimits, WorkerCrashed,
)
from modelwarden.sandbox.client import SandboxedModel, Signature, _Worker
from modelwarden.sandbox.interface import Backend, LaunchSpec, WorkerProcess, plan_filesystem
from modelwarden.sandbox.protocol import TensorSpec

FAKE = r'''
import json, os, signal, socket, struct, sys, time
MAGIC = 0x4D574631
fd = int(sys.argv[1]); mode = sys.argv[2]
s = socket.socket(fileno=fd)
def read_exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: sys.exit(0)
        b += c
    return b
n, = struct.unpack(">I", read_exact(4)); read_exact(n)          # launch config
def frame(header, body=b"", hlen=None, blen=None, magic=MAGIC):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    s.sendall(struct.pack(">IIQ", magic, len(h) if hlen is None else hlen, len(body) if blen is None else blen) + h + body)
frame({"op": "ready", "ok": True})
SIG = {"inputs": [{"name": "x", "dtype": "float32", "shape": [1]}], "outputs": [{"name": "y", "dtype": "float32", "shape": [1]}]}
while True:
    _, hl, bl = struct.unpack(">IIQ", read_exact(16)); req = json.loads(read_exact(hl)); read_exact(bl)   # a request
    if req.get("op") == "load":
        if mode == "forged_dtype":
            SIG["inputs"][0]["dtype"] = "(8192,8192)f8"
        elif mode == "forged_shape_type":
            SIG["outputs"][0]["shape"] = [[1]]
        elif mode == "forged_sig_name":
            frame({"ok": True, "signatures": {"a" * 1000: SIG}}); continue
        elif mode == "forged_sig_table":
            frame({"ok": True, "signatures": [SIG]}); continue
        elif mode == "forged_call":
            frame({"ok": True, "kind": "saved_model", "signatures": {"serving_default": SIG}, "call": ["session"]}); continue
        frame({"ok": True, "kind": "saved_model", "signatures": {"serving_default": SIG}})
    elif mode == "huge_body":
        frame({"ok": True, "tensors": []}, blen=1 << 40)
    elif mode == "bad_magic":
        frame({"ok": True}, magic=0x41414141)
    elif mode == "not_json":
        frame(b"\x00garbage{{{")
    elif mode == "deep_json":
        frame(b"[" * 100000 + b"]" * 100000)
    elif mode == "huge_header":
        frame({"ok": True}, hlen=1 << 31)
    elif mode == "unknown_error":
        frame({"ok": False, "error": "rm -rf /", "message": "x"})
    elif mode == "wrong_outputs":
        frame({"ok": True, "tensors": [{"name": "zzz", "dtype": "float32", "shape": [1]}]}, b"\0" * 4)
    elif mode == "wrong_dtype":
        frame({"ok": True, "tensors": [{"name": "y", "dtype": "float64", "shape": [1]}]}, b"\0" * 8)
    elif mode == "lying_shape":
        frame({"ok": True, "tensors": [{"name": "y", "dtype": "float32", "shape": [1000]}]}, b"\0" * 4)
    elif mode == "object_dtype":
        frame({"ok": True, "tensors": [{"name": "y", "dtype": "object", "shape": [1]}]}, b"\0" * 8)
    elif mode == "string_huge_count":
        frame({"ok": True, "tensors": [{"name": "y", "dtype": "string", "shape": [1 << 40]}]}, b"\0" * 16)
    elif mode == "string_bad_length":
        frame({"ok": True, "tensors": [{"name": "y", "dtype": "string", "shape": [1]}]},
              struct.pack("<Q", (1 << 64) - 1) + b"abc")
    elif mode == "string_for_float":
        frame({"ok": True, "tensors": [{"name": "y", "dtype": "string", "shape": [1]}]}, struct.pack("<Q", 1) + b"a")
    elif mode == "escape_message":
        frame({"ok": False, "error": "execution_failed", "message": "\x1b[2J\x1b]52;c;eA==\x07\r\u202e" * 1000})
    elif mode == "nonstring_message":
        frame({"ok": False, "error": "execution_failed", "message": {"\x1b[2J": [1] * 10000}})
    elif mode == "zero_size_huge":
        frame({"ok": True, "tensors": [{"name": "y", "dtype": "float32", "shape": [1 << 24, 0]}]})
    elif mode == "zero_size_overflow":
        frame({"ok": True, "tensors": [{"name": "y", "dtype": "float32", "shape": [1 << 40, 1 << 40, 0]}]})
    elif mode == "wrong_shape":
        frame({"ok": True, "tensors": [{"name": "y", "dtype": "float32", "shape": [2]}]}, b"\0" * 8)
    elif mode == "wrong_rank_empty":
        frame({"ok": True, "tensors": [{"name": "y", "dtype": "float32", "shape": [1, 0]}]})
    elif mode == "tensors_not_list":
        frame({"ok": True, "tensors": {"y": 1}})
    elif mode == "announce_then_stall":
        s.sendall(struct.pack(">IIQ", MAGIC, 2, 1 << 20) + b"{}")
        time.sleep(60)
    elif mode == "half_frame":
        s.sendall(struct.pack(">IIQ", MAGIC, 100, 0) + b"{")
        time.sleep(60)
    elif mode == "stall":
        time.sleep(60)
    elif mode == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif mode == "exit":
        sys.exit(0)
    elif mode in ("ok", "forged_call"):
        frame({"ok": True, "tensors": [{"name": "y", "dtype": "float32", "shape": [1]}]}, b"\0\0\x80\x3f")
'''


class FakeBackend(Backend):
    """Launches the hostile fake worker above instead of the real runtime."""

    name = "fake"
    boot_frame = False
    shared_memory = False  # it speaks the JSON frames only (the region has tests/test_sandbox_shm.py)

    def __init__(self, mode: str) -> None:
        self.mode = mode

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return True, "test"

    def start(self, spec: LaunchSpec) -> WorkerProcess:
        proc = subprocess.Popen([sys.executable, "-c", FAKE, str(spec.channel_fd), self.mode],
                                pass_fds=(spec.channel_fd,), stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return WorkerProcess(proc)


def _model(tmp_path, mode: str, limits: SandboxLimits) -> tuple[SandboxedModel, _Worker]:
    (tmp_path / "m").mkdir(exist_ok=True)
    worker = _Worker(FakeBackend(mode), plan_filesystem(tmp_path / "m"), limits, {}, False, use_cgroups=False)
    worker.wait_ready(time.monotonic() + 20)
    sb = Sandbox(limits)
    sb._worker = worker
    sig = Signature("serving_default", {"x": TensorSpec("x", "float32", (1,))}, {"y": TensorSpec("y", "float32", (1,))})
    return SandboxedModel(sb, "saved_model", {"serving_default": sig}), worker


X = {"x": np.ones(1, np.float32)}


def test_the_fake_worker_works_when_honest(tmp_path):
    model, worker = _model(tmp_path, "ok", SandboxLimits())
    assert model.predict(X)["y"].tolist() == [1.0]
    worker.kill()


@pytest.mark.parametrize("mode, error, match", [
    ("huge_body", OutputTooLarge, "exceeds the limit"),
    ("bad_magic", ProtocolViolation, "magic"),
    ("not_json", ProtocolViolation, "not valid JSON"),
    ("deep_json", ProtocolViolation, "not valid JSON|JSON object"),
    ("huge_header", ProtocolViolation, "header of"),
    ("unknown_error", ProtocolViolation, "unknown error code"),
    ("wrong_outputs", ProtocolViolation, "returned outputs"),
    ("wrong_dtype", ProtocolViolation, "float64"),
    ("lying_shape", ProtocolViolation, "extends past"),
    ("object_dtype", ProtocolViolation, "not allowed"),
    ("string_huge_count", ProtocolViolation, "past the end"),
    ("string_bad_length", ProtocolViolation, "past the end"),
    ("string_for_float", ProtocolViolation, "as string, the signature declares float32"),
    ("zero_size_huge", ProtocolViolation, "zero-size shape"),
    ("zero_size_overflow", ProtocolViolation, "zero-size shape"),
    ("wrong_shape", ProtocolViolation, r"shape \[2\], the signature declares y: float32\[1\]"),
    ("wrong_rank_empty", ProtocolViolation, r"shape \[1, 0\]"),
    ("tensors_not_list", ProtocolViolation, "must be a list"),
    ("announce_then_stall", DeadlineExceeded, "deadline"),
    ("half_frame", DeadlineExceeded, "deadline"),
    ("stall", DeadlineExceeded, "deadline"),
    ("crash", WorkerCrashed, "SIGSEGV"),
    ("exit", WorkerCrashed, "exited unexpectedly"),
])
def test_hostile_replies_end_in_a_specific_error_and_a_dead_worker(tmp_path, mode, error, match):
    model, worker = _model(tmp_path, mode, SandboxLimits(timeout_s=1.0, max_output_bytes=1 << 20))
    t0 = time.monotonic()
    with pytest.raises(error, match=match):
        model.predict(X)
    assert time.monotonic() - t0 < 3.0
    assert worker.dead and worker.proc.proc.poll() is not None
    with pytest.raises(WorkerCrashed, match="no longer running"):
        model.predict(X)


@pytest.mark.parametrize("mode, match", [
    ("forged_dtype", "protocol's dtypes"),
    ("forged_shape_type", "bad shape"),
    ("forged_sig_name", "bad signature entry"),
    ("forged_sig_table", "bad signature table"),
])
def test_forged_load_replies_are_protocol_violations(tmp_path, monkeypatch, mode, match):
    """The signature table comes from the worker: a dtype such as "(8192,8192)f8" is never parsed."""
    from modelwarden.sandbox import client

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "saved_model.pb").write_bytes(b"")
    monkeypatch.setattr(client, "get_backend", lambda name: FakeBackend(mode))
    sb = Sandbox(SandboxLimits(timeout_s=2.0), use_cgroups=False)
    with pytest.raises(ProtocolViolation, match=match):
        sb.load(tmp_path / "m", scan=False)
    assert sb._worker is not None and sb._worker.dead and sb._worker.proc.proc.poll() is not None


def test_the_fake_worker_loads_when_honest(tmp_path, monkeypatch):
    from modelwarden.sandbox import client

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "saved_model.pb").write_bytes(b"")
    monkeypatch.setattr(client, "get_backend", lambda name: FakeBackend("ok"))
    with Sandbox(SandboxLimits(timeout_s=2.0), use_cgroups=False) as sb:
        model = sb.load(tmp_path / "m", scan=False)
        assert model.predict(X)["y"].tolist() == [1.0]


def test_a_forged_call_route_reads_as_unknown(tmp_path, monkeypatch):
    """The route a load reply names is diagnostics: anything but a known name (here an unhashable list,
    which a set lookup would choke on) reads as "unknown" and the model still serves."""
    from modelwarden.sandbox import client

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "saved_model.pb").write_bytes(b"")
    monkeypatch.setattr(client, "get_backend", lambda name: FakeBackend("forged_call"))
    with Sandbox(SandboxLimits(timeout_s=2.0), use_cgroups=False) as sb:
        model = sb.load(tmp_path / "m", scan=False)
        assert model.call_route == "unknown"
        assert model.predict(X)["y"].tolist() == [1.0]


@pytest.mark.parametrize("mode", ["escape_message", "nonstring_message"])
def test_worker_error_messages_are_sanitised_and_bounded(tmp_path, mode):
    from modelwarden.sandbox import ExecutionFailed

    model, worker = _model(tmp_path, mode, SandboxLimits(timeout_s=2.0))
    with pytest.raises(ExecutionFailed) as info:
        model.predict(X)
    message = str(info.value)
    assert "\\x1b[2J" in message  # the payload arrived, made visible
    assert not any(c in message for c in "\x1b\x07\r\u202e")
    assert len(message) < 8100
    worker.kill()


@pytest.mark.parametrize("mode, error, match", [
    ("ok", None, None),  # control: the honest fake answers through predict_async too
    ("huge_body", OutputTooLarge, "exceeds the limit"),
    ("half_frame", DeadlineExceeded, "deadline"),
    ("stall", DeadlineExceeded, "deadline"),
    ("crash", WorkerCrashed, "SIGSEGV"),
])
def test_hostile_json_replies_awaited_on_an_event_loop(tmp_path, mode, error, match):
    """``predict_async`` (the server's call) on a worker without the shared-memory path: the JSON
    channel is read in a thread with the same checks, and the event loop keeps running meanwhile."""
    import asyncio

    model, worker = _model(tmp_path, mode, SandboxLimits(timeout_s=1.0, max_output_bytes=1 << 20))

    async def call_and_tick():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            return await model.predict_async(X), ticks
        except Exception as exc:  # noqa: BLE001 - checked below
            return exc, ticks
        finally:
            ticker.cancel()

    t0 = time.monotonic()
    result, ticks = asyncio.run(call_and_tick())
    if error is None:
        assert result["y"].tolist() == [1.0]
        worker.kill()
        return
    assert isinstance(result, error) and re.search(match, str(result))
    assert time.monotonic() - t0 < 3.0 and worker.dead
    if mode in ("half_frame", "stall"):
        assert ticks > 20  # ~1 s waited: the loop ticked all along (a blocked loop would count ~0)
