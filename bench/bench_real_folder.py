#!/usr/bin/env python3
"""Scan a real folder the way a new user would and print every finding and error (not in CI).

    python bench/bench_real_folder.py                 # the site-packages holding TensorFlow
    python bench/bench_real_folder.py DIR [DIR ...]
    python bench/bench_real_folder.py --fresh-venv bench/.work/realvenv   # a new venv first

The default folder is the installed site-packages with TensorFlow, NumPy, scikit-learn
and joblib (issue 10: a virtual environment is where users point the scanner first).
``--fresh-venv`` creates a virtual environment and installs those four packages into it
with pip before scanning it.  The scan is one real ``python -m modelwarden scan --format
json`` process; the script prints the number of files walked, artifacts, the wall time,
then every error and every finding grouped by rule.  Target: zero errors, and only
findings a reviewer agrees are true (bench/README.md lists each remaining one and why).
Exit status: 0 when the scan reported no errors, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tensorflow-cpu", "numpy", "scikit-learn", "joblib")


def default_folder() -> str:
    return sysconfig.get_paths()["purelib"]


def fresh_venv(path: Path) -> str:
    """A new venv with the four packages installed by pip; returns its site-packages."""
    if not (path / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    out = subprocess.run([str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def count_files(folders: list[str]) -> int:
    return sum(len(files) for f in folders for _, _, files in os.walk(f))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*", help="folders to scan (default: this interpreter's site-packages)")
    ap.add_argument("--fresh-venv", type=Path, help="create (or reuse) a venv here with " + ", ".join(PACKAGES))
    ap.add_argument("--policy", default="default")
    args = ap.parse_args()
    folders = list(args.folders) or [fresh_venv(args.fresh_venv) if args.fresh_venv else default_folder()]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), NO_COLOR="1")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "modelwarden", "scan", "--format", "json", "--no-progress",
                           "--policy", args.policy, *folders], capture_output=True, text=True, env=env)
    wall = time.monotonic() - start
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        print(f"scan did not produce JSON (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return 1
    print(f"folders: {', '.join(folders)}")
    print(f"files walked: {count_files(folders)}  artifacts: {len(report['artifacts'])}  "
          f"wall: {wall:.1f} s  exit: {proc.returncode}")
    formats = collections.Counter(a["format"] for a in report["artifacts"])
    print("artifacts by format: " + ", ".join(f"{k} {v}" for k, v in formats.most_common()))
    print(f"\nerrors: {len(report['errors'])}")
    for e in report["errors"]:
        print(f"  ERROR {e['path']}: {e['message']}")
    by_rule: dict[str, list[dict]] = collections.defaultdict(list)
    for f in report["findings"]:
        by_rule[f"{f['severity']:<8} {f['rule_id']} {f['rule_name']}"].append(f)
    print(f"\nfindings: {len(report['findings'])} " + json.dumps(report["counts"]))
    for key in sorted(by_rule, key=lambda k: (-len(by_rule[k]), k)):
        print(f"\n  {key}: {len(by_rule[key])}")
        for f in by_rule[key]:
            where = f["location"].get("artifact") or f["location"].get("file", "")
            print(f"    {where}: {f['message'][:220]}")
    return 0 if not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
