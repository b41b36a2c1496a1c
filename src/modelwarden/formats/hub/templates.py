"""Chat templates: parse a Jinja template with Jinja2's own parser and record what it reads.

The template is never rendered.  :func:`template_facts` walks the AST Jinja builds
(``Environment().parse``) and records the global names it reads, every attribute and
constant subscript (``x.__class__``, ``x["__globals__"]``), the filters it applies,
``|attr()`` lookups whose name is computed, and other templates it pulls in.  Rules
decide what is dangerous.  Jinja2 is imported lazily, only when a template is found.
"""

from __future__ import annotations

from modelwarden.ir import TemplateFacts

MAX_TEMPLATE_CHARS = 1 << 20  # real chat templates are a few KB; llama.cpp has no limit but we do
MAX_AST_NODES = 200_000
_DEPTH_GUARD = 400


def template_facts(text: str, source: str, name: str = "default") -> TemplateFacts:
    """Facts about one template; parse failures are recorded in ``error``, never raised."""
    if len(text) > MAX_TEMPLATE_CHARS:
        return TemplateFacts(source, name, len(text), error=f"template is {len(text)} characters "
                             f"(more than {MAX_TEMPLATE_CHARS} are not analysed)")
    try:
        import jinja2
        import jinja2.ext
        from jinja2 import nodes
    except ImportError:  # pragma: no cover - jinja2 is a dependency
        return TemplateFacts(source, name, len(text), error="jinja2 is not installed: template not analysed")
    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols", _generation_extension(jinja2, nodes)])
    try:
        tree = env.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        return TemplateFacts(source, name, len(text), error=f"line {exc.lineno}: {exc.message}")
    except (RecursionError, MemoryError, ValueError, TypeError) as exc:
        return TemplateFacts(source, name, len(text), error=f"template cannot be parsed ({type(exc).__name__})")
    return _walk(tree, nodes, source, name, len(text))


def _generation_extension(jinja2, nodes):
    """transformers' ``{% generation %}...{% endgeneration %}`` block (its AssistantTracker), parse-only."""

    class Generation(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    return Generation


def _walk(tree, nodes, source: str, name: str, size: int) -> TemplateFacts:
    read: dict[str, None] = {}
    stored: set[str] = set()
    attrs: dict[str, None] = {}
    filters: dict[str, None] = {}
    dynamic: dict[str, None] = {}
    loads: dict[str, None] = {}
    stack = [(tree, 0)]
    seen = 0
    error = ""
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_AST_NODES or depth > _DEPTH_GUARD:
            error = "template too large or deep: analysis stopped early"
            break
        if isinstance(node, nodes.Name):
            (stored.add(node.name) if node.ctx in ("store", "param") else read.setdefault(node.name))
        elif isinstance(node, nodes.Getattr):
            attrs.setdefault(node.attr)
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            attrs.setdefault(node.arg.value)
        elif isinstance(node, nodes.Filter) and node.name:
            filters.setdefault(node.name)
            if node.name == "attr" and node.args:
                arg = node.args[0]
                if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
                    attrs.setdefault(arg.value)
                else:
                    dynamic.setdefault(_render(arg, nodes))
        elif isinstance(node, (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
            loads.setdefault(_render(node.template, nodes))
        for child in node.iter_child_nodes():
            stack.append((child, depth + 1))
    names = tuple(n for n in read if n not in stored)
    return TemplateFacts(source, name, size, names, tuple(attrs), tuple(filters), tuple(dynamic), tuple(loads),
                         error)


def _render(node, nodes) -> str:
    """A short human rendering of an expression node."""
    if isinstance(node, nodes.Const):
        return repr(node.value)[:80]
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        return f"{_render(node.node, nodes)}.{node.attr}"[:80]
    return f"<{type(node).__name__.lower()}>"


def templates_in(value: object, source: str) -> list[tuple[str, str]]:
    """``(name, text)`` of the chat templates in a ``chat_template`` value: a string, or
    transformers' list of ``{"name": ..., "template": ...}``."""
    if isinstance(value, str):
        return [("default", value)]
    out = []
    if isinstance(value, list):
        for i, item in enumerate(value[:1000]):
            if isinstance(item, dict) and isinstance(item.get("template"), str):
                out.append((str(item.get("name") or f"#{i}")[:200], item["template"]))
    return out
