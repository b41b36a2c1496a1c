"""TensorFlow Serving's gRPC API end to end: a real ``modelwarden serve --grpc-port`` process on 127.0.0.1,
real sandboxed TensorFlow workers, and a client written for TF Serving — the ``tensorflow-serving-api``
package's own stubs and messages, ``tf.make_tensor_proto`` / ``tf.make_ndarray`` — changed only to send
a bearer token.

The client runs in its own process (it imports TensorFlow; this test process never does): a small
interpreter that executes each test's client code and answers JSON (``result``, or the gRPC status
code and details).  ``GrpcClient`` is imported by the other gRPC test modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_server_e2e import ServerProc, copy_version, make_token, namespaces_available

CLIENT = r'''
import json, sys, traceback
import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2, inference_pb2,
    input_pb2, model_pb2, predict_pb2, regression_pb2)
from tensorflow_serving.apis.prediction_service_pb2_grpc import PredictionServiceStub
from tensorflow_serving.apis.model_service_pb2_grpc import ModelServiceStub

NO_PROXY = [("grpc.enable_http_proxy", 0)]

def channel(target, ca=None, cert=None, key=None):
    assert target.startswith("127.0.0.1:"), target  # tests talk to loopback only
    if ca is None:
        return grpc.insecure_channel(target, options=NO_PROXY)
    read = lambda p: open(p, "rb").read() if p else None
    creds = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
    return grpc.secure_channel(target, creds, options=NO_PROXY + [("grpc.ssl_target_name_override", "localhost")])

def auth(token):
    return [("authorization", "Bearer " + token)]

TARGET = sys.argv[1]
ch = channel(TARGET)
stub, models = PredictionServiceStub(ch), ModelServiceStub(ch)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    ns = dict(globals())
    ns.update(cmd["vars"])
    try:
        exec(cmd["code"], ns)
        out = {"ok": True, "result": ns.get("result")}
    except grpc.RpcError as e:
        out = {"ok": False, "code": e.code().name, "details": e.details()}
    except Exception:
        out = {"ok": False, "code": "CLIENT_ERROR", "details": traceback.format_exc()}
    print(json.dumps(out, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)), flush=True)
'''


def require_client() -> None:
    """Skip unless grpcio and tensorflow-serving-api are installed (looked up without importing TensorFlow)."""
    import importlib.util

    pytest.importorskip("grpc")
    if importlib.util.find_spec("tensorflow_serving") is None:
        pytest.skip("tensorflow-serving-api not installed (pip install --no-deps tensorflow-serving-api)")


class GrpcClient:
    """A TF Serving client process; ``call(code, **vars)`` runs ``code`` there (it sets ``result``)."""

    def __init__(self, target: str, workdir: Path) -> None:
        require_client()
        script = workdir / "tfs_client.py"
        script.write_text(CLIENT)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
        self.errors = open(workdir / "client.err", "wb")
        self.proc = subprocess.Popen([sys.executable, str(script), target], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errors, text=True, env=env)
        first = self.proc.stdout.readline()
        if not first:
            self.errors.flush()
            raise RuntimeError(f"gRPC client did not start: {(workdir / 'client.err').read_text()[-3000:]}")

    def call(self, code: str, **variables) -> dict:
        self.proc.stdin.write(json.dumps({"code": code, "vars": variables}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "gRPC client process died"
        out = json.loads(line)
        assert out.get("code") != "CLIENT_ERROR", out["details"]
        return out

    def ok(self, code: str, **variables):
        out = self.call(code, **variables)
        assert out["ok"], out
        return out["result"]

    def error(self, code: str, **variables) -> tuple[str, str]:
        out = self.call(code, **variables)
        assert not out["ok"], out
        return out["code"], out["details"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errors.close()


def grpc_server(workdir: Path, args: list[str]) -> tuple[ServerProc, int]:
    """``modelwarden serve ... --grpc-port 0``; returns the process and its gRPC port once listening."""
    port_file = workdir / "grpc_port.txt"
    server = ServerProc(workdir, [*args, "--grpc-port", "0", "--grpc-port-file", str(port_file)])
    server.wait_listening()
    return server, int(port_file.read_text())


pytestmark = [
    pytest.mark.skipif(not namespaces_available(), reason="Linux namespaces unavailable (sandbox)"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
W = [[0.0, 0.1], [0.2, 0.3], [0.4, 0.5], [0.6, 0.7]]
B = [0.5, -0.5]


def dense(x: list[list[float]], version: int = 1) -> list[list[float]]:
    return [[sum(r[k] * W[k][j] * version for k in range(4)) + B[j] for j in range(2)] for r in x]


def close(got, want) -> bool:
    import numpy as np

    return np.shape(got) == np.shape(want) and np.allclose(got, want, rtol=1e-5, atol=1e-6)


class Env:
    client: GrpcClient
    server: ServerProc
    url: str
    tokens: dict[str, str]
    ids: dict[str, str]
    models: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory, fixture_dir):
    require_client()
    serve = fixture_dir("build_serve_models")
    escape = fixture_dir("build_escape")
    work = tmp_path_factory.mktemp("grpc")
    copy_version(escape / "memory_bomb", work / "models" / "refused")
    copy_version(escape / "memory_bomb", work / "models" / "bomb")
    copy_version(escape / "endless", work / "models" / "endless")
    db = work / "tokens.json"
    e = Env()
    e.models = work / "models"
    e.tokens, e.ids = {}, {}
    for key, model, scope in (("admin", "*", "admin"), ("dense", "dense", "predict"), ("meta", "dense", "metadata"),
                              ("all", "*", "predict")):
        e.tokens[key], e.ids[key] = make_token(db, [model], scope)
    models = "".join(f'[[models]]\nname = "{n}"\nbase_path = "{serve / n}"\n' for n in ("multi", "strings", "examples",
                                                                                        "slow"))
    (work / "serve.toml").write_text(f"""
