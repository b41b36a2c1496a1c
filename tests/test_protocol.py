"""The sandbox wire format: round trips, and hostile frames from the worker side."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelwarden.sandbox import protocol
from modelwarden.sandbox.protocol import (
    MAGIC, PREFIX, ChannelClosed, FrameError, FrameTimeout, TensorSpec, check_inputs, decode_tensors,
    encode_tensors, recv_frame, send_frame, specs_from_json,
)


@pytest.fixture(params=["exact", "buffered", "buffered-spin"])
def recv(request):
    """Both receivers: exact-size reads (boot) and the buffered FrameReader (hot path)."""
    if request.param == "exact":
        return recv_frame
    spin = 0.001 if request.param == "buffered-spin" else 0.0
    return lambda sock, **kw: protocol.FrameReader(sock).recv(spin_s=spin, **kw)


def _pair():
    a, b = socket.socketpair()
    return a, b


def _roundtrip(tensors, max_body=1 << 30):
    a, b = _pair()
    try:
        entries, chunks, n = encode_tensors(tensors)
        t = threading.Thread(target=send_frame, args=(a, {"op": "x", "tensors": entries}, chunks))
        t.start()
        header, body = recv_frame(b, max_body=max_body, deadline=time.monotonic() + 10)
        t.join()
        assert len(body) == n
        return header, decode_tensors(header["tensors"], body, max_bytes=max_body)
    finally:
        a.close()
        b.close()


def test_roundtrip_keeps_dtype_shape_values_including_scalars_and_empty():
    tensors = {
        "scalar": np.float32(3.5),
        "matrix": np.arange(12, dtype=np.int64).reshape(3, 4),
        "empty": np.zeros((0, 7), np.float16),
        "flags": np.array([True, False, True]),
        "noncontig": np.arange(20, dtype=np.float64).reshape(4, 5)[:, ::2],
        "bigendian": np.arange(5, dtype=">i4"),
    }
    _, out = _roundtrip(tensors)
    assert list(out) == list(tensors)
    for k, v in tensors.items():
        assert out[k].shape == np.asarray(v).shape, k
        assert out[k].dtype.name == np.asarray(v).dtype.name, k
        np.testing.assert_array_equal(out[k], v)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(
    st.text(alphabet="abcxyz_0123", min_size=1, max_size=8),
    hnp.arrays(dtype=st.sampled_from([np.float32, np.int8, np.uint16, np.complex64, np.bool_]),
               shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)),
    max_size=5))
def test_roundtrip_property(tensors):
    _, out = _roundtrip(tensors)
    assert set(out) == set(tensors)
    for k, v in tensors.items():
        np.testing.assert_array_equal(out[k], v)
        assert out[k].shape == v.shape


def test_offsets_are_aligned_for_zero_copy():
    entries, chunks, n = encode_tensors({"a": np.ones(3, np.uint8), "b": np.ones(5, np.float64)})
    body = bytearray(b"".join(bytes(c) for c in chunks))
    out = decode_tensors(entries, body, max_bytes=1 << 20)
    assert n == 64 + 40
    base = np.frombuffer(body, np.uint8).ctypes.data
    assert out["b"].ctypes.data - base == 64  # a view into the body at the aligned offset, no copy
    np.testing.assert_array_equal(out["b"], np.ones(5))


def test_object_arrays_of_non_strings_cannot_cross():
    with pytest.raises(FrameError, match="bytes or str"):
        encode_tensors({"s": np.array([b"a", 3], dtype=object)})
    with pytest.raises(FrameError, match="cannot cross"):
        encode_tensors({"t": np.array(["2020-01-01"], dtype="datetime64[D]")})


# -- string tensors ---------------------------------------------------------------------------------


def _strings(values, shape=None):
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v
    return arr.reshape(shape if shape is not None else (len(values),))


def test_string_tensors_roundtrip_with_layout():
    tensors = {
        "pre": np.arange(3, dtype=np.int32),
        "s": _strings([b"", b"abc", b"\x00\xff\x00", "h\u00e9".encode()], (2, 2)),
        "scalar": _strings([b"one"], ()),
        "empty": _strings([], (0, 3)),
        "text": np.array(["x", "yz"]),  # str arrays go as UTF-8
        "post": np.float64(2.0),
    }
    header, out = _roundtrip(tensors)
    assert [e["dtype"] for e in header["tensors"]] == ["int32", "string", "string", "string", "string", "float64"]
    assert out["s"].dtype == object and out["s"].shape == (2, 2)
    assert out["s"].tolist() == [[b"", b"abc"], [b"\x00\xff\x00", "h\u00e9".encode()]]
    assert out["scalar"].shape == () and out["scalar"][()] == b"one"
    assert out["empty"].shape == (0, 3)
    assert out["text"].tolist() == [b"x", b"yz"]
    np.testing.assert_array_equal(out["pre"], tensors["pre"])
    assert out["post"] == 2.0
    # layout: at an aligned offset, uint64 little-endian lengths then the bytes
    entries, chunks, n = encode_tensors({"s": _strings([b"ab", b"c"])})
    body = b"".join(bytes(c) for c in chunks)
    assert body == struct.pack("<QQ", 2, 1) + b"abc" and n == len(body)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12), st.booleans())
def test_string_roundtrip_property(values, two_d):
    shape = (len(values),)
    if two_d and len(values) % 2 == 0:
        shape = (2, len(values) // 2)
    tensors = {"n": np.arange(len(values), dtype=np.int8), "s": _strings(values, shape)}
    _, out = _roundtrip(tensors)
    assert out["s"].shape == shape and out["s"].reshape(-1).tolist() == values
    assert all(type(v) is bytes for v in out["s"].reshape(-1).tolist())


def _string_body(lengths, data=b""):
    return struct.pack(f"<{len(lengths)}Q", *lengths) + data


@pytest.mark.parametrize("shape, body, match", [
    ([3], _string_body([1, 1]), "past the end"),  # fewer lengths than elements
    ([1 << 40, 1 << 40], _string_body([1]), "past the end"),  # huge element count: no allocation
    ([2], _string_body([1, 5], b"abc"), "past the end"),  # a length past the body
    ([2], _string_body([2, 2], b"abc"), "past the end"),  # lengths sum past the body
    ([2], _string_body([(1 << 64) - 1, 1], b"a"), "past the end"),  # overflow bait
    ([2], _string_body([1, 1], b"abcd"), "trailing"),  # bytes left over
    ([1], _string_body([3], b"abc") + b"\x00" * 8, "trailing"),
])
def test_decode_rejects_hostile_string_blocks(shape, body, match):
    with pytest.raises(FrameError, match=match):
        decode_tensors([{"name": "s", "dtype": "string", "shape": shape}], body, max_bytes=1 << 30)


def test_string_totals_count_against_the_limit():
    entries, chunks, n = encode_tensors({"s": _strings([b"x" * 100, b"y" * 100])})
    body = b"".join(bytes(c) for c in chunks)
    assert decode_tensors(entries, body, max_bytes=n)["s"].tolist() == [b"x" * 100, b"y" * 100]
    with pytest.raises(FrameError, match="above the limit"):
        decode_tensors(entries, body, max_bytes=n - 1)


def test_string_overflow_sum_is_caught():
    # each length fits the body, but their uint64 sum wraps around to a small number
    body = _string_body([1 << 63, 1 << 63, 2], b"ab")
    with pytest.raises(FrameError):
        decode_tensors([{"name": "s", "dtype": "string", "shape": [3]}], body, max_bytes=1 << 30)


def test_check_inputs_string_versus_numeric():
    specs = {"s": TensorSpec("s", "string", (None,)), "x": TensorSpec("x", "float32", (None,))}
    ok = {"s": _strings([b"a"]), "x": np.zeros(1, np.float32)}
    assert check_inputs(ok, specs, "sig") == []
    assert check_inputs({"s": np.array(["a"]), "x": np.zeros(1, np.float32)}, specs, "sig") == []
    bad = check_inputs({"s": np.zeros(1, np.float32), "x": _strings([b"1"])}, specs, "sig")
    assert any("'s' has dtype float32" in p for p in bad) and any("'x' has dtype string" in p for p in bad)


# -- hostile tensor blocks --------------------------------------------------------------------------


@pytest.mark.parametrize("entries, body, match", [
    ("nope", b"", "must be a list"),
    ([{"name": "a", "dtype": "float32"}], b"", "exactly name, dtype, shape"),
    ([{"name": "a", "dtype": "object", "shape": [1]}], b"\0" * 8, "not allowed"),
    ([{"name": "a", "dtype": "float32", "shape": [-1]}], b"", "invalid dimension"),
    ([{"name": "a", "dtype": "float32", "shape": [True]}], b"", "invalid dimension"),
    ([{"name": "a", "dtype": "float32", "shape": [1.5]}], b"", "invalid dimension"),
    ([{"name": "a", "dtype": "float32", "shape": [1 << 41]}], b"", "invalid dimension"),
    ([{"name": "a", "dtype": "float32", "shape": [1] * 40}], b"", "at most 32"),
    ([{"name": "", "dtype": "float32", "shape": []}], b"\0" * 4, "non-empty"),
    ([{"name": "a", "dtype": "float32", "shape": [4]}], b"\0" * 8, "extends past"),
    ([{"name": "a", "dtype": "float32", "shape": [1]}], b"\0" * 12, "trailing"),
    ([{"name": "a", "dtype": "uint8", "shape": [1]}, {"name": "a", "dtype": "uint8", "shape": [1]}],
     b"\0" * 65, "duplicate"),
    ([{"name": "a", "dtype": "float64", "shape": [1 << 20, 1 << 20]}], b"", "above the limit"),
    # zero-size tensors: no bytes on the wire, but tolist()/formatting would walk every slot
    ([{"name": "a", "dtype": "float32", "shape": [1 << 24, 0]}], b"", "zero-size shape"),
    ([{"name": "a", "dtype": "float32", "shape": [1 << 40, 1 << 40, 0]}], b"", "zero-size shape"),
    ([{"name": "a", "dtype": "float32", "shape": [0, 1 << 40, 1 << 40]}], b"", "zero-size shape"),
    ([{"name": "a", "dtype": "string", "shape": [1 << 24, 0]}], b"", "zero-size shape"),
    ([{"name": f"t{i}", "dtype": "bool", "shape": [1 << 12, 0]} for i in range(300)], b"", "zero-size shape"),
])
def test_decode_rejects_hostile_blocks(entries, body, match):
    with pytest.raises(FrameError, match=match):
        decode_tensors(entries, body, max_bytes=1 << 30)


def test_zero_size_tensors_within_the_budget_decode():
    out = decode_tensors([{"name": "a", "dtype": "float32", "shape": [1, 0, 4]},
                          {"name": "b", "dtype": "string", "shape": [3, 0]}], b"", max_bytes=1 << 20)
    assert out["a"].shape == (1, 0, 4) and out["b"].shape == (3, 0)
    assert protocol.extent((1 << 24, 0)) == 1 << 24 and protocol.extent(()) == 1


def test_decode_rejects_too_many_tensors():
    entries = [{"name": f"t{i}", "dtype": "uint8", "shape": [0]} for i in range(protocol.MAX_TENSORS + 1)]
    with pytest.raises(FrameError, match="exceed"):
        decode_tensors(entries, b"", max_bytes=1 << 20)


def _raw_send(sock, magic, header: bytes, body_len: int, body: bytes = b""):
    sock.sendall(PREFIX.pack(magic, len(header), body_len) + header + body)


def test_recv_rejects_oversized_body_before_allocating(recv):
    a, b = _pair()
    try:
        a.sendall(PREFIX.pack(MAGIC, 2, 1 << 60) + b"{}")
        with pytest.raises(FrameError, match="body of"):
            recv(b, max_body=1 << 20, deadline=time.monotonic() + 5)
    finally:
        a.close(), b.close()


@pytest.mark.parametrize("magic, header, match", [
    (0xDEADBEEF, b"{}", "magic"),
    (MAGIC, b"[1, 2]", "JSON object"),
    (MAGIC, b"{\"a\": NaN}", "not valid JSON"),
    (MAGIC, b"\xff\xfe", "not valid JSON"),
    (MAGIC, b"[" * 100000 + b"]" * 100000, "not valid JSON|JSON object"),
])
def test_recv_rejects_bad_headers(magic, header, match, recv):
    a, b = _pair()
    try:
        t = threading.Thread(target=_raw_send, args=(a, magic, header, 0))
        t.start()
        with pytest.raises(FrameError, match=match):
            recv(b, max_body=0, deadline=time.monotonic() + 5)
        t.join()
    finally:
        a.close(), b.close()


def test_recv_rejects_oversized_header(recv):
    a, b = _pair()
    try:
        a.sendall(PREFIX.pack(MAGIC, protocol.MAX_HEADER_BYTES + 1, 0))
        with pytest.raises(FrameError, match="header of"):
            recv(b, max_body=0, deadline=time.monotonic() + 5)
    finally:
        a.close(), b.close()


def test_recv_times_out_on_a_stalled_peer(recv):
    a, b = _pair()
    try:
        a.sendall(PREFIX.pack(MAGIC, 10, 0) + b"{")  # half a frame, then silence
        t0 = time.monotonic()
        with pytest.raises(FrameTimeout):
            recv(b, max_body=0, deadline=time.monotonic() + 0.3)
        assert time.monotonic() - t0 < 2
    finally:
        a.close(), b.close()


def test_recv_reports_closed_channel_mid_frame(recv):
    a, b = _pair()
    a.sendall(PREFIX.pack(MAGIC, 10, 0) + b"{")
    a.close()
    with pytest.raises(ChannelClosed, match="mid-frame"):
        recv(b, max_body=0, deadline=time.monotonic() + 5)
    b.close()


def test_specs_from_json_validates_worker_reports():
    specs = specs_from_json([{"name": "x", "dtype": "float32", "shape": [None, 4]}], "inputs")
    assert specs["x"] == TensorSpec("x", "float32", (None, 4))
    for bad in ("x", [{"name": "x"}], [{"name": 1, "dtype": "f", "shape": None}],
                [{"name": "x", "dtype": "float32", "shape": [-3]}],
                [{"name": "x", "dtype": "float32", "shape": None}] * 2):
        with pytest.raises(FrameError):
            specs_from_json(bad, "inputs")


@pytest.mark.parametrize("dtype", ["(8192,8192)f8", "f8", "<f4", "object", "V8", "float32 ", "", "S10", 7])
def test_specs_take_dtypes_only_from_the_protocols_list(dtype):
    with pytest.raises(FrameError, match="protocol's dtypes"):
        specs_from_json([{"name": "x", "dtype": dtype, "shape": [1]}], "inputs")


def test_spec_dtype_names_stay_in_the_list():
    import ml_dtypes

    assert specs_from_json([{"name": "x", "dtype": "bfloat16", "shape": None}], "inputs")["x"].dtype == "bfloat16"
    assert protocol.spec_dtype_name(np.dtype(ml_dtypes.bfloat16)) == "bfloat16"
    assert protocol.spec_dtype_name(np.dtype([("qint8", "i1")])) == "unknown"
    assert protocol.spec_dtype_name(np.dtype(object)) == "string"
    assert protocol.spec_dtype_name(np.dtype("float32")) == "float32"


def test_check_outputs_against_the_signature():
    specs = {"y": TensorSpec("y", "float32", (None, 2)), "u": TensorSpec("u", "unknown", None)}
    ok = {"y": np.zeros((3, 2), np.float32), "u": np.zeros(1, np.int8)}
    assert protocol.check_outputs(ok, specs) is None
    assert "returned outputs" in protocol.check_outputs({"y": ok["y"]}, specs)
    assert "as float64" in protocol.check_outputs({**ok, "y": np.zeros((3, 2))}, specs)
    assert "shape [3, 3]" in protocol.check_outputs({**ok, "y": np.zeros((3, 3), np.float32)}, specs)
    assert "shape [4194304, 0]" in protocol.check_outputs({**ok, "y": np.zeros((1 << 22, 0), np.float32)}, specs)


def test_recv_grows_the_buffer_as_bytes_arrive(recv):
    """A header announcing a 256 MiB body followed by silence allocates about 1 MiB, not 256."""
    import tracemalloc

    a, b = _pair()
    try:
        a.sendall(PREFIX.pack(MAGIC, 2, 256 << 20) + b"{}" + b"x" * 1000)
        tracemalloc.start()
        try:
            with pytest.raises(FrameTimeout):
                recv(b, max_body=256 << 20, deadline=time.monotonic() + 0.3)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20, peak
    finally:
        a.close(), b.close()


def test_large_bodies_still_arrive_whole(recv):
    a, b = _pair()
    payload = bytes(range(256)) * (12 << 12)  # 12 MiB: several doublings
    try:
        t = threading.Thread(target=_raw_send, args=(a, MAGIC, b"{}", len(payload), payload))
        t.start()
        _, body = recv(b, max_body=1 << 30, deadline=time.monotonic() + 20)
        t.join()
        assert bytes(body) == payload
    finally:
        a.close(), b.close()


def test_check_inputs_names_dtype_shape():
    specs = {"x": TensorSpec("x", "float32", (None, 4))}
    assert check_inputs({"x": np.zeros((2, 4), np.float32)}, specs, "s") == []
    assert "unknown input 'z'" in " ".join(check_inputs({"x": np.zeros((2, 4), np.float32), "z": np.zeros(1)}, specs, "s"))
    assert "missing input" in " ".join(check_inputs({}, specs, "s"))
    assert "dtype float64" in " ".join(check_inputs({"x": np.zeros((2, 4))}, specs, "s"))
    assert "shape [2, 5]" in " ".join(check_inputs({"x": np.zeros((2, 5), np.float32)}, specs, "s"))
    assert "shape [4]" in " ".join(check_inputs({"x": np.zeros(4, np.float32)}, specs, "s"))


def test_send_frame_refuses_nan_in_header():
    a, b = _pair()
    try:
        with pytest.raises(ValueError):
            send_frame(a, {"x": float("nan")})
    finally:
        a.close(), b.close()


def test_prefix_layout_is_stable():
    assert PREFIX.size == 16
    assert struct.unpack(">I", PREFIX.pack(MAGIC, 0, 0)[:4])[0] == MAGIC
    assert json.loads(json.dumps({"ok": True}))


def test_frame_reader_keeps_bytes_of_the_next_frame():
    a, b = _pair()
    try:
        raw = b""
        for i in range(3):
            hdr = json.dumps({"i": i}).encode()
            raw += PREFIX.pack(MAGIC, len(hdr), 3) + hdr + bytes([i]) * 3
        a.sendall(raw)  # three frames in one write: one recv returns them all
        reader = protocol.FrameReader(b)
        for i in range(3):
            header, body = reader.recv(max_body=10, deadline=time.monotonic() + 5)
            assert header == {"i": i} and bytes(body) == bytes([i]) * 3
    finally:
        a.close(), b.close()


def test_frame_reader_large_bodies_across_many_frames():
    a, b = _pair()
    big = {"x": np.arange(300_000, dtype=np.float32), "y": np.ones((3, 5), np.int16)}
    entries, chunks, n = encode_tensors(big)

    def sender():
        for _ in range(4):
            send_frame(a, {"tensors": entries}, chunks)

    t = threading.Thread(target=sender)
    t.start()
    reader = protocol.FrameReader(b)
    try:
        for _ in range(4):
            header, body = reader.recv(max_body=n, deadline=time.monotonic() + 10)
            out = decode_tensors(header["tensors"], body, max_bytes=n)
            np.testing.assert_array_equal(out["x"], big["x"])
            np.testing.assert_array_equal(out["y"], big["y"])
    finally:
        t.join()
        a.close(), b.close()


def test_send_times_out_when_the_peer_stops_reading():
    a, b = _pair()
    try:
        entries, chunks, _ = encode_tensors({"x": np.zeros(8 << 20, np.uint8)})  # far above the socket buffer
        t0 = time.monotonic()
        with pytest.raises(FrameTimeout):
            send_frame(a, {"tensors": entries}, chunks, deadline=time.monotonic() + 0.3)
        assert time.monotonic() - t0 < 2
    finally:
        a.close(), b.close()


def test_worker_names_in_messages_are_printable():
    specs = specs_from_json([{"name": "x\x1b[2J", "dtype": "float32", "shape": [1]}], "inputs")
    problems = " ".join(check_inputs({"z\x1b]52;c;x\x07": np.zeros(1, np.float32)}, specs, "s"))
    assert "\x1b" not in problems and "\x07" not in problems and "\\x1b[2J" in problems
    assert specs["x\x1b[2J"].describe() == "x\\x1b[2J: float32[1]"
