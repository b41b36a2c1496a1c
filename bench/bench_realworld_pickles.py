#!/usr/bin/env python3
"""Real-world calibration: scan the model files shipped inside pinned public wheels (not in CI).

    python bench/bench_realworld_pickles.py            # download (once), extract, scan, report
    python bench/bench_realworld_pickles.py --list     # the pinned wheels

Every wheel in :data:`WHEELS` is fetched with ``pip download --no-deps --only-binary=:all:``
into ``bench/.work/wheels`` (reused afterwards), unpacked into ``bench/.work/wheel-trees``,
and each tree is scanned by one real ``python -m modelwarden scan --format json`` process;
modelwarden finds the artifacts by content (pickles, joblib, NumPy, HDF5, archives ...).

These files are published test data and datasets of well-known projects: benign.  A
critical finding on one of them is a false critical (target: zero).  The report gives,
per wheel, the artifacts found and the findings by severity, then every finding at or
above ``--show`` (default: medium) with its rule, so each remaining one can be justified
(bench/README.md).  "Precision of the critical alarm" is the share of benign artifacts
without a critical finding.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work"
WHEELS = (
    "joblib==1.4.2",  # test data: pickles of every joblib layout, compressed and not
    "numpy==1.26.4",  # Python 2/3 test pickles and object arrays
    "scipy==1.13.1",  # test data: .npz with object arrays, MATLAB 7.3 (HDF5) files
    "scikit-learn==1.5.2",  # bundled datasets
    "gensim==4.3.3",  # test data: word2vec/doc2vec/LDA models saved by gensim (pickles + .npy)
    "networkx==3.3",  # gpickle test graphs
)
RANK = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


def fetch(spec: str) -> Path:
    dest = WORK / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_").lower()
    version = spec.split("==")[1]
    have = [p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{name}-{version}-")]
    if have:
        return have[0]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "-d", str(dest), spec], check=True)
    return next(p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{name}-{version}-"))


def unpack(wheel: Path) -> Path:
    tree = WORK / "wheel-trees" / wheel.stem
    if not (tree / ".complete").exists():
        tree.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                target = (tree / info.filename).resolve()
                if not str(target).startswith(str(tree.resolve()) + os.sep) or info.is_dir():
                    continue  # never trust member names, even from a public wheel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(info))
        (tree / ".complete").write_text("ok")
    return tree


def scan(tree: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), NO_COLOR="1")
    proc = subprocess.run([sys.executable, "-m", "modelwarden", "scan", "--format", "json", "--no-progress",
                           str(tree)], capture_output=True, text=True, env=env)
    return json.loads(proc.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--show", default="medium", choices=list(RANK))
    args = ap.parse_args()
    if args.list:
        print("\n".join(WHEELS))
        return 0
    total = collections.Counter()
    artifacts = errors = 0
    flagged_critical: set[str] = set()
    shown: list[str] = []
    print(f"{'wheel':<24} {'artifacts':>9} {'errors':>6}  findings by severity")
    for spec in WHEELS:
        report = scan(unpack(fetch(spec)))
        counts = collections.Counter(f["severity"] for f in report["findings"])
        total.update(counts)
        artifacts += len(report["artifacts"])
        errors += len(report["errors"])
        for f in report["findings"]:
            if f["severity"] == "critical":
                flagged_critical.add(f["location"]["artifact"])
            if RANK[f["severity"]] >= RANK[args.show]:
                shown.append(f"  {f['severity']:<8} {f['rule_id']} {spec}: {f['message'][:200]}")
        for e in report["errors"]:
            shown.append(f"  ERROR    {spec}: {e['path']}: {e['message'][:200]}")
        print(f"{spec:<24} {len(report['artifacts']):>9} {len(report['errors']):>6}  "
              + " ".join(f"{s} {counts[s]}" for s in ("critical", "high", "medium", "low", "info") if counts[s]))
    precision = 1.0 - len(flagged_critical) / max(artifacts, 1)
    print(f"\n{artifacts} benign artifacts, {errors} errors, false criticals: {total['critical']} "
          f"on {len(flagged_critical)} artifacts; critical-alarm precision on the benign set {precision:.1%}")
    print(f"findings: " + ", ".join(f"{s} {total[s]}" for s in ("critical", "high", "medium", "low", "info")))
    print(f"\nfindings at or above {args.show}:")
    print("\n".join(shown) or "  (none)")
    return 0 if not total["critical"] and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
