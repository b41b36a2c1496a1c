"""Ray Serve scenario for tests/test_serve_ray.py, run as
``python -m tests.ray_serve_scenario OUT.json MODELS_DIR WORKDIR`` inside a private network
namespace that has only loopback (the test starts it with unshare).

A real Ray cluster of three nodes (head + two worker raylets), ``modelwarden serve --ray`` as a
real process with two replicas (each with its own sandboxed TensorFlow worker), then: answers
and authentication through Ray Serve's proxy, both replicas serving, a node holding a replica
removed under load (only in-flight requests may fail), and a token revocation reaching every
replica.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

W = [[0.0, 0.1], [0.2, 0.3], [0.4, 0.5], [0.6, 0.7]]


def expected(x: list[float]) -> list[float]:
    return [sum(x[i] * W[i][j] for i in range(4)) + (0.5 if j == 0 else -0.5) for j in range(2)]


def main(out_path: str, models: str, workdir: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from modelwarden.server.auth import TokenStore

    work = Path(workdir)
    out: dict = {"times": {}}
    t0 = time.monotonic()

    def lap(name: str) -> None:
        out["times"][name] = round(time.monotonic() - t0, 1)

    db = work / "tokens.json"
    token, record = TokenStore(str(db)).create(["dense"], "predict")
    token_id = record.id
    (work / "serve.toml").write_text(
        f'[server]\ntoken_db = "{db}"\n\n[ray]\nnum_replicas = 2\nreplica_cpus = 1\n\n'
        f'[[models]]\nname = "dense"\nbase_path = "{models}/dense"\nversion_policy = "specific"\nversions = [1]\n')
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    server = None
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        lap("cluster")
        port_file = work / "port.txt"
        log_file = work / "access.log"
        server = subprocess.Popen([sys.executable, "-m", "modelwarden", "serve", "--ray", cluster.address,
                                   "--config", str(work / "serve.toml"), "--port", "0", "--port-file", str(port_file),
                                   "--access-log", str(log_file)], stdout=open(work / "server.out", "wb"),
                                  stderr=subprocess.STDOUT)
        end = time.monotonic() + 400
        while not port_file.exists():
            if server.poll() is not None or time.monotonic() > end:
                raise RuntimeError((work / "server.out").read_text()[-3000:])
            time.sleep(0.2)
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        auth = {"Authorization": f"Bearer {token}"}
        client = httpx.Client(timeout=60)

        def predict(x: list[float]) -> httpx.Response:
            return client.post(url + "/v1/models/dense:predict", json={"instances": [x]}, headers=auth)

        ok_streak = 0
        while ok_streak < 10:
            if time.monotonic() > end:
                raise RuntimeError("never ready: " + (work / "server.out").read_text()[-3000:])
            try:
                r = predict([1, 2, 3, 4])
                ok_streak = ok_streak + 1 if r.status_code == 200 else 0
            except httpx.HTTPError:
                ok_streak = 0
            time.sleep(0.1 if ok_streak else 0.5)
        lap("ready")
        r = predict([1, 2, 3, 4])
        out["answer_ok"] = r.status_code == 200 and all(
            abs(a - b) < 1e-4 for a, b in zip(r.json()["predictions"][0], expected([1, 2, 3, 4])))
        r = client.post(url + "/v1/models/dense:predict", json={"instances": [[1, 2, 3, 4]]})
        out["no_token_status"] = r.status_code
        out["no_token_json"] = "error" in r.json()

        # a node that holds a replica is lost under load
        import ray.util.state as state

        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        replicas = [a for a in state.list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")]) if "ServeReplica" in a.class_name]
        victim_node = next(n for n in nodes if any(a.node_id == n.node_id for a in replicas))
        results: list[int] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    results.append(predict([1, 0, 0, 1]).status_code)
                except httpx.HTTPError:
                    results.append(-1)

        with ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                pool.submit(load)
            time.sleep(3)
            before = len(results)
            cluster.remove_node(victim_node)
            lap("node_removed")
            time.sleep(20)
            stop.set()
        out["load_requests"] = len(results)
        out["load_before_kill"] = before
        out["load_failures"] = sum(1 for s in results if s != 200)
        out["load_failures_after_kill"] = [s for s in results[before:] if s != 200]
        out["ok_after"] = sum(1 for s in results[before:] if s == 200)
        lap("load")

        # revocation reaches every replica within the documented bound
        TokenStore(str(db)).load().revoke(token_id)
        t_rev = time.monotonic()
        time.sleep(1.0)
        statuses = [predict([1, 2, 3, 4]).status_code for _ in range(20)]
        out["after_revoke"] = statuses
        out["revoke_wait_s"] = round(time.monotonic() - t_rev, 2)

        records = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
        served = {rec.get("replica") for rec in records if rec.get("event") == "access" and rec.get("status") == 200}
        out["replicas_serving"] = len(served - {None})
        out["log_has_token"] = token in log_file.read_text()
        lap("done")
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
        out["server_exit"] = server.returncode if server is not None else None
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001
            pass
        cluster.shutdown()
        Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
