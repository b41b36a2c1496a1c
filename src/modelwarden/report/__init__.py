"""Scan reports and their renderers (text, json, sarif, html).

``renderer("json")`` returns a :class:`~modelwarden.report.interface.Renderer`;
renderer modules are imported only when asked for (startup time matters).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

RENDERERS: dict[str, str] = {
    "text": "modelwarden.report.text:TextRenderer",
    "json": "modelwarden.report.json_report:JsonRenderer",
    "sarif": "modelwarden.report.sarif:SarifRenderer",
    "html": "modelwarden.report.html:HtmlRenderer",
}

# C0 controls except tab/newline, DEL, C1 controls, and bidi overrides/isolates:
# anything that lets a hostile node name rewrite the terminal or reorder text.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: object, *, newlines: bool = False) -> str:
    """``text`` made safe to print and encode: controls escaped, lone surrogates escaped.

    Strings from artifacts are hostile; this keeps them from carrying terminal
    escape sequences or invalid UTF-8 into a report.
    """
    s = text if isinstance(text, str) else str(text)
    if s.isascii() and s.isprintable():  # the common case: nothing to escape (no control, no surrogate)
        return s
    s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    pattern = _UNSAFE if newlines else _UNSAFE_OR_NEWLINE
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), s)


_UNSAFE_OR_NEWLINE = re.compile(_UNSAFE.pattern[:-1] + "\n\r\t]")


def renderer(name: str, **options: Any) -> Any:
    """The renderer for output format ``name`` (``text``, ``json``, ``sarif``)."""
    try:
        module, _, cls = RENDERERS[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown report format {name!r} (expected one of {', '.join(RENDERERS)})") from None
    return getattr(importlib.import_module(module), cls)(**options)


__all__ = ["RENDERERS", "clean", "renderer"]
