"""`modelwarden serve` end to end: a real server process on loopback, a real HTTP client, real sandboxed
TensorFlow workers.  One server for the whole module (worker start-up costs seconds).

Also holds the helpers (``ServerProc``, ``make_token``) the other server test modules import.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
for _mod in ("uvicorn", "orjson", "grpc"):  # the [serve] extra: pip install -e '.[dev,tf,serve]'
    pytest.importorskip(_mod, reason=f"{_mod} missing: `modelwarden serve` needs the [serve] extra")

from modelwarden.server.auth import TokenStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The real CLI entry point; registers the command in case cli/__init__.py does not list it yet.
RUNNER = ("import sys\nfrom modelwarden import cli\n"
          "cli.COMMANDS.setdefault('serve', ('modelwarden.cli.serve_cmd', 'serve models'))\n"
          "sys.exit(cli.main(['serve', *sys.argv[1:]]))\n")


def namespaces_available() -> bool:
    try:
        from modelwarden.sandbox.namespaces import NamespacesBackend

        return NamespacesBackend.availability()[0]
    except Exception:  # noqa: BLE001
        return False


class ServerProc:
    """``modelwarden serve`` as a real process; ``url`` once it listens."""

    def __init__(self, workdir: Path, args: list[str], env: dict | None = None) -> None:
        self.workdir = workdir
        self.port_file = workdir / "port.txt"
        self.log_file = workdir / "access.log"
        self.out_file = open(workdir / "server.out", "wb")
        if self.port_file.exists():
            self.port_file.unlink()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, *args, "--port-file", str(self.port_file), "--access-log", str(self.log_file)],
            cwd=workdir, stdout=self.out_file, stderr=subprocess.STDOUT, env=env)
        self.port: int | None = None

    def wait_listening(self, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.output()}")
            if self.port_file.exists():
                self.port = int(self.port_file.read_text())
                return self.port
            time.sleep(0.05)
        raise RuntimeError(f"server did not listen: {self.output()}")

    def wait_ready(self, url: str, timeout: float = 600, **kw) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if httpx.get(url + "/readyz", timeout=5, **kw).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            time.sleep(0.2)
        raise RuntimeError(f"server not ready: {self.output()}")

    def output(self) -> str:
        self.out_file.flush()
        return (self.workdir / "server.out").read_text(errors="replace")[-4000:]

    def log_records(self) -> list[dict]:
        return [json.loads(line) for line in self.log_file.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out_file.close()


@dataclass
class Served:
    """A running test server: its process, base URL and the tokens made for it (by key)."""

    server: ServerProc
    url: str
    tokens: dict[str, str]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextlib.contextmanager
def running_server(work: Path, config: str) -> Iterator[tuple[ServerProc, str]]:
    """A ready ``modelwarden serve`` for ``config`` (TOML text) in ``work``: (process, base URL)."""
    (work / "serve.toml").write_text(config)
    server = ServerProc(work, ["--config", str(work / "serve.toml")])
    try:
        url = f"http://127.0.0.1:{server.wait_listening()}"
        server.wait_ready(url)
        yield server, url
    finally:
        server.stop()


def make_token(db: Path, models: list[str], scope: str, expires: float | None = None) -> tuple[str, str]:
    token, rec = TokenStore(str(db)).create(models, scope, expires)
    return token, rec.id


def copy_version(src: Path, base: Path, version: int = 1) -> Path:
    dst = base / str(version)
    shutil.copytree(src, dst)
    return base


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


# -- the shared server ------------------------------------------------------------------------------

pytestmark = pytest.mark.skipif(not namespaces_available(), reason="Linux namespaces unavailable (sandbox)")


class Env:
    url: str
    server: ServerProc
    db: Path
    tokens: dict[str, str]
    ids: dict[str, str]


@pytest.fixture(scope="module")
def env(tmp_path_factory, fixture_dir):
    serve = fixture_dir("build_serve_models")
    escape = fixture_dir("build_escape")
    work = tmp_path_factory.mktemp("serve")
    models = work / "models"
    copy_version(escape / "memory_bomb", models / "bomb")
    copy_version(escape / "memory_bomb", models / "refused")
    copy_version(escape / "endless", models / "endless")
    db = work / "tokens.json"
    e = Env()
    e.db = db
    e.tokens, e.ids = {}, {}
    for key, model, scope in (("admin", "*", "admin"), ("dense", "dense", "predict"), ("meta", "dense", "metadata"),
                              ("all", "*", "predict"), ("metrics", "*", "metrics"), ("revoked", "dense", "predict")):
        e.tokens[key], e.ids[key] = make_token(db, [model], scope)
    e.tokens["expired"], e.ids["expired"] = make_token(db, ["dense"], "predict", expires=time.time() + 2)
    cfg = f"""
