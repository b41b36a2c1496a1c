"""`modelwarden serve` transport security and process hardening: TLS, mutual TLS with throwaway
certificates, the refusal of a public plaintext bind, rate limiting, privilege drop, the token CLI.

These servers have no models (no TensorFlow start-up): what is tested here happens before a model is touched.
"""

from __future__ import annotations

import datetime
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
for _mod in ("uvicorn", "orjson", "grpc"):  # the [serve] extra: pip install -e '.[dev,tf,serve]'
    pytest.importorskip(_mod, reason=f"{_mod} missing: `modelwarden serve` needs the [serve] extra")
x509 = pytest.importorskip("cryptography.x509")

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from tests.test_server_e2e import RUNNER, ServerProc, make_token  # noqa: E402


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer_key, issuer_name, key, *, ca: bool = False, san: bool = False,
          client: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        import ipaddress

        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                         x509.DNSName("localhost")]), critical=False)
    if client:
        b = b.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key) -> tuple[str, str]:
    c, k = path.with_suffix(".crt"), path.with_suffix(".key")
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    os.chmod(k, 0o600)
    return str(c), str(k)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("modelwarden test CA", ca_key, _name("modelwarden test CA"), ca_key, ca=True)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _cert("other CA", other_key, _name("other CA"), other_key, ca=True)
    srv_key, cli_key, rogue_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    out = {"ca": _write(d / "ca", ca, ca_key)[0]}
    out["server"] = _write(d / "server", _cert("localhost", ca_key, ca.subject, srv_key, san=True), srv_key)
    out["client"] = _write(d / "client", _cert("client", ca_key, ca.subject, cli_key, client=True), cli_key)
    out["rogue"] = _write(d / "rogue", _cert("rogue", other_key, other_ca.subject, rogue_key, client=True), rogue_key)
    return out


def _start(tmp: Path, *args: str) -> ServerProc:
    db = tmp / "tokens.json"
    s = ServerProc(tmp, ["--port", "0", "--token-db", str(db), *args])
    s.wait_listening()
    return s


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki):
    tmp = tmp_path_factory.mktemp("tls")
    token, _ = make_token(tmp / "tokens.json", ["*"], "admin")
    s = _start(tmp, "--tls-cert", pki["server"][0], "--tls-key", pki["server"][1])
    s.token = token
    yield s
    s.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, pki):
    tmp = tmp_path_factory.mktemp("mtls")
    token, _ = make_token(tmp / "tokens.json", ["*"], "admin")
    s = _start(tmp, "--tls-cert", pki["server"][0], "--tls-key", pki["server"][1], "--tls-client-ca", pki["ca"])
    s.token = token
    yield s
    s.stop()


def _ctx(ca: str, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


def test_tls_serves_https_with_auth(tls_server, pki):
    url = f"https://127.0.0.1:{tls_server.port}"
    r = httpx.get(url + "/healthz", verify=_ctx(pki["ca"]))
    assert r.status_code == 200
    r = httpx.get(url + "/v1/models/x", verify=_ctx(pki["ca"]), headers={"Authorization": f"Bearer {tls_server.token}"})
    assert r.status_code == 404  # authenticated; no such model
    assert httpx.get(url + "/v1/models/x", verify=_ctx(pki["ca"])).status_code == 401
    r = httpx.get(url + "/monitoring/prometheus/metrics", verify=_ctx(pki["ca"]),
                  headers={"Authorization": f"Bearer {tls_server.token}"})
    assert r.status_code == 200 and "modelwarden_requests_total" in r.text


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_refuses_plaintext_and_old_protocols(tls_server, pki):
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/healthz", timeout=5)
    ctx = _ctx(pki["ca"])
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    with pytest.raises((httpx.HTTPError, ssl.SSLError)):
        httpx.get(f"https://127.0.0.1:{tls_server.port}/healthz", verify=ctx, timeout=5)


def test_mutual_tls(mtls_server, pki):
    url = f"https://127.0.0.1:{mtls_server.port}/v1/models/x"
    auth = {"Authorization": f"Bearer {mtls_server.token}"}
    assert httpx.get(url, verify=_ctx(pki["ca"], pki["client"]), headers=auth, timeout=10).status_code == 404
    for ctx in (_ctx(pki["ca"]), _ctx(pki["ca"], pki["rogue"])):  # no client certificate / untrusted issuer
        with pytest.raises((httpx.HTTPError, ssl.SSLError)):
            httpx.get(url, verify=ctx, headers=auth, timeout=10)
    # a valid certificate does not replace the token
    assert httpx.get(url, verify=_ctx(pki["ca"], pki["client"]), timeout=10).status_code == 401


def _serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, timeout=timeout)


def test_public_plaintext_bind_is_refused(tmp_path):
    p = _serve("--host", "0.0.0.0", "--port", "0", "--token-db", str(tmp_path / "t.json"))
    assert p.returncode == 2
    assert "refusing to listen on 0.0.0.0 without TLS" in p.stderr and "--insecure-allow-plaintext-public-bind" in p.stderr


