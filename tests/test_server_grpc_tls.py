"""gRPC transport security and limits: TLS and mutual TLS with the REST flags and throwaway
certificates, the public-bind refusal, gRPC being off unless asked for, the per-token rate limit.
No models: what is tested happens before a model is touched (an authenticated call for an
unknown model is NOT_FOUND)."""

from __future__ import annotations

import time

import pytest

from tests.test_server_e2e import RUNNER, ServerProc, make_token
from tests.test_server_grpc import GrpcClient, grpc_server, require_client
from tests.test_server_tls import pki  # noqa: F401 - the module's throwaway CA and certificates

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

STATUS = '''
c = channel(target, ca, cert, key)
md = [("authorization", "Bearer " + token)] if token else None
try:
    ModelServiceStub(c).GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name="nope")), timeout=10, metadata=md)
    result = "OK"
finally:
    c.close()
'''


@pytest.fixture(scope="module")
def servers(tmp_path_factory, pki):  # noqa: F811
    require_client()
    out = {}
    for name, extra in (("tls", []), ("mtls", ["--tls-client-ca", pki["ca"]])):
        tmp = tmp_path_factory.mktemp(name)
        token, _ = make_token(tmp / "tokens.json", ["*"], "admin")
        s, port = grpc_server(tmp, ["--port", "0", "--token-db", str(tmp / "tokens.json"),
                                    "--tls-cert", pki["server"][0], "--tls-key", pki["server"][1], *extra])
        out[name] = (s, port, token)
    work = tmp_path_factory.mktemp("client")
    client = GrpcClient(f"127.0.0.1:{out['tls'][1]}", work)
    yield out, client
    client.close()
    for s, _, _ in out.values():
        s.stop()


def _status(client: GrpcClient, port: int, token: str, ca=None, cert=None, key=None) -> str:
    r = client.call(STATUS, target=f"127.0.0.1:{port}", token=token, ca=ca, cert=cert, key=key)
    return "OK" if r["ok"] else r["code"]


def test_grpc_over_tls(servers, pki):  # noqa: F811
    out, client = servers
    _, port, token = out["tls"]
    assert _status(client, port, token, ca=pki["ca"]) == "NOT_FOUND"  # authenticated, no such model
    assert _status(client, port, "", ca=pki["ca"]) == "UNAUTHENTICATED"
    assert _status(client, port, token) == "UNAVAILABLE"  # plaintext against the TLS port: no connection
    assert _status(client, port, token, ca=pki["client"][0]) == "UNAVAILABLE"  # server certificate not trusted


def test_grpc_mutual_tls(servers, pki):  # noqa: F811
    out, client = servers
    _, port, token = out["mtls"]
    assert _status(client, port, token, ca=pki["ca"], cert=pki["client"][0], key=pki["client"][1]) == "NOT_FOUND"
    assert _status(client, port, token, ca=pki["ca"]) == "UNAVAILABLE"  # no client certificate
    assert _status(client, port, token, ca=pki["ca"], cert=pki["rogue"][0], key=pki["rogue"][1]) == "UNAVAILABLE"
    assert _status(client, port, "", ca=pki["ca"], cert=pki["client"][0], key=pki["client"][1]) == "UNAUTHENTICATED"


def test_grpc_is_off_by_default_and_public_plaintext_is_refused(tmp_path):
    import subprocess
    import sys

    s = ServerProc(tmp_path, ["--port", "0", "--token-db", str(tmp_path / "tokens.json")])
    try:
        s.wait_listening()
        end = time.monotonic() + 20
        while time.monotonic() < end:  # the port file is written just before the "listening" record
            listening = [r for r in s.log_records() if r.get("event") == "listening"]
            if listening:
                break
            time.sleep(0.1)
        assert listening and not any(r.get("api") == "grpc" for r in listening)
    finally:
        s.stop()
    p = subprocess.run([sys.executable, "-c", RUNNER, "--host", "0.0.0.0", "--port", "0", "--grpc-port", "0",
                        "--token-db", str(tmp_path / "t.json")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "refusing to listen on 0.0.0.0 without TLS" in p.stderr


def test_per_token_rate_limit_is_resource_exhausted(servers, tmp_path):
    _, client = servers
    db = tmp_path / "tokens.json"
    token, _ = make_token(db, ["*"], "admin")
    other, _ = make_token(db, ["*"], "admin")
    (tmp_path / "s.toml").write_text(f'[server]\ntoken_db = "{db}"\n[limits]\nrate_per_token = 0.2\nrate_burst = 2\n')
    s, port = grpc_server(tmp_path, ["--config", str(tmp_path / "s.toml"), "--port", "0"])
    try:
        codes = [_status(client, port, token) for _ in range(3)]
        assert codes == ["NOT_FOUND", "NOT_FOUND", "RESOURCE_EXHAUSTED"]
        assert _status(client, port, other) == "NOT_FOUND"  # per token: another token is not throttled
    finally:
        s.stop()
