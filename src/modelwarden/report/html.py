"""A self-contained HTML page per scan: summary, findings by artifact, call-graph pictures, errors.

No external resources and no JavaScript: inline CSS and inline SVG only.
Every string that came from an artifact is cleaned (control characters) and
HTML-escaped.  Output is bounded: at most ``MAX_FINDINGS`` findings are
listed, evidence values and messages are truncated, and each call-graph
picture is bounded by :mod:`modelwarden.report.svg_callgraph`.
The scan must be run with ``callgraphs=True`` for pictures to appear.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelwarden.analysis.interface import Finding, Severity
from modelwarden.report.interface import ArtifactSummary, CallGraphSketch, Renderer, Report
from modelwarden.report.svg_callgraph import SEVERITY_COLOR, attr, render as render_svg, summary as svg_summary

MAX_FINDINGS = 2000
MAX_TEXT = 2000
MAX_EVIDENCE = 40
MAX_GRAPHS = 50

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1f2933;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d9dee3;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#66727f}.mono,code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
table{border-collapse:collapse;width:100%;background:#fff}th,td{border:1px solid #e1e5ea;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f5;font-weight:600}td{overflow-wrap:anywhere;word-break:break-word}
.sev{display:inline-block;padding:1px 7px;border-radius:10px;color:#fff;font-size:12px;font-weight:600;text-transform:uppercase}
.counts span{margin-right:14px}.verdict{font-weight:600}.fail{color:#b00020}.pass{color:#2e7d32}
dl{margin:0}dt{font-weight:600;color:#52606d}dd{margin:0 0 4px 0}
details summary{cursor:pointer;color:#2f5d8a}figure{margin:10px 0;overflow:auto;max-height:80vh;border:1px solid #e1e5ea;background:#fff}
figcaption{padding:6px 8px;font-size:12.5px;color:#52606d;border-top:1px solid #e1e5ea}
svg.callgraph text{font:11px ui-monospace,Menlo,Consolas,monospace;fill:#1f2933}svg.callgraph .colhead{font-weight:600;fill:#52606d}
.errors li{margin-bottom:4px}
"""


def _t(text: object, limit: int = MAX_TEXT) -> str:
    s = str(text)
    if len(s) > limit:
        s = s[:limit] + f"… ({len(s) - limit} more characters)"
    return attr(s)


def _sev(sev: Severity) -> str:
    return f'<span class="sev" style="background:{SEVERITY_COLOR[sev]}">{sev.label}</span>'


def _where(f: Finding) -> str:
    loc = f.location
    parts = []
    if loc.file:
        parts.append(f"file {_t(loc.file, 300)}")
    if loc.graph:
        parts.append(f"graph {_t(loc.graph, 200)}")
    if loc.function:
        parts.append(f"function <code>{_t(loc.function, 300)}</code>")
    if loc.node:
        node = f"node <code>{_t(loc.node, 300)}</code>"
        parts.append(node + (f" ({_t(loc.op, 200)})" if loc.op else ""))
    elif loc.op:
        parts.append(f"op {_t(loc.op, 200)}")
    return " › ".join(parts)


def _call_path(f: Finding) -> str:
    loc = f.location
    if loc.call_path:
        return '<span class="mono">' + " → ".join(_t(p, 200) for p in loc.call_path[:60]) + (
            " → …" if len(loc.call_path) > 60 else "") + "</span>"
    if loc.reachability:
        return f'<span class="muted">{_t(loc.reachability, 200)}</span>'
    return ""


def _evidence(f: Finding) -> str:
    if not f.evidence:
        return ""
    items = list(f.evidence.items())
    rows = "".join(f"<dt>{_t(k, 100)}</dt><dd class=\"mono\">{_t(v, 500)}</dd>" for k, v in items[:MAX_EVIDENCE])
    more = f"<dd class=\"muted\">… {len(items) - MAX_EVIDENCE} more</dd>" if len(items) > MAX_EVIDENCE else ""
    return f"<details><summary>{len(items)} item{'s' if len(items) != 1 else ''}</summary><dl>{rows}{more}</dl></details>"


def _finding_row(f: Finding) -> str:
    where = _where(f)
    cap = f" <span class=\"muted\">[{_t(f.capability, 100)}]</span>" if f.capability else ""
    return (
        f"<tr><td>{_sev(f.severity)}</td><td class=\"mono\">{_t(f.rule_id, 40)}{cap}</td>"
        f"<td>{_t(f.message)}" + (f"<br><span class=\"muted\">{where}</span>" if where else "") + "</td>"
        f"<td>{_call_path(f)}</td><td>{_evidence(f)}</td><td>{_t(f.remediation, 1000)}</td></tr>"
    )


def _table(findings: Iterable[Finding]) -> str:
    rows = "".join(_finding_row(f) for f in findings)
    return ("<table><thead><tr><th>severity</th><th>rule</th><th>finding</th><th>call path</th><th>evidence</th>"
            f"<th>remediation</th></tr></thead><tbody>{rows}</tbody></table>")


