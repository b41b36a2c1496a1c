"""HTTP/1.1 connection guards uvicorn does not have: a header deadline, a connection cap,
ambiguous framing refused, and TF Serving's JSON error shape for parser-level errors.

* **Header timeout.** From the moment a connection opens (or a response completes on a
  keep-alive connection) the client has ``header_timeout`` seconds to send a complete
  request head; trickling bytes does not extend it (uvicorn's keep-alive timer restarts on
  every byte).  Then the connection is closed.
* **Connection cap.** Above ``max_connections`` open connections a new one gets a 503
  JSON reply and is closed at once (uvicorn's ``limit_concurrency`` answers 503 per
  request but keeps idle and half-sent connections open).
* **Framing.** A request with both ``Content-Length`` and ``Transfer-Encoding`` is a 400 and
  the connection is closed (RFC 9112 section 6.3: a server that cannot be sure of the
  framing must not keep the connection).
* **Errors.** Requests the parser refuses get ``{"error": ...}`` as JSON, like every other error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from modelwarden.server.codec import dumps


class _StrictConnection(h11.Connection):
    """h11 with RFC 9112's rule for ambiguous framing; ``on_request`` is called per request head."""

    on_request: Any = None
    last_error: str = ""

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = str(exc)[:200]
            raise
        if isinstance(event, h11.Request):
            names = {k.lower() for k, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                self.last_error = "both Content-Length and Transfer-Encoding: ambiguous framing (RFC 9112)"
                raise h11.RemoteProtocolError(self.last_error)
            if self.on_request is not None:
                self.on_request()
        return event


def _raw_response(status: int, reason: bytes, message: str) -> bytes:
    body = dumps({"error": message})
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
            % (status, reason, len(body)) + body)


class GuardedH11Protocol(H11Protocol):
    header_timeout: float = 10.0
    max_connections: int = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        incomplete = self.conn._max_incomplete_event_size  # noqa: SLF001 - same limit as uvicorn's
        self.conn = _StrictConnection(h11.SERVER, incomplete)
        self.conn.on_request = self._head_received
        self._head_timer: asyncio.TimerHandle | None = None

    # -- header deadline ---------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._head_received()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _head_received(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # nothing of ours is half-written
            self.transport.write(_raw_response(408, b"Request Timeout",
                                               f"request headers not received within {self.header_timeout:g} s"))
        self.transport.close()

    # -- connection lifecycle ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_raw_response(503, b"Service Unavailable",
                                          f"too many connections (limit {self.max_connections})"))
            transport.close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_received()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def send_400_response(self, msg: str) -> None:
        self._head_received()
        err = getattr(self.conn, "last_error", "")
        detail = f"{msg} ({err})" if err else msg
        self.transport.write(_raw_response(400, b"Bad Request", detail))
        self.transport.close()


def guarded_protocol(header_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"header_timeout": header_timeout, "max_connections": max_connections})
