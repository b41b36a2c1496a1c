"""Hostile HTTP clients against a real ``modelwarden serve`` process, with raw sockets on 127.0.0.1:
slow bodies, unfinished headers, oversized heads, connection floods, ambiguous framing, and metrics
scoping — with each HTTP parser (httptools, the default when installed, and the h11 fallback)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.test_server_e2e import Served, make_token, namespaces_available, running_server

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.skipif(not namespaces_available(), reason="Linux namespaces unavailable (sandbox)")

HEADER_TIMEOUT = 1.5
MAX_CONNECTIONS = 40
PER_TOKEN = 4
REQUEST_TIMEOUT = 4.0
BODY = json.dumps({"instances": [[1, 2, 3, 4]]}).encode()


PARSERS = ["h11", pytest.param("httptools", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("httptools") is None, reason="httptools not installed"))]


@pytest.fixture(scope="module", params=PARSERS)
def srv(request, tmp_path_factory, fixture_dir):
    serve = fixture_dir("build_serve_models")
    work = tmp_path_factory.mktemp("hostile")
    db = work / "tokens.json"
    tokens = {}
    for key, models, scope in (("slow", ["dense"], "predict"), ("good", ["dense", "dense2"], "predict"),
                               ("metrics2", ["dense2"], "metrics"), ("metrics_all", ["*"], "metrics")):
        tokens[key], _ = make_token(db, models, scope)
    with running_server(work, f"""
