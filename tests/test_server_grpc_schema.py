"""The hand-declared ``tensorflow.serving`` schema must match the ``tensorflow-serving-api`` package.

The package's generated modules (which import TensorFlow) run in a subprocess; it dumps every
declared field's number, type, label and message type, and the services' method signatures.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modelwarden.server import grpc_schema

DUMP = r"""
import json, sys
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,  # noqa
    inference_pb2, input_pb2, model_pb2, model_service_pb2, predict_pb2, prediction_service_pb2, regression_pb2)
from tensorflow_serving.apis import get_model_status_pb2 as s
from google.protobuf import descriptor_pool
pool = descriptor_pool.Default()

def field(f):
    t = f.message_type
    if t is not None and t.GetOptions().map_entry:
        v = t.fields_by_name["value"]
        return [f.number, f.type, "map", v.type, v.message_type.full_name if v.message_type else None]
    return [f.number, f.type, "repeated" if f.is_repeated else "single", None, t.full_name if t else None]

want = json.loads(sys.stdin.read())
out = {"messages": {}, "services": {}, "enums": {}}
for msg, fields in want.items():
    d = pool.FindMessageTypeByName("tensorflow.serving." + msg)
    out["messages"][msg] = {f: (field(d.fields_by_name[f]) if f in d.fields_by_name else None) for f in fields}
for svc in ("PredictionService", "ModelService"):
    sd = pool.FindServiceByName("tensorflow.serving." + svc)
    out["services"][svc] = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in sd.methods}
out["enums"]["State"] = {v.name: v.number for v in s.ModelVersionStatus.State.DESCRIPTOR.values}
code = pool.FindMessageTypeByName("tensorflow.serving.StatusProto").fields_by_name["error_code"].enum_type
out["enums"]["Code"] = {v.name: v.number for v in code.values}
print(json.dumps(out))
"""


def _field(f) -> list:
    t = f.message_type
    if t is not None and t.GetOptions().map_entry:
        v = t.fields_by_name["value"]
        return [f.number, f.type, "map", v.type, v.message_type.full_name if v.message_type else None]
    return [f.number, f.type, "repeated" if f.is_repeated else "single", None, t.full_name if t else None]


@pytest.fixture(scope="module")
def theirs() -> dict:
    pytest.importorskip("numpy")
    want = {m: [f.name for f in grpc_schema.message_class(m).DESCRIPTOR.fields] for m in grpc_schema.MESSAGES}
    proc = subprocess.run([sys.executable, "-c", DUMP], input=json.dumps(want), capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0 and "No module named 'tensorflow" in proc.stderr:
        pytest.skip("tensorflow-serving-api (or tensorflow) not installed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_field_matches_tensorflow_serving(theirs):
    mismatches = []
    for msg in grpc_schema.MESSAGES:
        for f in grpc_schema.message_class(msg).DESCRIPTOR.fields:
            ours, real = _field(f), theirs["messages"][msg][f.name]
            if real is None:
                mismatches.append((msg, f.name, "not in tensorflow-serving-api"))
                continue
            # an enum declared int32 is the same varint on the wire (TYPE_ENUM 14 / TYPE_INT32 5)
            if {ours[1], real[1]} == {14, 5}:
                ours[1] = real[1]
            if ours != real:
                mismatches.append((msg, f.name, ours, real))
    assert not mismatches
    assert sum(len(v) for v in grpc_schema.MESSAGES.values()) >= 45  # the test really compared the fields


def test_services_and_enums_match(theirs):
    for rpc in grpc_schema.RPCS:
        assert theirs["services"][rpc.service][rpc.method] == [f"tensorflow.serving.{rpc.request}",
                                                               f"tensorflow.serving.{rpc.response}"]
    # everything TF Serving's PredictionService offers is served (ModelService's config reload is not: by design)
    assert set(theirs["services"]["PredictionService"]) == {r.method for r in grpc_schema.RPCS
                                                            if r.service == "PredictionService"}
    assert theirs["enums"]["State"] == grpc_schema.VERSION_STATES
    assert theirs["enums"]["Code"] == {**grpc_schema.ERROR_CODES, **{k: v for k, v in theirs["enums"]["Code"].items()
                                                                   if k.startswith("DO_NOT_USE")}}


def test_roundtrip_through_own_classes():
    req = grpc_schema.message_class("PredictRequest")()
    req.model_spec.name = "m"
    req.model_spec.version_label = "stable"
    t = req.inputs["x"]
    t.dtype = 1
    t.tensor_shape.dim.add(size=2)
    t.float_val.extend([1.5, 2.5])
    back = grpc_schema.message_class("PredictRequest").FromString(req.SerializeToString())
    assert back.model_spec.WhichOneof("version_choice") == "version_label"
    assert list(back.inputs["x"].float_val) == [1.5, 2.5]
