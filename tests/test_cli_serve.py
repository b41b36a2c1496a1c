"""``modelwarden serve`` refuses a broken configuration before it binds, and ``/readyz`` is ready only
when every configured model is available or deliberately refused."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from modelwarden import cli

from .test_cli_robustness import run_in_process

pytest.importorskip("uvicorn", reason="uvicorn missing: `modelwarden serve` needs the [serve] extra")
httpx = pytest.importorskip("httpx")

from .test_server_e2e import ServerProc, copy_version, make_token, namespaces_available  # noqa: E402


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    base = tmp_path / "models" / "m"
    (base / "1").mkdir(parents=True)
    return base


@pytest.fixture
def held_port():
    """A port already in use on 127.0.0.1: a serve that tried to bind it would fail differently."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


def serve(tmp_path: Path, port: int, capsys, *args: str) -> tuple[int, str]:
    code, out, err = run_in_process(["serve", "--token-db", str(tmp_path / "t.json"), "--port", str(port), *args],
                                    capsys)
    assert "Traceback" not in err
    return code, out + err


def test_valid_configuration_checks_ok_without_listening(tmp_path, model_dir, held_port, capsys):
    code, said = serve(tmp_path, held_port, capsys, "--model-name", "m", "--model-base-path", str(model_dir),
                       "--check-config")
    assert code == 0 and "configuration OK: 1 model(s) (m)" in said


@pytest.mark.parametrize("setting, args, toml, expected", [
    ("--fail-on", ["--fail-on", "bogus"], "", "argument --fail-on: invalid choice: 'bogus'"),
    ("server.fail_on", [], '[server]\nfail_on = "bogus"\n', "server.fail_on 'bogus' is not a severity"),
    ("models[].fail_on", [], '[[models]]\nname = "x"\nbase_path = "{model}"\nfail_on = "hgh"\n',
     "model 'x': fail_on 'hgh' is not a severity"),
    ("server.backend", [], '[server]\nbackend = "chroot"\n', "server.backend 'chroot' is not one of"),
    ("--policy", ["--policy", "{tmp}/missing-policy.toml"], "", "policy (--policy / server.policy)"),
    ("server.policy", [], '[server]\npolicy = "strict-ish"\n', "policy (--policy / server.policy)"),
    ("base_path", ["--model-name", "m", "--model-base-path", "{tmp}/no/such/models"], "",
     "base_path of model 'm': {tmp}/no/such/models: No such file or directory"),
    ("base_path is a file", [], '[[models]]\nname = "x"\nbase_path = "{tmp}/serve.toml"\n',
     "base_path of model 'x': {tmp}/serve.toml is not a directory"),
    ("--tls-cert", ["--tls-cert", "{tmp}/cert.pem", "--tls-key", "{tmp}/key.pem"], "",
     "TLS certificate (--tls-cert / server.tls.cert): {tmp}/cert.pem: No such file or directory"),
    ("--tls-key", ["--tls-cert", "{tmp}/serve.toml", "--tls-key", "{tmp}/key.pem"], "",
     "TLS key (--tls-key / server.tls.key): {tmp}/key.pem: No such file or directory"),
    ("TLS not PEM", ["--tls-cert", "{tmp}/serve.toml", "--tls-key", "{tmp}/serve.toml"], "",
     "not a usable PEM certificate"),
    ("--access-log", ["--access-log", "{tmp}/no/dir/access.log"], "", "directory of the access log"),
    ("--port-file", ["--port-file", "{tmp}/no/dir/port"], "", "directory of the port file (--port-file)"),
    ("models[].memory", [], '[[models]]\nname = "x"\nbase_path = "{model}"\nmemory = "8MiB"\n',
     "model 'x': memory_bytes must be at least 256 MiB"),
])
def test_broken_configuration_exits_2_naming_the_setting(tmp_path, model_dir, held_port, capsys,
                                                         setting, args, toml, expected):
    fill = {"tmp": str(tmp_path), "model": str(model_dir)}
    (tmp_path / "serve.toml").write_text(toml.format(**fill))
    extra = ["--config", str(tmp_path / "serve.toml")] if toml else []
    argv = [*extra, *(a.format(**fill) for a in args)]
    for check_only in ([], ["--check-config"]):
        code, said = serve(tmp_path, held_port, capsys, *argv, *check_only)
        assert code == 2, (setting, said)
        assert expected.format(**fill) in said, (setting, said)
        assert "cannot listen" not in said  # refused before binding (the port is taken)


