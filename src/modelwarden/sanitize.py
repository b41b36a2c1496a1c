"""Text from untrusted sources (the sandboxed worker, model files) made safe to print or log.

A terminal interprets control characters: ``ESC [ 2 J`` clears the screen, ``ESC ] 52 ;``
writes the clipboard, ``CR`` and cursor movement forge status lines, bidi overrides make
text read differently than it is.  :func:`printable` turns every such character into a
visible escape (``\\x1b``, ``\\u202e``), so a whole escape sequence arrives as plain text.
Newlines and tabs are kept (error messages and tracebacks span lines).
"""

from __future__ import annotations

import re
import unicodedata

_SUSPECT = re.compile(r"[^\x20-\x7e\n\t]")  # fast path: plain ASCII text needs no work
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})  # controls, format (bidi), surrogates...


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    if code < 0xA0 or unicodedata.category(ch) in _ESCAPED_CATEGORIES:
        if code <= 0xFF:
            return f"\\x{code:02x}"
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return ch


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with C0/C1 controls, DEL, escape sequences and bidi/format characters made visible.

    ``limit``: the result keeps at most that many characters (escapes included) and then says
    how long the original was.
    """
    if not isinstance(text, str):
        text = str(text)
    total = len(text)
    if limit is not None:
        text = text[:limit]  # escaping only lengthens: never look at more than can be shown
    if _SUSPECT.search(text):
        text = _SUSPECT.sub(_escape, text)
    if limit is not None and (len(text) > limit or total > limit):
        text = text[:limit] + f"... [truncated, {total} characters in all]"
    return text