[server]
token_db = "{db}"
port = 0
[limits]
max_body = "1MiB"
max_json_depth = 40
max_json_elements = 50000
gzip_max_ratio = 20
request_timeout = "30s"
[[models]]
name = "dense"
base_path = "{serve / 'dense'}"
version_policy = "all"
spare_workers = 0
labels = {{ stable = 1, canary = 2 }}
[[models]]
name = "multi"
spare_workers = 0
base_path = "{serve / 'multi'}"
[[models]]
name = "bytes"
spare_workers = 0
base_path = "{serve / 'bytes'}"
[[models]]
name = "strings"
spare_workers = 0
base_path = "{serve / 'strings'}"
[[models]]
name = "examples"
spare_workers = 0
base_path = "{serve / 'examples'}"
[[models]]
name = "slow"
base_path = "{serve / 'slow'}"
[[models]]
name = "bomb"
spare_workers = 0
base_path = "{models / 'bomb'}"
fail_on = "high"
memory = "768MiB"
[[models]]
name = "endless"
spare_workers = 0
base_path = "{models / 'endless'}"
timeout = "2s"
[[models]]
name = "refused"
spare_workers = 0
base_path = "{models / 'refused'}"
"""
    (work / "serve.toml").write_text(cfg)
    server = ServerProc(work, ["--config", str(work / "serve.toml")])
    try:
        port = server.wait_listening()
        e.url = f"http://127.0.0.1:{port}"
        e.server = server
        server.wait_ready(e.url)
        yield e
    finally:
        server.stop()


def H(e: Env, key: str = "admin") -> dict:
    return {"Authorization": f"Bearer {e.tokens[key]}"}


def post(e: Env, path: str, body, key: str = "admin", **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(e.url + path, content=content, headers={**H(e, key), **kw.pop("headers", {})},
                      timeout=kw.pop("timeout", 60), **kw)


def get(e: Env, path: str, key: str = "admin") -> httpx.Response:
    return httpx.get(e.url + path, headers=H(e, key), timeout=30)


W = [[0.0, 0.1], [0.2, 0.3], [0.4, 0.5], [0.6, 0.7]]


def expected(x: list[float], version: int) -> list[float]:
    return [sum(x[i] * W[i][j] * version for i in range(4)) + (0.5 if j == 0 else -0.5) for j in range(2)]


# -- API compatibility ------------------------------------------------------------------------------


def test_health_endpoints_reveal_nothing(env):
    for path in ("/healthz", "/readyz"):
        r = httpx.get(env.url + path)
        assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_model_status_versions_and_refused(env):
    r = get(env, "/v1/models/dense")
    assert r.status_code == 200
    assert r.json() == {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    r = get(env, "/v1/models/dense/versions/1")
    assert [s["version"] for s in r.json()["model_version_status"]] == ["1"]
    refused = get(env, "/v1/models/refused").json()["model_version_status"][0]
    assert refused["state"] == "END" and refused["status"]["error_code"] == "FAILED_PRECONDITION"
    assert "scan gate" in refused["status"]["error_message"]
    r = post(env, "/v1/models/refused:predict", {"instances": [1]})
    assert r.status_code == 404 and "Servable not found" in r.json()["error"]
    report = get(env, "/modelwarden/v1/models/refused/versions/1/scan-report")
    assert report.status_code == 200 and report.json()["verdict"] == "fail"
    assert get(env, "/v1/models/nosuch").status_code == 404


@pytest.mark.parametrize("path,version", [
    ("/v1/models/dense:predict", 2), ("/v1/models/dense/versions/1:predict", 1),
    ("/v1/models/dense/versions/2:predict", 2), ("/v1/models/dense/labels/stable:predict", 1),
    ("/v1/models/dense/labels/canary:predict", 2)])
def test_predict_row_format_versions_and_labels(env, path, version):
    x = [[1, 2, 3, 4], [0, 0, 0, 1]]
    r = post(env, path, {"instances": x})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    for got, row in zip(preds, x):
        assert got == pytest.approx(expected(row, version), rel=1e-5)


def test_predict_columnar_and_signature_name(env):
    r = post(env, "/v1/models/dense/versions/1:predict",
             {"signature_name": "serving_default", "inputs": {"x": [[1, 2, 3, 4]]}})
    assert r.status_code == 200
    assert r.json()["outputs"][0] == pytest.approx(expected([1, 2, 3, 4], 1), rel=1e-5)
    r = post(env, "/v1/models/dense:predict", {"inputs": [[1, 2, 3, 4]]})
    assert list(r.json()) == ["outputs"] and len(r.json()["outputs"]) == 1


def test_multi_input_output_and_nan(env):
    r = post(env, "/v1/models/multi:predict", '{"instances": [{"a": [1, 2], "b": 3}, {"a": [NaN, 1], "b": -4}]}')
    assert r.status_code == 200, r.text
    assert "NaN" in r.text  # TF Serving writes NaN literals
    preds = json.loads(r.text)["predictions"]
    assert preds[0] == {"total": 3.0, "twice": 6}
    assert preds[1]["twice"] == -8 and preds[1]["total"] != preds[1]["total"]
    r = post(env, "/v1/models/multi:predict", '{"inputs": {"a": [[Infinity, 1]], "b": [1]}}')
    assert r.status_code == 200 and json.loads(r.text)["outputs"]["total"] == [float("inf")]


def test_b64_binary_values(env):
    rows = [bytes([1, 2, 3]), bytes([10, 20, 30])]
    r = post(env, "/v1/models/bytes:predict", {"instances": [{"b64": base64.b64encode(b).decode()} for b in rows]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == [6, 60]
    r = post(env, "/v1/models/bytes:predict", {"instances": [{"b64": "!!!not base64!!!"}]})
    assert r.status_code == 400 and "base64" in r.json()["error"]
    r = post(env, "/v1/models/dense:predict", {"instances": [{"b64": "AAAA"}]})
    assert r.status_code == 400 and "DT_STRING" in r.json()["error"]


def test_metadata_matches_tf_serving_shape(env):
    r = get(env, "/v1/models/dense/versions/1/metadata")
    assert r.status_code == 200
    doc = r.json()
    assert doc["model_spec"] == {"name": "dense", "signature_name": "", "version": "1"}
    sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert sig["inputs"]["x"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}, {"size": "4", "name": ""}]
    assert sig["inputs"]["x"]["name"] == "serving_default_x:0"
    assert get(env, "/v1/models/dense/labels/canary/metadata").json()["model_spec"]["version"] == "2"


def test_classify_on_predict_signature_is_refused_like_tf_serving(env):
    r = post(env, "/v1/models/dense:classify", {"examples": [{"x": 1}]})
    assert r.status_code == 400
    assert "tensorflow/serving/classify" in r.json()["error"]


def test_string_inputs_and_outputs(env):
    raw = b"\xffjpeg\x00"
    r = post(env, "/v1/models/strings:predict",
             {"instances": ["abc", "h\u00e9llo", {"b64": base64.b64encode(raw).decode()}]})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["upper"] for p in preds[:2]] == ["ABC", "H\u00e9LLO"]  # ASCII-only upper, as TF does
    assert preds[2]["upper"] == {"b64": base64.b64encode(b"\xffJPEG\x00").decode()}  # not UTF-8: b64
    assert [p["length"] for p in preds] == [3, 6, 6]
    assert preds[0]["echo_bytes"] == {"b64": base64.b64encode(b"abc").decode()}  # *_bytes: always b64
    r = post(env, "/v1/models/strings:predict", {"inputs": {"text": ["x", {"b64": "eXk="}]}})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"]["upper"] == ["X", "YY"]
    r = post(env, "/v1/models/strings:predict", {"instances": [1, 2]})
    assert r.status_code == 400 and "DT_STRING" in r.json()["error"]
    r = post(env, "/v1/models/dense:predict", {"instances": [["a", "b", "c", "d"]]})
    assert r.status_code == 400 and "DT_STRING" in r.json()["error"]
    meta = get(env, "/v1/models/strings/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert meta["serving_default"]["inputs"]["text"]["dtype"] == "DT_STRING"


def test_classify_on_a_real_classification_signature(env):
    r = post(env, "/v1/models/examples:classify",
             {"context": {"scale": 2.0}, "examples": [{"x": [0.0, 0.0]}, {"x": [1.0, 0.0], "scale": [0.5]}]})
    assert r.status_code == 200, r.text
    result = r.json()["results"]
    assert [[c for c, _ in row] for row in result] == [["neg", "pos"], ["neg", "pos"]]
    assert result[0][0][1] == pytest.approx(0.5) and result[0][1][1] == pytest.approx(0.5)
    import math
    p = math.exp(0.5) / (math.exp(0.5) + 1)  # the example's scale 0.5 overrides the context's 2.0
    assert result[1][0][1] == pytest.approx(p, rel=1e-5)
    r = post(env, "/v1/models/examples:classify", {"signature_name": "classify", "examples": [{"x": [3.0, 3.0]}]})
    assert r.status_code == 200 and r.json()["results"][0][1][1] == pytest.approx(0.5)


def test_regress_on_a_real_regression_signature(env):
    r = post(env, "/v1/models/examples:regress", {
        "signature_name": "regress", "context": {"n": 10},
        "examples": [{"x": [1.5, 2.5]}, {"x": [1.0, 2.0], "scale": 2.0, "tag": "abc"},
                     {"x": [0.0, 0.0], "n": -1, "tag": {"b64": base64.b64encode(b"\x00\x01").decode()}}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [14.0, 19.0, 1.0]}
    # the wrong verb for the signature, malformed examples, a parse error inside the model
    r = post(env, "/v1/models/examples:regress", {"examples": [{"x": [1, 2]}]})
    assert r.status_code == 400 and "tensorflow/serving/regress" in r.json()["error"]
    r = post(env, "/v1/models/examples:regress", {"signature_name": "regress", "examples": [{"x": [[1]]}]})
    assert r.status_code == 400 and "flat list" in r.json()["error"]
    r = post(env, "/v1/models/examples:regress", {"signature_name": "regress", "examples": [{"y": [1.0]}]})
    assert r.status_code == 400 and "required" in r.json()["error"]  # TF's own parse error
    r = post(env, "/v1/models/examples:predict", {"signature_name": "regress", "instances": ["not an example"]})
    assert r.status_code == 400


# -- authentication and authorisation ----------------------------------------------------------------


def test_auth_matrix(env):
    url = env.url + "/v1/models/dense/versions/1:predict"
    body = json.dumps({"instances": [[1, 2, 3, 4]]})

    def call(headers: dict) -> httpx.Response:
        return httpx.post(url, content=body, headers=headers, timeout=30)

    cases = {
        "none": ({}, 401),
        "bad": ({"Authorization": "Bearer mwt_000000000000_" + "A" * 43}, 401),
        "garbage": ({"Authorization": "Bearer hello"}, 401),
        "basic": ({"Authorization": "Basic " + base64.b64encode(b"a:b").decode()}, 401),
        "tampered": ({"Authorization": "Bearer " + env.tokens["dense"][:-1] + ("A" if env.tokens["dense"][-1] != "A" else "B")}, 401),
        "meta_scope": (H(env, "meta"), 403),
        "metrics_scope": (H(env, "metrics"), 403),
        "dense": (H(env, "dense"), 200),
        "admin": (H(env, "admin"), 200),
    }
    for name, (headers, status) in cases.items():
        r = call(headers)
        assert r.status_code == status, (name, r.text)
        if status != 200:
            assert "error" in r.json()
        if status == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")
    # wrong model: 403, and the same answer for a model that does not exist (no existence oracle)
    r = post(env, "/v1/models/multi:predict", {"instances": [{"a": [1, 2], "b": 3}]}, key="dense")
    assert r.status_code == 403
    assert post(env, "/v1/models/nosuch:predict", {"instances": [1]}, key="dense").status_code == 403
    # scopes: metadata token reads metadata; predict token cannot read scan reports or metrics
    assert get(env, "/v1/models/dense/metadata", key="meta").status_code == 200
    assert get(env, "/modelwarden/v1/models/dense/versions/1/scan-report", key="dense").status_code == 403
    assert get(env, "/monitoring/prometheus/metrics", key="dense").status_code == 403
    assert get(env, "/monitoring/prometheus/metrics", key="metrics").status_code == 200
    assert httpx.get(env.url + "/monitoring/prometheus/metrics").status_code == 401


def test_expired_and_revoked_tokens(env):
    assert post(env, "/v1/models/dense:predict", {"instances": [[1, 2, 3, 4]]}, key="revoked").status_code == 200
    TokenStore(str(env.db)).revoke(env.ids["revoked"])
    time.sleep(1.2)  # the server re-reads the store at most every 0.5 s
    r = post(env, "/v1/models/dense:predict", {"instances": [[1, 2, 3, 4]]}, key="revoked")
    assert r.status_code == 401 and "revoked" in r.json()["error"]
    rec = TokenStore(str(env.db)).load().records[env.ids["expired"]]
    time.sleep(max(0.0, rec.expires - time.time() + 0.1))
    r = post(env, "/v1/models/dense:predict", {"instances": [[1, 2, 3, 4]]}, key="expired")
    assert r.status_code == 401 and "expired" in r.json()["error"]


def test_token_store_holds_no_token(env):
    text = env.db.read_text()
    for token in env.tokens.values():
        assert token not in text
        assert token.split("_", 2)[2] not in text  # the whole secret (it may itself contain "_")
    assert oct(env.db.stat().st_mode & 0o777) == "0o600"


# -- malformed requests -----------------------------------------------------------------------------


def _gzip_bomb() -> bytes:
    return gzip.compress(b'{"instances": [' + b" " * (20 << 20) + b"]}", 9)


MALFORMED = {
    "not_json": (b"this is not json", {}, 400),
    "empty": (b"", {}, 400),
    "array_body": (b"[1, 2, 3]", {}, 400),
    "truncated": (b'{"instances": [[1, 2, 3, 4]', {}, 400),
    "deep": (b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}, 400),
    "deep_objects": (b'{"inputs": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}", {}, 400),
    "huge": (b'{"instances": [' + b"1," * (600 * 1024) + b"1]}", {}, 413),
    "many_elements": (b'{"instances": [' + b"1," * 60000 + b"1]}", {}, 413),
    "gzip_bomb": (_gzip_bomb(), {"Content-Encoding": "gzip"}, 413),
    "bad_gzip": (b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 400),
    "unknown_encoding": (b"{}", {"Content-Encoding": "br"}, 415),
    "bad_utf8": (b'{"instances": ["\xff\xfe"]}', {}, 400),
    "no_instances": (b'{"signature_name": "serving_default"}', {}, 400),
    "both": (b'{"instances": [[1,2,3,4]], "inputs": [[1,2,3,4]]}', {}, 400),
    "empty_instances": (b'{"instances": []}', {}, 400),
    "wrong_signature": (b'{"signature_name": "nope", "instances": [[1,2,3,4]]}', {}, 400),
    "signature_not_string": (b'{"signature_name": 7, "instances": [[1,2,3,4]]}', {}, 400),
    "wrong_name": (b'{"inputs": {"z": [[1,2,3,4]]}}', {}, 400),
    "wrong_shape": (b'{"instances": [[1,2,3]]}', {}, 400),
    "wrong_rank": (b'{"instances": [[[1,2,3,4]]]}', {}, 400),
    "ragged": (b'{"instances": [[1,2,3,4],[1,2]]}', {}, 400),
    "strings": (b'{"instances": [["a","b","c","d"]]}', {}, 400),
    "bools": (b'{"instances": [[true,false,true,false]]}', {}, 400),
    "objects_in_values": (b'{"instances": [[{"x":1},2,3,4]]}', {}, 400),
    "null": (b'{"instances": [[null,2,3,4]]}', {}, 400),
    "scalar_body": (b"42", {}, 400),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_bodies_get_4xx_json(env, name):
    body, headers, status = MALFORMED[name]
    r = post(env, "/v1/models/dense:predict", body, headers=headers)
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    assert isinstance(r.json().get("error"), str) and r.json()["error"]


def test_dtype_checks_on_integer_inputs(env):
    for body, status in ((b'{"instances": [{"a": [1, 2], "b": 1.5}]}', 400),
                         (b'{"instances": [{"a": [1, 2], "b": 99999999999}]}', 400),
                         (b'{"instances": [{"a": [1, 2]}]}', 400),
                         (b'{"instances": [{"a": [1, 2], "b": 1}, {"a": [1, 2]}]}', 400),
                         (b'{"inputs": [[1, 2]]}', 400),
                         (b'{"instances": [{"a": [1, 2], "b": 1}]}', 200)):
        r = post(env, "/v1/models/multi:predict", body)
        assert r.status_code == status, (body, r.text)


def test_gzip_request_accepted(env):
    body = gzip.compress(json.dumps({"instances": [[1, 2, 3, 4]]}).encode())
    r = post(env, "/v1/models/dense/versions/1:predict", body, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["predictions"][0] == pytest.approx(expected([1, 2, 3, 4], 1), rel=1e-5)


def test_method_and_route_errors(env):
    assert httpx.get(env.url + "/v1/models/dense:predict", headers=H(env), timeout=10).status_code == 400
    assert get(env, "/v1/other").status_code == 400  # TF Serving: "Malformed request" under /v1/
    assert get(env, "/other").status_code == 404
    assert get(env, "/v1/models/dense/versions/9").status_code == 404
    assert get(env, "/v1/models/dense/labels/nolabel").status_code == 404


# -- hostile models and worker failures ---------------------------------------------------------------


def _workers(env, model: str, version: int = 1) -> dict:
    return get(env, f"/modelwarden/v1/models/{model}/versions/{version}/workers").json()


def _wait_available(env, model: str, body: dict, timeout: float = 120) -> httpx.Response:
    end = time.monotonic() + timeout
    while True:
        r = post(env, f"/v1/models/{model}:predict", body)
        if r.status_code == 200 or time.monotonic() > end:
            return r
        time.sleep(0.5)


def test_memory_bomb_is_contained(env):
    r = post(env, "/v1/models/bomb:predict", {"inputs": {"n": 1000}})  # 4 GiB
    assert r.status_code == 429, r.text
    assert "memory" in r.json()["error"]
    ok = post(env, "/v1/models/dense:predict", {"instances": [[1, 2, 3, 4]]})
    assert ok.status_code == 200
    r = _wait_available(env, "bomb", {"inputs": {"n": 2}})
    assert r.status_code == 200 and r.json()["outputs"] == pytest.approx(2 * 1024 * 1024)
    assert _workers(env, "bomb")["restarts"] >= 1


def test_endless_loop_hits_deadline_while_others_serve(env):
    result: dict = {}

    def run() -> None:
        t0 = time.monotonic()
        result["r"] = post(env, "/v1/models/endless:predict", {"inputs": {"x": 0}})
        result["s"] = time.monotonic() - t0

    th = threading.Thread(target=run)
    th.start()
    time.sleep(0.3)
    for _ in range(5):  # other models answer while the loop spins
        assert post(env, "/v1/models/dense:predict", {"instances": [[1, 2, 3, 4]]}).status_code == 200
    th.join(60)
    assert result["r"].status_code == 504, result["r"].text
    assert "deadline" in result["r"].json()["error"]
    assert result["s"] < 10


def test_kill_worker_mid_request(env):
    end = time.monotonic() + 300
    while not _workers(env, "slow")["spares"]:  # the warm spare is up
        assert time.monotonic() < end, _workers(env, "slow")
        time.sleep(0.5)
    before = _workers(env, "slow")
    pid = before["workers"][0]["pid"]
    spare_pid = before["spares"][0]["pid"]
    result: dict = {}
    th = threading.Thread(target=lambda: result.update(r=post(env, "/v1/models/slow:predict",
                                                             {"inputs": {"steps": 10 ** 12}})))
    th.start()
    end = time.monotonic() + 20
    while not _workers(env, "slow")["workers"][0]["busy"]:
        assert time.monotonic() < end
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    th.join(60)
    r = result["r"]
    failed_at = time.monotonic()
    assert r.status_code == 500 and "SIGKILL" in r.json()["error"], r.text
    ok = post(env, "/v1/models/slow:predict", {"inputs": {"steps": 10}})  # served by the warm spare at once
    served_after = time.monotonic() - failed_at
    assert ok.status_code == 200 and ok.json()["outputs"] == 10
    assert served_after < 1.0, served_after
    after = _workers(env, "slow")
    assert after["restarts"] == before["restarts"] + 1 and after["workers"][0]["pid"] == spare_pid
    assert after["last_replace_ms"] < 1000
    lost = [x for x in env.server.log_records() if x["event"] == "worker_restarted" and x.get("spare")]
    assert lost and lost[-1]["replace_ms"] < 1000
    assert post(env, "/v1/models/slow:predict", {"inputs": {"steps": 1000}}).json()["outputs"] == 1000


def test_worker_processes_are_sandboxed_children(env):
    pids = children(env.server.proc.pid)
    assert pids, "workers run as child processes of the server"
    pids += [g for p in list(pids) for g in children(p)]  # or of its worker template (sandbox/template.py)
    for info in _workers(env, "dense")["workers"]:
        assert info["pid"] in pids


# -- observability -----------------------------------------------------------------------------------


def test_metrics_after_failures(env):
    text = get(env, "/monitoring/prometheus/metrics", key="metrics").text
    assert 'modelwarden_requests_total{model="dense",api="predict",code="200"}' in text
    assert "modelwarden_request_duration_seconds_bucket" in text
    assert 'modelwarden_errors_total{model="",kind="unauthenticated"}' in text
    assert 'modelwarden_errors_total{model="dense",kind="forbidden"}' in text or "forbidden" in text
    assert 'modelwarden_worker_restarts_total{model="bomb"' in text
    assert 'modelwarden_sandbox_limit_hits_total{model="bomb",limit="memory"}' in text
    assert 'modelwarden_sandbox_limit_hits_total{model="endless",limit="deadline"}' in text
    assert 'modelwarden_workers{model="dense",version="1"} 1' in text


def test_access_log_has_who_and_outcome_never_tokens_or_data(env):
    marker = 987654.25
    assert post(env, "/v1/models/dense:predict", {"instances": [[marker, 2, 3, 4]]}, key="dense").status_code == 200
    time.sleep(0.2)
    text = env.server.log_file.read_text()
    for token in env.tokens.values():
        secret = token.split("_", 2)[2]  # mwt_<id>_<secret>; the secret itself may contain "_"
        assert len(secret) >= 40 and token not in text and secret not in text
    assert str(marker) not in text and "987654" not in text
    recs = env.server.log_records()
    access = [r for r in recs if r["event"] == "access" and r.get("token_id") == env.ids["dense"]]
    assert access and access[-1]["model"] == "dense" and access[-1]["status"] == 200 and access[-1]["api"] == "predict"
    assert any(r["event"] == "auth_failure" for r in recs)
    assert any(r["event"] == "scan_refused" and r["model"] == "refused" for r in recs)
    assert any(r["event"] == "worker_restarted" for r in recs)
