"""Server building blocks without a server: configuration parsers, tokens, request bounds, the codec."""

from __future__ import annotations

import gzip
import json
import os
import time
import zlib

import numpy as np
import pytest

from modelwarden.errors import InputError, UsageError
from modelwarden.sandbox.protocol import TensorSpec
from modelwarden.server import codec
from modelwarden.server.auth import AuthError, TokenStore, authorize, parse_expiry
from modelwarden.server.config import load_toml, model_configs_from_text
from modelwarden.server.limits import (
    ConcurrencyLimiter, RateLimiter, RequestError, decode_content, json_shape, parse_json,
)

TEXT = """
# TF Serving model config
model_config_list {
  config {
    name: 'dense'
    base_path: "/models/dense"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: 'stable' value: 1 }
    version_labels { key: 'canary' value: 2 }
  }
  config: {
    name: "latest3"
    base_path: "/models/l"
    model_version_policy: { latest: { num_versions: 3 } }
  }
  config < name: "every" base_path: "/models/e" model_version_policy < all {} > >
}
"""


def test_text_format_model_config_list():
    ms = model_configs_from_text("models.config", TEXT)
    assert [m.name for m in ms] == ["dense", "latest3", "every"]
    assert ms[0].version_policy == "specific" and ms[0].versions == (1, 2)
    assert ms[0].labels == {"stable": 1, "canary": 2}
    assert ms[1].version_policy == "latest" and ms[1].num_versions == 3
    assert ms[2].version_policy == "all"


@pytest.mark.parametrize("text,msg", [
    ("model_config_list { config { name: 'a' } }", "required"),
    ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'onnx' } }", "not supported"),
    ("model_config_list { config { name: 'a' base_path: '/x' bogus: 1 } }", "unknown field"),
    ("model_config_list { config { name: 'a' base_path: '/x'", "unterminated"),
    ("model_config_list " + "{ config " * 40, "nested deeper"),
    ("model_config_list { config { name: '../../etc' base_path: '/x' } }", "model names"),
    ("model_config_list { config { name: 'a:predict' base_path: '/x' } }", "model names"),
    ("other_thing { }", "unsupported top-level"),
    ("model_config_list { config { name: 'a' base_path: '/x' model_version_policy { latest {} all {} } } }", "exactly one"),
    ("model_config_list { config { name: 'a' base_path: '/x' version_labels { key: 'l' value: 'x' } } }", "integer"),
    ("model_config_list { config { name: 'a' base_path: '/x' } } $", "unexpected character"),
])
def test_text_format_errors_name_the_problem(text, msg):
    with pytest.raises(InputError, match=msg):
        model_configs_from_text("models.config", text)


def test_toml_config(tmp_path):
    (tmp_path / "models.config").write_text(TEXT.replace("/models/dense", "/m/d"))
    (tmp_path / "s.toml").write_text("""
[server]
host = "127.0.0.1"
port = 9000
token_db = "tok.json"
model_config_file = "models.config"
http_parser = "h11"
[server.tls]
cert = "c.pem"
key = "k.pem"
[limits]
max_body = "2MiB"
request_timeout = "5s"
rate_per_token = 10
[[models]]
name = "x"
base_path = "/srv/x"
versions = [3]
memory = "1GiB"
timeout = "500ms"
""")
    cfg = load_toml(str(tmp_path / "s.toml"))
    assert cfg.port == 9000 and cfg.token_db == str(tmp_path / "tok.json") and cfg.tls_cert == str(tmp_path / "c.pem")
    assert cfg.max_body_bytes == 2 << 20 and cfg.request_timeout_s == 5.0 and cfg.rate_per_token == 10.0
    assert cfg.http_parser == "h11"
    assert [m.name for m in cfg.models] == ["x", "dense", "latest3", "every"]
    assert cfg.models[0].version_policy == "specific" and cfg.models[0].timeout_s == 0.5
    assert cfg.models[1].base_path == "/m/d"


@pytest.mark.parametrize("body,msg", [
    ("[server]\nbogus = 1\n", "unknown key"), ("[server]\nport = 'x'\n", "wrong type"),
    ("[[models]]\nname='a'\nbase_path='/a'\n[[models]]\nname='a'\nbase_path='/b'\n", "twice"),
    ("[server.tls]\ncert = 'c'\n", "both"), ("not toml ===", "TOML"),
    ("[[models]]\nname='a'\nbase_path='/a'\nworkers=0\n", "workers"),
    ("[server]\nhttp_parser = 'fast'\n", "http_parser"),
])
def test_toml_errors(tmp_path, body, msg):
    (tmp_path / "s.toml").write_text(body)
    with pytest.raises(InputError, match=msg):
        load_toml(str(tmp_path / "s.toml"))


