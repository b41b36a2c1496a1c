"""``tf.train.Example`` for ``:classify``/``:regress``, built from TF Serving's JSON without TensorFlow.

The messages are declared as data (:class:`ProtoSchema`, a private descriptor pool);
``tests/test_server_example.py`` checks every field number against TensorFlow's
``example_pb2`` in a subprocess.  Request shape (TF Serving's REST API)::

    {"signature_name": ..., "context": {feature: value}, "examples": [{feature: value}, ...]}

A value is a number, a string, ``{"b64": ...}`` or a flat list of those: integers become an
``Int64List``, numbers with a fraction a ``FloatList`` (a list mixing both is all floats),
booleans an ``Int64List`` of 1/0 (as TF Serving), strings and b64 values a ``BytesList``.  As TF Serving does, each serialized input is the
serialized context followed by the serialized example: protobuf merges the two, and an
example's feature wins over a context feature of the same name.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from modelwarden.formats.protoschema import ProtoSchema
from modelwarden.server.limits import RequestError

MESSAGES: dict[str, list[tuple]] = {
    "BytesList": [("value", 1, "bytes*")],
    "FloatList": [("value", 1, "float*")],
    "Int64List": [("value", 1, "int64*")],
    "Feature": [
        ("bytes_list", 1, "BytesList", "kind"),
        ("float_list", 2, "FloatList", "kind"),
        ("int64_list", 3, "Int64List", "kind"),
    ],
    "Features": [("feature", 1, "map<string,Feature>")],
    "Example": [("features", 1, "Features")],
}
SCHEMA = ProtoSchema("tensorflow", "modelwarden/tensorflow_example.proto", MESSAGES)
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def bad(message: str) -> RequestError:
    return RequestError(400, message, kind="invalid_argument")


def decode_b64(value: Any, what: str) -> bytes:
    """``{"b64": s}`` -> bytes (standard or URL-safe alphabet, as TF Serving accepts)."""
    s = value.get("b64")
    if not isinstance(s, str):
        raise bad(f"{what}: 'b64' must hold a base64 string")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:  # the URL-safe alphabet, padding optional; still strictly validated
        t = s.rstrip("=")
        return base64.b64decode(t + "=" * (-len(t) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"{what}: Unable to base64 decode") from None


def _leaf(v: Any, what: str) -> tuple[str, Any]:
    if isinstance(v, bool):  # TF Serving writes booleans as int64 1/0
        return "int", int(v)
    if isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:
            raise bad(f"{what}: integer out of int64 range")
        return "int", v
    if isinstance(v, float):
        return "float", v
    if isinstance(v, str):
        return "bytes", v.encode("utf-8")
    if isinstance(v, dict) and set(v) == {"b64"}:
        return "bytes", decode_b64(v, what)
    raise bad(f"{what}: a feature value must be a number, a string, {{\"b64\": ...}} or a flat list of those")


def _feature(value: Any, what: str, feature: Any) -> None:
    leaves = [_leaf(v, what) for v in value] if isinstance(value, list) else [_leaf(value, what)]
    kinds = {k for k, _ in leaves}
    if not leaves:
        return  # an empty Feature (no kind), as an empty JSON list gives in TF Serving
    if kinds == {"bytes"}:
        feature.bytes_list.value.extend(v for _, v in leaves)
    elif "bytes" in kinds:
        raise bad(f"{what}: a feature list mixes strings and numbers")
    elif kinds == {"int"}:
        feature.int64_list.value.extend(v for _, v in leaves)
    else:
        feature.float_list.value.extend(float(v) for _, v in leaves)


def example_bytes(obj: Any, what: str) -> bytes:
    """One JSON object of features as a serialized ``tf.train.Example``."""
    if not isinstance(obj, dict):
        raise bad(f"{what} must be a JSON object of features")
    ex = SCHEMA.message_class("Example")()
    fmap = ex.features.feature
    for key, value in obj.items():
        if not isinstance(key, str) or not key:
            raise bad(f"{what}: feature names must be non-empty strings")
        _feature(value, f"{what} feature {key[:80]!r}", fmap[key])
    return ex.SerializeToString(deterministic=True)


def serialized_examples(doc: dict) -> list[bytes]:
    """The request's ``examples`` (merged with ``context``) as serialized tf.Example protos."""
    examples = doc.get("examples")
    if not isinstance(examples, list) or not examples:
        raise bad("'examples' must be a non-empty JSON list of objects")
    context = b""
    if doc.get("context") is not None:
        context = example_bytes(doc["context"], "'context'")
    return [context + example_bytes(e, f"example {i}") for i, e in enumerate(examples)]
