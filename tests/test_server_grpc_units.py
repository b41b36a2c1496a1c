"""The gRPC tensor codec and configuration, without a server: TensorFlow's TensorProto semantics and bounds."""

from __future__ import annotations

import numpy as np
import pytest

from modelwarden.server import grpc_tensor
from modelwarden.server.grpc_schema import message_class
from modelwarden.server.limits import RequestError

TensorProto = message_class(".tensorflow.TensorProto")


def proto(dtype: int, dims: list[int], **fields) -> object:
    t = TensorProto(dtype=dtype)
    for d in dims:
        t.tensor_shape.dim.add(size=d)
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(t, k).extend(v)
        else:
            setattr(t, k, v)
    return t


def decode(t, dtype: str, max_elements: int = 1000, max_bytes: int = 1 << 20) -> np.ndarray:
    return grpc_tensor.decode(t, "x", dtype, max_elements, max_bytes)


def test_typed_fields_follow_tensorflow_fill_rules():
    assert decode(proto(1, [2, 2], float_val=[1, 2, 3, 4]), "float32").tolist() == [[1, 2], [3, 4]]
    assert decode(proto(1, [3], float_val=[1, 2]), "float32").tolist() == [1, 2, 2]  # last value repeated
    assert decode(proto(1, [2], float_val=[]), "float32").tolist() == [0, 0]  # no values: zeros
    assert decode(proto(1, [2], float_val=[1, 2, 3]), "float32").tolist() == [1, 2]  # extra values ignored
    assert decode(proto(3, [], int_val=[7]), "int32").shape == ()
    assert decode(proto(9, [2], int64_val=[1 << 40, -5]), "int64").tolist() == [1 << 40, -5]
    assert decode(proto(10, [2], bool_val=[True, False]), "bool").tolist() == [True, False]
    assert decode(proto(23, [1], uint64_val=[(1 << 64) - 1]), "uint64").tolist() == [(1 << 64) - 1]
    half = np.array([1.5, -2], np.float16)
    assert decode(proto(19, [2], half_val=half.view(np.uint16).tolist()), "float16").tolist() == [1.5, -2]
    assert decode(proto(8, [2], scomplex_val=[1, 2, 3, 4]), "complex64").tolist() == [1 + 2j, 3 + 4j]
    assert decode(proto(8, [2], scomplex_val=[1, 2, 3]), "complex64").tolist() == [1 + 2j, 1 + 2j]  # unpaired: dropped
    assert decode(proto(7, [2, 1], string_val=[b"a", b"\xff"]), "string").tolist() == [[b"a"], [b"\xff"]]


def test_tensor_content_is_exact_little_endian():
    arr = np.arange(6, dtype="<i4").reshape(2, 3)
    assert decode(proto(3, [2, 3], tensor_content=arr.tobytes()), "int32").tolist() == arr.tolist()
    for n in (23, 25, 0 + 4):
        with pytest.raises(RequestError, match="tensor_content has"):
            decode(proto(3, [2, 3], tensor_content=b"\0" * n), "int32")
    with pytest.raises(RequestError, match="string_val"):
        decode(proto(7, [1], tensor_content=b"abc"), "string")


@pytest.mark.parametrize("t, dtype, match", [
    (proto(3, [1], int_val=[1]), "float32", "expects DT_FLOAT but DT_INT32"),
    (proto(0, [1]), "float32", "DT_INVALID"),
    (proto(1, [-1], float_val=[1]), "float32", "negative"),
    (proto(1, [1 << 40], float_val=[1]), "float32", "more than 1000 elements"),
    (proto(1, [1 << 62, 1 << 62, 8], float_val=[1]), "float32", "more than"),
    (proto(1, [1] * 33, float_val=[1]), "float32", "rank 33"),
    (proto(6, [1], int_val=[300]), "int8", "out of range"),
    (proto(4, [1], int_val=[-1]), "uint8", "out of range"),
    (proto(19, [1], half_val=[1 << 20]), "float16", "16-bit"),
    (proto(14, [1], half_val=[1]), "bfloat16", "not supported"),
])
def test_refusals_are_invalid_argument(t, dtype, match):
    with pytest.raises(RequestError, match=match) as info:
        decode(t, dtype)
    assert info.value.status == 400 and "'x'" in str(info.value)


