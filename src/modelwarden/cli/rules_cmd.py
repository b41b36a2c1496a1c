"""``modelwarden rules``: every rule with its stable id, default severity and summary."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.add_argument("-v", "--verbose", action="store_true", help="also show each rule's description and remediation")


def run(args: argparse.Namespace) -> int:
    from modelwarden.analysis import registry

    metas = registry.all_meta()
    if args.format == "json":
        rows = [
            {
                "id": m.id,
                "name": m.name,
                "severity": m.severity.label,
                "summary": m.summary,
                "description": m.description,
                "remediation": m.remediation,
                "formats": list(m.formats),
                "tags": list(m.tags),
            }
            for m in metas
        ]
        sys.stdout.write(json.dumps({"rules": rows}, indent=2) + "\n")
        return 0
    width = max((len(m.name) for m in metas), default=0)
    out: list[str] = []
    for m in metas:
        out.append(f"{m.id:<7} {m.severity.label:<8} {m.name:<{width}}  {m.summary}")
        if args.verbose:
            if m.description:
                out.append(f"        {m.description}")
            if m.remediation:
                out.append(f"        fix: {m.remediation}")
            if m.formats:
                out.append(f"        formats: {', '.join(m.formats)}")
            out.append("")
    sys.stdout.write("\n".join(out) + ("\n" if out else ""))
    return 0
