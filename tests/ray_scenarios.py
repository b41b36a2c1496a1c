"""Ray scenarios for tests/test_engine_ray.py, run as ``python -m tests.ray_scenarios OUT.json PATH...``
inside a private network namespace that has only loopback (the test starts it with unshare).

A real multi-node Ray cluster on this host (ray.cluster_utils.Cluster: a head and two worker
nodes, each a separate raylet), then: a distributed scan compared with the local one, with a
worker node removed mid-scan; the same through the CLI's ``--ray ADDRESS``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time


def interfaces() -> list[str]:
    """Network interfaces of this network namespace (/proc/net/dev is per namespace; /sys is not)."""
    with open("/proc/net/dev") as fh:
        return sorted(line.split(":")[0].strip() for line in fh.readlines()[2:])


def main(out_path: str, paths: list[str]) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from modelwarden.engine.local import ForkPoolEngine
    from modelwarden.engine.ray_engine import RayEngine
    from modelwarden.report.json_report import report_dict
    from modelwarden.scanner import scan

    def norm(report) -> dict:
        d = report_dict(report)
        d.pop("duration_s")
        d.pop("engine", None)
        return d

    out: dict = {"interfaces": interfaces(), "times": {}}
    t0 = time.monotonic()

    def lap(name: str) -> None:
        out["times"][name] = round(time.monotonic() - t0, 1)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        out["node_addresses"] = sorted({n["NodeManagerAddress"] for n in ray.nodes()})
        out["nodes"] = len([n for n in ray.nodes() if n["Alive"]])
        lap("cluster")
        local = norm(scan(paths, engine=ForkPoolEngine(1)))
        lap("local")

        killed: list[int] = []

        def progress(done: int, total: int, current: str) -> None:
            if done >= 10 and not killed:
                killed.append(done)
                cluster.remove_node(workers[0])  # a node dies with tasks running and queued on it

        eng = RayEngine(address=cluster.address, batch_size=2)
        report = scan(paths, engine=eng, progress=progress)
        out["node_killed_after"] = killed
        out["same_report"] = norm(report) == local
        out["stats"] = dict(report.engine)
        out["artifacts"] = len(report.artifacts)
        out["alive_after"] = len([n for n in ray.nodes() if n["Alive"]])
        lap("ray")

        cli = subprocess.run([sys.executable, "-m", "modelwarden", "scan", *paths, "--ray", cluster.address,
                              "--no-cache", "-f", "json", "--no-progress"], capture_output=True, text=True, timeout=300)
        cli_report = json.loads(cli.stdout)
        out["cli_exit"] = cli.returncode
        out["cli_engine"] = cli_report.get("engine")
        cli_report.pop("duration_s")
        cli_report.pop("engine", None)
        out["cli_same_report"] = cli_report == local
        out["local_exit"] = local["exit_code"]
        lap("cli")
    finally:
        ray.shutdown()
        cluster.shutdown()
    with open(out_path, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