def test_unknown_rank_and_byte_limits():
    t = proto(1, [], float_val=[1])
    t.tensor_shape.unknown_rank = True
    with pytest.raises(RequestError, match="unknown rank"):
        decode(t, "float32")
    with pytest.raises(RequestError, match="exceeds 100 bytes"):
        decode(proto(2, [100], double_val=[1]), "float64", max_bytes=100)
    with pytest.raises(RequestError, match="exceed 100 bytes"):
        decode(proto(7, [2], string_val=[b"x" * 60, b"y" * 60]), "string", max_bytes=100)
    with pytest.raises(RequestError, match="exceed 100 bytes"):  # one value repeated over a large shape
        decode(proto(7, [50], string_val=[b"x" * 10]), "string", max_bytes=100)


@pytest.mark.parametrize("arr", [
    np.array([[1.5, -2]], np.float32), np.array([1.0, 2.0]), np.array([1, -2], np.int8), np.array([255], np.uint8),
    np.array([1 << 40], np.int64), np.array([(1 << 32) - 1], np.uint32), np.array([True, False]),
    np.array([0.5], np.float16), np.array([1 + 2j], np.complex64), np.array([1 - 2j], np.complex128),
    np.array(3, np.int32), np.zeros((0, 3), np.float32),
    np.array([b"a", b"\xff\x00"], dtype=object).reshape(1, 2),
])
def test_encode_then_decode_roundtrips(arr):
    t = TensorProto()
    grpc_tensor.encode(arr, t)
    assert not t.tensor_content  # typed fields, as TF Serving writes them
    back = decode(TensorProto.FromString(t.SerializeToString()), "string" if arr.dtype == object else arr.dtype.name)
    assert back.shape == arr.shape and back.tolist() == arr.tolist()


def test_grpc_port_in_config(tmp_path):
    from modelwarden.errors import InputError
    from modelwarden.server.config import ServerConfig, load_toml, with_overrides

    assert ServerConfig().grpc_port is None  # off unless asked for
    f = tmp_path / "s.toml"
    f.write_text("[server]\ngrpc_port = 8500\n")
    assert load_toml(str(f)).grpc_port == 8500
    for bad in ("grpc_port = 70000", 'grpc_port = "8500"', "grpc_port = 8501"):
        f.write_text(f"[server]\n{bad}\n")
        with pytest.raises(InputError, match="grpc_port"):
            load_toml(str(f))
    assert with_overrides(ServerConfig(), grpc_port=0).grpc_port == 0


def test_status_mapping_and_client_messages():
    grpc = pytest.importorskip("grpc")

    from modelwarden.sandbox import errors as sberr
    from modelwarden.server.auth import AuthError
    from modelwarden.server.grpc_service import client_message, status_for

    S = grpc.StatusCode
    cases = [(AuthError(401, "x"), S.UNAUTHENTICATED), (AuthError(403, "x"), S.PERMISSION_DENIED),
             (RequestError(404, "x"), S.NOT_FOUND), (RequestError(400, "x"), S.INVALID_ARGUMENT),
             (RequestError(429, "x"), S.RESOURCE_EXHAUSTED), (RequestError(503, "x"), S.UNAVAILABLE),
             (RequestError(504, "x"), S.DEADLINE_EXCEEDED), (sberr.MemoryLimitExceeded("x"), S.RESOURCE_EXHAUSTED),
             (sberr.DeadlineExceeded("x"), S.DEADLINE_EXCEEDED), (sberr.ExecutionFailed("x"), S.INVALID_ARGUMENT),
             (sberr.WorkerCrashed("x"), S.INTERNAL), (ValueError("x"), S.INTERNAL)]
    for exc, code in cases:
        assert status_for(exc) == code, exc
    leak = sberr.ExecutionFailed('ReadFile /srv/models/m/1/assets/x.txt failed\nTraceback (most recent call last):\n'
                                 '  File "/usr/lib/python3/tf.py", line 3')
    assert client_message(leak, S.INVALID_ARGUMENT) == "ReadFile <path> failed"
    crash = sberr.WorkerCrashed("worker 4242 killed by SIGSEGV at /home/u/.venv/lib/x.so")
    assert client_message(crash, S.INTERNAL) == "internal error in the sandboxed worker (worker_crashed)"
    assert client_message(bad_method := sberr.ExecutionFailed("method_name tensorflow/serving/classify"),
                          S.INVALID_ARGUMENT) == str(bad_method)


