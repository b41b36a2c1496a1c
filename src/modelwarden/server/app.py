"""The ASGI application: TensorFlow Serving's REST API behind authentication and request limits.

Order of checks for every request (each cheap step before the next, costlier one):
health endpoints (no auth, reveal nothing) -> authentication (401) -> route (TF Serving's
400 "Malformed request" under /v1/, 404 elsewhere, 405 on our own endpoints) ->
authorisation for the model and scope (403; checked before the model's existence so a
token cannot probe for models it may not use) -> per-token rate limit (429) -> per-token
in-flight cap (429) -> body size (413) and the body itself within the request deadline
(408) -> global concurrency limit (503) -> gzip ratio (413) -> JSON depth/elements ->
signature validation (400) -> a sandboxed worker within the request deadline -> the reply,
whose formatting cost decides inline, thread or refusal (``jsonfmt``).
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import time
from typing import Any

from modelwarden.sandbox import errors as sberr
from modelwarden.server import codec, jsonfmt
from modelwarden.server.asgi import HttpRequest, Reply
from modelwarden.server.auth import AuthError, TokenStore, authorize
from modelwarden.server.config import ServerConfig
from modelwarden.server.limits import (
    ConcurrencyLimiter, PerKeyLimiter, RateLimiter, RequestError, decode_content, parse_json, read_body_by,
)
from modelwarden.server.log import AuditLog
from modelwarden.server.metrics import Metrics
from modelwarden.server.registry import Registry

# TF Serving's routes (http_rest_api_handler.cc): case-insensitive, matched in full (no trailing
# slash); anything else under /v1/ is its 400 "Malformed request".
TF_PREDICT = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                        r":(?P<verb>classify|regress|predict)", re.IGNORECASE)
TF_STATUS = re.compile(r"/v1/models(?:/(?P<name>[^/:]+))?(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                       r"(?P<meta>/metadata)?", re.IGNORECASE)
TF_PREFIX = re.compile(r"/v1/", re.IGNORECASE)
ADMIN_ROUTE = re.compile(r"^/modelwarden/v1/models/(?P<name>[^/:]{1,128})/versions/(?P<version>\d{1,18})/"
                         r"(?P<what>scan-report|workers)$")
MAX_VERSION = 2**63 - 1
OFFLOAD_BYTES = 64 * 1024  # bodies above this are parsed in a thread (keeps the event loop responsive)

SANDBOX_STATUS: dict[type, tuple[int, str]] = {
    sberr.InvalidInput: (400, "invalid_input"),
    sberr.ExecutionFailed: (400, "execution_failed"),
    sberr.MemoryLimitExceeded: (429, "memory_limit"),  # RESOURCE_EXHAUSTED, as TF Serving maps it
    sberr.DeadlineExceeded: (504, "deadline"),
    sberr.WorkerCrashed: (500, "worker_crashed"),
    sberr.OutputTooLarge: (500, "output_too_large"),
    sberr.ProtocolViolation: (500, "protocol_violation"),
    sberr.SandboxUnavailable: (503, "sandbox_unavailable"),
}
LIMIT_KINDS = {"memory_limit": "memory", "deadline": "deadline", "output_too_large": "output"}


# Python frames ("  File "/x.py", line 3, in f" and the source line after it), TF's
# "defined at (most recent call last)" blocks and absolute paths never reach clients.
_FRAME_RE = re.compile(r'^\s*File "[^"\n]*", line \d+, in [^\n]*\n(?:^ {4,}\S[^\n]*\n)?', re.MULTILINE)
_TRACE_HEAD_RE = re.compile(r"^.*\(most recent call last\):?[^\n]*\n", re.MULTILINE)
_PATH_RE = re.compile(r"(?<![\w.])/(?:[\w.@+-]+/)+[\w.@+-]*")
_EXC_PREFIX_RE = re.compile(r"^(?:\w+\.)*\w+(?:Error|Exception): ")


def client_message(exc: BaseException) -> str:
    """A sandbox error as the client sees it: for TensorFlow errors, TF's own message without
    the Python exception type, frames or host paths (TF Serving shows only the Status message)."""
    msg = str(exc)
    if not isinstance(exc, (sberr.ExecutionFailed, sberr.InvalidInput)):
        return msg
    msg = _EXC_PREFIX_RE.sub("", msg.strip() + "\n", count=1)
    msg = _TRACE_HEAD_RE.sub("", _FRAME_RE.sub("", msg))
    msg = _PATH_RE.sub("<path>", msg)
    msg = msg.replace("Graph execution error:", "").strip()
    return re.sub(r"\n{3,}", "\n\n", msg)[:4000] or "model execution failed"


async def render(outputs: dict, verb: str, req: codec.PredictRequest) -> bytes:
    """The reply body; its real cost (elements + JSON lists) decides inline, thread or refusal."""
    total = sum(jsonfmt.cost(a) for a in outputs.values())
    if total > jsonfmt.MAX_OUTPUT_CELLS:
        raise sberr.OutputTooLarge(f"the model's reply needs {total} JSON values and lists, above the limit of "
                                   f"{jsonfmt.MAX_OUTPUT_CELLS}")
    if verb == "predict":
        work = functools.partial(codec.format_predict, outputs, req.row_format)
    else:
        batch = len(next(iter(req.inputs.values())))
        work = functools.partial(codec.format_classify if verb == "classify" else codec.format_regress, outputs, batch)
    if total <= jsonfmt.INLINE_CELLS:
        return work()
    return await asyncio.get_running_loop().run_in_executor(None, work)


def _json(status: int, doc: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(codec.dumps(doc), status, headers=headers)


class App:
    """ASGI callable; ``registry`` loads the configured models at start-up (lifespan)."""

    def __init__(self, cfg: ServerConfig, tokens: TokenStore, log: AuditLog | None = None) -> None:
        self.cfg = cfg
        self.tokens = tokens
        self.log = log or AuditLog(cfg.access_log)
        self.metrics = Metrics()
        self.registry = Registry(cfg, self._event)
        self.rate = RateLimiter(cfg.rate_per_token, cfg.rate_burst)
        self.concurrency = ConcurrencyLimiter(cfg.max_concurrent_requests)
        self.per_token = PerKeyLimiter(cfg.max_inflight_per_token)
        self._start_task: asyncio.Task | None = None

    # -- events from the registry / pools ----------------------------------------------------------

    def _event(self, event: str, fields: dict) -> None:
        self.log.write(event, **fields)
        model = str(fields.get("pool", fields.get("model", ""))).split("/")[0]
        if event == "worker_restarted":
            self.metrics.restarts.inc(model, str(fields.get("reason", "")))

    # -- ASGI ----------------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        response = await self.handle(HttpRequest(scope, receive))
        await response(send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                self._start_task = asyncio.get_running_loop().create_task(self._start())
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self._start_task and not self._start_task.done():
                    self._start_task.cancel()
                self.registry.close()
                self.log.write("server_stopped")
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start(self) -> None:
        self.log.write("server_starting", models=[m.name for m in self.cfg.models])
        try:
            await self.registry.start()
        except Exception as exc:  # noqa: BLE001 - keep serving health endpoints (/readyz says not ready), report
            self.registry.startup_error = f"{type(exc).__name__}: {exc}"[:2000]
            self.log.write("startup_failed", error=self.registry.startup_error)
            return
        waiting = self.registry.not_ready()
        self.log.write("server_ready" if not waiting else "server_not_ready", problems=waiting[:50] or None)

    # -- request handling ------------------------------------------------------------------------------

    async def handle(self, request: HttpRequest) -> Reply:
        t0 = time.monotonic()
        path = request.path
        method = request.method
        if path in ("/healthz", "/readyz"):
            if method != "GET":
                return _json(405, {"error": "method not allowed"})
            problems = [] if path == "/healthz" else self.registry.not_ready()
            if not problems:
                return _json(200, {"status": "ok"})
            # unauthenticated: a count only; what is wrong is in the audit log and the (authenticated) model status
            return _json(503, {"status": "starting" if not self.registry.ready else "not ready",
                               "not_ready": len(problems)})
        ident = None
        ctx: dict[str, Any] = {"model": "", "api": "auth", "version": None}
        try:
            self.tokens.refresh()
            ident = self.tokens.authenticate(request.headers.get("authorization"))
            ctx["api"] = "unknown"
            response = await self._route(request, ident, path, method, t0, ctx)
            status = response.status_code
            outcome = "ok"
        except AuthError as exc:
            model = ctx["model"]
            kind = "unauthenticated" if exc.status == 401 else "forbidden"
            headers = {"WWW-Authenticate": 'Bearer realm="modelwarden"'} if exc.status == 401 else None
            response, status, outcome = _json(exc.status, {"error": str(exc)}, headers), exc.status, kind
            self.metrics.errors.inc(self._known(model), kind)
            self.log.write("auth_failure", token_id=exc.token_id, status=status, reason=str(exc)[:200],
                           path=path[:200], remote=request.remote)
        except RequestError as exc:
            model = ctx["model"]
            headers = {"Retry-After": str(int(math.ceil(exc.retry_after)))} if exc.retry_after else None
            if exc.status == 408:  # the rest of the body may still be on its way: do not reuse the connection
                headers = {"Connection": "close"}
            response, status, outcome = _json(exc.status, {"error": str(exc)}, headers), exc.status, exc.kind
            self.metrics.errors.inc(self._known(model), exc.kind)
        except sberr.SandboxError as exc:
            model = ctx["model"]
            status, kind = SANDBOX_STATUS.get(type(exc), (500, getattr(exc, "code", "sandbox_error")))
            response, outcome = _json(status, {"error": client_message(exc)}), kind
            self.metrics.errors.inc(self._known(model), kind)
            limit = LIMIT_KINDS.get(kind) or ("cpu" if "CPU-time" in str(exc) else None)
            if limit:
                self.metrics.limit_hits.inc(self._known(model), limit)
        except Exception as exc:  # noqa: BLE001 - a real server fault: 500, logged, never a traceback to clients
            model = ctx["model"]
            response, status, outcome = _json(500, {"error": "internal server error"}), 500, "internal"
            self.metrics.errors.inc(self._known(model), "internal")
            self.log.write("internal_error", error=f"{type(exc).__name__}: {exc}"[:2000], path=path[:200])
        elapsed = time.monotonic() - t0
        model, api, version = ctx["model"], ctx["api"], ctx["version"]
        m = self._known(model)
        self.metrics.requests.inc(m, api, str(status))
        self.metrics.latency.observe(elapsed, m, api)
        self.log.write("access", token_id=ident.token_id if ident else None, model=model[:128] or None,
                       version=version, api=api, method=method, status=status, outcome=outcome,
                       ms=round(elapsed * 1000, 2), remote=request.remote)
        return response

    def _known(self, model: str) -> str:
        return model if model in self.registry.models else ""

    async def _route(self, request: HttpRequest, ident: Any, path: str, method: str,
                     t0: float, ctx: dict[str, Any]) -> Reply:
        if path == "/monitoring/prometheus/metrics":
            ctx["api"] = "metrics"
            authorize(ident, "metrics", None)
            self._update_gauges()
            models = ident.record.models
            visible = None if "*" in models else frozenset(models)  # a scoped token sees its models only
            return Reply(self.metrics.render(visible).encode(), media_type="text/plain; version=0.0.4; charset=utf-8")
        m = (TF_PREDICT.fullmatch(path) if method == "POST" else TF_STATUS.fullmatch(path) if method == "GET"
             else None)
        if m:
            return await self._tf_api(request, ident, m, t0, ctx)
        if TF_PREFIX.match(path):
            ctx["api"] = "malformed"
            raise codec.bad(f"Malformed request: {method} {path[:200]}")
        a = ADMIN_ROUTE.match(path)
        if a:
            name = a.group("name")
            ctx.update(model=name, api="admin", version=int(a.group("version")))
            authorize(ident, "admin", name)
            if method != "GET":
                raise RequestError(405, f"{method} is not allowed here (use GET)", kind="bad_method")
            vs = self.registry.resolve(name, a.group("version"), require_available=False)
            if a.group("what") == "workers":
                pool = vs.pool
                return _json(200, {"workers": pool.info() if pool else [], "restarts": pool.restarts if pool else 0,
                                   "spares": pool.spares if pool else [],
                                   "last_replace_ms": pool.last_replace_ms if pool else None,
                                   "batching": pool.batching_stats() if pool else None, "state": vs.state})
            if vs.report is None:
                raise RequestError(404, "no scan report for this version (not scanned)", kind="not_found")
            from modelwarden.report import renderer

            body = renderer("json").render(vs.report)
            return Reply(body.encode() if isinstance(body, str) else body)
        raise RequestError(404, f"Not found: {method} {path[:200]}", kind="not_found")

    async def _tf_api(self, request: HttpRequest, ident: Any, m: re.Match, t0: float, ctx: dict[str, Any]) -> Reply:
        name = m.group("name")
        verb = (m.groupdict().get("verb") or "").lower() or None
        api = verb or ("metadata" if m.group("meta") else "status")
        if name is None:
            ctx["api"] = api
            raise codec.bad("Missing model name in request.")
        ctx.update(model=name, api=api)
        authorize(ident, "predict" if verb else "metadata", name)
        self.rate.check(ident.token_id)
        version = m.group("version")
        if version is not None and int(version) > MAX_VERSION:
            raise codec.bad(f"Failed to convert version: {version[:40]} to numeric.")
        ctx["version"] = int(version) if version is not None else None
        if api == "status":
            return self._status(name, version, m.group("label"))
        vs = self.registry.resolve(name, version, m.group("label"))
        ctx["version"] = vs.version
        if api == "metadata":
            return self._metadata(vs)
        with vs.use(), self.per_token.hold(ident.token_id):  # use(): a retiring version waits for us
            # the body is read (within the request deadline) before the request takes any of the
            # server's concurrency budget or a worker: slow senders only hold their own token's share
            body = await read_body_by(request.stream(), request.headers.get("content-length"),
                                      self.cfg.max_body_bytes, t0 + self.cfg.request_timeout_s)
            self.concurrency.enter()
            self.metrics.inflight.set(self.concurrency.inflight)
            try:
                return await self._predict(request, body, vs, verb, t0)
            finally:
                self.concurrency.leave()
                self.metrics.inflight.set(self.concurrency.inflight)

    def _update_gauges(self) -> None:
        for e in self.registry.models.values():
            for v, vs in e.versions.items():
                self.metrics.workers.set(vs.pool.alive if vs.pool else 0, e.config.name, str(v))

    def _status(self, name: str, version: str | None, label: str | None) -> Reply:
        e = self.registry.entry(name)
        if version is not None or label is not None:
            vs = self.registry.resolve(name, version, label, require_available=False)
            states = [vs.status_json()]
        else:
            states = [vs.status_json() for _, vs in sorted(e.versions.items(), reverse=True)]
            if not states:
                raise RequestError(404, f"Could not find any versions of model {name}: {e.discovery_error}"[:500],
                                   kind="not_found")
        return _json(200, {"model_version_status": states})

    def _metadata(self, vs: Any) -> Reply:
        return _json(200, {"model_spec": {"name": vs.model, "signature_name": "", "version": str(vs.version)},
                           "metadata": {"signature_def": codec.signature_def_map(vs.pool.signatures, vs.methods)}})

    async def _predict(self, request: HttpRequest, body: bytes, vs: Any, verb: str, t0: float) -> Reply:
        cfg = self.cfg
        deadline = t0 + cfg.request_timeout_s
        pool = vs.pool
        chosen: list[str] = []

        def specs_for(sig_name: str | None) -> dict:
            sigs = pool.signatures
            if sig_name in (None, ""):
                sig_name = "serving_default" if "serving_default" in sigs else (next(iter(sigs)) if len(sigs) == 1 else None)
                if sig_name is None:
                    raise codec.bad(f"choose a signature_name: {', '.join(sorted(sigs))}")
            if sig_name not in sigs:
                raise codec.bad(f"Serving signature name: \"{sig_name[:128]}\" not found in signature def")
            chosen.append(sig_name)
            return sigs[sig_name].inputs

        def decode() -> codec.PredictRequest:
            raw = decode_content(body, request.headers.get("content-encoding"), cfg.max_body_bytes, cfg.gzip_max_ratio)
            doc = parse_json(raw, cfg.max_json_depth, cfg.max_json_elements)
            if verb != "predict":
                self._check_method(vs, doc, verb)
                return codec.parse_examples(doc, specs_for)
            return codec.parse_predict(doc, specs_for, cfg.max_json_elements)

        loop = asyncio.get_running_loop()
        req = await loop.run_in_executor(None, decode) if len(body) > OFFLOAD_BYTES else decode()
        outputs = await pool.predict(req.inputs, chosen[-1], deadline)
        return Reply(await render(outputs, verb, req))

    def _check_method(self, vs: Any, doc: Any, verb: str) -> None:
        sig = doc.get("signature_name") if isinstance(doc, dict) else None
        sig = sig if isinstance(sig, str) and sig else "serving_default"
        method = vs.methods.get(sig, (codec.PREDICT_METHOD, {}, {}))[0] or codec.PREDICT_METHOD
        want = codec.CLASSIFY_METHOD if verb == "classify" else codec.REGRESS_METHOD
        if method != want:
            raise codec.bad(f"Expected {'classification' if verb == 'classify' else 'regression'} signature "
                            f"method_name to be {want}. Was: {method}")
