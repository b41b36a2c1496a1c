#!/usr/bin/env python3
"""Directory-scan throughput: the serial scan against a fork pool, the results store and Ray.

    python bench/bench_engine.py [--models 800] [--reps 3] [--ray-nodes 1,2,4] [--no-ray] [--in-process]

A directory of N small SavedModels (copies of the bundled dense example, written by real
TensorFlow) is scanned whole-process (``modelwarden scan DIR --no-progress -f json``) with:
one process (``-j 1 --no-cache``, the baseline), a fork pool of one process per core
(``--no-cache``), the results store cold (empty: every artifact hashed, analysed and stored) and
warm (a second run over an unchanged tree), and, when Ray is
installed, ``--ray`` on a local cluster of 1, 2 and 4 nodes (each one CPU) started inside a
private network namespace with only loopback (root and ``unshare`` needed).  Runs are
interleaved per repetition and medians reported; every figure is a ratio to the baseline of
the same run.  ``--in-process`` adds ``modelwarden.scan(DIR)`` timed inside one process
(serial and the pool): the per-artifact cost without interpreter start-up, and the machine's
ceiling for the pool (one independent serial scan of the tree per core, all at once: the most
any sharing of the work could scale on this host, in the same run).  ``--compare SRC``
runs every series a second time with another source tree (e.g. ``/work/main/src``: the code
before a change), interleaved with this one in each repetition, and prints new/old ratios.
"pool / serial" is the scaling from one process to one per core, measured in the same run.
"pool, python -S" is the pool again with the interpreter's ``site`` step skipped (site-packages
put on PYTHONPATH instead): what the host's ``.pth`` files add to a whole-process run (an empty
``python -c pass`` pays ~27 ms for them here, a scan far less: they import modules it needs anyway);
the start-up line prints the interpreter's own figures.
Issue #13's target: >= 1,000 small models/s on this 2-core machine and linear scaling with cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hostinfo

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "models" / "dense_savedmodel"


def build(n: int, where: Path) -> Path:
    out = where / f"small-{n}"
    if not out.exists():
        for i in range(n):
            shutil.copytree(MODEL, out / f"m{i:05d}")
    return out


def bench_env(src: Path) -> dict[str, str]:
    """Children run ``src``'s code with cached bytecode in a bench-private cache for every tree
    alike (with PYTHONDONTWRITEBYTECODE set, a tree without __pycache__ would compile every
    module on every start and lose to one that has it)."""
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONPYCACHEPREFIX=str(ROOT / "bench" / ".work" / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def no_site_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for ``python -S``: the site-packages directories on PYTHONPATH, so modelwarden's
    dependencies import as usual, without the ``.pth`` files that ``site`` would execute."""
    import site

    return dict(env, PYTHONPATH=os.pathsep.join([env["PYTHONPATH"], *site.getsitepackages()]))


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, dict]:
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    dt = time.perf_counter() - t
    if res.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return dt, json.loads(res.stdout)


_IN_PROCESS = r"""
import os, sys, time
from modelwarden.scanner import scan
tree, jobs, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
scan([tree], jobs=1)  # warm: rules, catalog and lazily compiled classes, as a long-running caller has them
t, c = time.perf_counter(), os.times()
if jobs > 0:
    report = scan([tree], jobs=jobs)
    assert len(report.artifacts) == n and not report.errors, (len(report.artifacts), report.errors[:2])
else:  # -jobs independent serial scans of the whole tree at once, one per forked process
    pids = []
    for _ in range(-jobs):
        pid = os.fork()
        if pid == 0:
            report = scan([tree], jobs=1)
            os._exit(0 if len(report.artifacts) == n and not report.errors else 1)
        pids.append(pid)
    assert all(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 for pid in pids)
dt, c2 = time.perf_counter() - t, os.times()
cpu = sum(c2[:4]) - sum(c[:4])  # this process and its pool's workers, user + system
print(dt, cpu)
"""

CEILING = "in-process ceiling"


