"""JSON-lines access and audit log: who (token id), what (model, version, API), outcome.

Never logged: tokens, Authorization headers, request or response bodies, query strings.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, TextIO


class AuditLog:
    def __init__(self, path: str | None = None, static: dict[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._static = dict(static or {})  # fields on every line (e.g. the Ray Serve replica id)
        self._own = path is not None
        if path is not None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            self._f: TextIO = os.fdopen(fd, "a", buffering=1)
        else:
            self._f = sys.stderr

    def write(self, event: str, **fields: Any) -> None:
        rec = {"ts": round(time.time(), 3), "event": event, **self._static}
        rec.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(rec, separators=(",", ":"), default=str)
        with self._lock:
            try:
                self._f.write(line + "\n")
                self._f.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        if self._own:
            self._f.close()
