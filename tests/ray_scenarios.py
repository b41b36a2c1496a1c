"""Ray scenarios for tests/test_engine_ray.py, run as ``python -m tests.ray_scenarios OUT.json PATH...``
inside a private network namespace that has only loopback (the test starts it with unshare).

A real multi-node Ray cluster on this host (ray.cluster_utils.Cluster: a head and two worker
nodes, each a separate raylet), then: a distributed scan compared with the local one, with a
worker node removed mid-scan while a task is running on it; the same through the CLI's ``--ray ADDRESS``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time


def interfaces() -> list[str]:
    """Network interfaces of this network namespace (/proc/net/dev is per namespace; /sys is not)."""
    with open("/proc/net/dev") as fh:
        return sorted(line.split(":")[0].strip() for line in fh.readlines()[2:])


def _pid() -> int:
    """A Ray task: the pid of the worker process that runs it."""
    return os.getpid()


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

        # The node must die with a task in flight on it, whatever the host's load: its worker is
        # started first (a task pinned to it reports its pid), frozen once the scan is under way so
        # that the next task handed to it cannot finish, and the node is removed when the scan has
        # stalled on that task alone.  (Removing it at a fixed progress count lost the race under
        # load: its worker had not started yet, its queued tasks moved elsewhere, nothing was lost.)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        pinned = NodeAffinitySchedulingStrategy(node_id=workers[0].node_id, soft=False)
        victim = ray.get(ray.remote(num_cpus=1)(_pid).options(scheduling_strategy=pinned).remote())
        killed: list[int] = []
        frozen: list[float] = []  # progress time stamps once the victim is stopped

        def progress(done: int, total: int, current: str) -> None:
            if not frozen:
                os.kill(victim, signal.SIGSTOP)
            frozen.append(time.monotonic())

        def watchdog() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                time.sleep(0.2)
                if frozen and time.monotonic() - frozen[-1] > 3:  # stalled: only the frozen task is left
                    killed.append(len(frozen))
                    os.kill(victim, signal.SIGKILL)
                    cluster.remove_node(workers[0])  # the node dies with that task on it
                    return
                if report_done:
                    return

        report_done: list[bool] = []
        guard = threading.Thread(target=watchdog, daemon=True)
        guard.start()
        eng = RayEngine(address=cluster.address, batch_size=2)
        try:
            report = scan(paths, engine=eng, progress=progress)
        finally:
            report_done.append(True)
            guard.join()
            if not killed:
                os.kill(victim, signal.SIGKILL)
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
