"""Request bounds: body size, gzip ratio, JSON depth and element counts, rate and concurrency.

Every check runs before the expensive step it protects: the body is capped while it
streams in, gzip output is capped by an absolute size *and* a ratio to the compressed
size, and JSON nesting and element counts are measured with vectorised scans before
:func:`json.loads` allocates anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import numpy as np
import orjson


class RequestError(Exception):
    """A request that must be refused: HTTP status, message, optional Retry-After seconds."""

    def __init__(self, status: int, message: str, retry_after: float | None = None, kind: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.kind = kind


async def read_body_by(chunks: AsyncIterator[bytes], content_length: str | None, max_bytes: int,
                       deadline: float) -> bytes:
    """:func:`read_body` that must finish by ``deadline`` (monotonic): a slow client gets 408."""
    remaining = deadline - time.monotonic()
    try:
        if remaining <= 0:
            raise TimeoutError
        async with asyncio.timeout(remaining):  # no extra task per request, unlike wait_for
            return await read_body(chunks, content_length, max_bytes)
    except (asyncio.TimeoutError, TimeoutError):
        raise RequestError(408, "request body not received within the request deadline", kind="body_timeout") from None


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, max_bytes: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds ``max_bytes``."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise RequestError(400, "invalid Content-Length") from None
        if declared > max_bytes:
            raise RequestError(413, f"request body of {declared} bytes exceeds the limit of {max_bytes}", kind="too_large")
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > max_bytes:
            raise RequestError(413, f"request body exceeds the limit of {max_bytes} bytes", kind="too_large")
    return bytes(buf)


def decode_content(body: bytes, encoding: str | None, max_bytes: int, max_ratio: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` with an absolute and a ratio cap (bombs end in 413)."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "x-gzip", "deflate"):
        raise RequestError(415, f"unsupported Content-Encoding {enc[:40]!r} (use gzip, deflate or identity)")
    cap = min(max_bytes, max(len(body), 1) * max_ratio)
    wbits = 16 + zlib.MAX_WBITS if enc != "deflate" else zlib.MAX_WBITS
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, cap + 1)
        if len(out) > cap or d.unconsumed_tail:
            raise RequestError(413, f"decompressed body exceeds {cap} bytes (limit: {max_bytes} bytes and "
                                    f"{max_ratio}x the compressed size)", kind="too_large")
        if not d.eof:
            raise RequestError(400, f"truncated {enc} body")
        if d.unused_data:
            raise RequestError(400, f"trailing data after the {enc} stream (concatenated members are not accepted)")
    except zlib.error as exc:
        raise RequestError(400, f"invalid {enc} body ({exc})") from None
    return out


_STRING_RE = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = np.zeros(256, np.int8)
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
_CHUNK = 1 << 22


def json_shape(body: bytes) -> tuple[int, int]:
    """(maximum nesting depth, upper bound of the number of values) without parsing.

    Escape sequences, then strings, are blanked (brackets and commas inside strings do not
    count); every step is linear and C-speed (regexes without backtracking, bytes.translate,
    chunked numpy cumsum), so hostile bodies cannot make it quadratic or memory-hungry.
    """
    data = body
    if b'"' in data:
        if b"\\" in data:
            data = data.replace(b"\\\\", b"__").replace(b'\\"', b"__")  # left to right, like JSON
        data = _STRING_RE.sub(b'""', data)
    elements = data.count(b",") + 1
    brackets = data.translate(None, _NOT_BRACKETS)
    depth = carry = 0
    for start in range(0, len(brackets), _CHUNK):
        steps = _STEP[np.frombuffer(brackets, np.uint8, count=min(_CHUNK, len(brackets) - start), offset=start)]
        running = np.cumsum(steps, dtype=np.int32) + carry
        depth = max(depth, int(running.max()))
        carry = int(running[-1])
    return depth, elements


# A JSON string (skipped unchanged) or a non-finite literal in RapidJSON's spellings
# (kParseNanAndInfFlag: NaN, Inf, Infinity, each with an optional minus); linear, no backtracking.
_NONFINITE_RE = re.compile(rb'"(?:[^"\\]|\\.)*"|(-?)(?:Infinity|Inf|NaN)')


def _nonfinite(m: re.Match) -> bytes:
    tok = m.group(0)
    if tok[:1] == b'"':
        return tok
    if tok.endswith(b"NaN"):
        return b"NaN"
    return m.group(1) + b"Infinity"


def parse_json(body: bytes, max_depth: int, max_elements: int) -> object:
    """Bounded JSON parse; NaN/Inf/Infinity (with a sign) are accepted as TensorFlow Serving does.

    orjson first (fast, builds flat lists of floats in C); only a body it refuses — because
    of non-finite literals, which orjson does not know — is normalised and parsed again
    by :mod:`json`.
    """
    if not body.strip():
        raise RequestError(400, "empty request body (a JSON object is expected)")
    # a body shorter than both limits can exceed neither (each level and value takes a byte)
    depth, elements = json_shape(body) if len(body) > min(max_depth, max_elements) else (0, 0)
    if depth > max_depth:
        raise RequestError(400, f"JSON nested deeper than {max_depth} levels")
    if elements > max_elements:
        raise RequestError(413, f"JSON has more than {max_elements} values", kind="too_large")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        first_error = str(exc)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"request body is not UTF-8 (byte {exc.start})") from None
    if "Inf" not in text and "NaN" not in text:
        raise RequestError(400, f"JSON Parse error: {first_error}"[:500])
    try:
        return json.loads(_NONFINITE_RE.sub(_nonfinite, body).decode("utf-8"))
    except RecursionError:
        raise RequestError(400, "JSON nested too deeply") from None
    except ValueError as exc:
        raise RequestError(400, f"JSON Parse error: {exc}") from None


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class RateLimiter:
    """Token bucket per key: ``rate`` requests/s sustained, ``burst`` at once."""

    rate: float
    burst: int
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) > 100_000:  # bounded: drop idle buckets
                    self._buckets = {k: v for k, v in self._buckets.items() if now - v.stamp < 60}
                b = self._buckets[key] = _Bucket(float(self.burst), now)
            b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
            if b.tokens < 1.0:
                wait = (1.0 - b.tokens) / self.rate
                raise RequestError(429, f"rate limit of {self.rate:g} requests/s exceeded for this token",
                                   retry_after=max(1.0, wait), kind="rate_limited")
            b.tokens -= 1.0


@dataclass
class ConcurrencyLimiter:
    """At most ``limit`` requests in flight; the next one gets 503 + Retry-After at once."""

    limit: int
    inflight: int = 0

    def enter(self) -> None:
        if self.inflight >= self.limit:
            raise RequestError(503, f"server busy: {self.limit} requests in flight", retry_after=1.0, kind="overloaded")
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1


@dataclass
class PerKeyLimiter:
    """At most ``limit`` requests per key (token) being read or served at once: one token's slow
    or numerous requests cannot take the server's whole concurrency budget (429 + Retry-After)."""

    limit: int
    _held: dict[str, int] = field(default_factory=dict)

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        n = self._held.get(key, 0)
        if n >= self.limit:
            raise RequestError(429, f"this token already has {self.limit} requests in flight", retry_after=1.0,
                               kind="token_inflight")
        self._held[key] = n + 1
        try:
            yield
        finally:
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]