[server]
token_db = "{db}"
port = 0
[limits]
max_body = "1MiB"
max_json_elements = 50000
request_timeout = "30s"
[[models]]
name = "dense"
base_path = "{serve / 'dense'}"
version_policy = "all"
labels = {{ stable = 1, canary = 2 }}
[[models]]
name = "refused"
base_path = "{work / 'models' / 'refused'}"
[[models]]
name = "bomb"
base_path = "{work / 'models' / 'bomb'}"
fail_on = "high"
memory = "768MiB"
[[models]]
name = "endless"
base_path = "{work / 'models' / 'endless'}"
timeout = "2s"
{models}""")
    server, grpc_port = grpc_server(work, ["--config", str(work / "serve.toml")])
    client = None
    try:
        e.server = server
        e.url = f"http://127.0.0.1:{server.port}"
        server.wait_ready(e.url)
        client = e.client = GrpcClient(f"127.0.0.1:{grpc_port}", work)
        yield e
    finally:
        if client:
            client.close()
        server.stop()


# -- Predict ----------------------------------------------------------------------------------------

PREDICT = '''
req = predict_pb2.PredictRequest()
req.model_spec.name = model
if version: req.model_spec.version.value = version
if label: req.model_spec.version_label = label
if signature: req.model_spec.signature_name = signature
for k, v in inputs.items():
    req.inputs[k].CopyFrom(tf.make_tensor_proto(np.array(v, dtype=dtypes[k])))
req.output_filter.extend(output_filter)
resp = stub.Predict(req, timeout=timeout, metadata=auth(token))
result = {"outputs": {k: tf.make_ndarray(t) for k, t in resp.outputs.items()},
          "spec": [resp.model_spec.name, resp.model_spec.version.value, resp.model_spec.signature_name]}
'''


def predict(e: Env, model: str, inputs: dict, dtypes: dict, *, key: str = "admin", version: int = 0, label: str = "",
            signature: str = "", output_filter: tuple = (), timeout: float = 60, expect_error: bool = False):
    kw = dict(model=model, inputs=inputs, dtypes=dtypes, token=e.tokens[key], version=version, label=label,
              signature=signature, output_filter=list(output_filter), timeout=timeout)
    return e.client.error(PREDICT, **kw) if expect_error else e.client.ok(PREDICT, **kw)


def test_predict_float_tensor_content(env):
    x = [[1, 2, 3, 4], [0.5, 0, 0, -1]]
    r = predict(env, "dense", {"x": x}, {"x": "float32"})
    assert close(r["outputs"]["y"], dense(x, 2))
    assert r["spec"] == ["dense", 2, "serving_default"]  # the latest version answered, named in the response


def test_predict_typed_value_fields_and_reading_float_val(env):
    """A request written field by field (float_val, dims), and a reply read the same way."""
    r = env.client.ok('''
req = predict_pb2.PredictRequest()
req.model_spec.name = "dense"
req.model_spec.version.value = 1
t = req.inputs["x"]
t.dtype = tf.float32.as_datatype_enum
t.tensor_shape.dim.add(size=2)
t.tensor_shape.dim.add(size=4)
t.float_val.extend([1, 2, 3, 4, 7])  # 8 values needed: TensorFlow repeats the last one
resp = stub.Predict(req, timeout=60, metadata=auth(token))
y = resp.outputs["y"]
result = [list(y.float_val), [d.size for d in y.tensor_shape.dim], y.dtype == tf.float32.as_datatype_enum,
          len(y.tensor_content)]
''', token=env.tokens["dense"])
    values, dims, is_float, content = r
    assert dims == [2, 2] and is_float and content == 0  # typed fields, as TF Serving answers by default
    assert values == pytest.approx([v for row in dense([[1, 2, 3, 4], [7, 7, 7, 7]]) for v in row], rel=1e-5)


def test_version_label_and_signature_selection(env):
    x = [[1, 1, 1, 1]]
    one = predict(env, "dense", {"x": x}, {"x": "float32"}, version=1)
    assert close(one["outputs"]["y"], dense(x, 1)) and one["spec"][1] == 1
    for label, version in (("stable", 1), ("canary", 2)):
        r = predict(env, "dense", {"x": x}, {"x": "float32"}, label=label)
        assert close(r["outputs"]["y"], dense(x, version)) and r["spec"][1] == version
    r = predict(env, "dense", {"x": x}, {"x": "float32"}, signature="serving_default")
    assert r["spec"][2] == "serving_default"
    code, msg = predict(env, "dense", {"x": x}, {"x": "float32"}, version=7, expect_error=True)
    assert code == "NOT_FOUND" and "Specific(dense, 7)" in msg
    code, msg = predict(env, "dense", {"x": x}, {"x": "float32"}, label="nope", expect_error=True)
    assert code == "NOT_FOUND" and "nope" in msg
    code, msg = predict(env, "dense", {"x": x}, {"x": "float32"}, signature="other", expect_error=True)
    assert code == "INVALID_ARGUMENT" and "other" in msg
    code, _ = predict(env, "nosuchmodel", {"x": x}, {"x": "float32"}, expect_error=True)
    assert code == "NOT_FOUND"


def test_predict_int_tensors_and_output_filter(env):
    r = predict(env, "multi", {"a": [[1, 2], [3, 4.5]], "b": [5, -7]}, {"a": "float32", "b": "int32"})
    assert r["outputs"]["total"] == pytest.approx([3, 7.5]) and r["outputs"]["twice"] == [10, -14]
    r = predict(env, "multi", {"a": [[1, 2]], "b": [3]}, {"a": "float32", "b": "int32"}, output_filter=("twice",))
    assert set(r["outputs"]) == {"twice"} and r["outputs"]["twice"] == [6]
    # int_val written by hand, one value broadcast over the shape
    r = env.client.ok('''
req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="multi"))
req.inputs["a"].CopyFrom(tf.make_tensor_proto([[0.5, 0.5], [1, 1], [2, 2]], dtype=tf.float32))
b = req.inputs["b"]
b.dtype = tf.int32.as_datatype_enum
b.tensor_shape.dim.add(size=3)
b.int_val.append(21)
resp = stub.Predict(req, timeout=60, metadata=auth(token))
result = [list(resp.outputs["twice"].int_val), list(resp.outputs["total"].float_val)]
''', token=env.tokens["admin"])
    assert r == [[42, 42, 42], [1.0, 2.0, 4.0]]
    code, msg = predict(env, "multi", {"a": [[1, 2]], "b": [3]}, {"a": "float32", "b": "int32"},
                        output_filter=("nope",), expect_error=True)
    assert code == "INVALID_ARGUMENT" and "nope" in msg


def test_predict_string_tensors(env):
    r = env.client.ok(r'''
req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="strings"))
req.inputs["text"].CopyFrom(tf.make_tensor_proto([b"abc", "\u00e9t\u00e9".encode(), b"\xff\x00x"]))
resp = stub.Predict(req, timeout=60, metadata=auth(token))
result = {k: [v.hex() if isinstance(v, bytes) else v for v in tf.make_ndarray(t).tolist()]
          for k, t in resp.outputs.items()}
''', token=env.tokens["all"])
    assert r["upper"] == [b"ABC".hex(), "c3a954c3a9", b"\xff\x00X".hex()]  # tf.strings.upper: ASCII only
    assert r["length"] == [3, 5, 3]
    assert r["echo_bytes"] == [b"abc".hex(), "\u00e9t\u00e9".encode().hex(), b"\xff\x00x".hex()]


# -- Classify, Regress, MultiInference ----------------------------------------------------------------

EXAMPLES = '''
def example(**features):
    ex = tf.train.Example()
    for k, v in features.items():
        f = ex.features.feature[k]
        if isinstance(v[0], bytes): f.bytes_list.value.extend(v)
        elif isinstance(v[0], int): f.int64_list.value.extend(v)
        else: f.float_list.value.extend(v)
    return ex
inp = input_pb2.Input()
inp.example_list_with_context.context.CopyFrom(example(scale=[2.0]))
inp.example_list_with_context.examples.extend([example(x=[1.0, 2.0]), example(x=[0.5, 0.5], n=[3], tag=[b"ab"])])
'''


def test_classify_and_regress(env):
    import math

    r = env.client.ok(EXAMPLES + '''
req = classification_pb2.ClassificationRequest(input=inp)
req.model_spec.name = "examples"
req.model_spec.signature_name = "classify"
resp = stub.Classify(req, timeout=60, metadata=auth(token))
result = {"classes": [[(c.label, c.score) for c in cl.classes] for cl in resp.result.classifications],
          "spec": [resp.model_spec.name, resp.model_spec.version.value, resp.model_spec.signature_name]}
rreq = regression_pb2.RegressionRequest(input=inp)
rreq.model_spec.name = "examples"
rreq.model_spec.signature_name = "regress"
result["values"] = [r.value for r in stub.Regress(rreq, timeout=60, metadata=auth(token)).result.regressions]
''', token=env.tokens["all"])
    assert r["spec"] == ["examples", 1, "classify"]

    def softmax(a, b):
        ea, eb = math.exp(a), math.exp(b)
        return [ea / (ea + eb), eb / (ea + eb)]

    for row, x in zip(r["classes"], ([2.0, 4.0], [1.0, 1.0])):  # context scale 2 applies to both examples
        assert [c[0] for c in row] == ["neg", "pos"]
        assert [c[1] for c in row] == pytest.approx(softmax(*x), rel=1e-5)
    assert r["values"] == pytest.approx([6.0, 2.0 + 3 + 2])


def test_classify_refuses_the_wrong_signature_kind(env):
    code, msg = env.client.error(EXAMPLES + '''
req = classification_pb2.ClassificationRequest(input=inp)
req.model_spec.name = "examples"
req.model_spec.signature_name = "regress"
stub.Classify(req, timeout=60, metadata=auth(token))
''', token=env.tokens["all"])
    assert code == "INVALID_ARGUMENT" and "tensorflow/serving/classify" in msg
    code, msg = env.client.error(EXAMPLES + '''
req = regression_pb2.RegressionRequest(input=inp, model_spec=model_pb2.ModelSpec(name="dense"))
stub.Regress(req, timeout=60, metadata=auth(token))
''', token=env.tokens["all"])
    assert code == "INVALID_ARGUMENT" and "regression" in msg
    code, msg = env.client.error('''
req = classification_pb2.ClassificationRequest(model_spec=model_pb2.ModelSpec(name="examples"))
stub.Classify(req, timeout=60, metadata=auth(token))
''', token=env.tokens["all"])
    assert code == "INVALID_ARGUMENT" and "Input is empty" in msg


def test_multi_inference(env):
    r = env.client.ok(EXAMPLES + '''
req = inference_pb2.MultiInferenceRequest(input=inp)
for sig, method in (("classify", "tensorflow/serving/classify"), ("regress", "tensorflow/serving/regress")):
    t = req.tasks.add(method_name=method)
    t.model_spec.name = "examples"
    t.model_spec.signature_name = sig
resp = stub.MultiInference(req, timeout=60, metadata=auth(token))
result = [[r.model_spec.signature_name, r.WhichOneof("result"),
           len(r.classification_result.classifications), [x.value for x in r.regression_result.regressions]]
          for r in resp.results]
''', token=env.tokens["all"])
    assert r[0][:3] == ["classify", "classification_result", 2]
    assert r[1][:2] == ["regress", "regression_result"] and r[1][3] == pytest.approx([6.0, 7.0])
    code, msg = env.client.error(EXAMPLES + '''
req = inference_pb2.MultiInferenceRequest(input=inp)
for _ in range(2):
    t = req.tasks.add(method_name="tensorflow/serving/regress")
    t.model_spec.name = "examples"
    t.model_spec.signature_name = "regress"
stub.MultiInference(req, timeout=60, metadata=auth(token))
''', token=env.tokens["all"])
    assert code == "INVALID_ARGUMENT" and "Duplicate" in msg


# -- metadata and status ------------------------------------------------------------------------------

def test_get_model_metadata(env):
    r = env.client.ok('''
from tensorflow_serving.apis.get_model_metadata_pb2 import SignatureDefMap
req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
req.model_spec.name = "dense"
req.model_spec.version.value = 1
resp = stub.GetModelMetadata(req, timeout=30, metadata=auth(token))
m = SignatureDefMap()
assert resp.metadata["signature_def"].Unpack(m)
sig = m.signature_def["serving_default"]
x = sig.inputs["x"]
result = [resp.model_spec.name, resp.model_spec.version.value, sig.method_name, x.dtype == tf.float32.as_datatype_enum,
          [d.size for d in x.tensor_shape.dim], list(sig.outputs), x.name]
''', token=env.tokens["meta"])
    assert r[:6] == ["dense", 1, "tensorflow/serving/predict", True, [-1, 4], ["y"]]
    assert r[6].startswith("serving_default_x")  # the graph tensor name, read statically
    code, msg = env.client.error('''
req = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=model_pb2.ModelSpec(name="dense"))
stub.GetModelMetadata(req, timeout=30, metadata=auth(token))
''', token=env.tokens["meta"])
    assert code == "INVALID_ARGUMENT" and "metadata_field" in msg


def test_get_model_status(env):
    r = env.client.ok('''
S = get_model_status_pb2.ModelVersionStatus
out = {}
for name in ("dense", "refused"):
    resp = models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name=name)), timeout=30, metadata=auth(token))
    out[name] = [[s.version, S.State.Name(s.state), s.status.error_code, s.status.error_message]
                 for s in resp.model_version_status]
req = get_model_status_pb2.GetModelStatusRequest()
req.model_spec.name = "dense"
req.model_spec.version_label = "stable"
out["stable"] = [s.version for s in models.GetModelStatus(req, timeout=30, metadata=auth(token)).model_version_status]
result = out
''', token=env.tokens["admin"])
    assert [s[:3] for s in r["dense"]] == [[2, "AVAILABLE", 0], [1, "AVAILABLE", 0]]
    [refused] = r["refused"]
    assert refused[1] == "END" and refused[2] == 9 and "scan gate" in refused[3]  # FAILED_PRECONDITION
    assert r["stable"] == [1]
    code, _ = predict(env, "refused", {"x": [[1, 2, 3, 4]]}, {"x": "float32"}, expect_error=True)
    assert code == "NOT_FOUND"  # the scan gate refused it: nothing runs it, over gRPC either
    code, _ = env.client.error('''
models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name="zzz")),
                      timeout=30, metadata=auth(token))
''', token=env.tokens["admin"])
    assert code == "NOT_FOUND"


# -- authentication and authorisation -----------------------------------------------------------------

STATUS = '''
md = [("authorization", header)] if header else None
models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=model)),
                      timeout=30, metadata=md)
result = "ok"
'''


def test_authentication_and_scopes(env):
    t = env.tokens
    for header in ("", "Bearer mwt_000000000000_" + "A" * 43, "Basic abc", t["dense"]):  # last: no scheme
        code, msg = env.client.error(STATUS, header=header, model="dense")
        assert code == "UNAUTHENTICATED", (header, msg)
    assert env.client.ok(STATUS, header="Bearer " + t["meta"], model="dense") == "ok"
    # a metadata token cannot predict; a dense token cannot touch another model, existing or not
    code, msg = predict(env, "dense", {"x": [[1, 2, 3, 4]]}, {"x": "float32"}, key="meta", expect_error=True)
    assert code == "PERMISSION_DENIED" and "predict" in msg
    for model in ("multi", "does-not-exist"):
        code, _ = env.client.error(STATUS, header="Bearer " + t["dense"], model=model)
        assert code == "PERMISSION_DENIED"
    records = env.server.log_records()
    denied = [r for r in records if r.get("event") == "auth_failure" and r.get("protocol") == "grpc"]
    assert denied and {r["status"] for r in denied} >= {"UNAUTHENTICATED", "PERMISSION_DENIED"}
    text = env.server.log_file.read_text()
    for tok in t.values():  # no token secret is ever logged
        secret = tok.split("_", 2)[2]  # mwt_<id>_<secret>; the secret itself may contain "_"
        assert len(secret) == 43 and tok not in text and secret not in text


def test_audit_log_and_rest_side_by_side(env):
    """REST and gRPC share the models, workers and tokens; every gRPC call is in the audit log."""
    import httpx

    r = httpx.post(env.url + "/v1/models/dense/versions/1:predict", json={"instances": [[1, 1, 1, 1]]},
                   headers={"Authorization": f"Bearer {env.tokens['dense']}"}, timeout=60)
    assert r.status_code == 200 and r.json()["predictions"] == [pytest.approx(dense([[1, 1, 1, 1]], 1)[0])]
    predict(env, "dense", {"x": [[1, 1, 1, 1]]}, {"x": "float32"}, key="dense", version=1)
    access = [r for r in env.server.log_records() if r.get("event") == "access" and r.get("protocol") == "grpc"]
    mine = [r for r in access if r.get("api") == "grpc_predict" and r.get("token_id") == env.ids["dense"]
            and r.get("status") == "OK"]
    assert mine and mine[-1]["model"] == "dense" and mine[-1]["version"] == 1 and mine[-1]["remote"].startswith(
        "ipv4:127.0.0.1:")
    metrics = httpx.get(env.url + "/monitoring/prometheus/metrics",
                        headers={"Authorization": f"Bearer {env.tokens['admin']}"}).text
    assert 'api="grpc_predict",code="OK"' in metrics


# -- errors and hostile messages ----------------------------------------------------------------------

RAW = '''
call = ch.unary_unary("/tensorflow.serving.PredictionService/" + method,
                      request_serializer=lambda b: b, response_deserializer=lambda b: b)
call(bytes.fromhex(payload), timeout=30, metadata=auth(token))
result = "ok"
'''


def _tensor_request(model: str, name: str, tensor: bytes) -> bytes:
    """A PredictRequest built with our own schema (the hostile cases TF's helpers refuse to build)."""
    from modelwarden.server.grpc_schema import message_class

    req = message_class("PredictRequest")()
    req.model_spec.name = model
    req.inputs[name].ParseFromString(tensor)
    return req.SerializeToString()


def _tensor(dtype: int, dims: list[int] = (), **fields) -> bytes:
    from tests.test_server_grpc_units import proto

    return proto(dtype, list(dims), **fields).SerializeToString()


def test_hostile_tensors_are_invalid_argument(env):
    cases = {
        "huge declared size": _tensor(dtype=1, dims=[1 << 40, 4], float_val=[1.0]),
        "overflowing shape": _tensor(dtype=1, dims=[1 << 62, 1 << 62, 4], float_val=[1.0]),
        "negative dimension": _tensor(dtype=1, dims=[-1, 4], float_val=[1.0]),
        "wrong dtype": _tensor(dtype=3, dims=[1, 4], int_val=[1, 2, 3, 4]),
        "string for float": _tensor(dtype=7, dims=[1, 4], string_val=[b"a"]),
        "content too short": _tensor(dtype=1, dims=[2, 4], tensor_content=b"\0" * 28),
        "content too long": _tensor(dtype=1, dims=[1, 4], tensor_content=b"\0" * 17),
        "wrong rank": _tensor(dtype=1, dims=[4], float_val=[1.0]),
        "too deep": _tensor(dtype=1, dims=[1] * 40, float_val=[1.0]),
        "unknown rank": _tensor(dtype=1, float_val=[1.0]) + b"\x12\x02\x18\x01",
        "invalid dtype": _tensor(dtype=9999, dims=[1, 4]),
    }
    for what, tensor in cases.items():
        payload = _tensor_request("dense", "x", tensor)
        code, msg = env.client.error(RAW, method="Predict", payload=payload.hex(), token=env.tokens["dense"])
        assert code == "INVALID_ARGUMENT", (what, code, msg)
        assert "'x'" in msg, (what, msg)
    # the server is unharmed
    assert predict(env, "dense", {"x": [[1, 2, 3, 4]]}, {"x": "float32"})["outputs"]["y"]


def test_malformed_and_nested_messages(env):
    nested = b""
    for _ in range(100_000):  # unknown start-group fields nested 100k deep
        nested = b"\xa3\x06" + nested + b"\xa4\x06"  # field 100, wire types 3 (start) / 4 (end)
    payloads = {
        "garbage": b"\xff" * 64,
        "truncated": _tensor_request("dense", "x", _tensor(dtype=1, dims=[1, 4], float_val=[1.0] * 4))[:-3],
        "nested groups": b"\x0a\x07\x0a\x05dense" + nested,
        "wrong wire type": b"\x0d\x00\x00\x00\x00",  # model_spec (a message) as a fixed32
    }
    for what, payload in payloads.items():
        for method in ("Predict", "Classify", "GetModelMetadata"):
            code, msg = env.client.error(RAW, method=method, payload=payload.hex(), token=env.tokens["admin"])
            assert code == "INVALID_ARGUMENT", (what, method, code, msg)
    code, msg = env.client.error(RAW, method="Predict", payload="", token=env.tokens["admin"])
    assert code == "INVALID_ARGUMENT" and "ModelSpec" in msg


def test_message_size_limit_is_resource_exhausted(env):
    x = [[0.5] * 4] * (80_000)  # 1.28 MB of tensor_content > max_body (1 MiB)
    code, _ = predict(env, "dense", {"x": x}, {"x": "float32"}, expect_error=True)
    assert code == "RESOURCE_EXHAUSTED"


def test_errors_carry_no_host_detail(env):
    outs = [env.client.call(RAW, method="Predict", payload=_tensor_request(
        "dense", "x", _tensor(dtype=1, dims=[3, 4], tensor_content=b"\0" * 5)).hex(), token=env.tokens["dense"]),
        env.client.call(STATUS, header="Bearer " + env.tokens["admin"], model="refused")]
    code, msg = predict(env, "strings", {"text": [["a"]]}, {"text": "object"}, expect_error=True)
    tf_code, tf_msg = env.client.error(EXAMPLES + '''
inp.example_list_with_context.examples.add().CopyFrom(example(x=[b"not", b"floats"]))
req = regression_pb2.RegressionRequest(input=inp)
req.model_spec.name = "examples"
req.model_spec.signature_name = "regress"
stub.Regress(req, timeout=60, metadata=auth(token))
''', token=env.tokens["all"])
    assert tf_code == "INVALID_ARGUMENT" and "x" in tf_msg  # TensorFlow's own parse error, without host detail
    for text in [msg, tf_msg, *(json.dumps(o) for o in outs)]:
        for needle in (str(env.models), "/work/", "/tmp/", "Traceback", 'File "', str(Path.home())):
            assert needle not in text, (needle, text)
    assert code == "INVALID_ARGUMENT"


def test_client_deadline_is_deadline_exceeded_and_server_recovers(env):
    code, _ = env.client.error('''
req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="slow"))
req.inputs["steps"].CopyFrom(tf.make_tensor_proto(np.int64(10**12)))
stub.Predict(req, timeout=1.5, metadata=auth(token))
''', token=env.tokens["admin"])
    assert code == "DEADLINE_EXCEEDED"
    time.sleep(0.5)
    records = [r for r in env.server.log_records() if r.get("event") == "access" and r.get("model") == "slow"]
    assert records and records[-1]["status"] == "DEADLINE_EXCEEDED"
    x = [[1, 2, 3, 4]]
    assert close(predict(env, "dense", {"x": x}, {"x": "float32"})["outputs"]["y"], dense(x, 2))


def test_reload_config_is_unimplemented_and_metadata_is_capped(env):
    code, _ = env.client.error('''
from tensorflow_serving.apis import model_management_pb2
models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=10, metadata=auth(token))
''', token=env.tokens["admin"])
    assert code == "UNIMPLEMENTED"  # no endpoint changes the model set
    code, _ = env.client.error(STATUS, header="Bearer " + env.tokens["admin"] + " " + "x" * 20_000, model="dense")
    assert code in ("RESOURCE_EXHAUSTED", "INTERNAL", "UNAVAILABLE")
    assert env.client.ok(STATUS, header="Bearer " + env.tokens["admin"], model="dense") == "ok"


def test_port_cannot_be_shared_and_server_never_loads_tensorflow(env):
    import socket

    port = int((env.server.workdir / "grpc_port.txt").read_text())
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    with pytest.raises(OSError):
        s.bind(("127.0.0.1", port))  # grpc's default SO_REUSEPORT would let a second process share the port
    s.close()
    maps = Path(f"/proc/{env.server.proc.pid}/maps").read_text()
    assert "cygrpc" in maps  # the check sees the server's shared libraries...
    assert "tensorflow" not in maps  # ...and TensorFlow's are not among them (they load in the workers only)


SCALAR = '''
req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model))
req.inputs[name].CopyFrom(tf.make_tensor_proto(np.int64(value) if dtype == "int64" else np.int32(value)))
stub.Predict(req, timeout=60, metadata=auth(token))
'''


def test_sandbox_limits_map_to_grpc_status(env):
    """The memory limit and the model's own deadline, hit inside the sandbox, as TF Serving's codes."""
    code, msg = env.client.error(SCALAR, model="bomb", name="n", value=1000, dtype="int32", token=env.tokens["all"])
    assert code == "RESOURCE_EXHAUSTED", msg  # tf.tile of 4 GiB against a 768 MiB limit
    t0 = time.monotonic()
    code, msg = env.client.error(SCALAR, model="endless", name="x", value=0, dtype="int64", token=env.tokens["all"])
    assert code == "DEADLINE_EXCEEDED" and time.monotonic() - t0 < 30, msg  # the model's 2 s, not the client's 60 s
    for needle in (str(env.models), "/work/", "/tmp/", "Traceback", 'File "'):
        assert needle not in msg, msg
    x = [[1, 2, 3, 4]]
    assert close(predict(env, "dense", {"x": x}, {"x": "float32"})["outputs"]["y"], dense(x, 2))
    time.sleep(0.3)
    limits = [r for r in env.server.log_records() if r.get("event") == "access" and r.get("model") in ("bomb", "endless")]
    assert {r["status"] for r in limits} >= {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
