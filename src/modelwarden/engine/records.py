"""ArtifactResult <-> plain JSON data, lossless, validated on the way back in.

Records cross process boundaries (pool workers, Ray tasks) and sit in the results store on
disk, so decoding treats them as untrusted: exact types, known keys, bounded sizes; anything
else is a :class:`RecordError`, which the caller turns into a re-scan or a scan error.

A record also names the rules of its findings (``names``: rule id -> name, from the registry of
the process that wrote it), so a pool's parent renders a JSON report without importing every
rule module (~50 ms at the end of a directory scan, on one core).
"""

from __future__ import annotations

import json
from typing import Any

from modelwarden.analysis.interface import Finding, Location, Severity
from modelwarden.engine.interface import ArtifactResult
from modelwarden.report.interface import ArtifactSummary, CallGraphSketch, ScanError

RECORD_VERSION = 2  # 2: names
MAX_RECORD_BYTES = 64 << 20
MAX_ITEMS = 1_000_000


class RecordError(ValueError):
    """A record that is not what this module writes."""


def _loc(loc: Location) -> list[Any]:
    return [loc.artifact, loc.file, loc.graph, loc.function, loc.node, loc.op, list(loc.call_path), loc.reachability]


def _finding(f: Finding) -> list[Any]:
    return [f.rule_id, int(f.severity), f.message, _loc(f.location), f.remediation, f.capability,
            dict(f.evidence), f.suppressed_by]


def _names(result: ArtifactResult) -> dict[str, str]:
    """Rule id -> name for the result's findings (the registry only for those it does not carry)."""
    from modelwarden.report.json_report import rule_name  # the registry: loaded already where findings are made

    names: dict[str, str] = {}
    for f in result.findings:
        rid = f.rule_id
        if rid not in names:
            names[rid] = rule_name(rid, result.rule_names)
    return names


def to_dict(result: ArtifactResult) -> dict[str, Any]:
    s = result.summary
    return {
        "v": RECORD_VERSION,
        "summary": None if s is None else [s.display, s.path, s.format, s.graphs, s.functions, s.nodes, dict(s.metadata)],
        "findings": [_finding(f) for f in result.findings],
        "errors": [[e.path, e.message] for e in result.errors],
        "sketches": [[k.artifact, k.graph, list(k.functions), [list(e) for e in k.edges], [list(e) for e in k.entries]]
                     for k in result.sketches],
        "names": _names(result),
    }


def dumps(result: ArtifactResult, *, ascii_only: bool = False) -> str:
    """The record as JSON text; ``ascii_only`` escapes everything outside ASCII, lone
    surrogates from non-UTF-8 file names included (for stores that only take valid UTF-8)."""
    return json.dumps(to_dict(result), separators=(",", ":"), ensure_ascii=ascii_only)


# -- decoding ----------------------------------------------------------------------------------------


def _str(v: object) -> str:
    if type(v) is not str:
        raise RecordError("expected a string")
    return v


def _int(v: object) -> int:
    if type(v) is not int:
        raise RecordError("expected an integer")
    return v


def _list(v: object, n: int | None = None) -> list:
    if type(v) is not list or len(v) > MAX_ITEMS or (n is not None and len(v) != n):
        raise RecordError("expected a list" + (f" of {n}" if n is not None else ""))
    return v


def _strmap(v: object) -> dict[str, str]:
    if type(v) is not dict or len(v) > MAX_ITEMS:
        raise RecordError("expected an object")
    return {_str(k): _str(x) for k, x in v.items()}


def _strs(v: object) -> tuple[str, ...]:
    return tuple(_str(x) for x in _list(v))


def _location(v: object) -> Location:
    a, file, graph, fn, node, op, path, reach = _list(v, 8)
    return Location(_str(a), _str(file), _str(graph), _str(fn), _str(node), _str(op), _strs(path), _str(reach))


def _finding_from(v: object) -> Finding:
    rule, sev, msg, loc, rem, cap, ev, sup = _list(v, 8)
    try:
        severity = Severity(_int(sev))
    except ValueError:
        raise RecordError("unknown severity") from None
    return Finding(_str(rule), severity, _str(msg), _location(loc), _str(rem), _str(cap), _strmap(ev), _str(sup))


_KEYS = {"v", "summary", "findings", "errors", "sketches", "names"}


def from_dict(d: object) -> ArtifactResult:
    if type(d) is not dict or d.get("v") != RECORD_VERSION or set(d) != _KEYS:
        raise RecordError("not a result record of this version")
    summary = None
    if d["summary"] is not None:
        disp, path, fmt, graphs, functions, nodes, meta = _list(d["summary"], 7)
        summary = ArtifactSummary(_str(disp), _str(path), _str(fmt), _int(graphs), _int(functions), _int(nodes),
                                  _strmap(meta))
    findings = tuple(_finding_from(f) for f in _list(d["findings"]))
    errors = tuple(ScanError(_str(p), _str(m)) for p, m in (_list(e, 2) for e in _list(d["errors"])))
    sketches = []
    for k in _list(d["sketches"]):
        art, graph, fns, edges, entries = _list(k, 5)
        sketches.append(CallGraphSketch(_str(art), _str(graph), _strs(fns),
                                        tuple(tuple(_str(x) for x in _list(e, 3)) for e in _list(edges)),  # type: ignore[misc]
                                        tuple(tuple(_str(x) for x in _list(e, 2)) for e in _list(entries))))  # type: ignore[misc]
    if summary is None and not errors:
        raise RecordError("a record without a summary must carry an error")
    names = _strmap(d["names"])
    if names.keys() != {f.rule_id for f in findings}:
        raise RecordError("rule names do not match the findings")
    return ArtifactResult(summary, findings, errors, tuple(sketches), rule_names=names)


def loads(text: str | bytes) -> ArtifactResult:
    if len(text) > MAX_RECORD_BYTES:
        raise RecordError("record too large")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RecordError(f"not JSON ({type(exc).__name__})") from None
    return from_dict(data)
