"""The polling gate (sandbox/pollgate.py): judged by the CPU pressure measured while polling.

The gate's inputs - the PSI counters and the clock - are replaced by a simulated host whose
pressure depends on whether the gate polls, which is exactly the feedback the gate must handle:
sleeping calls make pressure of their own (5.3-5.7 % on the 2-vCPU host), polling ones do not
(0.4-0.7 %).  The reading of the kernel's real file is tested on the real file.
"""

from __future__ import annotations

import os

import pytest

from modelwarden.sandbox import pollgate, shmchannel
from modelwarden.sandbox.pollgate import BACKOFF_MAX_S, BACKOFF_MIN_S, CHECK_S, PRESSURE_MAX, PROBE_S, PollGate

pytestmark = pytest.mark.skipif(not pollgate.SPIN_OK or len(os.sched_getaffinity(0)) < 2,
                                reason="polling needs x86 and two CPUs")


class Host:
    """A host whose PSI ``some`` grows at ``sleeping_pct`` or ``polling_pct`` per second, depending on
    what the gate said at the last step; ``avg10`` is what the kernel's average would show."""

    def __init__(self, sleeping_pct: float, polling_pct: float, avg10: float) -> None:
        self.t, self.total_us, self.avg10 = 1000.0, 123_456_789, avg10
        self.rates = {False: sleeping_pct, True: polling_pct}
        self.reads = 0
        self.gate = PollGate(read=self.read, clock=lambda: self.t)

    def read(self) -> tuple[float, int]:
        self.reads += 1
        return self.avg10, self.total_us

    def run(self, seconds: float, step: float = 0.01) -> float:
        """Call the gate every ``step`` for ``seconds``; the share of that time it said "poll"."""
        polled = 0
        for _ in range(round(seconds / step)):
            open_ = self.gate()
            polled += open_
            self.total_us += round(self.rates[open_] / 100 * step * 1e6)
            self.t += step
        return polled / round(seconds / step)


def test_a_steady_stream_of_sleeping_calls_does_not_keep_the_gate_shut():
    """The trap this gate replaces: sleeping calls alone make 5.5 % pressure (above the 5 % bound),
    polling ones 0.5 %, and the kernel's avg10 still shows an earlier burst (8 %).  The old rule
    (avg10 < 5 %) never polled again; the gate probes after its back-off and stays open."""
    host = Host(sleeping_pct=5.5, polling_pct=0.5, avg10=8.0)
    assert host.gate() is False  # the first reading has no window: avg10 decides
    assert host.run(BACKOFF_MIN_S - 0.05) == 0.0  # shut until the back-off ends
    host.run(0.1)
    assert host.gate.open and host.gate.probing  # the probe
    assert host.run(PROBE_S + 0.05) == 1.0
    assert host.gate.open and not host.gate.probing  # the probe measured 0.5 %: open for good
    assert host.run(60.0) == 1.0
    assert host.reads < 60 / CHECK_S + 10  # re-read about once a second, not per call


def test_real_contention_closes_the_gate_and_probes_back_off():
    """Others keep the CPUs busy: 50 % pressure while polling (measured with one CPU hog), 30 %
    while sleeping.  The gate closes within a check, and its probes back off exponentially, so
    at most PROBE_S / BACKOFF_MAX_S of the time is spent polling under contention."""
    host = Host(sleeping_pct=30.0, polling_pct=50.0, avg10=1.0)
    assert host.gate() is True  # avg10 says quiet (contention just started)
    host.run(CHECK_S + 0.05)
    assert host.gate.open is False
    waits = []
    for _ in range(7):
        start = host.t
        while not host.gate():
            host.run(0.01)
        waits.append(round(host.t - start))
        host.run(PROBE_S + 0.05)
        assert host.gate.open is False  # every probe fails
    assert waits == [round(min(BACKOFF_MIN_S * 2 ** k, BACKOFF_MAX_S)) for k in range(7)]  # 2, 4, ... 32, 32
    assert host.run(10 * BACKOFF_MAX_S) <= 2 * PROBE_S / BACKOFF_MAX_S


