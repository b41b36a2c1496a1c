"""``modelwarden serve --ray``: the same TF-Serving-compatible REST front on Ray Serve.

Each Ray Serve replica is the whole server application (:class:`~modelwarden.server.app.App`:
authentication, request limits, audit log, scan gate, metrics) holding its own pools of
sandboxed workers — the sandbox is unchanged, it simply runs on whichever node holds the
replica.  Ray Serve's proxy spreads requests over replicas and scales them with load
(``[ray]`` in the server TOML).  A replica becomes ready only when every configured model is
available or deliberately refused, so scaling up or a rolling update never routes a request to
a replica still importing TensorFlow; a replica or node that dies costs only the requests it
had in flight (Ray Serve replaces it).

Tokens: every replica reads the same token file and re-reads it when it changes (at most every
0.5 s), so a revocation reaches every replica on a host within 0.5 s; across machines the file
must sit on a shared filesystem (the bound is then 0.5 s plus its attribute cache).  Audit log:
every replica appends whole JSON lines to the same ``access_log`` with its ``replica`` id.

Ray itself is imported only here, only for ``--ray``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import tomllib
from dataclasses import dataclass
from typing import Any

from modelwarden.errors import UsageError
from modelwarden.server.config import ServerConfig

_KEYS = {"address", "num_replicas", "min_replicas", "max_replicas", "target_ongoing_requests", "replica_cpus",
         "app_name"}


@dataclass(frozen=True)
class RayServeOptions:
    """How the server runs on Ray Serve (the ``[ray]`` table of the server TOML)."""

    address: str = "auto"  # a running cluster's address, "auto" (join one, else start a local one) or "local"
    num_replicas: int = 1  # fixed replica count when autoscaling is off
    min_replicas: int | None = None  # autoscaling: both bounds set
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    replica_cpus: float = 1.0
    app_name: str = "modelwarden"

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    def deployment_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"ray_actor_options": {"num_cpus": self.replica_cpus}, "max_ongoing_requests": 256}
        if self.autoscaling:
            opts["autoscaling_config"] = {"min_replicas": self.min_replicas or 1,
                                          "max_replicas": self.max_replicas or max(1, self.min_replicas or 1),
                                          "target_ongoing_requests": self.target_ongoing_requests}
        else:
            opts["num_replicas"] = self.num_replicas
        return opts

    def validate(self, where: str = "[ray]") -> "RayServeOptions":
        for name in ("num_replicas", "min_replicas", "max_replicas"):
            v = getattr(self, name)
            if v is not None and (type(v) is not int or not 1 <= v <= 1024):
                raise UsageError(f"{where}: {name} must be an integer between 1 and 1024, got {v!r}")
        if self.min_replicas and self.max_replicas and self.min_replicas > self.max_replicas:
            raise UsageError(f"{where}: min_replicas is above max_replicas")
        for name in ("target_ongoing_requests", "replica_cpus"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 4096:
                raise UsageError(f"{where}: {name} must be a positive number, got {v!r}")
        if not isinstance(self.address, str) or not isinstance(self.app_name, str) or not self.app_name:
            raise UsageError(f"{where}: address and app_name must be non-empty strings")
        from modelwarden.engine.ray_engine import check_address

        check_address(self.address)
        return self


def options_from_toml(path: str | None, address: str | None = None) -> RayServeOptions:
    """The ``[ray]`` table of the server configuration file, with ``--ray ADDRESS`` on top."""
    table: dict[str, Any] = {}
    if path:
        from modelwarden.formats.safeio import read_file

        try:
            doc = tomllib.loads(read_file(path, 1 << 20, what="server configuration").decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"{path}: not valid TOML ({exc})") from None
        table = doc.get("ray", {})
        if not isinstance(table, dict):
            raise UsageError(f"{path}: [ray] must be a table")
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            raise UsageError(f"{path}: [ray]: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_KEYS))})")
    if address and address != "auto":
        table["address"] = address
    try:
        opts = RayServeOptions(**table)
    except TypeError as exc:
        raise UsageError(f"{path}: [ray]: {exc}") from None
    return opts.validate(f"{path}: [ray]" if path else "--ray")


class ReadyGate:
    """ASGI wrapper: lifespan start-up completes only when the app's models are ready, so Ray Serve
    routes nothing to a replica that is still loading (its start-up is the replica's start-up)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def gated_send(message: dict) -> None:
            if message.get("type") == "lifespan.startup.complete":
                while not getattr(self.app.registry, "ready", True):
                    await asyncio.sleep(0.05)
            await send(message)

        await self.app(scope, receive, gated_send)


def replica_app(cfg: ServerConfig) -> ReadyGate:
    """Runs on every replica: the server application with this replica's id in its audit log."""
    from ray import serve

    from modelwarden.server.app import App
    from modelwarden.server.auth import TokenStore
    from modelwarden.server.log import AuditLog

    try:
        replica = str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside a replica (tests of the builder)
        replica = f"pid{os.getpid()}"
    log = AuditLog(cfg.access_log, static={"replica": replica})
    return ReadyGate(App(cfg, TokenStore(cfg.token_db).load(), log))


def application(cfg: ServerConfig, opts: RayServeOptions) -> Any:
    """The Ray Serve application: one ingress deployment whose replicas build :func:`replica_app`."""
    from ray import serve

    def build() -> ReadyGate:  # evaluated on each replica, with cfg carried along
        return replica_app(cfg)

    cls = serve.ingress(build)()
    return serve.deployment(cls, name="modelwarden", **opts.deployment_options()).bind()


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host.strip("[]"), 0))
        return s.getsockname()[1]


def run(cfg: ServerConfig, opts: RayServeOptions, *, port_file: str | None = None,
        stop: threading.Event | None = None) -> int:
    """Start (or join) Ray, deploy, serve until SIGINT/SIGTERM (or ``stop``), then tear down."""
    try:
        from ray import serve
    except ImportError:
        raise UsageError("--ray needs Ray Serve: pip install 'modelwarden[ray]'") from None
    if cfg.tls_client_ca:
        raise UsageError("mutual TLS (--tls-client-ca) is not available behind Ray Serve's proxy; terminate mTLS "
                         "in front of it or serve without --ray")
    from modelwarden.engine.ray_engine import connect

    ray, started_ray = connect(opts.address)
    port = cfg.port or free_port(cfg.host)
    http: dict[str, Any] = {"host": cfg.host, "port": port, "request_timeout_s": cfg.request_timeout_s + 5}
    if cfg.tls:
        http.update(ssl_certfile=cfg.tls_cert, ssl_keyfile=cfg.tls_key)
    stop = stop or threading.Event()
    handlers = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options=http)
        serve.run(application(cfg, opts), name=opts.app_name, route_prefix="/", blocking=False)
        if port_file:
            tmp = port_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(port))
            os.replace(tmp, port_file)
        stop.wait()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        try:
            serve.delete(opts.app_name)
            serve.shutdown()
        finally:
            if started_ray:
                ray.shutdown()
    return 0
