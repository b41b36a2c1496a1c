"""The JSON report: a stable, documented schema (``scan-report.schema.json``, docs/json-schema.md).

Compatibility promise: within one ``schema_version`` fields are only ever
added, never removed, renamed or retyped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelwarden.analysis.interface import Finding, Severity
from modelwarden.report import clean, jsontext
from modelwarden.report.interface import EXIT_EMPTY, ArtifactSummary, Renderer, Report

SCHEMA_VERSION = "1.1"
SCHEMA_ID = "urn:modelwarden:schema:scan-report:1"


_LABELS = {s: s.label for s in Severity}  # (an enum's name is a descriptor call per access)
_ZERO = {s.label: 0 for s in Severity}  # per-severity counts, copied per artifact


def _s(value: object) -> str:
    if type(value) is str and value.isascii() and value.isprintable():  # clean()'s own fast path, without its call
        return value
    return clean(value, newlines=True)


def verdict(report: Report) -> str:
    """``pass``, ``fail`` (findings at or above the threshold), ``error`` (unreadable input) or
    ``empty`` (no model artifact found, exit 4)."""
    return {0: "pass", 1: "fail", EXIT_EMPTY: "empty"}.get(report.exit_code, "error")


def skipped_dict(report: Report, verbose: bool) -> dict[str, Any]:
    """Files not scanned: the count and count per reason always, the names with ``verbose``."""
    return {
        "count": len(report.skipped),
        "reasons": {_s(r): n for r, n in report.skipped_reasons().items()},
        "files": [{"path": _s(s.path), "reason": _s(s.reason)} for s in report.skipped] if verbose else [],
    }


def rule_name(rule_id: str, known: Mapping[str, str] | None = None) -> str:
    """The rule's name: from ``known`` (a report's :attr:`~Report.rule_names`), else the registry."""
    if known and rule_id in known:
        return known[rule_id]
    from modelwarden.analysis import registry

    meta = registry.meta(rule_id)
    return meta.name if meta else ""


def finding_dict(f: Finding, *, suppressed: bool = False, names: Mapping[str, str] | None = None) -> dict[str, Any]:
    loc = f.location
    out: dict[str, Any] = {
        "rule_id": _s(f.rule_id),
        "rule_name": _s(rule_name(f.rule_id, names)),
        "severity": _LABELS[f.severity],
        "message": _s(f.message),
        "location": {
            "artifact": _s(loc.artifact),
            "file": _s(loc.file),
            "graph": _s(loc.graph),
            "function": _s(loc.function),
            "node": _s(loc.node),
            "op": _s(loc.op),
            "logical": _s(loc.logical()),
            "call_path": [_s(p) for p in loc.call_path],
            "reachability": _s(loc.reachability),
        },
        "evidence": {_s(k): _s(v) for k, v in f.evidence.items()},
        "remediation": _s(f.remediation),
        "capability": _s(f.capability),
        "fingerprint": f.fingerprint,
    }
    if suppressed:
        out["justification"] = _s(f.suppressed_by)
    return out


def _counts_by_artifact(report: Report) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Findings per artifact and severity, and suppressed findings per artifact (one pass each)."""
    counts: dict[str, dict[str, int]] = {}
    for f in report.findings:
        per = counts.get(f.location.artifact)
        if per is None:
            per = counts[f.location.artifact] = dict(_ZERO)
        per[_LABELS[f.severity]] += 1
    suppressed: dict[str, int] = {}
    for f in report.suppressed:
        suppressed[f.location.artifact] = suppressed.get(f.location.artifact, 0) + 1
    return counts, suppressed


def artifact_dict(a: ArtifactSummary, report: Report,
                  tallies: tuple[dict[str, dict[str, int]], dict[str, int]] | None = None) -> dict[str, Any]:
    counts, suppressed = tallies if tallies is not None else _counts_by_artifact(report)
    return {
        "display": _s(a.display),
        "path": _s(a.path),
        "format": _s(a.format),
        "graphs": a.graphs,
        "functions": a.functions,
        "nodes": a.nodes,
        "metadata": {_s(k): _s(v) for k, v in a.metadata.items()},
        "counts": dict(counts.get(a.display) or _ZERO),
        "suppressed": suppressed.get(a.display, 0),
    }


def report_dict(report: Report, verbose: bool = False) -> dict[str, Any]:
    """The report as plain JSON-ready data (schema ``SCHEMA_VERSION``)."""
    tallies = _counts_by_artifact(report)  # not per artifact: a directory of n models is not O(n²)
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "modelwarden", "version": report.tool_version},
        "policy": _s(report.policy),
        "fail_on": report.fail_on.label,
        "verdict": verdict(report),
        "exit_code": report.exit_code,
        "duration_s": round(float(report.duration_s), 6),
        "inputs": [_s(i) for i in report.inputs],
        "counts": report.counts(),
        "failing": len(report.failing()),
        "artifacts": [artifact_dict(a, report, tallies) for a in report.artifacts],
        "findings": [finding_dict(f, names=report.rule_names) for f in report.findings],
        "suppressed": [finding_dict(f, suppressed=True, names=report.rule_names) for f in report.suppressed],
        "errors": [{"path": _s(e.path), "message": _s(e.message)} for e in report.errors],
        "skipped": skipped_dict(report, verbose),
        **({"engine": dict(report.engine)} if report.engine else {}),
    }


class JsonRenderer(Renderer):
    name = "json"

    def __init__(self, indent: int | None = 2, verbose: bool = False) -> None:
        self.indent = indent
        self.verbose = verbose  # list every file that was not scanned

    def render(self, report: Report) -> str:
        return jsontext.dumps(report_dict(report, self.verbose), self.indent) + "\n"
