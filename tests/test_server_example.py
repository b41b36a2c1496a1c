"""tf.train.Example without TensorFlow: our schema against TF's example_pb2, JSON -> Example, codec.

TensorFlow runs in a subprocess (the test process never imports it).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import numpy as np
import pytest

from modelwarden.sandbox.protocol import TensorSpec
from modelwarden.server import codec, example
from modelwarden.server.limits import RequestError

DUMP = r"""
import json, sys
from tensorflow.core.example import example_pb2, feature_pb2  # noqa: F401
from google.protobuf import descriptor_pool
req = json.loads(sys.stdin.read())
pool = descriptor_pool.Default()
fields = {}
for msg, names in req["fields"].items():
    d = pool.FindMessageTypeByName("tensorflow." + msg)
    fields[msg] = {f.name: [f.number, f.type, bool(f.is_repeated), f.message_type.full_name if f.message_type else None]
                   for f in d.fields}
parsed = []
for blob in req["examples"]:
    ex = example_pb2.Example()
    ex.ParseFromString(bytes.fromhex(blob))
    feats = {}
    for k, f in ex.features.feature.items():
        kind = f.WhichOneof("kind")
        vals = list(getattr(f, kind).value) if kind else []
        feats[k] = [kind, [v.hex() if isinstance(v, bytes) else v for v in vals]]
    parsed.append(feats)
