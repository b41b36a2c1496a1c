"""TF Serving REST conformance: status codes, JSON shapes and messages of TF Serving's REST handler
(``http_rest_api_handler.cc``, ``json_tensor.cc``, ``get_model_metadata_impl.cc``), checked against a
real ``modelwarden serve`` process with real sandboxed TensorFlow workers.

Each case names the TF Serving behaviour it holds the server to; the deliberate deviations are
listed in docs/serve.md ("Deviations from TensorFlow Serving").
"""

from __future__ import annotations

import json
import re
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.test_server_e2e import Served, make_token, namespaces_available, running_server

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.skipif(not namespaces_available(), reason="Linux namespaces unavailable (sandbox)")


@pytest.fixture(scope="module")
def srv(tmp_path_factory, fixture_dir):
    serve = fixture_dir("build_serve_models")
    work = tmp_path_factory.mktemp("conformance")
    db = work / "tokens.json"
    tokens = {"admin": make_token(db, ["*"], "admin")[0]}
    models = "".join(f'[[models]]\nname = "{n}"\nbase_path = "{serve / n}"\nspare_workers = 0\n'
                     for n in ("dense", "multi", "strings", "examples"))
    with running_server(work, f'[server]\ntoken_db = "{db}"\nport = 0\n[limits]\nmax_body = "1MiB"\n'
                        f'[batching]\nenabled = true\nmax_batch_size = 8\nbatch_timeout = "20ms"\n{models}') as (server, url):
        yield Served(server, url, tokens)


def call(s: Served, method: str, path: str, body: bytes | str | dict | None = None, **headers) -> httpx.Response:
    content = json.dumps(body) if isinstance(body, dict) else body
    return httpx.request(method, s.url + path, content=content, timeout=60,
                         headers={"Authorization": f"Bearer {s.tokens['admin']}", **headers})


