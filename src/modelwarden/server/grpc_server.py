"""The gRPC listener: a ``grpc.aio`` server for :class:`GrpcApi`, bound with the REST listener's TLS settings.

Hardening options: message size from ``max_body``, ``max_concurrent_requests`` concurrent RPCs,
100 streams per connection, 16 KiB of metadata, a 10 s handshake deadline, and no
``SO_REUSEPORT`` (gRPC's default would let another process bind the same port and take a share
of the connections).
"""

from __future__ import annotations

from typing import Any

import grpc

from modelwarden.server.grpc_service import GrpcApi


def build_server(app: Any, host: str, port: int) -> tuple[Any, int]:
    """A ``grpc.aio`` server bound to ``host:port`` (TLS/mTLS from the configuration); returns it and the port.

    Call with the event loop that will run it set as the current loop.  Binding happens here,
    so it can precede a privilege drop.
    """
    from modelwarden.errors import UsageError

    cfg = app.cfg
    server = grpc.aio.server(
        handlers=GrpcApi(app).generic_handlers(),
        maximum_concurrent_rpcs=cfg.max_concurrent_requests,
        options=[
            ("grpc.max_receive_message_length", cfg.max_body_bytes),
            ("grpc.max_metadata_size", 16 * 1024),
            ("grpc.so_reuseport", 0),  # another process must not be able to bind the same port and share traffic
            ("grpc.max_concurrent_streams", 100),  # per connection
            ("grpc.server_handshake_timeout_ms", 10_000),  # a connection that never finishes TLS/HTTP2 set-up
            ("grpc.max_connection_idle_ms", 300_000),
            ("grpc.http2.max_pings_without_data", 2),
        ],
    )
    address = f"[{host.strip('[]')}]:{port}" if ":" in host.strip("[]") else f"{host}:{port}"
    try:
        if cfg.tls:
            creds = grpc.ssl_server_credentials(
                [(_read(cfg.tls_key), _read(cfg.tls_cert))],
                root_certificates=_read(cfg.tls_client_ca) if cfg.tls_client_ca else None,
                require_client_auth=bool(cfg.tls_client_ca))
            bound = server.add_secure_port(address, creds)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise UsageError(f"cannot listen for gRPC on {address}: {exc}") from None
    if not bound:
        raise UsageError(f"cannot listen for gRPC on {address} (address in use?)")
    return server, bound


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
