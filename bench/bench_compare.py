#!/usr/bin/env python3
"""Side-by-side: modelwarden, modelscan, picklescan, fickling and modelaudit on the same corpus.

    python bench/bench_compare.py                       # full corpus, table to stdout
    python bench/bench_compare.py --kinds gguf,hf       # a subset of manifest kinds
    python bench/bench_compare.py --markdown out.md     # also write the tables as Markdown
    python bench/bench_compare.py --json raw.json       # and every verdict and time

The corpus is the test fixtures with their manifests (what a correct scanner must do):
``build_other_formats`` (pickle, PyTorch, NumPy, ONNX, safetensors, archives, HF directory),
``build_hub_formats`` (GGUF, chat templates, Hugging Face and MLflow directories,
TorchScript) and ``build_hub_keras`` (Keras 3 loader attacks).  An entry is *malicious*
when the manifest expects findings at medium or above, *benign* when it must be clean,
*malformed* when a correct reader refuses it (exit 2).

Every tool runs as its own process per artifact (the way a user or CI runs it), its
wall-clock time measured in this run.  A tool *flags* an artifact when its exit code or
report says it found an issue; an *error* is a crash, a timeout or the tool saying it
could not scan (on malformed inputs a refusal is the right answer and is not counted as an
error).  Baselines are installed by this script into a separate virtualenv
(default ``/tmp/modelwarden-bench-venv``, versions pinned in
``bench/requirements-compare.txt``), never into the project's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))  # this checkout's rule registry, not an installed one
REQUIREMENTS = ROOT / "bench" / "requirements-compare.txt"
BUILDERS = ("build_other_formats", "build_hub_formats", "build_hub_keras")
TIMEOUT_S = 120.0
# kinds whose manifest "rules" include low-only rules on clean fixtures
SKIP_KINDS = frozenset({"mixed"})


@dataclass(frozen=True)
class Entry:
    path: Path
    kind: str
    expected: str  # "malicious", "benign", "malformed"


@dataclass(frozen=True)
class Outcome:
    verdict: str  # "flag", "pass", "error"
    seconds: float


def corpus(kinds: set[str] | None) -> list[Entry]:
    from tests.conftest import build_fixtures

    out: list[Entry] = []
    for builder in BUILDERS:
        base = build_fixtures(builder)
        for e in json.loads((base / "manifest.json").read_text())["fixtures"]:
            if e["kind"] in SKIP_KINDS or (kinds and e["kind"] not in kinds):
                continue
            out.append(Entry(base / e["file"], e["kind"], expectation(e)))
    return out


def expectation(e: dict) -> str:
    """malformed (a reader must refuse it), benign (must be clean), malicious (a rule at medium or above
    must fire) or low (only low/info rules: reported, but not a detection either way)."""
    from modelwarden.analysis.interface import Severity
    from modelwarden.analysis.registry import meta

    if e["error"]:
        return "malformed"
    if e["clean"] or not e["rules"]:  # no rule expected: a benign twin (even where not yet clean)
        return "benign"
    worst = max((m.severity for m in (meta(r) for r in e["rules"]) if m is not None), default=Severity.INFO)
    return "malicious" if worst >= Severity.MEDIUM else "low"


def ensure_venv(venv: Path) -> Path:
    if not (venv / "bin" / "modelaudit").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    return venv / "bin"


# No telemetry from the baselines (modelaudit reports usage to PostHog unless told not to).
QUIET_ENV = {"PROMPTFOO_DISABLE_TELEMETRY": "1", "NO_ANALYTICS": "1", "DO_NOT_TRACK": "1"}


def _run(cmd: list[str], env: dict | None = None) -> tuple[int, str, float]:
    env = dict(env or os.environ, **QUIET_ENV)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=tempfile.gettempdir(),
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return -1, "timeout", time.perf_counter() - t0
    return p.returncode, p.stdout + p.stderr, time.perf_counter() - t0


def modelwarden(bindir: Path, path: Path) -> Outcome:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    rc, _, s = _run([sys.executable, "-m", "modelwarden", "scan", str(path), "--no-progress", "--format", "json"], env)
    return Outcome({0: "pass", 1: "flag"}.get(rc, "error"), s)


def modelscan(bindir: Path, path: Path) -> Outcome:
    # exit 0 no issues, 1 issues, 2 scan errors, 3 no supported files, 4 usage
    rc, out, s = _run([str(bindir / "modelscan"), "-p", str(path)])
    return Outcome({0: "pass", 1: "flag", 3: "pass"}.get(rc, "error"), s)


def picklescan(bindir: Path, path: Path) -> Outcome:
    # exit 0 clean, 1 dangerous globals found, 2 scan error
    rc, out, s = _run([str(bindir / "picklescan"), "-p", str(path)])
    return Outcome({0: "pass", 1: "flag"}.get(rc, "error"), s)


def fickling(bindir: Path, path: Path) -> Outcome:
    # --check-safety: exit 0 when likely safe, 1 when it found something; one file at a time
    if path.is_dir():
        verdicts = [fickling(bindir, p) for p in sorted(path.rglob("*")) if p.is_file()][:200]
        seconds = sum(v.seconds for v in verdicts)
        worst = "flag" if any(v.verdict == "flag" for v in verdicts) else "pass"
        return Outcome(worst, seconds)
    rc, out, s = _run([str(bindir / "fickling"), "--check-safety", str(path)])
    if rc not in (0, 1) or "Traceback" in out:
        return Outcome("error" if rc not in (0, 1) else "pass", s)
    return Outcome("flag" if rc == 1 else "pass", s)


def modelaudit(bindir: Path, path: Path) -> Outcome:
    # exit 0 no issues, 1 issues found, 2 scan errors
    rc, out, s = _run([str(bindir / "modelaudit"), "scan", str(path), "--format", "json", "--no-cache"])
    return Outcome({0: "pass", 1: "flag"}.get(rc, "error"), s)


TOOLS = {"modelwarden": modelwarden, "modelscan": modelscan, "picklescan": picklescan, "fickling": fickling,
         "modelaudit": modelaudit}


def versions(bindir: Path) -> dict[str, str]:
    out = {}
    for name, dist in (("modelscan", "modelscan"), ("picklescan", "picklescan"), ("fickling", "fickling"),
                       ("modelaudit", "modelaudit")):
        rc, text, _ = _run([str(bindir / "python"), "-c", f"import importlib.metadata as m; print(m.version('{dist}'))"])
        out[name] = text.strip() if rc == 0 else "?"
    from modelwarden import __version__

    out["modelwarden"] = __version__
    return out


def summarise(entries: list[Entry], results: dict[str, list[Outcome]]) -> list[dict]:
    rows = []
    for tool, outs in results.items():
        pairs = list(zip(entries, outs))
        mal = [o for e, o in pairs if e.expected == "malicious"]
        ben = [o for e, o in pairs if e.expected == "benign"]
        bad = [o for e, o in pairs if e.expected == "malformed"]
        low = [o for e, o in pairs if e.expected == "low"]
        rows.append({
            "tool": tool,
            "detected": f"{sum(o.verdict == 'flag' for o in mal)}/{len(mal)}",
            "false_positives": f"{sum(o.verdict == 'flag' for o in ben)}/{len(ben)}",
            "errors": f"{sum(o.verdict == 'error' for e, o in pairs if e.expected != 'malformed')}/"
                      f"{sum(e.expected != 'malformed' for e in entries)}",
            "malformed_flagged_or_refused": f"{sum(o.verdict != 'pass' for o in bad)}/{len(bad)}",
            "low_only_flagged": f"{sum(o.verdict == 'flag' for o in low)}/{len(low)}",
            "median_s": f"{statistics.median(o.seconds for o in outs):.2f}",
            "total_s": f"{sum(o.seconds for o in outs):.1f}",
        })
    return rows


def by_kind(entries: list[Entry], results: dict[str, list[Outcome]]) -> list[dict]:
    rows = []
    for kind in sorted({e.kind for e in entries}):
        row = {"kind": kind, "malicious": sum(e.kind == kind and e.expected == "malicious" for e in entries),
               "benign": sum(e.kind == kind and e.expected == "benign" for e in entries)}
        for tool, outs in results.items():
            det = sum(e.kind == kind and e.expected == "malicious" and o.verdict == "flag" for e, o in zip(entries, outs))
            fp = sum(e.kind == kind and e.expected == "benign" and o.verdict == "flag" for e, o in zip(entries, outs))
            row[tool] = f"{det} / {fp}"
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def misses(entries: list[Entry], results: dict[str, list[Outcome]], tool: str = "modelwarden") -> list[str]:
    """Malicious or malformed artifacts some other tool flags and ``tool`` does not (the goal: none)."""
    out = []
    for i, e in enumerate(entries):
        if e.expected in ("benign", "low"):
            continue  # another tool flagging a benign file is its false positive, not our miss
        others = [t for t in results if t != tool and results[t][i].verdict == "flag"]
        handled = results[tool][i].verdict == "flag" or (e.expected == "malformed" and results[tool][i].verdict == "error")
        if others and not handled:
            out.append(f"{e.path.relative_to(e.path.parents[1])} ({e.expected}): flagged by {', '.join(others)}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default="/tmp/modelwarden-bench-venv", help="virtualenv for the baseline scanners")
    ap.add_argument("--kinds", default="", help="comma-separated manifest kinds (default: all)")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated tools")
    ap.add_argument("--markdown", default="", help="also write the tables to this Markdown file")
    ap.add_argument("--json", default="", help="also write every verdict and time to this JSON file")
    ap.add_argument("--from-json", default="", help="re-render the tables from a --json file instead of scanning")
    args = ap.parse_args()
    if args.from_json:
        rerender(Path(args.from_json), args.markdown)
        return
    bindir = ensure_venv(Path(args.venv))
    entries = corpus(set(args.kinds.split(",")) if args.kinds else None)
    tools = [t for t in args.tools.split(",") if t]
    results: dict[str, list[Outcome]] = {t: [] for t in tools}
    vers = versions(bindir)
    for i, e in enumerate(entries):
        for t in tools:  # interleaved, so machine noise hits every tool alike
            results[t].append(TOOLS[t](bindir, e.path))
        print(f"\r{i + 1}/{len(entries)} {e.path.name[:40]:40}", end="", file=sys.stderr, flush=True)
        if args.markdown:  # a partial table survives an interrupted run
            Path(args.markdown).write_text(report(entries[: i + 1], results, vers, len(entries)) + "\n")
        if args.json:
            Path(args.json).write_text(json.dumps(
                [{"artifact": str(x.path), "kind": x.kind, "expected": x.expected,
                  **{t: [results[t][j].verdict, round(results[t][j].seconds, 3)] for t in tools}}
                 for j, x in enumerate(entries[: i + 1])], indent=0))
    print(file=sys.stderr)
    print(report(entries, results, vers, len(entries)))


def rerender(raw: Path, md: str) -> None:
    """The tables of an earlier run (``--json``), with this version's classification of the corpus."""
    rows = json.loads(raw.read_text())
    manifests = {}
    for r in rows:
        base = Path(r["artifact"])
        while not (base / "manifest.json").exists():
            base = base.parent
        if base not in manifests:
            manifests[base] = {str(base / e["file"]): e for e in json.loads((base / "manifest.json").read_text())["fixtures"]}
    entries = [Entry(Path(r["artifact"]), r["kind"], expectation(manifests_of(manifests, r["artifact"])))
               for r in rows]
    tools = [t for t in TOOLS if t in rows[0]]
    results = {t: [Outcome(r[t][0], r[t][1]) for r in rows] for t in tools}
    text = report(entries, results, {}, len(entries))
    print(text)
    if md:
        Path(md).write_text(text + "\n")


def manifests_of(manifests: dict, artifact: str) -> dict:
    return next(m[artifact] for m in manifests.values() if artifact in m)


def report(entries: list[Entry], results: dict[str, list[Outcome]], vers: dict[str, str], total: int) -> str:
    summary = summarise(entries, results)
    for r in summary:
        r["tool"] = f"{r['tool']} {vers.get(r['tool'], '')}".strip()
    done = f" (partial: {len(entries)} of {total})" if len(entries) < total else ""
    return (f"{len(entries)} artifacts{done}; detected = malicious flagged, false_positives = benign flagged\n\n"
            + markdown(summary) + "\n\nper kind (malicious detected / benign flagged):\n\n"
            + markdown(by_kind(entries, results))
            + "\n\nmalicious or malformed, flagged by another tool and not by modelwarden:\n" + ("\n".join(misses(entries, results)) or "none"))


if __name__ == "__main__":
    main()