def error_of(r: httpx.Response, status: int) -> str:
    """TF Serving: every failure is ``{"error": "<message>"}`` with Content-Type application/json."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert list(doc) == ["error"] and isinstance(doc["error"], str) and doc["error"]
    return doc["error"]


# -- responses ------------------------------------------------------------------------------------


def test_classify_and_regress_answer_results(srv):
    r = call(srv, "POST", "/v1/models/examples:classify", {"examples": [{"x": [0.0, 0.0]}]})
    assert r.status_code == 200 and list(r.json()) == ["results"]
    assert r.json()["results"] == [[["neg", 0.5], ["pos", 0.5]]]
    r = call(srv, "POST", "/v1/models/examples:regress",
             {"signature_name": "regress", "examples": [{"x": [1.5, 2.5], "n": 1, "tag": "ab"}]})
    assert r.status_code == 200 and r.text.replace(" ", "") == '{"results":[7.0]}'


def test_metadata_has_init_op_signature_and_defaults(srv):
    sigs = call(srv, "GET", "/v1/models/dense/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert sigs["__saved_model_init_op"] == {
        "inputs": {}, "method_name": "", "defaults": {},
        "outputs": {"__saved_model_init_op": {"dtype": "DT_INVALID", "name": "NoOp",
                                              "tensor_shape": {"dim": [], "unknown_rank": True}}}}
    assert sigs["serving_default"]["defaults"] == {}
    # a TF1 SavedModel without an init signature shows none (TF Serving lists what the MetaGraph has)
    tf1 = call(srv, "GET", "/v1/models/examples/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert "__saved_model_init_op" not in tf1 and tf1["classify"]["method_name"] == "tensorflow/serving/classify"


def test_float_output_formatting_is_tf_servings(srv):
    """WriteDecimal: %g (6 digits) when it round-trips to the same float32, else 9 digits; '.0' on whole numbers."""
    r = call(srv, "POST", "/v1/models/dense:predict", {"instances": [[1 / 3, 0.1, 7.7, 1e-7], [1, 2, 3, 4], [0, 0, 0, 0]]})
    assert r.status_code == 200
    tokens = re.findall(r"-?[0-9][0-9.e+\-]*", r.text)
    assert len(tokens) == 6
    for tok in tokens:
        v = np.float32(float(tok))
        short = "%.6g" % float(v)
        want = short if np.float32(float(short)) == v else "%.9g" % float(v)
        if "." not in want and "e" not in want:
            want += ".0"
        assert tok == want, (tok, want)


# -- request parsing --------------------------------------------------------------------------------


def test_unknown_top_level_keys_are_ignored(srv):
    r = call(srv, "POST", "/v1/models/dense:predict", {"instances": [[1, 2, 3, 4]], "foo": 1, "meta": {"x": [1]}})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    r = call(srv, "POST", "/v1/models/examples:classify", {"examples": [{"x": [0.0, 0.0]}], "extra": True})
    assert r.status_code == 200


def test_extra_named_inputs_columnar_ignored_row_refused(srv):
    r = call(srv, "POST", "/v1/models/multi:predict", {"inputs": {"a": [[1, 2]], "b": [3], "unused": [[9]]}})
    assert r.status_code == 200 and r.json()["outputs"]["twice"] == [6]
    err = error_of(call(srv, "POST", "/v1/models/multi:predict", {"inputs": {"a": [[1, 2]]}}), 400)
    assert err == "Missing named input: b in 'inputs' object."
    err = error_of(call(srv, "POST", "/v1/models/multi:predict", {"instances": [{"a": [1, 2], "b": 3, "c": 1}]}), 400)
    assert "does not have named input: c" in err


@pytest.mark.parametrize("literal,value", [("Inf", "Infinity"), ("-Inf", "-Infinity"), ("Infinity", "Infinity"),
                                           ("-Infinity", "-Infinity"), ("NaN", "NaN"), ("-NaN", "NaN")])
def test_non_finite_spellings_rapidjson_accepts(srv, literal, value):
    r = call(srv, "POST", "/v1/models/multi:predict", '{"inputs": {"a": [[%s, 0]], "b": [1]}}' % literal)
    assert r.status_code == 200, r.text
    assert re.search(r'"total":\s*\[\s*' + re.escape(value), r.text)


def test_non_finite_words_inside_strings_are_untouched(srv):
    r = call(srv, "POST", "/v1/models/strings:predict", '{"instances": ["Inf", "NaN"], "x": NaN}')
    assert r.status_code == 200, r.text
    assert [p["upper"] for p in r.json()["predictions"]] == ["INF", "NAN"]


@pytest.mark.parametrize("body", ['{"instances": ["\\ud800"]}', '{"instances": ["a\\udfff"], "pad": NaN}'])
def test_lone_surrogate_is_400_not_500(srv, body):
    error_of(call(srv, "POST", "/v1/models/strings:predict", body), 400)


@pytest.mark.parametrize("value,target", [("16777217", "float"), ("1e39", "float")])
def test_lossy_conversions_refused_like_is_lossless_decimal(srv, value, target):
    err = error_of(call(srv, "POST", "/v1/models/dense:predict", '{"instances": [[%s, 0, 0, 0]]}' % value), 400)
    assert f"to {target} without loss of precision" in err
    assert call(srv, "POST", "/v1/models/dense:predict", '{"instances": [[16777215, 0, 0, 0]]}').status_code == 200


# -- routes and HTTP-level errors ----------------------------------------------------------------------


def test_routes_are_case_insensitive_like_re2_i(srv):
    r = call(srv, "POST", "/V1/Models/dense:PREDICT", {"instances": [[1, 2, 3, 4]]})
    assert r.status_code == 200, r.text
    assert call(srv, "GET", "/V1/MODELS/dense/VERSIONS/2/METADATA").status_code == 200


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/models/dense/"), ("GET", "/v1/models/dense/metadata/"), ("POST", "/v1/models/dense:predict/"),
    ("GET", "/v1/models/dense:predict"), ("PUT", "/v1/models/dense:predict"), ("DELETE", "/v1/models/dense"),
    ("POST", "/v1/models/dense"), ("GET", "/v1/nothing")])
def test_malformed_v1_requests_are_400_like_tf_serving(srv, method, path):
    err = error_of(call(srv, method, path, b"{}" if method in ("POST", "PUT") else None), 400)
    assert err.startswith(f"Malformed request: {method} ")


def test_missing_model_name_and_bad_version(srv):
    assert error_of(call(srv, "GET", "/v1/models"), 400) == "Missing model name in request."
    err = error_of(call(srv, "GET", "/v1/models/dense/versions/99999999999999999999"), 400)
    assert err.startswith("Failed to convert version")
    assert "Servable not found" in error_of(call(srv, "GET", "/v1/models/dense/versions/7/metadata"), 404)


def test_http_level_errors_are_json(srv):
    error_of(call(srv, "GET", "/no/such/route"), 404)
    error_of(call(srv, "POST", "/healthz", b""), 405)
    error_of(call(srv, "POST", "/v1/models/dense:predict", b"[" * 10 + b"1" * (2 << 20)), 413)
    error_of(call(srv, "POST", "/v1/models/dense:predict", b"{}", **{"Content-Encoding": "br"}), 415)
    error_of(httpx.get(srv.url + "/v1/models/dense", timeout=10), 401)


def test_uvicorn_level_bad_request_is_json(srv):
    """A request the HTTP parser refuses still gets TF Serving's error shape (and the connection closes)."""
    with socket.create_connection(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])), timeout=10) as c:
        c.sendall(b"GET /v1/models/dense HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n")
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head.lower()
    assert isinstance(json.loads(body)["error"], str)


