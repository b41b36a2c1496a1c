"""HTTP/1.1 connection guards uvicorn does not have: a header deadline, a connection cap,
a header size cap, ambiguous framing refused, and TF Serving's JSON error shape for
parser-level errors.

* **Header timeout.** From the moment a connection opens (or a response completes on a
  keep-alive connection) the client has ``header_timeout`` seconds to send a complete
  request head; trickling bytes does not extend it (uvicorn's keep-alive timer restarts on
  every byte).  Then the connection is closed.
* **Connection cap.** Above ``max_connections`` open connections a new one gets a 503
  JSON reply and is closed at once (uvicorn's ``limit_concurrency`` answers 503 per
  request but keeps idle and half-sent connections open).
* **Header size.** A request line plus headers above ``MAX_HEAD_BYTES`` (64 KiB) is a 400 and
  the connection is closed.
* **Framing.** A request with both ``Content-Length`` and ``Transfer-Encoding`` is a 400 and
  the connection is closed (RFC 9112 section 6.3: a server that cannot be sure of the
  framing must not keep the connection).
* **Errors.** Requests the parser refuses get ``{"error": ...}`` as JSON, like every other error.

Two parsers: httptools (llhttp, C; the default when installed — about 4x less CPU per request
than h11 under load) and h11 (pure Python, the fallback).  Both get the same guards.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from modelwarden.server.codec import dumps

MAX_HEAD_BYTES = 64 * 1024
AMBIGUOUS = "both Content-Length and Transfer-Encoding: ambiguous framing (RFC 9112)"


def _raw_response(status: int, reason: bytes, message: str) -> bytes:
    body = dumps({"error": message})
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
            % (status, reason, len(body)) + body)


class _Guards:
    """Header deadline, connection cap and JSON 400s over uvicorn's protocol attributes
    (``transport``, ``loop``, ``connections``, ``cycle``)."""

    header_timeout: float = 10.0
    max_connections: int = 1024
    _head_timer: asyncio.TimerHandle | None = None
    last_error: str = ""
    transport: Any
    loop: Any
    connections: Any
    cycle: Any

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

    # the mixin comes first in the MRO: super() is uvicorn's protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        if len(self.connections) > self.max_connections:
            transport.write(_raw_response(503, b"Service Unavailable",
                                          f"too many connections (limit {self.max_connections})"))
            transport.close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_received()
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        """The next request head is due within the timeout (unless a pipelined one has already
        arrived and is being served)."""
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()

    def send_400_response(self, msg: str) -> None:
        self._head_received()
        err = self.last_error
        detail = f"{msg} ({err})" if err else msg
        self.transport.write(_raw_response(400, b"Bad Request", detail))
        self.transport.close()


# -- h11 ------------------------------------------------------------------------------------------------


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
                self.last_error = AMBIGUOUS
                raise h11.RemoteProtocolError(self.last_error)
            # h11 caps only an *incomplete* head; one that arrives whole is measured here
            if len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers) > MAX_HEAD_BYTES:
                self.last_error = f"request head longer than {MAX_HEAD_BYTES} bytes"
                raise h11.RemoteProtocolError(self.last_error)
            if self.on_request is not None:
                self.on_request()
        return event


class GuardedH11Protocol(_Guards, H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _StrictConnection(h11.SERVER, MAX_HEAD_BYTES)
        self.conn.on_request = self._head_received

    @property
    def last_error(self) -> str:  # type: ignore[override]
        return self.conn.last_error


# -- httptools (llhttp) -------------------------------------------------------------------------------------

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - the h11 fallback
    httptools = None
    HttpToolsProtocol = None


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(_Guards, HttpToolsProtocol):
        """uvicorn's httptools protocol with the guards; llhttp itself refuses CL+TE, and the
        check is repeated here in case a lenient llhttp build accepts it."""

        _head_bytes = 0
        _framing: set

        def data_received(self, data: bytes) -> None:
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                pass  # no upgrades (ws="none"): the request was served as plain HTTP
            except httptools.HttpParserError as exc:
                if not self.last_error:
                    cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else exc
                    self.last_error = str(cause or exc)[:200]
                self.send_400_response("Invalid HTTP request received.")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0
            self._framing = set()

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > MAX_HEAD_BYTES:
                self.last_error = f"request head longer than {MAX_HEAD_BYTES} bytes"
                raise ValueError(self.last_error)

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            low = name.lower()
            if low in (b"content-length", b"transfer-encoding"):
                self._framing.add(low)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._head_received()
            if len(self._framing) == 2:
                self.last_error = AMBIGUOUS
                raise ValueError(AMBIGUOUS)
            super().on_headers_complete()


def guarded_protocol(header_timeout: float, max_connections: int, parser: str = "auto") -> type:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits; ``parser``:
    ``auto`` (httptools when installed, else h11), ``httptools`` or ``h11``."""
    if parser == "httptools" and HttpToolsProtocol is None:
        from modelwarden.errors import UsageError

        raise UsageError("server.http_parser = \"httptools\" but httptools is not installed (pip install httptools)")
    base = GuardedH11Protocol if parser == "h11" or HttpToolsProtocol is None else GuardedHttpToolsProtocol
    return type(base.__name__, (base,), {"header_timeout": header_timeout, "max_connections": max_connections})
