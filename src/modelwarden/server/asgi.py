"""The few ASGI request/response pieces the server uses, without a framework's per-request cost.

Starlette's ``Request``/``Response`` build URL objects, header views and generic response
machinery on every request; for a small model that was a measurable share of the parent's CPU.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


class ClientDisconnect(Exception):
    """The client went away before its body was read."""


class HttpRequest:
    """Path, method, headers (lower-case names, first value wins) and the body stream of one request."""

    __slots__ = ("scope", "_receive", "path", "method", "headers")

    def __init__(self, scope: dict, receive: Any) -> None:
        self.scope = scope
        self._receive = receive
        # like starlette's ``request.url.path``: these three stay escaped
        self.path: str = scope["path"].replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
        self.method: str = scope["method"]
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        self.headers = headers

    @property
    def remote(self) -> str | None:
        client = self.scope.get("client")
        return client[0] if client else None

    async def stream(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            body = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                return


class Reply:
    """A complete response body with its status and headers."""

    __slots__ = ("body", "status_code", "headers")

    def __init__(self, body: bytes, status_code: int = 200, media_type: str = "application/json",
                 headers: dict[str, str] | None = None) -> None:
        self.body = body
        self.status_code = status_code
        raw = [(b"content-type", media_type.encode("latin-1")), (b"content-length", b"%d" % len(body))]
        if headers:
            raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.headers = raw

    async def __call__(self, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})
