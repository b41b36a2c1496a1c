"""Cost of copying the model into the sandbox (the bytes scanned are the bytes loaded).

    python bench/bench_model_copy.py [--size-mib 1024] [--rounds 3] [--backend namespaces]

Starts real workers (no TensorFlow load, no scan) on a directory holding one file of
``--size-mib`` and on a directory holding a 4 KiB file, alternating, and reports the
median time from start to the worker's boot message (namespaces: the copy happens in the
boot process, before that message) or to TensorFlow's ``ready`` (bwrap: bwrap copies before
the worker starts), and the difference: the copy's cost.  The source file is read once
before timing, so the page cache is warm (a cold read adds the disk's own time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelwarden.sandbox.client import _Worker, get_backend  # noqa: E402
from modelwarden.sandbox.interface import SandboxLimits, plan_filesystem  # noqa: E402


def start_to_boot(model_dir: str, backend: str, limits: SandboxLimits) -> float:
    t0 = time.perf_counter()
    worker = _Worker(get_backend(backend), plan_filesystem(model_dir), limits,
                     {"max_output_bytes": 1 << 20, "max_input_bytes": 1 << 20}, False)
    try:
        if worker.backend.boot_frame:
            header, _ = worker._recv(time.monotonic() + 120, "boot", 0)
            assert header.get("op") == "boot", header
        else:
            worker.wait_ready(time.monotonic() + 120)
        return time.perf_counter() - t0
    finally:
        worker.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default="namespaces")
    args = ap.parse_args()
    limits = SandboxLimits(memory_bytes=(args.size_mib << 20) + (2 << 30))
    with tempfile.TemporaryDirectory(prefix="mw-copy-bench-") as tmp:
        big, small = Path(tmp, "big"), Path(tmp, "small")
        big.mkdir()
        small.mkdir()
        with open(big / "variables.data", "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mib):
                f.write(block)
        (small / "variables.data").write_bytes(os.urandom(4096))
        with open(big / "variables.data", "rb") as f:  # warm the page cache
            while f.read(1 << 24):
                pass
        times: dict[str, list[float]] = {"big": [], "small": []}
        for _ in range(args.rounds):
            for name, d in (("small", small), ("big", big)):
                times[name].append(start_to_boot(str(d), args.backend, limits))
    b, s = statistics.median(times["big"]), statistics.median(times["small"])
    print(f"backend {args.backend}: start to boot with a {args.size_mib} MiB model {b:.3f} s, "
          f"with a 4 KiB model {s:.3f} s; copy cost {b - s:.3f} s "
          f"({args.size_mib / max(b - s, 1e-9):.0f} MiB/s); the copy also occupies {args.size_mib} MiB of "
          "memory (tmpfs, charged to the worker's memory cgroup) for the worker's lifetime")


if __name__ == "__main__":
    main()
