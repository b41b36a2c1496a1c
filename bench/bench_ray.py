#!/usr/bin/env python3
"""Serving through Ray Serve against `modelwarden serve` alone, at the same concurrency, one run.

    python bench/bench_ray.py [--duration 10] [--concurrency 1,8] [--replicas 2]

Both serve the bundled dense SavedModel with auth and the sandbox on; `modelwarden serve` alone
with --workers R sandboxed workers, `modelwarden serve --ray` with R replicas of one worker each
on a local Ray cluster (head node with R CPUs).  Load: bench_serve.py's load generator (a second
process, keep-alive connections).  Ray needs a private network namespace with only loopback, so
the script re-enters itself under `unshare --net` (root).  Scan throughput on 1, 2 and 4 Ray
nodes is in bench_engine.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from bench_serve import Proc, free_port, run_load, wait_http  # noqa: E402

RUNNER = ("import sys\nfrom modelwarden import cli\nsys.exit(cli.main(['serve', *sys.argv[1:]]))\n")


def serve(base: Path, replicas: int, ray_address: str | None, work: Path) -> tuple[Proc, str, dict]:
    from modelwarden.server.auth import TokenStore

    token, _ = TokenStore(str(work / "tokens.json")).create(["dense"], "predict")
    workers = 1 if ray_address else replicas
    (work / "serve.toml").write_text(
        f'[server]\ntoken_db = "{work / "tokens.json"}"\naccess_log = "{work / "access.log"}"\n'
        f'[limits]\nmax_concurrent_requests = 256\n'
        + (f'[ray]\nnum_replicas = {replicas}\n' if ray_address else "")
        + f'[[models]]\nname = "dense"\nbase_path = "{base}"\nworkers = {workers}\n')
    port = free_port()
    argv = [sys.executable, "-c", RUNNER, "--config", str(work / "serve.toml"), "--port", str(port)]
    if ray_address:
        argv += ["--ray", ray_address]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), RAY_USAGE_STATS_ENABLED="0")
    p = Proc(argv, env=env, log=work / "server.log")
    return p, f"http://127.0.0.1:{port}/v1/models/dense:predict", {"Authorization": f"Bearer {token}"}


def inside(args: argparse.Namespace) -> None:
    from ray.cluster_utils import Cluster

    work = Path(tempfile.mkdtemp(prefix="mw-bench-ray-"))
    base = work / "models"
    shutil.copytree(ROOT / "examples" / "models" / "dense_savedmodel", base / "1")
    body = json.dumps({"instances": [[1.0, 2.0]]}).encode()
    conc = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, dict] = {}
    for label, use_ray in (("modelwarden serve", False), (f"serve --ray ({args.replicas} replicas)", True)):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.replicas}) if use_ray else None
        d = work / ("ray" if use_ray else "alone")
        d.mkdir()
        proc, url, headers = serve(base, args.replicas, cluster.address if cluster else None, d)
        try:
            wait_http(url, timeout=600, headers=headers, body=body)
            time.sleep(2)
            for c in conc:
                results[f"{label} c={c}"] = run_load(url, body, headers, c, args.duration)
        finally:
            proc.stop()
            if cluster:
                cluster.shutdown()
    Path(args._out).write_text(json.dumps(results))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--_out")
    args = ap.parse_args()
    if args._out:
        inside(args)
        return 0
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, __file__,
           "--duration", str(args.duration), "--concurrency", args.concurrency, "--replicas", str(args.replicas),
           "--_out", str(out)]
    subprocess.run(cmd, check=True, timeout=3600)
    res = json.loads(out.read_text())
    print(f"load average {os.getloadavg()[0]:.2f}; dense SavedModel, auth + sandbox on, {args.duration:g}s per point")
    print(f"{'server':38} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in res.items():
        print(f"{name:38} {r['rps']:8.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['errors']:7d}")
    for c in args.concurrency.split(","):
        a = res[f"modelwarden serve c={c}"]
        b = res[f"serve --ray ({args.replicas} replicas) c={c}"]
        print(f"c={c}: Ray Serve throughput {b['rps'] / a['rps']:.2f}x of serve alone, p99 {b['p99_ms'] / a['p99_ms']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