def in_process(tree: Path, n: int, env: dict[str, str]) -> dict[str, float]:
    """One repetition of ``modelwarden.scan(DIR)`` timed inside one process (no interpreter
    start-up, no report rendering): serial, then the fork pool; with the CPU seconds each used
    (the pool's workers included), which other load on the host changes far less than wall time.
    Then the machine's own ceiling for the pool: one independent serial scan of the whole tree per
    core, all at once, each in its own forked process (no work shared, nothing sent between them):
    their wall time over the serial one is the most any way of sharing the work could scale here."""
    cores = os.cpu_count() or 1
    out = {}
    for name, jobs in (("in-process serial", 1), (f"in-process pool (-j {cores})", cores), (CEILING, -cores)):
        res = subprocess.run([sys.executable, "-c", _IN_PROCESS, str(tree), str(jobs), str(n)], env=env,
                             capture_output=True, text=True, timeout=1800, check=True).stdout
        wall, cpu = (float(x) for x in res.split())
        out[name] = wall / cores if jobs < 0 else wall  # the time per tree's worth of work
        out["cpu: " + name] = cpu / cores if jobs < 0 else cpu
    return out


def startup(env: dict[str, str], reps: int = 7) -> dict[str, float]:
    """What every whole-process run pays before modelwarden's own code: the interpreter with and
    without ``site`` (``-S``: no site-packages processing, so no ``.pth`` files of the host), and
    ``modelwarden --version`` (the CLI's entry, no scan).  Medians of ``reps`` runs, seconds."""
    out = {}
    for name, args in (("python -S -c pass", ["-S", "-c", "pass"]), ("python -c pass", ["-c", "pass"]),
                       ("modelwarden --version", ["-m", "modelwarden", "--version"])):
        runs = []
        for _ in range(reps):
            t = time.perf_counter()
            subprocess.run([sys.executable, *args], env=env, capture_output=True, check=True, timeout=60)
            runs.append(time.perf_counter() - t)
        out[name] = statistics.median(runs)
    return out


def whole_process(tree: Path, n: int, env: dict[str, str], cache: Path) -> dict[str, float]:
    """One repetition of ``modelwarden scan DIR`` as a user runs it: serial, the pool, the results
    store empty (every artifact hashed, analysed and stored) and warm (nothing changed)."""
    base = [sys.executable, "-m", "modelwarden", "scan", str(tree), "--no-progress", "-f", "json"]
    # the first two without a results store, as `modelwarden scan DIR` runs by default (no
    # --cache-dir, no $MODELWARDEN_CACHE_DIR; --no-cache makes sure of it); the pool's size is
    # the default one (a process per core), not given with -j
    out = {"serial (-j 1)": timed(base + ["-j", "1", "--no-cache"], env)[0],
           f"pool (-j {os.cpu_count()})": timed(base + ["--no-cache"], env)[0]}
    # the same pool with the interpreter's site-packages processing skipped (-S; site-packages put on
    # PYTHONPATH instead): what the host's .pth files add to a run
    out["pool, python -S"] = timed(base[:1] + ["-S"] + base[1:] + ["--no-cache"], no_site_env(env))[0]
    shutil.rmtree(cache, ignore_errors=True)
    out["store cold (fills it)"] = timed(base + ["--cache-dir", str(cache)], env)[0]
    dt, rep = timed(base + ["--cache-dir", str(cache)], env)
    assert rep["engine"]["cached"] == n, rep["engine"]
    out["store warm"] = dt
    return out


def ray_series(tree: Path, nodes: list[int], reps: int, env: dict[str, str]) -> dict[int, float]:
    """Ray runs inside a private network namespace (only loopback): this script re-enters itself there."""
    if shutil.which("unshare") is None:
        return {}
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, __file__,
           "--_ray", str(tree), "--_out", str(out), "--reps", str(reps), "--ray-nodes", ",".join(map(str, nodes))]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        print(f"Ray series skipped: {res.stderr.strip()[-500:]}")
        return {}
    return {int(k): v for k, v in json.loads(out.read_text()).items()}