# -- tokens -----------------------------------------------------------------------------------------


def test_token_store_hashes_and_verifies(tmp_path):
    db = tmp_path / "t.json"
    store = TokenStore(str(db))
    token, rec = store.create(["dense"], "predict")
    assert token not in db.read_text() and rec.hash in db.read_text()
    server = TokenStore(str(db)).load()
    ident = server.authenticate(f"Bearer {token}")
    assert ident.token_id == rec.id
    authorize(ident, "predict", "dense")
    authorize(ident, "metadata", "dense")
    for scope, model in (("predict", "other"), ("admin", "dense"), ("metrics", None)):
        with pytest.raises(AuthError) as e:
            authorize(ident, scope, model)
        assert e.value.status == 403
    for header in (None, "", "Bearer", f"Basic {token}", f"Bearer {token}x", f"Bearer {token[:-1]}",
                   "Bearer mwt_" + rec.id + "_" + "A" * 43):
        with pytest.raises(AuthError) as e:
            server.authenticate(header)
        assert e.value.status == 401
    store.revoke(rec.id)
    server.refresh(min_interval=0)
    with pytest.raises(AuthError, match="revoked"):
        server.authenticate(f"Bearer {token}")


def test_token_expiry_and_fail_closed(tmp_path):
    db = tmp_path / "t.json"
    token, _ = TokenStore(str(db)).create(["*"], "admin", expires=time.time() - 1)
    with pytest.raises(AuthError, match="expired"):
        TokenStore(str(db)).load().authenticate(f"Bearer {token}")
    token2, _ = TokenStore(str(db)).create(["*"], "admin")
    server = TokenStore(str(db)).load()
    server.authenticate(f"Bearer {token2}")
    db.write_text("{broken")
    server.refresh(min_interval=0)
    with pytest.raises(AuthError, match="unavailable"):
        server.authenticate(f"Bearer {token2}")


def test_parse_expiry():
    assert parse_expiry("2h", now=100.0) == 100.0 + 7200
    assert parse_expiry("2030-01-01T00:00:00Z") == 1893456000.0
    with pytest.raises(UsageError):
        parse_expiry("soon")


# -- request bounds ---------------------------------------------------------------------------------


def test_json_shape_ignores_strings_and_is_linear():
    assert json_shape(b'{"a": "[[[{{{,,,", "b": [[1, 2], [3]]}') == (3, 4)
    assert json_shape(json.dumps({"s": '\\"[[', "t": [1]}).encode()) == (2, 2)
    t0 = time.perf_counter()
    json_shape(b'"' + b'\\"' * 5_000_000)  # unterminated escapes: no quadratic blow-up
    json_shape(b"[" * 10_000_000)
    assert time.perf_counter() - t0 < 5


def test_parse_json_bounds():
    assert parse_json(b'{"a": [NaN, Infinity, -Infinity]}', 10, 100)["a"][1] == float("inf")
    for body, status in ((b"[" * 100 + b"]" * 100, 400), (b"[" + b"1," * 200 + b"1]", 413), (b"nope", 400),
                         (b"  ", 400), (b'"\xff"', 400)):
        with pytest.raises(RequestError) as e:
            parse_json(body, 50, 100)
        assert e.value.status == status


def test_decode_content_caps():
    data = b"x" * 100_000
    assert decode_content(gzip.compress(data), "gzip", 1 << 20, 1000) == data
    assert decode_content(zlib.compress(data), "deflate", 1 << 20, 1000) == data
    for body, enc, status in ((gzip.compress(data), "gzip", 413),  # ratio > 10
                              (gzip.compress(b"y" * (2 << 20)), "gzip", 413),  # absolute
                              (gzip.compress(os.urandom(1000))[:-10], "gzip", 400), (b"junk", "gzip", 400),
                              (gzip.compress(b"a") + gzip.compress(b"b"), "gzip", 400), (b"x", "zstd", 415)):
        with pytest.raises(RequestError) as e:
            decode_content(body, enc, 1 << 20, 10)
        assert e.value.status == status


def test_rate_and_concurrency_limiters():
    r = RateLimiter(rate=1.0, burst=3)
    for _ in range(3):
        r.check("a")
    with pytest.raises(RequestError) as e:
        r.check("a")
    assert e.value.status == 429 and e.value.retry_after >= 1
    r.check("b")
    c = ConcurrencyLimiter(2)
    c.enter()
    c.enter()
    with pytest.raises(RequestError) as e:
        c.enter()
    assert e.value.status == 503 and e.value.retry_after
    c.leave()
    c.enter()


