"""Which machine a benchmark ran on: figures on these VMs differ by host CPU (bench/README.md,
"Session 10: the same benchmarks on another host CPU"), so every benchmark names it."""

from __future__ import annotations

import os


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it ("unknown" elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return " ".join(value.split())
    except OSError:
        pass
    return "unknown"


def describe() -> str:
    """'2 CPUs (AMD EPYC), load average 0.12' - for a benchmark's first line."""
    return f"{os.cpu_count()} CPUs ({cpu_model()}), load average {os.getloadavg()[0]:.2f}"
