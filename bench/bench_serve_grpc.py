"""gRPC against REST on the same `modelwarden serve` process, one run: throughput and latency ratios.

    python bench/bench_serve_grpc.py [--duration 5] [--concurrency 1,8] [--batch 1,4096] [--workers 2]

One server on 127.0.0.1 (auth ON, sandbox ON, scan gate on, TLS off) serves the tiny dense SavedModel
of tests/fixtures/build_serve_models.py over both APIs. The load process (a second process) runs, for
each point, REST (httpx, keep-alive, ``{"instances": ...}``) and then gRPC (tensorflow-serving-api's
PredictionServiceStub, ``tf.make_tensor_proto``) from ``concurrency`` threads with one client each, and
prints req/s, p50 and p99 for both and the gRPC/REST ratios. ``--batch`` rows per request show the cost of
decoding large bodies (JSON numbers vs tensor_content).
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

ROOT = Path(__file__).resolve().parents[1]

LOAD = r'''
import json, sys, threading, time
import grpc, httpx, numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis.prediction_service_pb2_grpc import PredictionServiceStub

rest_port, grpc_port, token, duration, conc, batch = sys.argv[1:7]
duration, conc, batch = float(duration), int(conc), int(batch)
x = np.random.default_rng(0).standard_normal((batch, 4)).astype(np.float32)
body = json.dumps({"instances": x.tolist()})
req = predict_pb2.PredictRequest()
req.model_spec.name = "dense"
req.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
md = [("authorization", "Bearer " + token)]

def rest_client():
    c = httpx.Client(base_url=f"http://127.0.0.1:{rest_port}", headers={"Authorization": "Bearer " + token},
                     timeout=60)
    def call():
        r = c.post("/v1/models/dense:predict", content=body)
        assert r.status_code == 200, r.text[:300]
    return call

def grpc_client():
    ch = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.enable_http_proxy", 0)])
    stub = PredictionServiceStub(ch)
    return lambda: stub.Predict(req, timeout=60, metadata=md)

def run(make):
    calls = [make() for _ in range(conc)]
    for c in calls:
        c()  # warm: connection set up
    lat, stop = [], time.monotonic() + duration
    def loop(call):
        mine = []
        while time.monotonic() < stop:
            t = time.perf_counter()
            call()
            mine.append(time.perf_counter() - t)
        lat.extend(mine)
    threads = [threading.Thread(target=loop, args=(c,)) for c in calls]
    t0 = time.monotonic()
    for t in threads: t.start()
    for t in threads: t.join()
    wall = time.monotonic() - t0
    lat.sort()
    return {"rps": len(lat) / wall, "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(len(lat) * 0.99)]}

print(json.dumps({"rest": run(rest_client), "grpc": run(grpc_client)}))
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--batch", default="1,4096")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.conftest import build_fixtures

    from modelwarden.server.auth import TokenStore

    models = build_fixtures("build_serve_models")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        base = t / "dense"
        shutil.copytree(models / "dense" / "1", base / "1")
        token, _ = TokenStore(str(t / "tokens.json")).create(["dense"], "predict")
        cmd = [sys.executable, "-m", "modelwarden", "serve", "--model-name", "dense", "--model-base-path", str(base),
               "--workers", str(args.workers), "--port", "0", "--port-file", str(t / "port"), "--grpc-port", "0",
               "--grpc-port-file", str(t / "gport"), "--token-db", str(t / "tokens.json"),
               "--access-log", str(t / "access.log")]
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not (t / "port").exists():
                if server.poll() is not None:
                    raise SystemExit("server exited")
                time.sleep(0.1)
            rest, grpc_port = (t / "port").read_text(), (t / "gport").read_text()
            import httpx

            while httpx.get(f"http://127.0.0.1:{rest}/readyz").status_code != 200:
                time.sleep(0.5)
            print("| batch | concurrency | REST req/s, p50 / p99 ms | gRPC req/s, p50 / p99 ms | gRPC/REST throughput "
                  "| gRPC/REST p99 |")
            print("|---|---|---|---|---|---|")
            for batch in args.batch.split(","):
                for conc in args.concurrency.split(","):
                    out = subprocess.run([sys.executable, "-c", LOAD, rest, grpc_port, token, str(args.duration), conc,
                                          batch], env=env, capture_output=True, text=True, timeout=600)
                    if out.returncode:
                        raise SystemExit(out.stderr[-3000:])
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    a, b = r["rest"], r["grpc"]
                    print(f"| {batch} | {conc} | {a['rps']:.0f}, {a['p50_ms']:.1f} / {a['p99_ms']:.1f} | "
                          f"{b['rps']:.0f}, {b['p50_ms']:.1f} / {b['p99_ms']:.1f} | {b['rps'] / a['rps']:.2f} | "
                          f"{b['p99_ms'] / a['p99_ms']:.2f} |", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