# -- model errors ----------------------------------------------------------------------------------


def test_tensorflow_errors_carry_tf_message_without_host_detail(srv):
    err = error_of(call(srv, "POST", "/v1/models/examples:regress",
                        {"signature_name": "regress", "examples": [{"y": [1.0]}]}), 400)
    assert "required" in err  # TF's own message
    assert "Traceback" not in err and 'File "' not in err and "most recent call last" not in err
    assert not re.search(r"/(usr|root|home|tmp|work|opt)/", err), err
    assert not re.match(r"\w+Error: ", err)  # TF Serving shows the Status message, not the Python type


# -- batching (this server runs with [batching] enabled) ---------------------------------------------


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(srv):
    rows = [[float(i), 1.0, 2.0, float(-i)] for i in range(24)]

    def one(i: int) -> tuple[int, list]:
        body = {"instances": [rows[i]]} if i % 3 else {"instances": [rows[i], rows[i]]}
        r = call(srv, "POST", "/v1/models/dense:predict", body)
        return r.status_code, r.json().get("predictions")

    singles = {i: call(srv, "POST", "/v1/models/dense:predict", {"instances": [rows[i]]}).json()["predictions"][0]
               for i in range(24)}
    # batching is adaptive (a request that finds a worker idle runs at once): batches form only when
    # requests arrive while both workers are busy, which depends on the host's timing - a few rounds
    before = call(srv, "GET", "/modelwarden/v1/models/dense/versions/2/workers").json()["batching"]
    for _ in range(8):
        with ThreadPoolExecutor(12) as ex:
            got = list(ex.map(one, range(24)))
        for i, (status, preds) in enumerate(got):
            assert status == 200
            assert len(preds) == (1 if i % 3 else 2)
            for p in preds:
                assert p == pytest.approx(singles[i], rel=1e-6)
        after = call(srv, "GET", "/modelwarden/v1/models/dense/versions/2/workers").json()["batching"]
        if after["batched_requests"] > before["batched_requests"]:
            break
    assert after["batched_requests"] > before["batched_requests"], (before, after)


def test_a_bad_request_in_a_batch_fails_alone(srv):
    def one(i: int) -> int:
        body = '{"instances": [[1, 2, 3, 4]]}' if i else '{"instances": [[1, 2, 3]]}'
        return call(srv, "POST", "/v1/models/dense:predict", body).status_code

    with ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(one, range(8)))
    assert codes[0] == 400 and codes[1:] == [200] * 7