def _ray_inside(tree: Path, nodes: list[int], reps: int, out: Path) -> None:
    from ray.cluster_utils import Cluster

    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    result = {}
    for n in nodes:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        try:
            for _ in range(n - 1):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            cmd = [sys.executable, "-m", "modelwarden", "scan", str(tree), "--no-progress", "--no-cache", "-f", "json",
                   "--ray", cluster.address]
            result[n] = statistics.median(timed(cmd, env)[0] for _ in range(reps))
        finally:
            cluster.shutdown()
    out.write_text(json.dumps(result))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=800)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ray-nodes", default="1,2,4")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--in-process", action="store_true",
                    help="also time modelwarden.scan(DIR) inside one process (no start-up), serial and pool")
    ap.add_argument("--compare", metavar="SRC", default=None,
                    help="also run every series with this source tree (e.g. the code before a change), interleaved")
    ap.add_argument("--_ray")
    ap.add_argument("--_out")
    args = ap.parse_args()
    nodes = [int(x) for x in args.ray_nodes.split(",") if x]
    if args._ray:
        _ray_inside(Path(args._ray), nodes, args.reps, Path(args._out))
        return 0
    work = ROOT / "bench" / ".work"
    work.mkdir(parents=True, exist_ok=True)
    tree = build(args.models, work)
    trees = {"": ROOT / "src"}
    if args.compare:
        trees["old: "] = Path(args.compare).resolve()
    envs = {tag: bench_env(src) for tag, src in trees.items()}
    for env in envs.values():  # untimed: compiles each tree's bytecode into the bench's cache
        timed([sys.executable, "-m", "modelwarden", "scan", str(tree / "m00000"), "--no-progress", "-f", "json"], env)
    load_before = os.getloadavg()[0]
    series: dict[str, list[float]] = {}
    for _ in range(args.reps):
        for tag, env in envs.items():  # interleaved: background noise hits old and new alike
            cache = Path(tempfile.mkdtemp(prefix="mw-bench-cache-"))
            try:
                results = whole_process(tree, args.models, env, cache)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            if args.in_process:
                results.update(in_process(tree, args.models, env))
            for name, t in results.items():
                series.setdefault(tag + name, []).append(t)
    med = {k: statistics.median(v) for k, v in series.items()}
    if not args.no_ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("Ray not installed: Ray series skipped")
        else:
            env = envs[""]
            for n, t in ray_series(tree, nodes, args.reps, env).items():
                med[f"ray, {n} node(s) x 1 CPU"] = t
    starts = startup(envs[""])
    load_after = os.getloadavg()[0]
    pool = f"pool (-j {os.cpu_count()})"
    print(f"{args.models} small SavedModels, {os.cpu_count()} cores ({hostinfo.cpu_model()}), load average {load_before:.2f} before, "
          f"{load_after:.2f} after, medians of {args.reps}; serial and pool without a results store "
          "(the default), the store rows with one")
    print(f"{'engine':34} {'seconds':>8} {'models/s':>9} {'vs serial':>10}")
    for name, t in med.items():
        if "cpu: " in name:
            continue
        tag = "old: " if name.startswith("old: ") else ""
        baseline = med[tag + ("in-process serial" if "in-process" in name else "serial (-j 1)")]
        print(f"{name:34} {t:8.2f} {args.models / t:9.0f} {baseline / t:9.2f}x")
    for tag in trees:
        for kind in ("", "in-process "):
            serial, par = med.get(f"{tag}{kind}serial" + ("" if kind else " (-j 1)")), med.get(f"{tag}{kind}{pool}")
            if serial and par:
                print(f"{tag}scaling {kind or 'whole-process '}-j 1 -> -j {os.cpu_count()}: {serial / par:.2f}x")
        serial, par, ceiling = (med.get(f"{tag}{k}") for k in ("in-process serial", f"in-process {pool}", CEILING))
        if serial and par and ceiling:
            print(f"{tag}machine ceiling: {os.cpu_count()} independent serial scans at once scale {serial / ceiling:.2f}x; "
                  f"the in-process pool reaches {ceiling / par:.2f} of that")
    for tag in trees:
        serial, par = med.get(f"{tag}cpu: in-process serial"), med.get(f"{tag}cpu: in-process {pool}")
        if serial and par:
            print(f"{tag}CPU per artifact, in-process: serial {serial / args.models * 1e3:.2f} ms, pool "
                  f"{par / args.models * 1e3:.2f} ms (parent and workers; {serial / par:.2f}x of serial's "
                  f"efficiency: the scaling with free cores)")
    bare, site = starts["python -S -c pass"], starts["python -c pass"]
    print(f"start-up (medians): python -S -c pass {bare * 1e3:.0f} ms, python -c pass {site * 1e3:.0f} ms (site and "
          f"the host's .pth files: {(site - bare) * 1e3:.0f} ms, much of it modules a scan imports anyway: compare "
          f"the 'pool, python -S' row), modelwarden --version {starts['modelwarden --version'] * 1e3:.0f} ms")
    if args.compare:
        print("new / old throughput (> 1: faster):")
        for name in (k for k in med if not k.startswith("old: ") and f"old: {k}" in med):
            print(f"  {name:32} {med['old: ' + name] / med[name]:.2f}x" + (" (CPU)" if "cpu: " in name else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
