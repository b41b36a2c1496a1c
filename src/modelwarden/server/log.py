"""JSON-lines access and audit log: who (token id), what (model, version, API), outcome.

Never logged: tokens, Authorization headers, request or response bodies, query strings.
Lines are ASCII: anything else a client sent (a path, a model name) is JSON-escaped.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, TextIO

import orjson


class AuditLog:
    def __init__(self, path: str | None = None, static: dict[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._static = dict(static or {})  # fields on every line (e.g. the Ray Serve replica id)
        self._own = path is not None
        self._fd = -1  # a file: one write(2) per line, no Python buffering (O_APPEND keeps lines whole)
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        self._f: TextIO = sys.stderr

    def write(self, event: str, **fields: Any) -> None:
        rec = {"ts": round(time.time(), 3), "event": event, **self._static}
        rec.update({k: v for k, v in fields.items() if v is not None})
        try:
            line = orjson.dumps(rec, default=str, option=orjson.OPT_APPEND_NEWLINE)
        except (TypeError, orjson.JSONEncodeError):  # e.g. a lone surrogate
            line = b""
        if not line or not line.isascii():  # lines stay ASCII (bidi overrides & co. escaped): the json module's form
            line = (json.dumps(rec, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            try:
                if self._fd >= 0:
                    os.write(self._fd, line)
                else:
                    self._f.write(line.decode("utf-8", "backslashreplace"))
                    self._f.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        if self._own and self._fd >= 0:
            with self._lock:
                os.close(self._fd)
                self._fd = -1
