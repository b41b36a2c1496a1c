"""When polling for a shared-memory reply pays: a spare core, judged by the CPU pressure *while polling*.

Polling (both sides of a warm call watching the region instead of sleeping on the doorbell) wins
only when each side has a core to itself; with anything else waiting for a CPU it takes time
that others need (measured: docs/sandbox.md, *Polling instead of sleeping*).  The signal is the
kernel's CPU pressure (PSI ``some``: the share of time in which some runnable task waited for a
CPU).

The pressure must be read in the state being judged.  Calls that *sleep* make pressure of their
own: each doorbell wake-up leaves the woken side runnable for a moment before it runs.  On the
2-vCPU host a stream of sleeping dense calls alone kept PSI at 5.3-5.7 %, polling calls at
0.4-0.7 %.  A gate that reads the pressure while sleeping (the kernel's ``avg10``, as this gate
did before) therefore never reopens under a steady stream of calls once it has closed.  So:

* **open** (polling): every :data:`CHECK_S` the pressure over the window since the last reading
  goes into an average over the open state (time constant :data:`TAU_S`): a second at 20 % on a
  quiet host does not close the gate, heavy contention closes it at the next check, pressure just
  above :data:`PRESSURE_MAX` within about ten seconds.
* **closed** (sleeping): after a back-off (:data:`BACKOFF_MIN_S`, doubling on every failed probe up
  to :data:`BACKOFF_MAX_S`) the gate **probes**: it opens for :data:`PROBE_S`, and the pressure over
  that window decides whether it stays open (the back-off resets, the average starts from that
  window) or closes again.  Under heavy contention probes cost at most ``PROBE_S / BACKOFF_MAX_S``
  of the time polling.  A closed gate still reads the pressure every :data:`CHECK_S`: below
  :data:`SLEEPING_QUIET` (what sleeping calls make by themselves, not what others do) it probes
  :data:`BACKOFF_MIN_S` after closing instead of waiting out a long back-off, so the end of a burst
  is noticed within seconds; where that misjudges mild contention, at most
  ``PROBE_S / (PROBE_S + BACKOFF_MIN_S)`` of the time is spent in failed probes.
* the **first** reading has no window: the kernel's ``avg10`` decides.
* without PSI: a one-minute load average below the CPUs minus a half (which counts the pollers).

Polling also needs two usable CPUs and x86 (see :data:`SPIN_OK`).  One gate per process, shared by
every sandbox in it; safe to call from any thread (the fast path only reads).
"""

from __future__ import annotations

import math
import os
import platform
import threading
import time
from collections.abc import Callable

# Spinning replaces a sleep/wake-up by polling the reply's seq; only on x86 (TSO: the writer's
# stores become visible in program order, so seq is never seen before the header it ends).
SPIN_OK = platform.machine() in ("x86_64", "AMD64", "i686")
PRESSURE = "/proc/pressure/cpu"
PRESSURE_MAX = 5.0  # % of a window in which some runnable task waited for a CPU (measured: docs/sandbox.md)
CHECK_S = 1.0  # an open gate re-reads the pressure this often
TAU_S = 5.0  # time constant of the open state's pressure average
PROBE_S = 0.3  # a closed gate opens this long to measure the pressure while polling
BACKOFF_MIN_S = 2.0  # a closed gate probes again after this long, doubling on each failed probe ...
BACKOFF_MAX_S = 32.0  # ... up to this
SLEEPING_QUIET = 10.0  # % below which a closed gate's pressure is taken for its own sleeping calls'
#                        (measured: 5.3-5.7 % for those alone, 30 % beside one CPU hog)


def psi_some() -> tuple[float, int] | None:
    """The kernel's CPU pressure: (``some avg10`` in %, ``some total`` in µs); None without PSI."""
    try:
        with open(PRESSURE, "rb") as f:
            fields = dict(kv.split(b"=", 1) for kv in f.readline().split()[1:])
        return float(fields[b"avg10"]), int(fields[b"total"])
    except (OSError, ValueError, KeyError):
        return None


def cpu_pressure() -> float | None:
    """The kernel's CPU pressure (``some avg10``, %), None without PSI."""
    psi = psi_some()
    return None if psi is None else psi[0]


class PollGate:
    """``gate()`` -> poll now?  State machine of the module docstring; ``clock`` and ``read`` are
    parameters for tests (``read`` returns what :func:`psi_some` does)."""

    def __init__(self, read: Callable[[], tuple[float, int] | None] = psi_some,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read, self._clock = read, clock
        self._lock = threading.Lock()
        self.open = False
        self.probing = False
        self.next_s = float("-inf")  # when the state is next re-evaluated
        self.backoff_s = BACKOFF_MIN_S
        self.closed_s = self.probe_s = float("-inf")  # when the gate last closed; when its back-off ends
        self.pressure = 0.0  # % while polling: the average of the open state, or the last probe's window
        self._window: tuple[float, int] | None = None  # (clock, PSI total) where the current window started

    def __call__(self) -> bool:
        if self._clock() < self.next_s:
            return self.open
        if not self._lock.acquire(blocking=False):
            return self.open  # another thread is re-evaluating
        try:
            self._evaluate()
        finally:
            self._lock.release()
        return self.open

    def _evaluate(self) -> None:
        now = self._clock()
        if now < self.next_s:
            return
        try:
            cpus = len(os.sched_getaffinity(0))
        except OSError:
            cpus = 1
        if not SPIN_OK or cpus < 2:
            self.open, self.next_s = False, now + CHECK_S
            return
        psi = self._read()
        if psi is None:
            try:
                quiet = os.getloadavg()[0] < cpus - 0.5
            except OSError:  # no /proc/loadavg either: never poll
                quiet = False
            self.open, self.next_s = quiet, now + CHECK_S
            return
        avg10, total = psi
        start, self._window = self._window, (now, total)
        if start is None or now <= start[0] or total < start[1]:
            self.pressure = avg10
            self._set(avg10 < PRESSURE_MAX, now)  # no window yet: the kernel's average decides
            return
        window_pct = 100.0 * (total - start[1]) / 1e6 / (now - start[0])
        if self.probing:
            self.pressure = window_pct
            self._set(window_pct < PRESSURE_MAX, now)
        elif self.open:  # measured while polling: the real signal
            self.pressure += (1.0 - math.exp(-(now - start[0]) / TAU_S)) * (window_pct - self.pressure)
            self._set(self.pressure < PRESSURE_MAX, now)
        elif now >= self.probe_s or (window_pct < SLEEPING_QUIET and now >= self.closed_s + BACKOFF_MIN_S):
            # closed: the window holds our own sleeping calls' pressure, so probe: poll and measure
            self.open, self.probing, self.next_s = True, True, now + PROBE_S
        else:
            self.next_s = now + CHECK_S

    def _set(self, open_: bool, now: float) -> None:
        if open_:
            self.next_s, self.backoff_s = now + CHECK_S, BACKOFF_MIN_S
        else:
            self.closed_s, self.probe_s, self.next_s = now, now + self.backoff_s, now + CHECK_S
            self.backoff_s = min(2 * self.backoff_s, BACKOFF_MAX_S)
        self.open, self.probing = open_, False