def test_build_server_binds_loopback_v4_v6_and_reports_a_busy_port():
    pytest.importorskip("grpc")
    import asyncio
    import socket
    import types

    from modelwarden.errors import UsageError
    from modelwarden.server.config import ServerConfig
    from modelwarden.server.grpc_server import build_server

    app = types.SimpleNamespace(cfg=ServerConfig())  # build_server reads only the configuration

    async def bind(host: str, port: int) -> int:
        server, bound = build_server(app, host, port)
        await server.start()
        await server.stop(None)
        return bound

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(bind("127.0.0.1", 0)) > 0
        if socket.has_ipv6:
            try:
                socket.create_server(("::1", 0), family=socket.AF_INET6).close()
            except OSError:
                pass
            else:
                assert loop.run_until_complete(bind("::1", 0)) > 0
        busy = socket.create_server(("127.0.0.1", 0))
        try:
            with pytest.raises(UsageError, match="cannot listen for gRPC on 127.0.0.1"):
                loop.run_until_complete(bind("127.0.0.1", busy.getsockname()[1]))
        finally:
            busy.close()
    finally:
        loop.close()


def test_decoder_never_fails_other_than_invalid_argument():
    """Arbitrary dtypes, shapes, typed values and tensor_content: an array of the declared shape, or a 400."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    names = sorted(grpc_tensor.FIELDS)

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(names), st.integers(0, 40), st.lists(st.integers(-3, 1 << 41), max_size=5),
           st.sampled_from(["none", "field", "content"]), st.binary(max_size=64), st.integers(0, 9))
    def check(dtype, proto_dtype, dims, source, content, count):
        t = proto(proto_dtype, dims)
        field = grpc_tensor.FIELDS[dtype][0]
        if source == "content":
            t.tensor_content = content
        elif source == "field":
            if field == "string_val":
                t.string_val.extend([content] * count)
            elif field in ("float_val", "double_val", "scomplex_val", "dcomplex_val"):
                getattr(t, field).extend([float(b) - 100 for b in content[:count]])
            elif field == "bool_val":
                t.bool_val.extend([bool(b & 1) for b in content[:count]])
            elif field in ("uint32_val", "uint64_val"):
                getattr(t, field).extend(list(content[:count]))
            else:
                getattr(t, field).extend([b * 997 - 60_000 for b in content[:count]])
        try:
            arr = decode(TensorProto.FromString(t.SerializeToString()), dtype, max_elements=4096, max_bytes=1 << 16)
        except RequestError as exc:
            assert exc.status == 400 and "'x'" in str(exc)
            return
        assert list(arr.shape) == dims and proto_dtype == grpc_tensor.DT[dtype]
        assert (arr.dtype == object) == (dtype == "string")

    check()


def test_message_parser_turns_garbage_into_invalid_argument():
    pytest.importorskip("grpc")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from modelwarden.server.grpc_schema import RPCS
    from modelwarden.server.grpc_service import GrpcApi

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from([r.request for r in RPCS]), st.binary(max_size=200))
    def check(name, raw):
        try:
            GrpcApi._parse(name, raw)
        except RequestError as exc:
            assert exc.status == 400

    check()
