"""Throughput and latency of `modelwarden serve` vs an unsafe in-process baseline and KServe, one run.

    python bench/bench_serve.py [--duration 10] [--concurrency 1,8,32] [--mobilenet] [--workers 2] [--batching]
                                [--runs 3] [--servers modelwarden,modelwarden+batch,baseline,kserve]

Servers (all on 127.0.0.1, TensorFlow Serving / KServe V1 REST: POST /v1/models/NAME:predict {"instances": ...}):
- modelwarden: TLS off, auth ON (bearer token), sandbox ON (namespaces + seccomp + cgroups), scan gate on
               (the per-token rate limit is raised: its default, 1000/s, would cap the one bench token);
- modelwarden+batch: the same with server-side batching ([batching] enabled, max 32 rows, 2 ms) (--batching);
- baseline:    uvicorn + starlette (the [bench] extra) + modelwarden's codec calling TensorFlow IN-PROCESS,
               no auth, no sandbox (what "just wrap TF in a web server" costs);
- kserve:      KServe's Python model server (``kserve.ModelServer``, V1 protocol) with the same SavedModel
               loaded in-process; only if ``import kserve`` works in bench/.work/venv (never system-wide): ``python -m
               venv --system-site-packages bench/.work/venv`` (TensorFlow from the system), then
               ``bench/.work/venv/bin/pip install kserve==0.21.0``.
Load comes from wrk (``apt-get install wrk``; one thread, ``concurrency`` keep-alive connections, a Lua
script that POSTs the body with the Authorization header and prints wrk's own latency percentiles), as the
issue's testers measured; without wrk (or with ``--loadgen httpx``) from a second Python process (asyncio +
httpx), which on a 2-core host takes CPU the servers need. ``--runs N`` repeats every point and reports the
median run by throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work"
VENV_PY = WORK / "venv" / "bin" / "python"

BASELINE = r'''
import sys, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf, numpy as np, uvicorn, asyncio
from starlette.requests import Request
from starlette.responses import Response
from modelwarden.server import codec
from modelwarden.server.limits import parse_json
path, port = sys.argv[1], int(sys.argv[2])
m = tf.saved_model.load(path)
fn = m.signatures["serving_default"]
_, kw = fn.structured_input_signature
specs = {k: type("S", (), {"dtype": v.dtype.name})() for k, v in kw.items()}
async def app(scope, receive, send):
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        return
    req = Request(scope, receive)
    body = await req.body()
    r = codec.parse_predict(parse_json(body, 64, 10**8), lambda n: specs, 10**8)
    out = await asyncio.get_running_loop().run_in_executor(None, lambda: {k: v.numpy() for k, v in fn(**{k: tf.constant(a) for k, a in r.inputs.items()}).items()})
    await Response(codec.format_predict(out, r.row_format), media_type="application/json")(scope, receive, send)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
'''

KSERVE = r'''
import sys, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf, numpy as np
import kserve
path, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class TFModel(kserve.Model):
    def __init__(self):
        super().__init__(name)
        self.load()
    def load(self):
        self.m = tf.saved_model.load(path)
        self.fn = self.m.signatures["serving_default"]
        _, kw = self.fn.structured_input_signature
        self.inp, spec = next(iter(kw.items()))
        self.dtype = spec.dtype.as_numpy_dtype
        self.ready = True
        return True
    def predict(self, payload, headers=None):
        x = np.asarray(payload["instances"], dtype=self.dtype)
        out = self.fn(**{self.inp: tf.constant(x)})
        return {"predictions": next(iter(out.values())).numpy().tolist()}
kserve.ModelServer(http_port=port, grpc_port=port + 1, workers=1, enable_grpc=False).start([TFModel()])
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 300, headers: dict | None = None, body: bytes | None = None) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            r = httpx.post(url, content=body, headers=headers or {}, timeout=30)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


# -- load generator (runs in its own process) ---------------------------------------------------------


async def _load(url: str, body: bytes, headers: dict, concurrency: int, duration: float) -> dict:
    import httpx

    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for _ in range(min(concurrency, 4)):  # warm-up
            await client.post(url, content=body, headers=headers)
        stop = time.perf_counter() + duration

        async def loop() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await client.post(url, content=body, headers=headers)
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan"))
    return {"n": len(lat), "errors": errors, "rps": len(lat) / wall, "p50_ms": q(0.50), "p99_ms": q(0.99)}


WRK_LUA = r'''
local f = assert(io.open(os.getenv("MW_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
for k, v in string.gmatch(os.getenv("MW_HEADERS"), "([^\n:]+): ([^\n]*)") do wrk.headers[k] = v end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('MWJSON {"n": %d, "errors": %d, "duration_us": %d, "p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout, summary.duration,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
'''


def run_wrk(url: str, body: bytes, headers: dict, concurrency: int, duration: float) -> dict:
    """One wrk run: 1 thread, ``concurrency`` connections; non-2xx replies count as errors."""
    with tempfile.TemporaryDirectory(prefix="mw-wrk-") as d:
        (Path(d) / "body.json").write_bytes(body)
        (Path(d) / "post.lua").write_text(WRK_LUA)
        env = dict(os.environ, MW_BODY=str(Path(d) / "body.json"),
                   MW_HEADERS="\n".join(f"{k}: {v}" for k, v in headers.items()))
        subprocess.run(["wrk", "-t1", "-c", str(concurrency), "-d", "1s", "-s", str(Path(d) / "post.lua"), url],
                       env=env, capture_output=True, timeout=120)  # warm-up (connections, first calls)
        p = subprocess.run(["wrk", "-t1", "-c", str(concurrency), "-d", f"{duration:g}s", "--timeout", "30s",
                            "-s", str(Path(d) / "post.lua"), url], env=env, capture_output=True, text=True,
                           timeout=duration + 120)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("MWJSON ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {p.stdout[-1000:]} {p.stderr[-1000:]}")
    r = json.loads(line[len("MWJSON "):])
    r["rps"] = (r["n"] - r["errors"]) / (r.pop("duration_us") / 1e6)
    return r


def run_load(url: str, body: bytes, headers: dict, concurrency: int, duration: float, loadgen: str = "wrk",
             runs: int = 1) -> dict:
    """The median (by throughput) of ``runs`` runs, with every run's throughput."""
    one = run_wrk if loadgen == "wrk" else run_httpx
    rs = sorted((one(url, body, headers, concurrency, duration) for _ in range(runs)), key=lambda r: r["rps"])
    med = dict(rs[len(rs) // 2])
    med["runs_rps"] = [round(r["rps"], 1) for r in rs]
    med["runs_p99_ms"] = sorted(round(r["p99_ms"], 2) for r in rs)
    med["p99_ms_median"] = statistics.median(r["p99_ms"] for r in rs)
    return med


def run_httpx(url: str, body: bytes, headers: dict, concurrency: int, duration: float) -> dict:
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        f.write(body)
    try:
        p = subprocess.run([sys.executable, __file__, "--load-worker", url, f.name, json.dumps(headers),
                            str(concurrency), str(duration)], capture_output=True, text=True, timeout=duration + 300)
    finally:
        os.unlink(f.name)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


# -- servers ----------------------------------------------------------------------------------------


class Proc:
    def __init__(self, argv: list[str], env: dict | None = None, log: Path | None = None) -> None:
        self.log = open(log or os.devnull, "wb")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                  start_new_session=True)

    def stop(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()


def start_modelwarden(name: str, base: Path, workers: int, batching: bool = False) -> tuple[Proc, str, dict]:
    from modelwarden.server.auth import TokenStore

    d = Path(tempfile.mkdtemp(prefix="mw-bench-"))
    token, _ = TokenStore(str(d / "tokens.json")).create([name], "predict")
    (d / "serve.toml").write_text(f'[server]\ntoken_db = "{d / "tokens.json"}"\naccess_log = "{d / "access.log"}"\n'
                                  f'[limits]\nmax_body = "64MiB"\nmax_json_elements = 100000000\n'
                                  f'max_concurrent_requests = 256\nmax_inflight_per_token = 256\n'
                                  f'rate_per_token = 1000000\nrate_burst = 1000000\n'  # 1000/s: a cap

                                  + ('[batching]\nenabled = true\nmax_batch_size = 32\nbatch_timeout = "2ms"\n'
                                     if batching else '')
                                  + f'[[models]]\nname = "{name}"\nbase_path = "{base}"\nworkers = {workers}\n'
                                  f'spare_workers = 0\n')
    port = free_port()
    runner = ("import sys\nfrom modelwarden import cli\n"
              "cli.COMMANDS.setdefault('serve', ('modelwarden.cli.serve_cmd', 'serve'))\n"
              "sys.exit(cli.main(['serve', *sys.argv[1:]]))\n")
    p = Proc([sys.executable, "-c", runner, "--config", str(d / "serve.toml"), "--port", str(port)],
             log=WORK / "serve-modelwarden.log")
    return p, f"http://127.0.0.1:{port}/v1/models/{name}:predict", {"Authorization": f"Bearer {token}"}


def start_baseline(name: str, path: Path) -> tuple[Proc, str, dict]:
    port = free_port()
    p = Proc([sys.executable, "-c", BASELINE, str(path), str(port)], log=WORK / "serve-baseline.log")
    return p, f"http://127.0.0.1:{port}/v1/models/{name}:predict", {}


def kserve_available() -> str:
    if not VENV_PY.exists():
        return "bench/.work/venv missing"
    p = subprocess.run([str(VENV_PY), "-c", "import kserve"], capture_output=True, text=True)
    return "" if p.returncode == 0 else (p.stderr.strip().splitlines() or ["import kserve failed"])[-1]


def start_kserve(name: str, path: Path) -> tuple[Proc, str, dict]:
    port = free_port()
    p = Proc([str(VENV_PY), "-c", KSERVE, str(path), str(port), name], log=WORK / "serve-kserve.log")
    return p, f"http://127.0.0.1:{port}/v1/models/{name}:predict", {}


def build_models(mobilenet: bool) -> dict[str, tuple[Path, Path, bytes]]:
    """name -> (base_path with versions, version dir, request body)."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import build_fixtures

    out = {}
    serve = build_fixtures("build_serve_models")
    out["dense"] = (serve / "dense", serve / "dense" / "1", json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]]}).encode())
    if mobilenet:
        base = WORK / "serve-models" / "mobilenet96"
        if not (base / "1" / "saved_model.pb").exists():
            code = ("import keras, sys\nm = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))\n"
                    "m.export(sys.argv[1])\n")
            subprocess.run([sys.executable, "-c", code, str(base / "1")], check=True, timeout=900,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        import numpy as np

        img = np.random.default_rng(0).random((1, 96, 96, 3)).round(3)  # short decimals: ~170 KB bodies
        out["mobilenet"] = (base, base / "1", json.dumps({"instances": img.tolist()}).encode())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--mobilenet", action="store_true", help="also MobileNetV2 (builds it once, slow)")
    ap.add_argument("--workers", type=int, default=2, help="modelwarden sandboxed workers per model")
    ap.add_argument("--no-kserve", action="store_true")
    ap.add_argument("--batching", action="store_true", help="also modelwarden with server-side batching")
    ap.add_argument("--models", default="", help="comma-separated subset of: dense, mobilenet")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--loadgen", choices=("wrk", "httpx"), default="wrk" if shutil.which("wrk") else "httpx",
                    help="load generator (default: wrk when installed)")
    ap.add_argument("--runs", type=int, default=1, help="runs per point; the median run is reported")
    ap.add_argument("--servers", default="", help="comma-separated subset of the servers to run")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    models = build_models(args.mobilenet)
    why_not = "disabled (--no-kserve)" if args.no_kserve else kserve_available()
    if args.models:
        models = {k: v for k, v in models.items() if k in args.models.split(",")}
    servers = ["modelwarden"] + (["modelwarden+batch"] if args.batching else []) + ["baseline"] + \
        ([] if why_not else ["kserve"])
    if args.servers:
        servers = [s for s in servers if s in args.servers.split(",")]
    if why_not:
        print(f"note: KServe skipped: {why_not}")
    print(f"load generator: {args.loadgen}, {args.runs} run(s) of {args.duration:g} s per point; "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    results: dict = {}
    for name, (base, vdir, body) in models.items():
        for server in servers:
            starter = {"modelwarden": lambda: start_modelwarden(name, base, args.workers),
                       "modelwarden+batch": lambda: start_modelwarden(name, base, args.workers, batching=True),
                       "baseline": lambda: start_baseline(name, vdir), "kserve": lambda: start_kserve(name, vdir)}[server]
            proc, url, headers = starter()
            try:
                wait_http(url, headers={**headers, "Content-Type": "application/json"}, body=body)
                for c in levels:
                    r = run_load(url, body, {**headers, "Content-Type": "application/json"}, c, args.duration,
                                 args.loadgen, args.runs)
                    r["loadavg"] = round(os.getloadavg()[0], 2)
                    results[(name, server, c)] = r
                    print(f"{name:10} {server:17} c={c:<3} {r['rps']:9.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                          f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}  runs {r['runs_rps']}  "
                          f"load {r['loadavg']}", flush=True)
            finally:
                proc.stop()
    print("\nratios (modelwarden / other), same run:")
    ours = [s for s in servers if s.startswith("modelwarden")]
    for name in models:
        for mine in ours:
            for other in [s for s in servers if s not in ours]:
                for c in levels:
                    a, b = results.get((name, mine, c)), results.get((name, other, c))
                    if a and b:
                        print(f"{name:10} {mine:17} vs {other:9} c={c:<3} throughput x{a['rps'] / b['rps']:.2f}   "
                              f"p50 x{a['p50_ms'] / b['p50_ms']:.2f}   p99 x{a['p99_ms'] / b['p99_ms']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"|".join(map(str, k)): v for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load-worker":
        url, body_file, headers, conc, dur = sys.argv[2:7]
        res = asyncio.run(_load(url, Path(body_file).read_bytes(), json.loads(headers), int(conc), float(dur)))
        print(json.dumps(res))
        sys.exit(0)
    sys.exit(main())
