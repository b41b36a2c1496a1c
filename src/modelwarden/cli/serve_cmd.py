"""``modelwarden serve``: serve audited models over TensorFlow Serving's REST API, each in the sandbox.

Exit codes: 0 clean shutdown (or ``--check-config`` passed); 2 usage or configuration error
(including an insecure bind refused, a missing file, policy or model base path); 3 a runtime
dependency is missing (the message says how to install it) or the privilege drop failed.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from typing import Any

from modelwarden.cli.scan_cmd import SEVERITIES

INSECURE_FLAG = "--insecure-allow-plaintext-public-bind"


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.toml", help="server configuration (see docs/serve.md)")
    p.add_argument("--model-config-file", metavar="FILE",
                   help="TensorFlow Serving model_config_list text format (models.config)")
    p.add_argument("--model-name", help="serve one model under this name (with --model-base-path)")
    p.add_argument("--model-base-path", help="directory holding <version>/ SavedModel directories")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", "--rest-api-port", dest="port", type=int, help="port (default 8501; 0 = any free port)")
    p.add_argument("--port-file", help="write the bound port to this file once listening")
    p.add_argument("--grpc-port", type=int, help="also serve TensorFlow Serving's gRPC API on this port (TF Serving "
                   "uses 8500; 0 = any free port; default: off), same host, TLS and tokens as REST")
    p.add_argument("--grpc-port-file", help="write the bound gRPC port to this file once listening")
    p.add_argument("--tls-cert", help="PEM certificate (chain) for HTTPS")
    p.add_argument("--tls-key", help="PEM private key for HTTPS")
    p.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    p.add_argument("--token-db", help="token store (default $MODELWARDEN_TOKEN_DB or ~/.config/modelwarden/tokens.json)")
    p.add_argument("--policy", help="scan-gate policy: default, strict or a TOML file")
    p.add_argument("--fail-on", choices=SEVERITIES, metavar="SEVERITY",
                   help="refuse models with findings at or above SEVERITY: " + ", ".join(SEVERITIES))
    p.add_argument("--backend", choices=("auto", "namespaces", "bwrap"), help="sandbox backend (default auto)")
    p.add_argument("--workers", type=int, help="sandboxed workers per model version (single-model mode)")
    p.add_argument("--access-log", help="append the JSON access/audit log to this file (default stderr)")
    p.add_argument("--user", help="when started as root: drop to this user after binding and reading TLS keys")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="serve on Ray Serve: replicas of this server, each with its own sandboxed workers, on the Ray "
                        "cluster at ADDRESS ('auto': join one, else start a local one); scaling in the [ray] table "
                        "of --config (docs/scale-out.md); needs pip install 'modelwarden[ray]'")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration (files, policy, model paths, TLS, tokens) and exit without listening")
    p.add_argument(INSECURE_FLAG, dest="insecure_public", action="store_true",
                   help="allow listening on a non-loopback address WITHOUT TLS (tokens travel in clear text)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_config(args: argparse.Namespace) -> Any:
    from modelwarden.errors import UsageError
    from modelwarden.server import config as C

    cfg = C.load_toml(args.config) if args.config else C.ServerConfig()
    models = list(cfg.models)
    if args.model_config_file:
        models += C.load_model_config_list(args.model_config_file)
    if args.model_name or args.model_base_path:
        if not (args.model_name and args.model_base_path):
            raise UsageError("--model-name and --model-base-path go together")
        models.append(C.validate_model("command line", C.ModelConfig(
            name=args.model_name, base_path=os.path.abspath(args.model_base_path), workers=args.workers or 1)))
    token_db = args.token_db or cfg.token_db or os.environ.get("MODELWARDEN_TOKEN_DB")
    if not token_db:
        from modelwarden.server.auth import default_store_path

        token_db = default_store_path()
    return C.with_overrides(cfg, models=tuple(models), host=args.host, port=args.port, grpc_port=args.grpc_port,
                            tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                            token_db=token_db, policy=args.policy, fail_on=args.fail_on, backend=args.backend,
                            access_log=args.access_log)


def check_bind(cfg: Any, insecure: bool) -> None:
    from modelwarden.errors import UsageError

    if is_loopback(cfg.host) or cfg.tls or insecure:
        return
    raise UsageError(f"refusing to listen on {cfg.host} without TLS: bearer tokens would cross the network in "
                     f"clear text. Give --tls-cert/--tls-key (and --tls-client-ca for mutual TLS), listen on "
                     f"127.0.0.1, or pass {INSECURE_FLAG} if a trusted proxy terminates TLS")


def tls_context(cfg: Any) -> Any:
    import ssl

    from modelwarden.errors import UsageError

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"--tls-cert {cfg.tls_cert} / --tls-key {cfg.tls_key}: not a usable PEM certificate "
                         f"and matching private key ({exc.strerror or exc})") from None
    if cfg.tls_client_ca:
        try:
            ctx.load_verify_locations(cfg.tls_client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(f"--tls-client-ca {cfg.tls_client_ca}: not a usable PEM CA certificate "
                             f"({exc.strerror or exc})") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def bind(host: str, port: int) -> socket.socket:
    from modelwarden.errors import UsageError

    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # proto IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so (else Nagle + delayed ACK
    # add ~40 ms to every keep-alive response)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def lookup_user(user: str) -> Any:
    """The passwd entry of the unprivileged ``--user`` (checked before binding)."""
    import pwd

    from modelwarden.errors import UsageError

    try:
        pw = pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise UsageError(f"--user {user!r}: no such user") from None
    if pw.pw_uid == 0:
        raise UsageError(f"--user {user} is root; name an unprivileged user")
    return pw


def drop_privileges(user: str) -> tuple[int, int]:
    """setgroups([]) + setgid + setuid to ``user``; verifies root cannot be regained."""
    from modelwarden.errors import ModelwardenError

    pw = lookup_user(user)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - would mean the drop did not happen
        raise ModelwardenError("privilege drop failed: root could be regained")
    os.environ["HOME"] = pw.pw_dir or "/"
    os.environ["USER"] = os.environ["LOGNAME"] = user
    return pw.pw_uid, pw.pw_gid


def _preimport() -> None:
    """Import what the server needs later, while the interpreter's files are still readable
    (after --user the Python installation may be unreadable, e.g. under /root)."""
    import modelwarden.report  # noqa: F401
    import modelwarden.sandbox.client  # noqa: F401
    import modelwarden.scanner  # noqa: F401
    from modelwarden.analysis import registry as rules
    from modelwarden.report import renderer

    renderer("json")
    rules.rule_classes()  # imports every rule module
    import importlib

    for name in ("uvicorn.loops.auto", "uvicorn.loops.asyncio", "uvicorn.protocols.http.auto",
                 "uvicorn.protocols.http.h11_impl", "uvicorn.protocols.http.httptools_impl", "httptools",
                 "uvicorn.lifespan.on", "encodings.idna", "zlib", "pwd", "gzip"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _write_port(path: str, port: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from modelwarden.cli import deps
    from modelwarden.errors import ModelwardenError, UsageError
    from modelwarden.server.auth import TokenStore
    from modelwarden.server.config import check_startup, check_writable

    cfg = build_config(args)
    check_bind(cfg, args.insecure_public)
    if args.user:
        if os.geteuid() != 0:
            raise UsageError("--user needs the server to be started as root")
        lookup_user(args.user)
    check_startup(cfg)  # every named file, the policy, every model's base_path: exit 2 before binding
    if args.port_file:
        check_writable("port file (--port-file)", args.port_file)
    deps.require("serve", deps.RUN + deps.SERVE)
    if args.ray is not None:
        from modelwarden.server import ray_serve

        if args.user:
            raise UsageError("--user is not available with --ray (run the Ray cluster itself unprivileged)")
        if cfg.grpc_port is not None:
            raise UsageError("the gRPC API is not available with --ray (Ray Serve proxies REST); drop --grpc-port")
        ray_opts = ray_serve.options_from_toml(args.config, args.ray)
        if not args.check_config:
            return ray_serve.run(cfg, ray_opts, port_file=args.port_file)
    tokens = TokenStore(cfg.token_db).load()
    ssl_ctx = tls_context(cfg) if cfg.tls else None
    if args.check_config:
        print(f"configuration OK: {len(cfg.models)} model(s) ({', '.join(m.name for m in cfg.models) or 'none'}), "
              f"{len(tokens.records)} token(s), would listen on {'https' if ssl_ctx else 'http'}://{cfg.host}:{cfg.port}")
        return 0

    import uvicorn

    from modelwarden.server.app import App
    from modelwarden.server.http import guarded_protocol
    from modelwarden.server.log import AuditLog

    log = AuditLog(cfg.access_log)
    sock = bind(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    _preimport()
    app = App(cfg, tokens, log)
    grpc_server = loop = None
    if cfg.grpc_port is not None:  # bound now, before any privilege drop, on the loop that will run it
        from modelwarden.server.grpc_server import build_server

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        grpc_server, grpc_port = build_server(app, cfg.host, cfg.grpc_port)
    uv_cfg = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", server_header=False,
        proxy_headers=False, timeout_keep_alive=30, h11_max_incomplete_event_size=64 * 1024,
        http=guarded_protocol(cfg.header_timeout_s, cfg.max_connections, cfg.http_parser), ws="none", backlog=2048,
        ssl_certfile=cfg.tls_cert if ssl_ctx else None, ssl_keyfile=cfg.tls_key if ssl_ctx else None,
        ssl_context_factory=(lambda _c, _d: ssl_ctx) if ssl_ctx else None,
    )
    uv_cfg.load()  # builds the TLS context now, while the key is readable
    if grpc_server is not None and args.grpc_port_file:  # first: the REST port file means "listening"
        _write_port(args.grpc_port_file, grpc_port)
    if args.port_file:  # like a pid file: written before the privilege drop
        _write_port(args.port_file, port)
    if args.user:
        uid, gid = drop_privileges(args.user)
        log.write("privileges_dropped", user=args.user, uid=uid, gid=gid)
    elif os.geteuid() == 0:
        log.write("warning", message="running as root: pass --user NAME to drop privileges after binding")
        print("modelwarden serve: warning: running as root; pass --user NAME to drop privileges", file=sys.stderr)
    if not tokens.records:
        print(f"modelwarden serve: warning: no tokens in {cfg.token_db}; every request will be refused "
              f"(create one with `modelwarden token create --model NAME --scope predict`)", file=sys.stderr)
    scheme = "https" if ssl_ctx else "http"
    log.write("listening", address=f"{scheme}://{cfg.host}:{port}", mtls=bool(cfg.tls_client_ca),
              models=[m.name for m in cfg.models])
    try:
        if grpc_server is None:
            uvicorn.Server(uv_cfg).run(sockets=[sock])
        else:
            log.write("listening", address=f"grpc{'s' if ssl_ctx else ''}://{cfg.host}:{grpc_port}",
                      mtls=bool(cfg.tls_client_ca), api="grpc")
            loop.run_until_complete(_serve_both(uvicorn.Server(uv_cfg), sock, grpc_server))
    except ModelwardenError:
        raise
    return 0


async def _serve_both(rest: Any, sock: socket.socket, grpc_server: Any) -> None:
    """REST (uvicorn) and gRPC on one event loop: they share the registry and its worker pools."""
    await grpc_server.start()
    try:
        await rest.serve(sockets=[sock])
    finally:
        await grpc_server.stop(grace=2)
