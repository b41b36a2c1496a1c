"""``modelwarden advisories OP|MODEL``: published TensorFlow security advisories for an op or a model.

For an op name: every advisory naming it, marking those that affect the
TensorFlow version in question.  For a model path: scan it and list, per op,
the advisories affecting that version.  Exit 0: nothing affects the version;
1: something does; 2: unreadable input or bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ADVISORY_RULES = ("MW700", "MW701", "MW702")


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="OP|MODEL", help="an op name (Conv2D, tfl:GATHER_ND) or a model path")
    p.add_argument("--tf-version", metavar="X", default="",
                   help="the TensorFlow release to judge (default: the installed one, else the model's)")
    p.add_argument("-f", "--format", choices=("text", "json"), default="text", help="output format (default: text)")


def _advisory_json(a: object, affects: bool | None) -> dict[str, object]:
    from modelwarden.advisories import Advisory

    assert isinstance(a, Advisory)
    return {
        "id": a.id, "cve": a.cve, "class": a.class_label, "title": a.title, "ops": list(a.ops),
        "fixed": [str(f) for f in a.fixed], "introduced": str(a.introduced) if a.introduced else None,
        "flags": list(a.flags), "url": a.url, "affects": affects,
    }


def _advisory_line(a: object, affects: bool | None) -> str:
    from modelwarden.advisories import Advisory
    from modelwarden.report import clean

    assert isinstance(a, Advisory)
    mark = {True: "AFFECTED", False: "fixed   ", None: "        "}[affects]
    title = f"  {a.title}" if a.title else ""
    return f"  {mark} {a.id}  {a.cve:<15} {a.class_label:<17} fixed in {a.fixed_text()}{clean(title)}"


def run(args: argparse.Namespace) -> int:
    from modelwarden import advisories as adv
    from modelwarden.errors import UsageError

    try:
        explicit = adv.Version.parse(args.tf_version) if args.tf_version else None
    except adv.VersionError as exc:
        raise UsageError(str(exc)) from None
    if not args.target.strip():
        raise UsageError("name an op (e.g. Conv2D) or a model path")
    if os.path.exists(args.target):
        return _model(args)
    if os.sep in args.target or args.target.endswith((".pb", ".tflite", ".keras", ".h5")):
        raise UsageError(f"{args.target}: no such file or directory")
    choice = adv.choose_version(args.tf_version, "", "")
    version = explicit or choice.version
    found = adv.for_op(args.target)
    rows = [(a, a.affects(version) if version else None) for a in found]
    hit = any(x for _, x in rows)
    if args.format == "json":
        out = {"op": args.target, "tf_version": str(version) if version else None, "version_source": choice.source,
               "advisories": [_advisory_json(a, x) for a, x in rows]}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 1 if hit else 0
    from modelwarden.report import clean

    op = clean(args.target)
    if not found:
        sys.stdout.write(f"no published TensorFlow advisory names op {op}\n")
        return 0
    head = f"{op}: {len(found)} advisor{'ies' if len(found) > 1 else 'y'}"
    if version:
        n = sum(1 for _, x in rows if x)
        head += f", {n} affecting TensorFlow {version} ({choice.source})"
    lines = [head] + [_advisory_line(a, x) for a, x in rows]
    if version and hit:
        target = adv.upgrade_target([a for a, x in rows if x], version)
        if target:
            lines.append(f"upgrade to TensorFlow {target} or later to fix all of them")
    sys.stdout.write("\n".join(lines) + "\n")
    return 1 if hit else 0


def _model(args: argparse.Namespace) -> int:
    from modelwarden import advisories as adv
    from modelwarden.report import clean
    from modelwarden.scanner import scan

    report = scan(args.target, tf_version=args.tf_version)
    by_id = {a.id: a for a in adv.load()}
    rows = []
    unjudged = []
    for f in report.findings:
        if f.rule_id not in ADVISORY_RULES:
            continue
        if f.rule_id == "MW702":
            unjudged.append(f)
            continue
        ids = [i.strip() for i in f.evidence.get("advisories", "").split(",") if i.strip()]
        rows.append((f, [by_id[i] for i in ids if i in by_id]))
    if args.format == "json":
        out = {
            "target": args.target,
            "ops": [
                {"op": f.evidence.get("op", ""), "artifact": f.location.artifact, "graph": f.location.graph,
                 "uses": int(f.evidence.get("uses", "0") or 0), "severity": f.severity.label,
                 "tf_version": f.evidence.get("tf_version", ""), "version_source": f.evidence.get("version_source", ""),
                 "upgrade_to": f.evidence.get("fixed_in", ""),
                 "advisories": [_advisory_json(a, True) for a in advs]}
                for f, advs in rows
            ],
            "not_judged": [{"artifact": f.location.artifact, "message": f.message} for f in unjudged],
            "errors": [{"path": e.path, "message": e.message} for e in report.errors],
        }
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        lines = []
        for f, advs in rows:
            ev = f.evidence
            lines.append(f"{clean(f.location.artifact)} › {clean(f.location.graph)}: {clean(ev.get('op', ''))} "
                         f"({ev.get('uses', '?')} uses) — {f.severity.label}, TensorFlow {ev.get('tf_version', '?')} "
                         f"({ev.get('version_source', '')})")
            lines += [_advisory_line(a, True) for a in advs]
            if ev.get("fixed_in"):
                lines.append(f"  upgrade to TensorFlow {ev['fixed_in']} or later")
        for f in unjudged:
            lines.append(f"{clean(f.location.artifact)}: {clean(f.message)}")
        for e in report.errors:
            lines.append(f"error: {clean(e.path)}: {clean(e.message)}")
        if not lines:
            lines.append(f"no op in {clean(args.target)} has an advisory affecting the TensorFlow in question")
        sys.stdout.write("\n".join(lines) + "\n")
    if report.errors:
        return 2
    return 1 if rows else 0