[server]
token_db = "{db}"
port = 0
http_parser = "{request.param}"
[limits]
header_timeout = "{HEADER_TIMEOUT}s"
max_connections = {MAX_CONNECTIONS}
max_inflight_per_token = {PER_TOKEN}
request_timeout = "{REQUEST_TIMEOUT}s"
max_concurrent_requests = 8
[[models]]
name = "dense"
base_path = "{serve / 'dense'}"
spare_workers = 0
[[models]]
name = "dense2"
base_path = "{serve / 'dense'}"
spare_workers = 0
""") as (server, url):
        yield Served(server, url, tokens)


def connect(s: Served) -> socket.socket:
    c = socket.create_connection(("127.0.0.1", s.port), timeout=15)
    assert c.getpeername()[0] == "127.0.0.1"
    return c


def read_all(c: socket.socket, timeout: float = 15) -> bytes:
    c.settimeout(timeout)
    data = b""
    try:
        while chunk := c.recv(65536):
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return data


def predict(s: Served, key: str = "good", model: str = "dense") -> httpx.Response:
    return httpx.post(f"{s.url}/v1/models/{model}:predict", content=BODY, timeout=30,
                      headers={"Authorization": f"Bearer {s.tokens[key]}"})


def test_both_content_length_and_transfer_encoding_is_400_and_close(srv):
    c = connect(srv)
    c.sendall(b"POST /v1/models/dense:predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
              srv.tokens["good"].encode() + b"\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
              % len(BODY) + b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n"
              b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # a smuggled second request must not be answered
    data = read_all(c)
    c.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), data[:300]
    assert b"connection: close" in head.lower() and b"application/json" in head.lower()
    assert "Transfer-Encoding" in json.loads(body)["error"]
    assert data.count(b"HTTP/1.1") == 1  # closed after the 400: nothing else was read as a request
    # control: the same request with chunked framing only is served
    c = connect(srv)
    c.sendall(b"POST /v1/models/dense:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer " +
              srv.tokens["good"].encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n" +
              b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n")
    assert read_all(c).startswith(b"HTTP/1.1 200")
    c.close()


def test_oversized_request_head_is_400_and_close(srv):
    c = connect(srv)
    try:
        c.sendall(b"GET /v1/models/dense HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = read_all(c)
    c.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"connection: close" in head.lower(), data[:300]
    assert isinstance(json.loads(body)["error"], str)
    # control: a head just under the limit is served (401 without a token: it was parsed and routed)
    c = connect(srv)
    c.sendall(b"GET /v1/models/dense HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: " + b"a" * 60_000 +
              b"\r\n\r\n")
    assert read_all(c).startswith(b"HTTP/1.1 401")
    c.close()


def test_pipelined_requests_are_answered_in_order(srv):
    """Two requests in one packet: both served, in order (the header clock must not cut the second)."""
    c = connect(srv)
    auth = b"Authorization: Bearer " + srv.tokens["good"].encode() + b"\r\n"
    c.sendall(b"POST /v1/models/dense:predict HTTP/1.1\r\nHost: x\r\n" + auth +
              b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY +
              b"GET /v1/models/dense HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth + b"\r\n")
    data = read_all(c)
    c.close()
    assert data.count(b"HTTP/1.1 200") == 2, data[:500]
    first, second = data.split(b"HTTP/1.1 200")[1:]
    assert b"predictions" in first and b"model_version_status" in second


def test_unfinished_headers_are_closed_after_the_header_timeout(srv):
    socks = [connect(srv) for _ in range(20)]
    t0 = time.monotonic()
    for c in socks:
        c.sendall(b"GET /v1/models/dense HTTP/1.1\r\nHost: x\r\n")
    closed_at: list[float] = []
    # keep trickling header bytes: that must not extend the deadline
    end = t0 + HEADER_TIMEOUT + 6
    open_socks = list(socks)
    while open_socks and time.monotonic() < end:
        for c in list(open_socks):
            try:
                c.sendall(b"X")
                c.settimeout(0.05)
                data = c.recv(65536)
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    closed_at.append(time.monotonic() - t0)
                    open_socks.remove(c)
            except socket.timeout:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed_at.append(time.monotonic() - t0)
                open_socks.remove(c)
        time.sleep(0.2)
    for c in socks:
        c.close()
    assert not open_socks, f"{len(open_socks)} connections with unfinished headers stayed open"
    assert min(closed_at) >= HEADER_TIMEOUT - 0.3 and max(closed_at) < HEADER_TIMEOUT + 4
    assert predict(srv).status_code == 200  # the server still serves


def test_connection_cap_refuses_extra_connections_with_json_503(srv):
    socks = [connect(srv) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)
        extra = connect(srv)
        data = read_all(extra, 5)
        extra.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and "too many connections" in json.loads(body)["error"]
    finally:
        for c in socks:
            c.close()
    time.sleep(0.5)
    assert predict(srv).status_code == 200  # slots are free again once the flood is gone


def test_slow_bodies_of_one_token_do_not_starve_others(srv):
    """One token trickles many bodies; another token's predicts keep succeeding; the slow ones end in
    408 (deadline covers the body) or 429 (that token's in-flight share is used up)."""
    n_slow = 16
    results: list[bytes] = []
    lock = threading.Lock()

    def slow_client() -> None:
        c = connect(srv)
        try:
            c.sendall(b"POST /v1/models/dense:predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                      srv.tokens["slow"].encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(BODY))
            for b in BODY:
                c.sendall(bytes([b]))
                c.settimeout(0.5)
                try:
                    data = c.recv(65536)
                except socket.timeout:
                    continue
                with lock:
                    results.append(data)
                return
            with lock:
                results.append(read_all(c))
        except (BrokenPipeError, ConnectionResetError):
            with lock:
                results.append(b"reset")
        finally:
            c.close()

    threads = [threading.Thread(target=slow_client) for _ in range(n_slow)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    good = []
    t_end = time.monotonic() + REQUEST_TIMEOUT + 1
    while time.monotonic() < t_end:
        t = time.monotonic()
        r = predict(srv)
        good.append((r.status_code, time.monotonic() - t))
    for t in threads:
        t.join(30)
    assert good and all(code == 200 for code, _ in good), good
    assert max(dt for _, dt in good) < 3.0
    statuses = sorted(r.split(b" ", 2)[1].decode() if r.startswith(b"HTTP/1.1") else r.decode() for r in results)
    assert len(statuses) == n_slow
    assert set(statuses) <= {"408", "429"} and statuses.count("408") <= PER_TOKEN, statuses
    assert statuses.count("408") >= 1 and statuses.count("429") >= n_slow - PER_TOKEN


def test_metrics_are_scoped_to_the_tokens_models(srv):
    assert predict(srv, model="dense").status_code == 200
    assert predict(srv, model="dense2").status_code == 200
    scoped = httpx.get(srv.url + "/monitoring/prometheus/metrics", timeout=10,
                       headers={"Authorization": f"Bearer {srv.tokens['metrics2']}"}).text
    assert 'model="dense2"' in scoped and 'model="dense"' not in scoped and 'model=""' not in scoped
    full = httpx.get(srv.url + "/monitoring/prometheus/metrics", timeout=10,
                     headers={"Authorization": f"Bearer {srv.tokens['metrics_all']}"}).text
    assert 'model="dense"' in full and 'model="dense2"' in full
