"""Attacker code inside a real worker forges replies on the channel: the parent must survive.

The attacker (tests/attacker.py) finds the channel socket among its fds and writes its own
frames onto it while the parent waits for the predict reply.  Each scenario runs in a
fresh interpreter that reports its peak RSS growth across the attack (``/proc/self/status``
VmHWM, reset through ``/proc/self/clear_refs`` just before), so an allocation the worker
talks the parent into shows up whatever the test process did before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelwarden.sandbox.namespaces import probe_namespaces

_NS_OK, _NS_WHY = probe_namespaces()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(not _NS_OK, reason=f"namespaces unavailable: {_NS_WHY}")]
from tests.attacker import spawn_mode, spawn_mode_all  # noqa: E402,F401 - fixtures
pytestmark = [*pytestmark, pytest.mark.usefixtures("spawn_mode")]  # workers booted fresh and forked from the template

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the worker: the channel socket and a frame writer (the real wire format, written raw).
FORGE = """
import gc, json, os, struct, time
# the fast path's doorbell is a socket too, and its descriptor number may come before the channel's
# (a template-forked worker keeps the channel's number from the template): ask the runtime's objects
BELLS = {o.bell.fileno() for o in gc.get_objects() if type(o).__name__ == 'WorkerChannel'}
CHANNEL = None
for f in sorted(os.listdir('/proc/self/fd'), key=int):
    try:
        if os.readlink('/proc/self/fd/' + f).startswith('socket:') and CHANNEL is None and int(f) not in BELLS:
            CHANNEL = int(f)
    except OSError:
        pass
def frame(header, body=b'', blen=None):
    h = json.dumps(header).encode()
    data = struct.pack('>IIQ', 0x4D574631, len(h), len(body) if blen is None else blen) + h + body
    while data:
        data = data[os.write(CHANNEL, data):]
"""

# Each forger then stalls (SETTLE) so the parent - waiting on the shared-memory region and the
# channel together - finds the forged frame before the Lambda's own reply.
SETTLE = "time.sleep(2)\n"

ATTACKS = {
    # positive control: a well-formed forged reply is what the parent returns
    "forged_ok": FORGE + """
import numpy
raw = json.dumps('forged').encode()
frame({'ok': True, 'tensors': [{'name': OUT, 'dtype': 'float32', 'shape': [1, len(raw)]}]},
      numpy.array([list(raw)], dtype='<f4').tobytes())
time.sleep(2)
result = 'real'
""",
    "zero_size": FORGE + "frame({'ok': True, 'tensors': [{'name': OUT, 'dtype': 'float32', 'shape': [1 << 24, 0]}]})\n"
                         + SETTLE,
    "zero_size_overflow": FORGE + (
        "frame({'ok': True, 'tensors': [{'name': OUT, 'dtype': 'float32', 'shape': [1 << 40, 1 << 40, 0]}]})\n") + SETTLE,
    "forged_dtype": FORGE + "frame({'ok': True, 'tensors': [{'name': OUT, 'dtype': '(8192,8192)f8', 'shape': [1]}]})\n"
                            + SETTLE,
    # announces the largest body the parent accepts, sends a little of it, then stalls
    "announce_and_stall": FORGE + "import time\nframe({'ok': True, 'tensors': []}, b'x' * 4096, blen=LIMIT)\n"
                                  "time.sleep(120)\n",
}

PARENT = r"""
import json, os, sys, time
from modelwarden.cli.tensor_json import write_outputs
from modelwarden.sandbox import SandboxError, SandboxLimits
from tests.attacker import AttackerWorker, decode, encode

def hwm_kib():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1])

source, limit = sys.argv[1], 256 << 20
with AttackerWorker(SandboxLimits(timeout_s=5, max_output_bytes=limit)) as w:
    (out_name,) = w.model.signatures['serving_default'].outputs
    channel = w.run(sys.argv[2])  # control: the attacker sees the channel socket
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak RSS to the current RSS
    before = hwm_kib()
    report = {'channel': channel}
    t0 = time.monotonic()
    try:
        out = w.model.predict({'x': encode(f'OUT = {out_name!r}; LIMIT = {limit}\n' + source)})
        with open(os.devnull, 'w') as sink:
            write_outputs(out, sink)  # what `modelwarden run` does with the outputs
        report.update(outcome='returned', value=decode(out))
    except SandboxError as exc:
        report.update(outcome=type(exc).__name__, message=str(exc))
    report.update(seconds=time.monotonic() - t0, growth_kib=hwm_kib() - before, alive=w.sandbox.alive)
print(json.dumps(report))
"""


def _attack(name: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    res = subprocess.run([sys.executable, "-c", PARENT, ATTACKS[name], FORGE + "result = CHANNEL"],
                         capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert isinstance(report["channel"], int) and report["channel"] > 2  # the attacker found the channel
    return report


def test_positive_control_a_forged_reply_reaches_the_parent():
    report = _attack("forged_ok")
    assert report["outcome"] == "returned" and report["value"] == "forged"  # not the Lambda's 'real'


@pytest.mark.parametrize("name, match", [
    ("zero_size", "zero-size shape"),
    ("zero_size_overflow", "zero-size shape"),
    ("forged_dtype", "dtype"),
])
def test_forged_replies_end_in_a_protocol_violation_with_bounded_memory(name, match):
    report = _attack(name)
    assert report["outcome"] == "ProtocolViolation", report
    assert match in report["message"]
    assert not report["alive"]  # the worker was killed
    assert report["growth_kib"] < 32 * 1024, report  # before the fix: 1.35 GB RSS for [2**24, 0]


def test_a_huge_announced_body_is_not_allocated_up_front():
    report = _attack("announce_and_stall")
    assert report["outcome"] == "DeadlineExceeded", report
    assert not report["alive"]
    assert report["growth_kib"] < 32 * 1024, report  # not the announced 256 MiB
