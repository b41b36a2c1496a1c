"""An inline SVG picture of one call graph, flagged call paths highlighted.

Layered layout: column 0 holds the entry points, column d the functions first
reached at BFS depth d from them; functions no entry reaches sit in a last
column.  A small graph is drawn whole.  A big one keeps only what matters:
functions on a flagged path, the entry points and the functions they enter
directly (capped); everything else becomes one "N more functions" box per
column.  The output size is bounded whatever the graph (``MAX_NODES`` boxes,
``MAX_EDGES`` edges, ``MAX_LABEL`` characters a label), and every string from
the artifact is cleaned and XML-escaped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from modelwarden.analysis.interface import Finding, Severity
from modelwarden.report import clean
from modelwarden.report.interface import CallGraphSketch

FULL_GRAPH = 60  # draw every function up to this many
MAX_NODES = 240
MAX_PER_COLUMN = 40
MAX_EDGES = 1200
MAX_ENTRIES = 24
MAX_LABEL = 42
MAX_FLAGGED_PATHS = 200
COL_W, ROW_H, BOX_W, BOX_H, PAD = 250, 30, 210, 22, 16
SEVERITY_COLOR = {
    Severity.CRITICAL: "#b00020",
    Severity.HIGH: "#d32f2f",
    Severity.MEDIUM: "#ef6c00",
    Severity.LOW: "#c9a200",
    Severity.INFO: "#607d8b",
}
UNREACHED = -1


def attr(text: object) -> str:
    """Escape for an XML/HTML attribute or text node (quotes included)."""
    return escape(clean(text), {'"': "&quot;", "'": "&#x27;"})


def short(text: object, limit: int = MAX_LABEL) -> str:
    s = clean(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def path_functions(call_path: tuple[str, ...], main: str) -> list[str]:
    """The functions along a finding's call path (see ``callgraph._bfs``).

    ``(entry,)`` is a top-level node; ``(entry, step, fn, step, fn...)`` starts
    in the top-level graph (odd length); ``(entry, fn, step, fn...)`` enters a
    function directly (even length).
    """
    if not call_path:
        return []
    if len(call_path) % 2 == 1:
        return [main, *call_path[2::2]]
    return list(call_path[1::2])


@dataclass
class _Layout:
    columns: dict[int, list[str]] = field(default_factory=dict)
    hidden: dict[int, int] = field(default_factory=dict)  # column -> collapsed count
    pos: dict[str, tuple[float, float]] = field(default_factory=dict)


def _depths(sketch: CallGraphSketch, succ: dict[str, list[str]]) -> dict[str, int]:
    depth: dict[str, int] = {}
    queue: deque[str] = deque()
    for _, target in sketch.entries:
        if target not in depth:
            depth[target] = 1
            queue.append(target)
    while queue:
        fn = queue.popleft()
        for callee in succ.get(fn, ()):
            if callee not in depth:
                depth[callee] = depth[fn] + 1
                queue.append(callee)
    return depth


def _flagged(sketch: CallGraphSketch, findings: Iterable[Finding]) -> tuple[dict[str, Severity], dict[tuple[str, str], Severity], dict[str, Severity]]:
    """Severity per flagged function, per flagged (caller, callee) edge and per flagged entry label."""
    main = sketch.functions[0] if sketch.functions else "<graph>"
    fns: dict[str, Severity] = {}
    edges: dict[tuple[str, str], Severity] = {}
    entries: dict[str, Severity] = {}
    seen_paths: set[tuple[str, ...]] = set()
    for f in findings:
        if f.severity < Severity.LOW:
            continue
        path = f.location.call_path
        if path in seen_paths and path:
            continue
        if len(seen_paths) >= MAX_FLAGGED_PATHS:
            break
        seen_paths.add(path)
        chain = path_functions(path, main) if path else ([f.location.function] if f.location.function else [])
        if f.location.function and (not chain or chain[-1] != f.location.function):
            chain.append(f.location.function)
        if path:
            entries[path[0]] = max(entries.get(path[0], Severity.INFO), f.severity)
            if chain:
                edges[("\x00entry:" + path[0], chain[0])] = max(edges.get(("\x00entry:" + path[0], chain[0]), Severity.INFO), f.severity)
        for a, b in zip(chain, chain[1:]):
            edges[(a, b)] = max(edges.get((a, b), Severity.INFO), f.severity)
        for fn in chain:
            fns[fn] = max(fns.get(fn, Severity.INFO), f.severity)
    return fns, edges, entries


def render(sketch: CallGraphSketch, findings: Iterable[Finding]) -> str:
    """One ``<svg>`` element (no XML declaration) for ``sketch``."""
    functions = list(dict.fromkeys(sketch.functions))
    known = set(functions)
    succ: dict[str, list[str]] = {}
    for caller, callee, _ in sketch.edges:
        succ.setdefault(caller, []).append(callee)
    depth = _depths(sketch, succ)
    flagged_fns, flagged_edges, flagged_entries = _flagged(sketch, findings)
    full = len(functions) <= FULL_GRAPH

    # which entry labels to draw
    entry_targets: dict[str, list[str]] = {}
    for label, target in sketch.entries:
        entry_targets.setdefault(label, []).append(target)
    entry_labels = [e for e in entry_targets if e in flagged_entries]
    entry_labels += [e for e in entry_targets if e not in flagged_entries][: max(0, MAX_ENTRIES - len(entry_labels))]
    hidden_entries = len(entry_targets) - len(entry_labels)

    # which functions to draw: everything (small graph) or flagged + directly entered
    keep: dict[str, None] = {}
    for fn in flagged_fns:
        if fn in known:
            keep.setdefault(fn)
    for label in entry_labels:
        for t in entry_targets[label][:4]:
            keep.setdefault(t)
    if full:
        for fn in functions:
            keep.setdefault(fn)

    lay = _Layout()
    lay.columns[0] = ["\x00entry:" + e for e in entry_labels]
    if hidden_entries:
        lay.hidden[0] = hidden_entries
    last = max(depth.values(), default=0) + 1
    drawn = len(lay.columns[0])
    for fn in keep:
        col = depth.get(fn, last)
        column = lay.columns.setdefault(col, [])
        if drawn >= MAX_NODES or (len(column) >= MAX_PER_COLUMN and fn not in flagged_fns):
            lay.hidden[col] = lay.hidden.get(col, 0) + 1
            continue
        column.append(fn)
        drawn += 1
    for fn in functions:  # everything else: counted per column
        if fn not in keep:
            col = depth.get(fn, last)
            lay.hidden[col] = lay.hidden.get(col, 0) + 1

    cols = sorted(set(lay.columns) | set(lay.hidden))
    col_x = {c: PAD + i * COL_W for i, c in enumerate(cols)}
    rows = 0
    for c in cols:
        names = lay.columns.get(c, [])
        for r, name in enumerate(names):
            lay.pos[name] = (col_x[c], PAD + 20 + r * ROW_H)
        rows = max(rows, len(names) + (1 if lay.hidden.get(c) else 0))
    width = PAD * 2 + max(1, len(cols)) * COL_W
    height = PAD * 2 + 20 + max(1, rows) * ROW_H

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="callgraph" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="call graph of {attr(short(sketch.graph))}">',
    ]
    for c in cols:
        head = "entry points" if c == 0 else ("not reached" if c == last and c not in depth.values() else f"depth {c}")
        out.append(f'<text x="{col_x[c]}" y="{PAD + 8}" class="colhead">{head}</text>')

    # edges first (under the boxes)
    n_edges = 0
    drawn_edges: list[tuple[str, str, Severity | None]] = []
    for (a, b), sev in flagged_edges.items():
        if a in lay.pos and b in lay.pos:
            drawn_edges.append((a, b, sev))
    seen = {(a, b) for a, b, _ in drawn_edges}
    for label in entry_labels:
        for t in entry_targets[label]:
            key = ("\x00entry:" + label, t)
            if t in lay.pos and key not in seen:
                seen.add(key)
                drawn_edges.append((key[0], t, None))
    for caller, callee, _ in sketch.edges:
        if len(drawn_edges) >= MAX_EDGES:
            break
        if caller in lay.pos and callee in lay.pos and (caller, callee) not in seen:
            seen.add((caller, callee))
            drawn_edges.append((caller, callee, None))
    for a, b, sev in drawn_edges[:MAX_EDGES]:
        (x1, y1), (x2, y2) = lay.pos[a], lay.pos[b]
        x1 += BOX_W
        y1 += BOX_H / 2
        y2 += BOX_H / 2
        cls = f'edge flagged sev-{sev.label}' if sev is not None else "edge"
        stroke = SEVERITY_COLOR[sev] if sev is not None else "#b0b7bf"
        sw = 2.5 if sev is not None else 1
        mid = (x1 + x2) / 2
        out.append(f'<path class="{cls}" d="M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} {x2:.0f},{y2:.0f}" '
                   f'fill="none" stroke="{stroke}" stroke-width="{sw}"/>')
        n_edges += 1

    for name, (x, y) in lay.pos.items():
        is_entry = name.startswith("\x00entry:")
        label = name[len("\x00entry:"):] if is_entry else name
        sev = flagged_entries.get(label) if is_entry else flagged_fns.get(name)
        cls = "entry" if is_entry else "fn"
        if sev is not None:
            cls += f" flagged sev-{sev.label}"
        stroke = SEVERITY_COLOR[sev] if sev is not None else ("#37474f" if is_entry else "#90a4ae")
        fill = "#fdecea" if sev is not None and sev >= Severity.HIGH else ("#fff4e5" if sev is not None else
                                                                            ("#e8eaf6" if is_entry else "#ffffff"))
        out.append(
            f'<g class="{cls}"><title>{attr(label)}</title>'
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="4" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="{2 if sev is not None else 1}"/>'
            f'<text x="{x + 6}" y="{y + 15}">{attr(short(label, MAX_LABEL if not is_entry else 34))}</text></g>'
        )
    for c, n in sorted(lay.hidden.items()):
        x = col_x[c]
        y = PAD + 20 + len(lay.columns.get(c, [])) * ROW_H
        what = "entry point" if c == 0 else "function"
        out.append(
            f'<g class="collapsed"><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="4" fill="#f5f5f5" '
            f'stroke="#bdbdbd" stroke-dasharray="4 3"/><text x="{x + 6}" y="{y + 15}">'
            f'{n} more {what}{"s" if n != 1 else ""} (not flagged)</text></g>'
        )
    out.append("</svg>")
    return "".join(out)


def summary(sketch: CallGraphSketch, findings: Iterable[Finding]) -> str:
    """One line saying what the picture shows (for the figure caption)."""
    fns, _, _ = _flagged(sketch, findings)
    n = len(sketch.functions)
    return (f"{n} function{'s' if n != 1 else ''}, {len(sketch.edges)} call edge{'s' if len(sketch.edges) != 1 else ''}, "
            f"{len(dict.fromkeys(e for e, _ in sketch.entries))} entry point(s); {len(fns)} on a flagged path"
            + ("" if n <= FULL_GRAPH else " (functions not on a flagged path are collapsed)"))