# -- readiness, with real servers and real sandboxed workers ----------------------------------------


def _ready(url: str) -> httpx.Response:
    return httpx.get(url + "/readyz", timeout=5)


def _wait_for_event(server: ServerProc, events: set[str], timeout: float = 240) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for rec in server.log_records() if server.log_file.exists() else []:
            if rec["event"] in events:
                return rec
        assert server.proc.poll() is None, server.output()
        time.sleep(0.2)
    raise AssertionError(f"no {events} event: {server.output()}")


@pytest.mark.sandbox
@pytest.mark.skipif(not namespaces_available(), reason="Linux namespaces unavailable (sandbox)")
def test_readyz_waits_for_every_model_and_a_load_failure_keeps_it_unready(tmp_path, fixture_dir):
    escape = fixture_dir("build_escape")
    dense = fixture_dir("build_serve_models") / "dense"
    models = tmp_path / "models"
    copy_version(escape / "memory_bomb", models / "refused")  # the scan gate refuses it: deliberate
    copy_version(dense / "1", models / "starved")  # passes the gate, but its worker cannot start in 4 tasks
    db = tmp_path / "tokens.json"
    admin, _ = make_token(db, ["*"], "admin")
    head = f'[server]\ntoken_db = "{db}"\nport = 0\n[[models]]\nname = "refused"\nbase_path = "{models / "refused"}"\n'
    (tmp_path / "serve.toml").write_text(head + f'[[models]]\nname = "starved"\nbase_path = "{models / "starved"}"\n'
                                         'memory = "256MiB"\nmax_processes = 4\n')
    # workers boot fresh (one forked from the worker template has TensorFlow already in memory);
    # 256 MiB alone no longer starves a fresh worker since it imports TensorFlow without
    # sklearn/pandas/scipy (runtime/imports.py): 4 tasks do (TensorFlow's threads crash the load)
    server = ServerProc(tmp_path, ["--config", str(tmp_path / "serve.toml")],
                        env=dict(os.environ, MODELWARDEN_WORKER_TEMPLATE="0"))
    try:
        url = f"http://127.0.0.1:{server.wait_listening()}"
        first = _ready(url)
        assert first.status_code == 503  # models are still being scanned and loaded
        rec = _wait_for_event(server, {"server_ready", "server_not_ready", "startup_failed"})
        assert rec["event"] == "server_not_ready", rec
        assert any("model starved version 1" in p for p in rec["problems"]), rec
        assert not any("refused" in p for p in rec["problems"]), rec  # a deliberate refusal is not a problem
        r = _ready(url)
        assert r.status_code == 503 and r.json() == {"status": "not ready", "not_ready": 1}
        auth = {"Authorization": f"Bearer {admin}"}
        st = httpx.get(url + "/v1/models/starved", headers=auth, timeout=5).json()["model_version_status"][0]
        assert st["state"] == "END" and st["status"]["error_code"] == "UNAVAILABLE", st
        assert "could not start a sandboxed worker" in st["status"]["error_message"]
        refused = httpx.get(url + "/v1/models/refused", headers=auth, timeout=5).json()["model_version_status"][0]
        assert refused["status"]["error_code"] == "FAILED_PRECONDITION"
    finally:
        server.stop()

    # the same server without the model that cannot load: the refusal alone does not hold readiness
    (tmp_path / "serve.toml").write_text(head)
    (tmp_path / "access.log").unlink()
    server = ServerProc(tmp_path, ["--config", str(tmp_path / "serve.toml")])
    try:
        url = f"http://127.0.0.1:{server.wait_listening()}"
        server.wait_ready(url, timeout=120)
        assert _ready(url).json() == {"status": "ok"}
        assert json.dumps(_wait_for_event(server, {"server_ready"}))
    finally:
        server.stop()
