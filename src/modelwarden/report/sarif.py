"""SARIF 2.1.0 output (one run) for code-scanning dashboards.

Every registered rule is described in ``tool.driver.rules``; each finding is a
result with a physical location (the artifact file) and logical locations
(graph, function, node).  Suppressed findings are results with an
``external`` suppression carrying the policy's justification; unreadable
inputs are ``toolExecutionNotifications``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from modelwarden.analysis.interface import Finding, RuleMeta, Severity
from modelwarden.report import clean, jsontext
from modelwarden.report.interface import Renderer, Report

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
INFORMATION_URI = "https://github.com/modelwarden/modelwarden"
FINGERPRINT_KEY = "modelwarden/v1"

LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
# GitHub code scanning buckets: >= 9.0 critical, 7.0-8.9 high, 4.0-6.9 medium, 0.1-3.9 low.
SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}


def _s(value: object) -> str:
    return clean(value, newlines=True)


def artifact_uri(artifact: str, file: str = "") -> str:
    """A URI reference for ``artifact`` (joined with ``file`` inside a directory artifact).

    Relative paths stay relative (percent-encoded, ``/`` separators); absolute
    paths become ``file://`` URIs.
    """
    path = artifact.replace(os.sep, "/") if os.sep != "/" else artifact
    if file:
        file = file.replace(os.sep, "/") if os.sep != "/" else file
        if not (path == file or path.endswith("/" + file)):
            path = path.rstrip("/") + "/" + file.lstrip("/")
    path = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    encoded = quote(path, safe="/")
    if path.startswith("/"):
        return "file://" + encoded
    return encoded or "."


def rule_descriptor(meta: RuleMeta) -> dict[str, Any]:
    desc = meta.description or meta.summary
    help_text = meta.remediation or meta.summary
    out: dict[str, Any] = {
        "id": meta.id,
        "name": meta.name,
        "shortDescription": {"text": meta.summary},
        "fullDescription": {"text": desc},
        "help": {"text": help_text},
        "defaultConfiguration": {"level": LEVEL[meta.severity]},
        "properties": {
            "security-severity": SECURITY_SEVERITY[meta.severity],
            "severity": meta.severity.label,
            "tags": ["security", *meta.tags],
            "precision": "high",
        },
    }
    if meta.formats:
        out["properties"]["formats"] = list(meta.formats)
    return out


def _logical_locations(f: Finding) -> list[dict[str, Any]]:
    loc = f.location
    out: list[dict[str, Any]] = []
    parts: list[str] = []
    for value, kind in ((loc.graph, "module"), (loc.function, "function"), (loc.node, "member")):
        if value:
            parts.append(_s(value))
            out.append({"name": _s(value), "fullyQualifiedName": "/".join(parts), "kind": kind})
    return out


def _result(f: Finding, rule_index: dict[str, int]) -> dict[str, Any]:
    loc = f.location
    location: dict[str, Any] = {
        "physicalLocation": {"artifactLocation": {"uri": artifact_uri(loc.artifact, loc.file)}},
    }
    logical = _logical_locations(f)
    if logical:
        location["logicalLocations"] = logical
    props: dict[str, Any] = {"severity": f.severity.label}
    if f.capability:
        props["capability"] = _s(f.capability)
    if loc.op:
        props["op"] = _s(loc.op)
    if loc.call_path:
        props["callPath"] = [_s(p) for p in loc.call_path]
    if loc.reachability:
        props["reachability"] = _s(loc.reachability)
    if f.evidence:
        props["evidence"] = {_s(k): _s(v) for k, v in f.evidence.items()}
    if f.remediation:
        props["remediation"] = _s(f.remediation)
    result: dict[str, Any] = {
        "ruleId": _s(f.rule_id),
        "ruleIndex": rule_index[f.rule_id],
        "level": LEVEL[f.severity],
        "message": {"text": _s(f.message) or _s(f.rule_id)},
        "locations": [location],
        "partialFingerprints": {FINGERPRINT_KEY: f.fingerprint},
        "properties": props,
    }
    if f.suppressed_by:
        result["suppressions"] = [{"kind": "external", "status": "accepted", "justification": _s(f.suppressed_by)}]
    return result


def sarif_dict(report: Report, verbose: bool = False) -> dict[str, Any]:
    from modelwarden import __version__
    from modelwarden.analysis import registry

    rules = [rule_descriptor(m) for m in registry.all_meta()]
    rule_index = {r["id"]: i for i, r in enumerate(rules)}
    for f in (*report.findings, *report.suppressed):
        if f.rule_id not in rule_index:  # a finding from a rule that is not registered
            rule_index[f.rule_id] = len(rules)
            rules.append({"id": _s(f.rule_id), "shortDescription": {"text": _s(f.rule_id)}})
    results = [_result(f, rule_index) for f in report.findings]
    for f in report.suppressed:
        # a suppressed finding always carries a suppression, even without a recorded reason
        r = _result(f, rule_index)
        r.setdefault("suppressions", [{"kind": "external", "status": "accepted"}])
        results.append(r)
    notifications = [
        {
            "level": "error",
            "message": {"text": f"{_s(e.path)}: {_s(e.message)}"},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": artifact_uri(e.path)}}}],
        }
        for e in report.errors
    ]
    notifications += _not_scanned_notifications(report, verbose)
    invocation: dict[str, Any] = {"executionSuccessful": not report.errors and not (report.empty and not report.allow_empty),
                                  "exitCode": report.exit_code}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    run = {
        "tool": {
            "driver": {
                "name": "modelwarden",
                "version": report.tool_version or __version__,
                "semanticVersion": report.tool_version or __version__,
                "informationUri": INFORMATION_URI,
                "rules": rules,
            }
        },
        "invocations": [invocation],
        "artifacts": [
            {
                "location": {"uri": artifact_uri(a.display)},
                "roles": ["analysisTarget"],
                "properties": {"format": _s(a.format), "graphs": a.graphs, "functions": a.functions, "nodes": a.nodes},
            }
            for a in report.artifacts
        ],
        "results": results,
        "columnKind": "unicodeCodePoints",
        "properties": {
            "policy": _s(report.policy),
            "failOn": report.fail_on.label,
            "counts": report.counts(),
            "inputs": [_s(i) for i in report.inputs],
            "skipped": len(report.skipped),
            "skippedReasons": report.skipped_reasons(),
        },
    }
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def _not_scanned_notifications(report: Report, verbose: bool) -> list[dict[str, Any]]:
    """An empty scan is a warning; files not scanned are one note with counts (one per file with ``verbose``)."""
    out: list[dict[str, Any]] = []
    if report.empty:
        out.append({"level": "note" if report.allow_empty else "warning",
                    "message": {"text": "no model artifacts found in: " + ", ".join(_s(i) for i in report.inputs[:50])}})
    if report.skipped:
        reasons = ", ".join(f"{n} {_s(r)}" for r, n in report.skipped_reasons().items())
        out.append({"level": "note", "message": {"text": f"{len(report.skipped)} file(s) not scanned: {reasons}"}})
    if verbose:
        out += [{"level": "note", "message": {"text": f"not scanned ({_s(s.reason)}): {_s(s.path)}"},
                 "locations": [{"physicalLocation": {"artifactLocation": {"uri": artifact_uri(s.path)}}}]}
                for s in report.skipped]
    return out


class SarifRenderer(Renderer):
    name = "sarif"

    def __init__(self, indent: int | None = 2, verbose: bool = False) -> None:
        self.indent = indent
        self.verbose = verbose  # one notification per file that was not scanned

    def render(self, report: Report) -> str:
        return jsontext.dumps(sarif_dict(report, self.verbose), self.indent) + "\n"