@pytest.mark.parametrize("extra", [["--insecure-allow-plaintext-public-bind"], "tls"])
def test_public_bind_allowed_with_tls_or_explicit_flag(tmp_path, pki, extra):
    args = ["--tls-cert", pki["server"][0], "--tls-key", pki["server"][1]] if extra == "tls" else extra
    s = ServerProc(tmp_path, ["--host", "0.0.0.0", "--port", "0", "--token-db", str(tmp_path / "t.json"), *args])
    try:
        port = s.wait_listening()
        scheme = "https" if extra == "tls" else "http"
        verify = _ctx(pki["ca"]) if extra == "tls" else True
        end = time.monotonic() + 10
        while True:
            try:
                assert httpx.get(f"{scheme}://127.0.0.1:{port}/healthz", verify=verify).status_code == 200
                break
            except httpx.ConnectError:
                assert time.monotonic() < end
                time.sleep(0.1)
    finally:
        s.stop()


def test_rate_limit_per_token(tmp_path):
    (tmp_path / "s.toml").write_text(f'[server]\ntoken_db = "{tmp_path / "t.json"}"\n'
                                     "[limits]\nrate_per_token = 0.2\nrate_burst = 5\n")  # slow refill: load-proof
    a, _ = make_token(tmp_path / "t.json", ["*"], "admin")
    b, _ = make_token(tmp_path / "t.json", ["*"], "admin")
    s = ServerProc(tmp_path, ["--config", str(tmp_path / "s.toml"), "--port", "0"])
    try:
        url = f"http://127.0.0.1:{s.wait_listening()}/v1/models/x"
        s.wait_ready(url.rsplit("/v1", 1)[0])
        codes = [httpx.get(url, headers={"Authorization": f"Bearer {a}"}).status_code for _ in range(12)]
        assert codes[:5] == [404] * 5 and 429 in codes
        r = httpx.get(url, headers={"Authorization": f"Bearer {a}"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "rate limit" in r.json()["error"]
        assert httpx.get(url, headers={"Authorization": f"Bearer {b}"}).status_code == 404  # per token
    finally:
        s.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to test the privilege drop")
def test_privilege_drop_with_user(tmp_path):
    import pwd

    user = pwd.getpwnam("nobody")
    os.chmod(tmp_path, 0o755)
    s = ServerProc(tmp_path, ["--port", "0", "--token-db", str(tmp_path / "t.json"), "--user", "nobody"])
    try:
        port = s.wait_listening()
        s.wait_ready(f"http://127.0.0.1:{port}", timeout=30)
        status = Path(f"/proc/{s.proc.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        gid_line = next(line for line in status.splitlines() if line.startswith("Gid:"))
        groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
        assert uid_line.split()[1:] == [str(user.pw_uid)] * 4
        assert gid_line.split()[1:] == [str(user.pw_gid)] * 4
        assert groups.split()[1:] == []
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models/x").status_code == 401
        assert any(r["event"] == "privileges_dropped" for r in s.log_records())
    finally:
        s.stop()


def test_user_flag_needs_root(tmp_path):
    if os.geteuid() == 0:
        p = _serve("--port", "0", "--token-db", str(tmp_path / "t.json"), "--user", "root")
        assert p.returncode != 0 and "unprivileged" in p.stderr
    else:
        p = _serve("--port", "0", "--token-db", str(tmp_path / "t.json"), "--user", "nobody")
        assert p.returncode == 2 and "root" in p.stderr


TOKEN_RUNNER = ("import sys\nfrom modelwarden import cli\n"
                "cli.COMMANDS.setdefault('token', ('modelwarden.cli.token_cmd', 'manage tokens'))\n"
                "sys.exit(cli.main(['token', *sys.argv[1:]]))\n")


def _token(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TOKEN_RUNNER, *args], capture_output=True, text=True, timeout=30)


def test_token_cli_create_list_revoke(tmp_path):
    db = str(tmp_path / "sub" / "tokens.json")
    p = _token("create", "--model", "dense", "--scope", "predict", "--expires", "30d", "--note", "ci", "--token-db", db)
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip()
    assert token.startswith("mwt_") and len(token) == 4 + 12 + 1 + 43
    assert token not in Path(db).read_text()
    lst = _token("list", "--json", "--token-db", db)
    recs = json.loads(lst.stdout)
    assert recs[0]["id"] == token[4:16] and recs[0]["state"] == "active" and recs[0]["models"] == ["dense"]
    assert token not in lst.stdout
    assert _token("revoke", token[4:16], "--token-db", db).returncode == 0
    assert json.loads(_token("list", "--json", "--token-db", db).stdout)[0]["state"] == "revoked"
    bad = _token("revoke", "0123456789ab", "--token-db", db)
    assert bad.returncode != 0 and "no token" in bad.stderr
    bad = _token("create", "--model", "x", "--scope", "predict", "--expires", "yesterday", "--token-db", db)
    assert bad.returncode != 0 and "--expires" in bad.stderr
