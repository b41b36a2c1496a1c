"""Model versions like TF Serving: a real server polls ``base_path``; a new version is scanned, loaded in
fresh sandboxed workers and takes the traffic, the old one is retired — while a client loop runs and
sees no error; a version the scan gate refuses shows in the status and the previous one keeps serving."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from tests.test_server_e2e import expected, make_token, namespaces_available, running_server

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.skipif(not namespaces_available(), reason="Linux namespaces unavailable (sandbox)")

X = [1.0, 2.0, 3.0, 4.0]


def add_version(src, base, version: int) -> None:
    """Copy under a hidden name, then rename: a version directory appears complete (as TF Serving asks)."""
    tmp = base / f".incoming-{version}"
    shutil.copytree(src, tmp)
    tmp.rename(base / str(version))


def wait_status(url: str, headers: dict, pred, timeout: float = 600) -> list[dict]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        states = httpx.get(url + "/v1/models/m", headers=headers, timeout=10).json().get("model_version_status", [])
        if pred({int(s["version"]): s for s in states}):
            return states
        time.sleep(0.3)
    raise AssertionError(f"status never matched: {states}")


def test_version_add_switches_traffic_without_errors_and_refused_version_is_reported(tmp_path, fixture_dir):
    serve = fixture_dir("build_serve_models")
    escape = fixture_dir("build_escape")
    base = tmp_path / "m"
    base.mkdir()
    shutil.copytree(serve / "dense" / "1", base / "1")
    db = tmp_path / "tokens.json"
    token, _ = make_token(db, ["m"], "admin")
    headers = {"Authorization": f"Bearer {token}"}
    results: list[tuple[int, int | None]] = []
    stop = threading.Event()

    def client_loop(url: str) -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                r = client.post(url + "/v1/models/m:predict", content=json.dumps({"instances": [X]}), headers=headers)
                version = None
                if r.status_code == 200:
                    got = r.json()["predictions"][0]
                    version = next((v for v in (1, 2) if got == pytest.approx(expected(X, v), rel=1e-5)), -1)
                results.append((r.status_code, version))
                time.sleep(0.02)

    with running_server(tmp_path, f"""
[server]
token_db = "{db}"
port = 0
poll_interval = "0.5s"
[[models]]
name = "m"
base_path = "{base}"
""") as (server, url):
        loop = threading.Thread(target=client_loop, args=(url,))
        loop.start()
        try:
            time.sleep(1.0)
            add_version(serve / "dense" / "2", base, 2)
            states = wait_status(url, headers, lambda s: s.get(2, {}).get("state") == "AVAILABLE"
                                 and s.get(1, {}).get("state") == "END")
            assert states[0]["version"] == "2"
            time.sleep(1.0)
            # a version the scan gate refuses: reported with its findings, version 2 keeps serving
            add_version(escape / "memory_bomb", base, 3)
            states = wait_status(url, headers, lambda s: s.get(3, {}).get("state") == "END")
            v3 = next(s for s in states if s["version"] == "3")
            assert v3["status"]["error_code"] == "FAILED_PRECONDITION" and "scan gate" in v3["status"]["error_message"]
            assert "MW" in v3["status"]["error_message"]  # the findings' rule ids
            assert next(s for s in states if s["version"] == "2")["state"] == "AVAILABLE"
            time.sleep(1.5)
        finally:
            stop.set()
            loop.join(60)
        errors = [r for r in results if r[0] != 200]
        assert not errors, f"{len(errors)} failed requests during the switch: {errors[:5]}"
        versions = [v for _, v in results]
        assert 1 in versions and 2 in versions and -1 not in versions
        switch = versions.index(2)
        assert all(v == 2 for v in versions[switch:])  # once switched, never back; v3 never served
        records = server.log_records()
        events = [r["event"] for r in records]
        assert "model_unloaded" in events and "scan_refused" in events
        # version 1's workers were closed: only version 2's pool is left
        workers = httpx.get(url + "/modelwarden/v1/models/m/versions/2/workers", headers=headers, timeout=10).json()
        assert workers["state"] == "AVAILABLE" and workers["workers"]
        old = httpx.get(url + "/modelwarden/v1/models/m/versions/1/workers", headers=headers, timeout=10).json()
        assert old["state"] == "END" and old["workers"] == []
