#!/usr/bin/env python3
"""Pickle-family benchmark: modelwarden against picklescan and modelscan, measured in one run.

    python bench/bench_pickle.py            # detection table + 5 timing repetitions
    python bench/bench_pickle.py --reps 3

(1) Detection table: every tool scans the same fixture files (built by
    ``tests/fixtures/build_other_formats.py`` with real pickle/joblib/dill/NumPy and
    hand-built PyTorch layouts); a cell says whether the tool flagged the file
    (``FLAG``), passed it (``pass``) or failed on it (``error``).  ``expected``
    is what a correct scanner does.
(2) Whole-process time and peak RSS on a ~500 MB PyTorch zip checkpoint (a real
    tensor-rebuild pickle plus large storage members), tools interleaved, median.
    Goal (issue 6): modelwarden faster than both.

Baselines live in ``bench/.work/venv`` (see bench_scan.py; picklescan is added there from
``bench/requirements-baselines.txt``), never in the system.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_scan import ENV, HERE, ROOT, VENV, WORK, Series, compile_modelwarden, ensure_venv, measure, run_series  # noqa: E402

OTHER = WORK / "other_formats"
BIG = WORK / "big_checkpoint" / "pytorch_model.bin"
BIG_VERSION = "1"
TARGET_BYTES = 500 * 1024 * 1024
TABLE = [
    "data_p2.pkl", "data_p4.pkl", "numpy_arrays.pkl", "state_dict.pt", "legacy.pt", "arrays.joblib",
    "compressed.joblib", "numeric.npy", "arrays.npz",
    "os_system_p0.pkl", "os_system_p4.pkl", "eval.pkl", "memo_confusion.pkl", "stack_global_nonstring.pkl",
    "broken_after_payload.pkl", "getattr_chain.pkl", "marshal_function.pkl", "submodule.pkl",
    "dotted_traversal.pkl", "ext_code.pkl", "two_streams.pkl", "dill_lambda.pkl", "object_payload.joblib",
    "payload.joblib.gz", "payload.pt", "innocent_member.pt", "legacy_payload.pt", "object_payload.npy",
    "object_payload.npz", "pickle_in_zip.zip", "proto0_in_zip.zip", "nested_payload.zip", "pickle.tar.gz",
]


def ensure_baselines() -> tuple[Path, Path]:
    ensure_venv()
    picklescan = VENV / "bin" / "picklescan"
    if not picklescan.exists():
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "-r", str(HERE / "requirements-baselines.txt")],
                       check=True)
    return picklescan, VENV / "bin" / "modelscan"


def ensure_fixtures() -> None:
    if (OTHER / "manifest.json").exists():
        return
    subprocess.run([sys.executable, "-m", "tests.fixtures.build_other_formats", str(OTHER)], check=True, cwd=ROOT)


def ensure_big() -> None:
    stamp = BIG.parent / f".complete-v{BIG_VERSION}"
    if stamp.exists():
        return
    BIG.parent.mkdir(parents=True, exist_ok=True)
    print(f"building a ~{TARGET_BYTES >> 20} MB PyTorch zip checkpoint into {BIG} ...", flush=True)
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_build-big", str(BIG)], check=True, cwd=ROOT)
    stamp.write_text("ok")


def _build_big(path: Path) -> None:
    """A torch.save-layout zip: 48 layers of (1024 x 2560) float32 weights + biases, ~500 MB."""
    import zipfile

    import numpy as np

    from tests.fixtures.build_other_formats import torch_state_pickle

    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(48):
        shapes[f"layers.{i}.weight"] = (1024, 2560)
        shapes[f"layers.{i}.bias"] = (2560,)
    data, storages = torch_state_pickle(shapes)
    chunk = np.arange(1 << 20, dtype=np.float32).tobytes()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data)
        zf.writestr("archive/byteorder", "little")
        for st in storages:
            with zf.open(f"archive/data/{st.key}", "w", force_zip64=True) as fh:
                left = st.numel * 4
                while left:
                    n = min(left, len(chunk))
                    fh.write(chunk[:n])
                    left -= n
        zf.writestr("archive/version", "3\n")
        zf.writestr("archive/.data/serialization_id", "0123456789")


def _verdict(tool: str, rc: int, out: str) -> str:
    if tool == "modelwarden":
        return {0: "pass", 1: "FLAG"}.get(rc, "error")
    if tool == "picklescan":  # 0 clean, 1 dangerous globals, 2 scan error
        return {0: "pass", 1: "FLAG"}.get(rc, "error")
    # modelscan: 0 no issues, 1 issues, 2 error, 3 no supported files
    return {0: "pass", 1: "FLAG", 3: "skip"}.get(rc, "error")


def detection_table(picklescan: Path, modelscan: Path) -> list[dict]:
    manifest = {e["file"]: e for e in json.loads((OTHER / "manifest.json").read_text())["fixtures"]}
    rows = []
    for name in TABLE:
        path = OTHER / name
        e = manifest[name]
        row = {"file": name, "expected": "pass" if e["clean"] else "FLAG"}
        for tool, cmd in (("modelwarden", [sys.executable, "-m", "modelwarden", "scan", str(path), "--no-progress"]),
                          ("picklescan", [str(picklescan), "-p", str(path)]),
                          ("modelscan", [str(modelscan), "-p", str(path)])):
            p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
            row[tool] = _verdict(tool, p.returncode, p.stdout + p.stderr)
        rows.append(row)
        print(f"  {name:30s} expected {row['expected']:5s}  modelwarden {row['modelwarden']:5s}  "
              f"picklescan {row['picklescan']:5s}  modelscan {row['modelscan']:5s}", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-table", action="store_true")
    ap.add_argument("--_build-big", dest="build_big", default="")
    args = ap.parse_args()
    if args.build_big:
        _build_big(Path(args.build_big))
        return 0
    compile_modelwarden()
    picklescan, modelscan = ensure_baselines()
    ensure_fixtures()
    ensure_big()
    results: dict = {}
    if not args.no_table:
        print("detection (same files, each tool a separate process):", flush=True)
        rows = detection_table(picklescan, modelscan)
        results["detection"] = rows
        for tool in ("modelwarden", "picklescan", "modelscan"):
            right = sum(1 for r in rows if r[tool] == r["expected"])
            missed = [r["file"] for r in rows if r["expected"] == "FLAG" and r[tool] != "FLAG"]
            false = [r["file"] for r in rows if r["expected"] == "pass" and r[tool] != "pass"]
            print(f"  {tool:12s} correct {right}/{len(rows)}; missed {len(missed)}: {', '.join(missed) or '-'}; "
                  f"false alarms/errors on benign {len(false)}: {', '.join(false) or '-'}")
            results[f"{tool}_correct"] = right
    size = BIG.stat().st_size
    print(f"\ntiming: whole process on {BIG.name} ({size / 2**20:.0f} MiB), {args.reps} interleaved reps:", flush=True)
    series = [
        Series("modelwarden", [sys.executable, "-m", "modelwarden", "scan", str(BIG), "--format", "json",
                               "--no-progress"], (0,), artifacts=1),
        Series("picklescan", [str(picklescan), "-p", str(BIG)], (0,)),
        Series("modelscan", [str(modelscan), "-p", str(BIG)], (0,)),
    ]
    run_series(series, args.reps)
    mw = series[0]
    for s in series:
        if s.error:
            print(f"  {s.label}: ERROR {s.error}")
            continue
        ratio = s.wall / mw.wall if mw.wall else None
        print(f"  {s.label:12s} {s.wall:7.3f} s  peak RSS {s.rss:7.1f} MiB"
              + (f"  ({ratio:.1f}x modelwarden's time)" if s is not mw and ratio else ""))
        results[f"{s.label}_wall_s"] = s.wall
        results[f"{s.label}_rss_mib"] = s.rss
    ok = all(not s.error for s in series) and all(mw.wall < s.wall for s in series[1:])
    print(f"\ngoal (faster than both on the 500 MB checkpoint): {'MET' if ok else 'NOT MET'}")
    (WORK / "pickle.json").write_text(json.dumps(results, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