def test_the_end_of_a_burst_is_noticed_within_seconds_not_a_whole_back_off():
    """After two minutes of contention the back-off is at its maximum (32 s); once only our own
    sleeping calls' pressure is left (below SLEEPING_QUIET), the gate probes BACKOFF_MIN_S after it
    last closed, and stays open."""
    host = Host(sleeping_pct=30.0, polling_pct=50.0, avg10=20.0)
    host.run(120.0)
    assert host.gate.open is False and host.gate.backoff_s == BACKOFF_MAX_S
    while host.gate.open is False:  # wait for the next failed probe, so the gate has just closed
        host.run(0.01)
    host.run(PROBE_S + 0.05)
    assert host.gate.open is False
    host.rates = {False: 5.5, True: 0.5}  # the other job ended; our own sleeping calls remain
    start = host.t
    while not host.gate():
        host.run(0.01)
    assert host.t - start <= BACKOFF_MIN_S + CHECK_S  # not the 32 s back-off
    assert host.run(30.0) == 1.0


def test_mild_contention_mistaken_for_our_own_costs_a_bounded_share_of_polling():
    """Others make 7 % while we sleep (below SLEEPING_QUIET) and 8 % while we poll: every probe
    fails, and the probes come at most every BACKOFF_MIN_S + PROBE_S."""
    host = Host(sleeping_pct=7.0, polling_pct=8.0, avg10=7.0)
    assert host.run(300.0) <= PROBE_S / (PROBE_S + BACKOFF_MIN_S) + 0.01


def test_an_open_gate_closes_on_sustained_pressure_above_the_bound_only():
    host = Host(sleeping_pct=0.0, polling_pct=PRESSURE_MAX - 1.0, avg10=0.0)
    assert host.run(60.0) == 1.0  # just below the bound, for good
    host.rates[True] = 0.5
    host.run(30.0)
    host.rates[True] = 20.0  # a one-second spike (a cron job, a log rotation)
    host.run(1.0)
    host.rates[True] = 0.5
    assert host.run(60.0) == 1.0  # never closed
    host.rates[True] = PRESSURE_MAX + 1.0  # sustained, just above the bound
    host.run(60.0)
    assert host.gate.open is False
    host.rates[True] = 50.0  # heavy contention closes it within about two checks
    host.rates[False] = 30.0
    host.run(60.0)
    host.rates = {False: 0.5, True: 0.5}
    assert host.run(BACKOFF_MIN_S + 2 * CHECK_S) > 0
    host.rates = {False: 30.0, True: 50.0}
    host.run(0.05)
    assert host.gate.open
    host.run(2 * CHECK_S + 0.05)
    assert host.gate.open is False


def test_one_cpu_never_polls():
    """Real affinity: the gate reads the calling thread's CPU mask."""
    host = Host(sleeping_pct=0.0, polling_pct=0.0, avg10=0.0)
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mask)})
    try:
        assert host.gate() is False
        assert host.reads == 0
    finally:
        os.sched_setaffinity(0, mask)
    host.run(CHECK_S + 0.05)
    assert host.gate.open is True  # the same gate, two CPUs again


def test_without_psi_the_load_average_decides():
    gate = PollGate(read=lambda: None)
    assert gate() == (os.getloadavg()[0] < len(os.sched_getaffinity(0)) - 0.5)


def test_the_kernel_file_is_read(tmp_path, monkeypatch):
    if os.path.exists("/proc/pressure/cpu"):  # the real file, where the kernel has PSI
        avg10, total = pollgate.psi_some()
        assert 0.0 <= avg10 <= 100.0 and total >= 0
    psi = tmp_path / "cpu"
    psi.write_text("some avg10=7.50 avg60=5.00 avg300=3.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    monkeypatch.setattr(pollgate, "PRESSURE", str(psi))
    assert pollgate.psi_some() == (7.5, 12345)
    assert pollgate.cpu_pressure() == 7.5
    for bad in ("garbage\n", "some avg10=x total=1\n", "some avg10=1.0\n", ""):
        psi.write_text(bad)
        assert pollgate.psi_some() is None
    monkeypatch.setattr(pollgate, "PRESSURE", str(tmp_path / "missing"))
    assert pollgate.cpu_pressure() is None


def test_the_sandbox_client_uses_the_gate():
    assert isinstance(shmchannel.spare_core, PollGate)
