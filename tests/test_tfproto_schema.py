"""Our hand-declared TensorFlow protobuf schema must match TensorFlow's own descriptors.

TensorFlow runs in a subprocess (the test process never imports it) and dumps
(message, field) -> (number, type) for every field we declare.
"""

import json
import subprocess
import sys

import pytest

from modelwarden.formats import tfproto

RENAMED = {"ObjectReference": "TrackableObjectGraph.TrackableObject.ObjectReference",
           "Any": "google.protobuf.Any"}  # full names are looked up as they are
NOT_IN_TF_CORE = {"KerasSavedMetadata", "KerasSavedObject"}  # keras' own proto, checked by field shape below

DUMP = r"""
import json, sys
import tensorflow  # noqa: F401  (registers every descriptor)
from tensorflow.core.protobuf import saved_model_pb2, tensor_bundle_pb2, fingerprint_pb2  # noqa
from google.protobuf import descriptor_pool
pool = descriptor_pool.Default()
want = json.loads(sys.stdin.read())
out = {}
for msg, fields in want.items():
    d = pool.FindMessageTypeByName(msg if msg.startswith("google.") else "tensorflow." + msg)
    out[msg] = {f: ([d.fields_by_name[f].number, d.fields_by_name[f].type] if f in d.fields_by_name else None) for f in fields}
print(json.dumps(out))
"""


def _ours():
    table = {}
    for name in tfproto.MESSAGES:
        if name in NOT_IN_TF_CORE:
            continue
        desc = tfproto.message_class(name).DESCRIPTOR
        table[RENAMED.get(name, name)] = {f.name: (f.number, f.type) for f in desc.fields}
    return table


def test_schema_matches_tensorflow():
    pytest.importorskip("numpy")
    ours = _ours()
    want = {m: list(fs) for m, fs in ours.items()}
    proc = subprocess.run([sys.executable, "-c", DUMP], input=json.dumps(want), capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No module named 'tensorflow'" in proc.stderr:
        pytest.skip("tensorflow not installed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    mismatches = []
    for msg, fields in ours.items():
        for field, (number, ftype) in fields.items():
            t = theirs[msg][field]
            # int32 declared for a binary-only enum is wire-identical (both varints)
            compatible = t is not None and (t[1] == ftype or {t[1], ftype} == {14, 5})
            if t is None or t[0] != number or not compatible:
                mismatches.append((msg, field, (number, ftype), t))
    assert not mismatches


def test_roundtrip_nodedef():
    nd = tfproto.message_class("NodeDef")(name="a", op="ReadFile", input=["x:0", "^y"])
    nd.attr["T"].type = 7
    data = nd.SerializeToString()
    back = tfproto.parse("NodeDef", data, "mem")
    assert back.name == "a" and list(back.input) == ["x:0", "^y"] and back.attr["T"].WhichOneof("value") == "type"


def test_truncated_and_garbage_are_input_errors():
    from modelwarden.errors import InputError

    nd = tfproto.message_class("GraphDef")()
    n = nd.node.add(name="n" * 100, op="Const")
    n.attr["value"].s = b"x" * 1000
    data = nd.SerializeToString()
    with pytest.raises(InputError, match="not a valid GraphDef"):
        tfproto.parse("GraphDef", data[:-10], "cut.pb")
    with pytest.raises(InputError):
        tfproto.parse("GraphDef", b"\xff" * 64, "junk.pb")


def test_deeply_nested_protobuf_is_rejected():
    from modelwarden.errors import InputError

    # AttrValue.func(10) -> NameAttrList.attr(2) map entry -> value(2) AttrValue -> func ... 100k levels
    inner = b""
    for _ in range(20000):
        entry = b"\x0a\x01k" + b"\x12" + _varint(len(inner)) + inner  # map entry key/value
        nal = b"\x12" + _varint(len(entry)) + entry  # NameAttrList.attr
        inner = b"\x52" + _varint(len(nal)) + nal  # AttrValue.func (field 10, LEN)
    with pytest.raises(InputError, match="AttrValue"):
        tfproto.parse("AttrValue", inner, "deep.pb")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)
