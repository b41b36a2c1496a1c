"""The HTML report: self-contained, well-formed, escaped, bounded, flagged paths highlighted."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from modelwarden.analysis.interface import Finding, Location, Severity
from modelwarden.report.html import HtmlRenderer
from modelwarden.report.interface import ArtifactSummary, CallGraphSketch, Report, ScanError
from modelwarden.report.svg_callgraph import path_functions, render

SVG_NS = "{http://www.w3.org/2000/svg}"
VOID = {"meta", "br", "link", "img", "hr", "input", "col", "area", "base", "wbr", "source", "track"}
HOSTILE = [
    "<script>alert(1)</script>",
    'quote"s\'and&amp;',
    "x" * 5000,
    "ünïcödé — 関数 \u202eevil",
    "ctrl\x1b[31m\x00nul",
]


class StrictHTML(HTMLParser):
    """Checks every non-void element is closed in order; collects tags and external references."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.refs: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href") or (k == "style" and v and "url(" in v):
                self.refs.append(f"{k}={v}")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
            return
        self.stack.pop()


def check_html(text: str) -> StrictHTML:
    p = StrictHTML()
    p.feed(text)
    p.close()
    assert not p.errors, p.errors[:5]
    assert p.stack == [], p.stack
    assert "script" not in p.tags and "iframe" not in p.tags and "object" not in p.tags
    assert not p.refs, p.refs  # self-contained: no external resources
    return p