print(json.dumps({"fields": fields, "parsed": parsed}))
"""

REQUEST = {
    "context": {"lang": "en", "n": 7, "w": [0.5, 1]},
    "examples": [
        {"x": [1.5, 2.5], "n": 3, "img": {"b64": base64.b64encode(b"\xff\xd8\x00").decode()}},
        {"x": 4.0, "tags": ["a", "b\u00e9"], "big": [-(1 << 63), (1 << 63) - 1], "empty": []},
    ],
}


@pytest.fixture(scope="module")
def tf_view():
    blobs = [b.hex() for b in example.serialized_examples(REQUEST)]
    req = {"fields": {m: [f[0] for f in fs] for m, fs in example.MESSAGES.items()}, "examples": blobs}
    proc = subprocess.run([sys.executable, "-c", DUMP], input=json.dumps(req), capture_output=True, text=True,
                          timeout=180)
    if proc.returncode != 0 and "No module named 'tensorflow'" in proc.stderr:
        pytest.skip("TensorFlow not installed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_field_numbers_and_types_match_tensorflow(tf_view):
    for msg, fields in example.MESSAGES.items():
        ours = example.SCHEMA.message_class(msg).DESCRIPTOR
        theirs = tf_view["fields"][msg]
        assert set(theirs) == {f[0] for f in fields}, msg
        for f in ours.fields:
            number, typ, label, mtype = theirs[f.name]
            assert (f.number, f.type, bool(f.is_repeated)) == (number, typ, label), (msg, f.name)
            if f.message_type is not None:
                assert f.message_type.full_name == mtype, (msg, f.name)


def test_tensorflow_parses_our_examples_with_context_merged(tf_view):
    first, second = tf_view["parsed"]
    assert first["x"] == ["float_list", [1.5, 2.5]]
    assert first["n"] == ["int64_list", [3]]  # the example wins over the context's n=7
    assert first["img"] == ["bytes_list", [b"\xff\xd8\x00".hex()]]
    assert first["lang"] == ["bytes_list", [b"en".hex()]]
    assert first["w"] == ["float_list", [0.5, 1.0]]  # ints mixed with floats: all floats
    assert second["n"] == ["int64_list", [7]]  # from the context
    assert second["tags"] == ["bytes_list", [b"a".hex(), "b\u00e9".encode().hex()]]
    assert second["big"] == ["int64_list", [-(1 << 63), (1 << 63) - 1]]
    assert second["empty"] == [None, []]


@pytest.mark.parametrize("doc, match", [
    ({"examples": []}, "non-empty"),
    ({"examples": [[1]]}, "JSON object"),
    ({"examples": [{"a": 1 << 63}]}, "int64 range"),
    ({"examples": [{"a": [1, "x"]}]}, "mixes"),
    ({"examples": [{"a": [[1]]}]}, "flat list"),
    ({"examples": [{"a": {"b64": "!!"}}]}, "base64"),
    ({"examples": [{"a": 1}], "context": [1]}, "context"),
])
def test_bad_examples_are_400(doc, match):
    with pytest.raises(RequestError, match=match) as ei:
        example.serialized_examples(doc)
    assert ei.value.status == 400


# -- codec: DT_STRING inputs, string outputs, classify/regress results ------------------------------------


def test_string_inputs_from_text_and_b64_keep_shape():
    arr = codec.to_array([["a", {"b64": base64.b64encode(b"\x00\xff").decode()}], ["\u00e9", ""]], "s", "string",
                         [1000])
    assert arr.dtype == object and arr.shape == (2, 2)
    assert arr.tolist() == [[b"a", b"\x00\xff"], ["\u00e9".encode(), b""]]
    assert codec.to_array("one", "s", "string", [100]).shape == ()
    with pytest.raises(RequestError, match="consistent shape"):
        codec.to_array([["a"], "b"], "s", "string", [100])
    with pytest.raises(RequestError, match="expected strings"):
        codec.to_array([1, 2], "s", "string", [100])
    with pytest.raises(RequestError) as ei:
        codec.to_array(["x" * 50, "y" * 60], "s", "string", [100])
    assert ei.value.status == 413
    with pytest.raises(RequestError, match="DT_STRING input; the signature expects DT_FLOAT"):
        codec.to_array(["a"], "x", "float32", [100])


def test_string_outputs_render_like_tf_serving():
    s = np.empty(3, dtype=object)
    s[:] = [b"text", b"\xff\xfe", "\u00e9".encode()]
    doc = json.loads(codec.format_predict({"out": s}, True))
    assert doc == {"predictions": ["text", {"b64": base64.b64encode(b"\xff\xfe").decode()}, "\u00e9"]}
    doc = json.loads(codec.format_predict({"img_bytes": s, "n": np.arange(3)}, True))
    assert doc["predictions"][0] == {"img_bytes": {"b64": base64.b64encode(b"text").decode()}, "n": 0}
    assert json.loads(codec.format_predict({"out": s}, False)) == {"outputs": ["text", {"b64": "//4="}, "\u00e9"]}


def test_parse_examples_feeds_the_single_string_input():
    specs = {"inputs": TensorSpec("inputs", "string", (None,))}
    req = codec.parse_examples({"examples": [{"a": 1}, {"a": 2}]}, lambda _n: specs)
    assert list(req.inputs) == ["inputs"] and req.inputs["inputs"].shape == (2,)
    with pytest.raises(RequestError, match="exactly one DT_STRING"):
        codec.parse_examples({"examples": [{"a": 1}]}, lambda _n: {"x": TensorSpec("x", "float32", (None,))})
    # unknown top-level keys are ignored, as TF Serving's json_tensor.cc does
    assert codec.parse_examples({"examples": [{"a": 1}], "instances": []}, lambda _n: specs).inputs


def test_classify_and_regress_results():
    classes = np.empty((2, 2), dtype=object)
    classes[:] = [[b"neg", b"pos"], [b"neg", b"pos"]]
    scores = np.array([[0.25, 0.75], [1.0, 0.0]], np.float32)
    assert codec.format_classify({"classes": classes, "scores": scores}, 2) == (
        b'{"results":[[["neg",0.25],["pos",0.75]],[["neg",1.0],["pos",0.0]]]}')
    assert json.loads(codec.format_classify({"scores": scores}, 2))["results"][0] == [["", 0.25], ["", 0.75]]
    with pytest.raises(RequestError, match="batch_size"):
        codec.format_classify({"scores": scores}, 3)
    assert codec.format_regress({"outputs": np.array([[1.5], [2.0]], np.float32)}, 2) == b'{"results":[1.5,2.0]}'
    # TF Serving's bool features are int64 1/0
    ex = example.SCHEMA.message_class("Example")()
    ex.ParseFromString(example.example_bytes({"a": [True, False]}, "x"))
    assert list(ex.features.feature["a"].int64_list.value) == [1, 0]
    with pytest.raises(RequestError):
        codec.format_regress({"outputs": np.array(["x"], dtype=object)}, 1)