def _artifact_head(a: ArtifactSummary | None, name: str) -> str:
    bits = []
    if a is not None:
        bits.append(_t(a.format, 40))
        if a.graphs or a.functions or a.nodes:
            bits.append(f"{a.graphs} graph(s) · {a.functions} function(s) · {a.nodes} node(s)")
    return f"<h2>{_t(name, 500)}</h2>" + (f'<p class="muted">{" · ".join(bits)}</p>' if bits else "")


def _figure(sketch: CallGraphSketch, findings: list[Finding]) -> str:
    svg = render_svg(sketch, findings)
    cap = f"call graph of {_t(sketch.graph, 200)}: {attr(svg_summary(sketch, findings))}"
    return f"<figure>{svg}<figcaption>{cap}</figcaption></figure>"


def _skipped_section(report: Report, verbose: bool) -> str:
    """Files the directory walk did not scan: counts per reason, every name with ``verbose``."""
    if not report.skipped:
        return ""
    reasons = ", ".join(f"{n} {_t(r, 200)}" for r, n in report.skipped_reasons().items())
    out = f"<h2>Not scanned</h2><p>{len(report.skipped)} file(s): {reasons}</p>"
    if not verbose:
        return out + '<p class="muted">--verbose lists them.</p>'
    return out + '<ul class="errors">' + "".join(
        f"<li><code>{_t(s.path, 500)}</code>: {_t(s.reason, 200)}</li>" for s in report.skipped[:MAX_FINDINGS]) + (
        f'<li class="muted">… {len(report.skipped) - MAX_FINDINGS} more</li>' if len(report.skipped) > MAX_FINDINGS
        else "") + "</ul>"


class HtmlRenderer(Renderer):
    name = "html"

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose  # list every file that was not scanned

    def render(self, report: Report) -> str:
        counts = report.counts()
        failing = report.failing()
        verdict = (f'<span class="verdict fail">{len(failing)} finding(s) at or above {report.fail_on.label}</span>'
                   if failing else f'<span class="verdict pass">nothing at or above {report.fail_on.label}</span>')
        if report.empty:
            verdict = (f'<span class="verdict {"pass" if report.allow_empty else "fail"}">no model artifacts found'
                       + ("" if report.allow_empty else " (exit 4)") + "</span>")
        if report.errors:
            verdict += f' · <span class="verdict fail">{len(report.errors)} input(s) could not be read</span>'
        parts = [
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            '<meta name="viewport" content="width=device-width,initial-scale=1">',
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
            f"<title>modelwarden scan report</title><style>{CSS}</style></head><body>",
            "<h1>modelwarden scan report</h1>",
            f'<p class="muted">modelwarden {_t(report.tool_version, 40)} · policy {_t(report.policy, 100)} · '
            f"{len(report.artifacts)} artifact(s) · {report.duration_s:.2f} s</p>",
            f"<p>{verdict}</p>",
            '<p class="counts">' + "".join(
                f"<span>{_sev(s)} {counts[s.label]}</span>" for s in sorted(Severity, reverse=True)) + (
                f"<span class=\"muted\">{len(report.suppressed)} suppressed by policy</span>" if report.suppressed else ""
            ) + "</p>",
        ]
        if report.inputs:
            parts.append('<p class="muted">inputs: ' + ", ".join(f"<code>{_t(p, 300)}</code>" for p in report.inputs[:50])
                         + (" …" if len(report.inputs) > 50 else "") + "</p>")

        summaries = {a.display: a for a in report.artifacts}
        by_artifact: dict[str, list[Finding]] = {}
        for f in report.findings:
            by_artifact.setdefault(f.location.artifact, []).append(f)
        sketches: dict[str, list[CallGraphSketch]] = {}
        for s in report.callgraphs:
            sketches.setdefault(s.artifact, []).append(s)
        names = list(dict.fromkeys([*summaries, *by_artifact, *sketches]))
        listed = 0
        graphs = 0
        for name in names:
            parts.append(_artifact_head(summaries.get(name), name))
            fs = by_artifact.get(name, [])
            room = max(0, MAX_FINDINGS - listed)
            if fs:
                parts.append(_table(fs[:room]))
                if len(fs) > room:
                    parts.append(f'<p class="muted">{len(fs) - room} more finding(s) not listed (report limit); '
                                 "use --format json for all of them.</p>")
                listed += min(len(fs), room)
            else:
                parts.append('<p class="pass">no findings</p>')
            for sketch in sketches.get(name, []):
                if graphs >= MAX_GRAPHS:
                    break
                graphs += 1
                mine = [f for f in fs if f.location.graph == sketch.graph]
                parts.append(_figure(sketch, mine))
        if report.errors:
            parts.append("<h2>Errors</h2><ul class=\"errors\">" + "".join(
                f"<li><code>{_t(e.path, 500)}</code>: {_t(e.message, 1000)}</li>" for e in report.errors[:500])
                + "</ul>")
        parts.append(_skipped_section(report, self.verbose))
        parts.append("</body></html>\n")
        return "".join(parts)