def svgs(text: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", text, re.S)]


def finding(artifact: str, graph: str, path: tuple[str, ...], function: str, sev: Severity = Severity.HIGH,
            message: str = "reads files") -> Finding:
    return Finding("MW101", sev, message, Location(artifact=artifact, graph=graph, function=function, node="n",
                                                    op="ReadFile", call_path=path, reachability=path[0] if path else ""),
                   remediation="reject", evidence={"path": "/etc/shadow"})


def report(sketches: tuple[CallGraphSketch, ...], findings: tuple[Finding, ...], errors=()) -> Report:  # noqa: ANN001
    arts = tuple(ArtifactSummary(s.artifact, s.artifact, "tf-savedmodel", 1, len(s.functions), 0) for s in sketches)
    return Report("0.1", "default", Severity.MEDIUM, arts, findings, errors=tuple(errors), callgraphs=sketches)


def hostile_sketch() -> tuple[CallGraphSketch, Finding]:
    fns = ("<graph>", *HOSTILE, "__inference_safe_1")
    edges = tuple(("<graph>" if i == 0 else HOSTILE[i - 1], HOSTILE[i], f"call{i}<b>") for i in range(len(HOSTILE)))
    entries = (("signature:<img src=x onerror=alert(1)>", "<graph>"), ("object-method:\"m\"", "__inference_safe_1"))
    sk = CallGraphSketch("art<&>\"'", "g<1>", fns, edges, entries)
    path = ("signature:<img src=x onerror=alert(1)>", "call0<b>", HOSTILE[0], "call1", HOSTILE[1], "call2", HOSTILE[2])
    return sk, finding("art<&>\"'", "g<1>", path, HOSTILE[2], message="evil <script>alert('m')</script> & co")


def test_path_functions_follow_callgraph_convention() -> None:
    assert path_functions(("signature:s", "PartitionedCall", "f1", "w[body]", "f2"), "<graph>") == ["<graph>", "f1", "f2"]
    assert path_functions(("object-method:root.f", "f1", "w[body]", "f2"), "<graph>") == ["f1", "f2"]
    assert path_functions(("graph:graph",), "<graph>") == ["<graph>"]


def test_hostile_names_are_escaped_and_page_is_well_formed() -> None:
    sk, f = hostile_sketch()
    text = HtmlRenderer().render(report((sk,), (f,), [ScanError("<script>bad</script>", "x & <y>")]))
    check_html(text)
    assert "<script>" not in text and "<img" not in text
    assert "&lt;script&gt;" in text
    assert "\x1b" not in text and "\x00" not in text and "\u202e" not in text
    assert "関数" in text  # unicode survives
    (svg,) = svgs(text)
    labels = [t.text or "" for t in svg.iter(f"{SVG_NS}text")]
    assert any(lbl.startswith("xxxx") and lbl.endswith("…") and len(lbl) < 60 for lbl in labels)  # long name truncated
    titles = [t.text or "" for t in svg.iter(f"{SVG_NS}title")]
    assert "<script>alert(1)</script>" in titles  # parsed back: the escaped text is the original name


def test_flagged_path_is_highlighted() -> None:
    sk, f = hostile_sketch()
    svg = ET.fromstring(render(sk, [f]))
    flagged = {g.find(f"{SVG_NS}title").text for g in svg.iter(f"{SVG_NS}g") if "flagged" in g.get("class", "")}
    assert {"<graph>", HOSTILE[0], HOSTILE[1], HOSTILE[2]} <= flagged
    assert "signature:<img src=x onerror=alert(1)>" in flagged
    assert HOSTILE[3] not in flagged and "__inference_safe_1" not in flagged
    flagged_edges = [p for p in svg.iter(f"{SVG_NS}path") if "flagged" in p.get("class", "")]
    assert len(flagged_edges) == 4  # entry -> <graph> -> h0 -> h1 -> h2
    assert all("sev-high" in p.get("class", "") for p in flagged_edges)


def big_sketch(n: int = 10_000) -> tuple[CallGraphSketch, Finding]:
    fns = ["<graph>"] + [f"__inference_fn_{i}" for i in range(1, n + 1)]  # fns[i] is fn_i
    edges = [("<graph>", fns[1], "PartitionedCall")]
    for i in range(1, n):  # a tree: fn_i calls fn_{2i+1}, fn_{2i+2}; plus a chain for depth
        for c in (2 * i, 2 * i + 1):
            if c < n:
                edges.append((fns[i], fns[c], f"node_{c}"))
    entries = [("signature:serving_default", "<graph>")] + [(f"object-method:root.m{i}", fns[i]) for i in range(1, 200)]
    # the flagged function: deep in the tree
    target = 8191
    chain = []
    k = target
    while k >= 1:
        chain.append(k)
        k //= 2
    chain.reverse()  # 1, 2/3, ..., 8191
    path: tuple[str, ...] = ("signature:serving_default", "PartitionedCall", fns[chain[0]])
    for c in chain[1:]:
        path += (f"node_{c}", fns[c])
    sk = CallGraphSketch("big", "g", tuple(fns), tuple(edges), tuple(entries))
    return sk, finding("big", "g", path, fns[target])


def test_ten_thousand_function_graph_is_bounded_and_readable() -> None:
    sk, f = big_sketch()
    started = time.perf_counter()
    text = HtmlRenderer().render(report((sk,), (f,)))
    elapsed = time.perf_counter() - started
    check_html(text)
    assert len(text) < 400_000, len(text)
    assert elapsed < 5, elapsed
    (svg,) = svgs(text)
    boxes = [g for g in svg.iter(f"{SVG_NS}g") if g.get("class", "").startswith(("fn", "entry"))]
    assert len(boxes) <= 300
    flagged = {g.find(f"{SVG_NS}title").text for g in boxes if "flagged" in g.get("class", "")}
    assert "__inference_fn_8191" in flagged and "__inference_fn_1" in flagged
    collapsed = " ".join(t.text or "" for g in svg.iter(f"{SVG_NS}g") if g.get("class") == "collapsed"
                         for t in g.iter(f"{SVG_NS}text"))
    counts = [int(m) for m in re.findall(r"(\d+) more function", collapsed)]
    drawn_fns = sum(1 for g in boxes if g.get("class", "").startswith("fn"))
    assert sum(counts) + drawn_fns == 10_001  # every function is either drawn or counted
    assert "more entry points" in collapsed


def test_small_graph_drawn_whole_and_no_findings_renders() -> None:
    sk = CallGraphSketch("a", "g", ("<graph>", "f", "g2"), (("<graph>", "f", "c"), ("f", "g2", "d")),
                         (("signature:s", "<graph>"),))
    text = HtmlRenderer().render(report((sk,), ()))
    check_html(text)
    (svg,) = svgs(text)
    titles = {t.text for t in svg.iter(f"{SVG_NS}title")}
    assert {"<graph>", "f", "g2", "signature:s"} <= titles
    assert "no findings" in text and "flagged" not in ET.tostring(svg, encoding="unicode")


def test_real_scan_end_to_end(fixture_dir) -> None:  # noqa: ANN001
    from modelwarden.scanner import scan

    model = fixture_dir("build_tf_scan") / "models" / "read_file_nested"
    rep = scan(model, callgraphs=True)
    assert rep.callgraphs
    text = HtmlRenderer().render(rep)
    check_html(text)
    read = [f for f in rep.findings if f.rule_id == "MW101"]
    assert read
    (svg, *_) = svgs(text)
    flagged = {g.find(f"{SVG_NS}title").text for g in svg.iter(f"{SVG_NS}g") if "flagged" in g.get("class", "")}
    assert {f.location.function for f in read} <= flagged
    assert "signature:serving_default" in flagged


@pytest.mark.parametrize("n", [0, 1])
def test_empty_reports(n: int) -> None:
    rep = Report("0.1", "default", Severity.MEDIUM, (), (), errors=tuple(ScanError(f"p{i}", "bad") for i in range(n)))
    check_html(HtmlRenderer().render(rep))