# -- codec ------------------------------------------------------------------------------------------

SPECS = {"x": TensorSpec("x", "float32", (None, 4))}
MULTI = {"a": TensorSpec("a", "float32", (None, 2)), "b": TensorSpec("b", "int32", (None,))}


def _parse(doc, specs=SPECS):
    return codec.parse_predict(doc, lambda _n: specs, 10_000)


def test_codec_row_and_columnar():
    req = _parse({"instances": [[1, 2, 3, 4]]})
    assert req.row_format and req.inputs["x"].dtype == np.float32 and req.inputs["x"].shape == (1, 4)
    req = _parse({"inputs": {"a": [[1, 2]], "b": [7]}}, MULTI)
    assert not req.row_format and req.inputs["b"].dtype == np.int32
    req = _parse({"instances": [{"a": [1, 2], "b": 1}, {"a": [3, 4], "b": 2}]}, MULTI)
    assert req.inputs["a"].shape == (2, 2) and list(req.inputs["b"]) == [1, 2]


@pytest.mark.parametrize("doc,specs,msg", [
    ({"instances": [[1, 2, 3, 4]], "inputs": []}, SPECS, "only one of 'inputs' or 'instances'"),
    ({}, SPECS, "Missing"),
    ({"instances": [{"a": [1, 2], "b": 1.5}]}, MULTI, "integers"),
    ({"instances": [{"a": [1, 2], "b": 2 ** 40}]}, MULTI, "out of range"),
    ({"instances": [{"a": [1, 2]}]}, MULTI, "missing"),
    ({"instances": [{"a": [1, 2], "b": 1, "c": 2}]}, MULTI, "named input"),
    ({"instances": [[1, 2], [1]]}, SPECS, "consistent"),
    ({"instances": [["a", "b"]]}, SPECS, "DT_STRING"),
    ({"instances": [{"b64": "AAA="}]}, SPECS, "DT_STRING"),
    ({"inputs": [[1, 2]]}, MULTI, "naming them"),
    ({"instances": [[True, False]]}, SPECS, "booleans"),
])
def test_codec_rejections(doc, specs, msg):
    with pytest.raises(RequestError, match=msg) as e:
        _parse(doc, specs)
    assert e.value.status == 400


def test_codec_b64_uint8_and_output_shapes():
    specs = {"data": TensorSpec("data", "uint8", (None, None))}
    req = _parse({"instances": [{"b64": "AQID"}, {"b64": "BAUG"}]}, specs)
    assert req.inputs["data"].tolist() == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(RequestError, match="different lengths"):
        _parse({"instances": [{"b64": "AQID"}, {"b64": "BA=="}]}, specs)
    out = {"y": np.array([[1.0, np.nan]], np.float32)}
    assert codec.format_predict(out, True) == b'{"predictions":[[1.0,NaN]]}'
    two = {"p": np.array([1, 2]), "q": np.array([[1.5], [2.5]])}
    assert json.loads(codec.format_predict(two, True)) == {"predictions": [{"p": 1, "q": [1.5]}, {"p": 2, "q": [2.5]}]}
    assert json.loads(codec.format_predict(two, False)) == {"outputs": {"p": [1, 2], "q": [[1.5], [2.5]]}}
    with pytest.raises(RequestError, match="inconsistent batch"):
        codec.format_predict({"p": np.array([1, 2]), "q": np.array([1])}, True)


def test_audit_log_lines_are_whole_ascii_json(tmp_path):
    """One write per line; whatever a client put in a field (bidi overrides, escapes, a lone
    surrogate, objects) ends up JSON-escaped ASCII, never raw bytes or a lost line."""
    import json as _json

    from modelwarden.server.log import AuditLog

    path = tmp_path / "audit.log"
    log = AuditLog(str(path))
    fields = [{"path": "/v1/models/x\u202e\x1b[2J"}, {"path": "/\ud800"}, {"obj": object()}, {"ms": 0.52, "status": 200},
              {"model": "caf\u00e9", "skipped": None}]
    for f in fields:
        log.write("access", **f)
    log.close()
    raw = path.read_bytes()
    assert raw.isascii() and raw.endswith(b"\n")
    lines = [_json.loads(x) for x in raw.decode().splitlines()]
    assert [x["event"] for x in lines] == ["access"] * 5
    assert lines[0]["path"] == "/v1/models/x\u202e\x1b[2J" and lines[1]["path"] == "/\ud800"
    assert lines[2]["obj"].startswith("<object") and lines[3]["ms"] == 0.52 and lines[4] == {
        "ts": lines[4]["ts"], "event": "access", "model": "caf\u00e9"}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
