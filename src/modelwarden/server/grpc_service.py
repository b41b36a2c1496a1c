"""TensorFlow Serving's gRPC API (``PredictionService``, ``ModelService``) over the REST server's machinery.

The handlers share everything with :class:`modelwarden.server.app.App`: token store (a bearer
token in the ``authorization`` metadata, the same scopes), registry (scan gate, versions,
labels), sandboxed worker pools, rate and concurrency limits, metrics and the audit log.  Order
of checks per call, as for REST: authentication (UNAUTHENTICATED) -> parse the message
(INVALID_ARGUMENT) -> authorisation for the model and scope before its existence
(PERMISSION_DENIED) -> rate limit (RESOURCE_EXHAUSTED) -> model/version/label (NOT_FOUND) ->
concurrency (UNAVAILABLE) -> signature and tensors (INVALID_ARGUMENT) -> a sandboxed worker
within ``min(client deadline, request_timeout)`` (DEADLINE_EXCEEDED).  Messages are handled as
raw bytes and parsed here with the private ``tensorflow.serving`` schema
(:mod:`modelwarden.server.grpc_schema`); no TensorFlow module is imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from modelwarden.sandbox import errors as sberr
from modelwarden.sandbox import protocol
from modelwarden.server import codec, grpc_tensor
from modelwarden.server.app import LIMIT_KINDS, SANDBOX_STATUS
from modelwarden.server.auth import AuthError, authorize
from modelwarden.server.example import decode_b64
from modelwarden.server.grpc_schema import (
    ERROR_CODES, RPCS, SIGNATURE_DEF_MAP_URL, VERSION_STATES, Rpc, message_class,
)
from modelwarden.server.limits import RequestError

S = grpc.StatusCode
HTTP_TO_GRPC = {
    400: S.INVALID_ARGUMENT, 401: S.UNAUTHENTICATED, 403: S.PERMISSION_DENIED, 404: S.NOT_FOUND,
    405: S.UNIMPLEMENTED, 409: S.FAILED_PRECONDITION, 413: S.RESOURCE_EXHAUSTED, 415: S.INVALID_ARGUMENT,
    429: S.RESOURCE_EXHAUSTED, 500: S.INTERNAL, 503: S.UNAVAILABLE, 504: S.DEADLINE_EXCEEDED,
}
SCOPES = {"predict": "predict", "classify": "predict", "regress": "predict", "multi_inference": "predict",
          "metadata": "metadata", "status": "metadata"}
_PATH_RE = re.compile(r"(?<![\w.~-])(?:/[^\s'\"/:,()]+){2,}/?")  # absolute paths of two or more parts
_GENERIC = {S.INTERNAL: "internal error in the sandboxed worker", S.UNAVAILABLE: "the model is temporarily unavailable"}
MAX_MESSAGE_CHARS = 1000
OFFLOAD_BYTES = 64 * 1024


def client_message(exc: BaseException, code: grpc.StatusCode) -> str:
    """What the client may see: the first line of the error, file paths replaced, bounded."""
    text = str(exc).split("\nTraceback", 1)[0].strip()
    if isinstance(exc, sberr.SandboxError):
        if code in _GENERIC:
            return f"{_GENERIC[code]} ({getattr(exc, 'code', 'error')})"
        text = text.splitlines()[0] if text else getattr(exc, "code", "error")
    return _PATH_RE.sub("<path>", text)[:MAX_MESSAGE_CHARS]


def status_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, (AuthError, RequestError)):
        return HTTP_TO_GRPC.get(exc.status, S.UNKNOWN)
    if isinstance(exc, sberr.SandboxError):
        return HTTP_TO_GRPC.get(SANDBOX_STATUS.get(type(exc), (500, ""))[0], S.INTERNAL)
    return S.INTERNAL


def bad(message: str) -> RequestError:
    return RequestError(400, message, kind="invalid_argument")


@dataclass
class CallInfo:
    """What the audit log records of one call."""

    rpc: Rpc
    budget: float | None = None  # seconds the client gave the call (its deadline), None: no deadline
    t0: float = field(default_factory=time.monotonic)
    token_id: str | None = None
    model: str = ""
    version: int | None = None
    size: int = 0  # bytes of the request (then of the reply): large ones are parsed and built in a thread


class GrpcApi:
    """The RPC handlers over an :class:`App` (its registry, tokens, limits, metrics and log)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cfg = app.cfg
        self.methods: dict[str, Callable[[Message, CallInfo, Any], Awaitable[Message]]] = {
            "Predict": self.predict, "Classify": self.classify, "Regress": self.regress,
            "MultiInference": self.multi_inference, "GetModelMetadata": self.metadata,
            "GetModelStatus": self.status,
        }

    # -- plumbing ------------------------------------------------------------------------------------

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for rpc in RPCS:
            # no request deserializer: the handler parses the bytes itself, so a malformed message is
            # INVALID_ARGUMENT with a reason rather than grpc's generic failure
            services.setdefault(rpc.service, {})[rpc.method] = grpc.unary_unary_rpc_method_handler(
                self._handler(rpc), response_serializer=lambda m: m.SerializeToString())
        return [grpc.method_handlers_generic_handler(f"tensorflow.serving.{s}", h) for s, h in services.items()]

    def _handler(self, rpc: Rpc) -> Callable[[bytes, Any], Awaitable[Message]]:
        async def handle(raw: bytes, context: Any) -> Message:
            info = CallInfo(rpc, budget=context.time_remaining())
            code, message = S.OK, ""
            try:
                response = await self._call(rpc, raw, context, info)
            except asyncio.CancelledError:  # the client went away or its deadline passed: record, then unwind
                late = info.budget is not None and time.monotonic() - info.t0 >= info.budget - 0.05
                self._record(info, S.DEADLINE_EXCEEDED if late else S.CANCELLED, context)
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a traceback
                code = status_for(exc)
                message = client_message(exc, code) if code != S.INTERNAL or isinstance(exc, (
                    RequestError, sberr.SandboxError)) else "internal server error"
                self._record_error(exc, code, info, context)
            self._record(info, code, context)
            if code != S.OK:
                await context.abort(code, message)
            return response

        return handle

    async def _call(self, rpc: Rpc, raw: bytes, context: Any, info: CallInfo) -> Message:
        app = self.app
        app.tokens.refresh()
        headers = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        if len(headers) > 1:
            raise AuthError(401, "more than one authorization header")
        ident = app.tokens.authenticate(headers[0] if headers else None)
        info.token_id = ident.token_id
        info.size = len(raw)
        request = await self._offload(info, self._parse, rpc.request, raw)
        specs = list(request.tasks) if rpc.method == "MultiInference" else [request]
        info.model = specs[0].model_spec.name if specs else ""
        if not info.model:
            raise bad("Missing ModelSpec" if rpc.method != "MultiInference" else "Inference request contains no tasks")
        authorize(ident, SCOPES[rpc.api], info.model)
        app.rate.check(ident.token_id)
        if not app.registry.ready and rpc.method != "GetModelStatus":  # status answers LOADING while starting
            raise RequestError(503, "the server is starting (models are being scanned and loaded)", kind="starting")
        return await self.methods[rpc.method](request, info, context)

    @staticmethod
    def _parse(name: str, raw: bytes) -> Message:
        msg = message_class(name)()
        try:
            msg.ParseFromString(raw)
        except RecursionError:
            raise bad(f"{name} is nested too deeply") from None
        except DecodeError as exc:
            raise bad(f"could not parse the {name} message ({str(exc)[:200] or 'decode error'})") from None
        return msg

    def _record_error(self, exc: BaseException, code: grpc.StatusCode, info: CallInfo, context: Any) -> None:
        m = self._known(info.model)
        kind = code.name.lower()
        self.app.metrics.errors.inc(m, kind)
        if isinstance(exc, AuthError):
            self.app.log.write("auth_failure", token_id=exc.token_id, status=code.name, reason=str(exc)[:200],
                               path=info.rpc.path, remote=context.peer(), protocol="grpc")
        elif isinstance(exc, sberr.SandboxError):
            limit = LIMIT_KINDS.get(getattr(exc, "code", ""))
            if limit:
                self.app.metrics.limit_hits.inc(m, limit)
        elif not isinstance(exc, RequestError):
            self.app.log.write("internal_error", error=f"{type(exc).__name__}: {exc}"[:2000], path=info.rpc.path)

    def _record(self, info: CallInfo, code: grpc.StatusCode, context: Any) -> None:
        elapsed = time.monotonic() - info.t0
        m = self._known(info.model)
        api = f"grpc_{info.rpc.api}"
        self.app.metrics.requests.inc(m, api, code.name)
        self.app.metrics.latency.observe(elapsed, m, api)
        self.app.log.write("access", protocol="grpc", token_id=info.token_id, model=info.model[:128] or None,
                           version=info.version, api=api, method=info.rpc.method, status=code.name,
                           outcome="ok" if code == S.OK else code.name.lower(), ms=round(elapsed * 1000, 2),
                           remote=context.peer())

    def _known(self, model: str) -> str:
        return model if model in self.app.registry.models else ""

    # -- shared steps ----------------------------------------------------------------------------------

    def _resolve(self, spec: Message, info: CallInfo, require_available: bool = True) -> Any:
        choice = spec.WhichOneof("version_choice")
        version = str(spec.version.value) if choice == "version" else None
        if version is not None and spec.version.value < 0:
            raise RequestError(404, f"Servable not found for request: Specific({spec.name[:128]}, {version})",
                               kind="not_found")
        label = spec.version_label if choice == "version_label" else None
        vs = self.app.registry.resolve(spec.name, version, label, require_available=require_available)
        info.version = vs.version
        return vs

    @staticmethod
    def _signature(vs: Any, name: str) -> tuple[str, Any]:
        sigs = vs.pool.signatures
        if not name:
            name = "serving_default" if "serving_default" in sigs or len(sigs) != 1 else next(iter(sigs))
        if name not in sigs:
            raise bad(f"Serving signature name: \"{name[:128]}\" not found in signature def")
        return name, sigs[name]

    @staticmethod
    async def _offload(info: CallInfo, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, in a thread when the message is large (keeps the event loop, and REST, responsive)."""
        if info.size <= OFFLOAD_BYTES:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _deadline(self, info: CallInfo, context: Any) -> float:
        remaining = context.time_remaining()
        budget = self.cfg.request_timeout_s if remaining is None else min(remaining, self.cfg.request_timeout_s)
        return info.t0 + budget

    async def _run(self, vs: Any, inputs: dict[str, np.ndarray], signature: str, info: CallInfo,
                   context: Any) -> dict[str, np.ndarray]:
        # shielded: a cancelled call (client gone, deadline) must not hand back a worker still computing
        return await asyncio.shield(self._guarded(vs, inputs, signature, self._deadline(info, context),
                                                  info.token_id or ""))

    async def _guarded(self, vs: Any, inputs: dict[str, np.ndarray], signature: str, deadline: float,
                       token_id: str) -> dict[str, np.ndarray]:
        conc = self.app.concurrency
        with contextlib.ExitStack() as holds:
            # the REST path's holds, where the server has them: a version being retired waits for its
            # users (``use``), and a token's share of in-flight requests is capped (``per_token``)
            if hasattr(vs, "use"):
                holds.enter_context(vs.use())
            if getattr(self.app, "per_token", None) is not None:
                holds.enter_context(self.app.per_token.hold(token_id))
            conc.enter()
            self.app.metrics.inflight.set(conc.inflight)
            try:
                return await vs.pool.predict(inputs, signature, deadline)
            finally:
                conc.leave()
                self.app.metrics.inflight.set(conc.inflight)

    @staticmethod
    def _spec_out(vs: Any, signature: str | None) -> Message:
        out = message_class("ModelSpec")(name=vs.model)
        out.version.value = vs.version
        if signature is not None:
            out.signature_name = signature
        return out

    # -- PredictionService -----------------------------------------------------------------------------

    async def predict(self, req: Message, info: CallInfo, context: Any) -> Message:
        vs = self._resolve(req.model_spec, info)
        sig_name, sig = self._signature(vs, req.model_spec.signature_name)
        given, expected = set(req.inputs), set(sig.inputs)
        unknown = sorted(given - expected)
        if unknown:
            raise bad(f"input tensor alias not found in signature: {unknown[0][:128]}. Inputs expected to be in the "
                      f"set {{{','.join(sorted(expected))}}}.")
        if expected - given:
            raise bad(f"input size does not match signature: {len(given)}!={len(expected)} len({{"
                      f"{','.join(sorted(given))}}}) != len({{{','.join(sorted(expected))}}}). Missing: "
                      f"{','.join(sorted(expected - given))}")
        wanted = list(req.output_filter)
        for name in wanted:
            if name not in sig.outputs:
                raise bad(f"output tensor alias not found in signature: {name[:128]} Outputs expected to be in the "
                          f"set {{{','.join(sorted(sig.outputs))}}}.")
        if len(set(wanted)) != len(wanted):
            raise bad("duplicate output tensor alias in output_filter")
        inputs = await self._offload(info, self._decode_inputs, req.inputs, sig.inputs, sig_name)
        outputs = await self._run(vs, inputs, sig_name, info, context)
        outputs = {k: np.asarray(v) for k, v in outputs.items() if not wanted or k in wanted}
        resp = message_class("PredictResponse")(model_spec=self._spec_out(vs, sig_name))
        info.size = max(info.size, sum(a.nbytes if a.dtype != object else a.size * 64 for a in outputs.values()))

        def encode() -> None:
            for name, arr in outputs.items():
                grpc_tensor.encode(arr, resp.outputs[name])

        await self._offload(info, encode)
        return resp

    def _decode_inputs(self, given: Any, specs: dict, signature: str) -> dict[str, np.ndarray]:
        cfg = self.cfg
        inputs = {name: grpc_tensor.decode(given[name], name, spec.dtype, cfg.max_json_elements, cfg.max_body_bytes)
                  for name, spec in specs.items()}
        problems = protocol.check_inputs(inputs, specs, signature)
        if problems:
            raise bad("; ".join(problems)[:MAX_MESSAGE_CHARS])
        return inputs

    async def _examples(self, spec: Message, inp: Message, method: str, info: CallInfo,
                        context: Any) -> tuple[Any, str, dict[str, np.ndarray]]:
        """Run a classify/regress signature on the request's ``Input``; returns (version, signature, outputs)."""
        vs = self._resolve(spec, info)
        sig_name, sig = self._signature(vs, spec.signature_name)
        declared = vs.methods.get(sig_name, (codec.PREDICT_METHOD, {}, {}))[0] or codec.PREDICT_METHOD
        if declared != method:
            what = "classification" if method == codec.CLASSIFY_METHOD else "regression"
            raise bad(f"Expected {what} signature method_name to be {method}. Was: {declared}")
        if len(sig.inputs) != 1 or next(iter(sig.inputs.values())).dtype != protocol.STRING:
            raise bad("classify/regress signatures take exactly one DT_STRING input (serialized tf.Example)")
        serialized = serialized_input(inp)
        name = next(iter(sig.inputs))
        outputs = await self._run(vs, {name: protocol.string_array(serialized, (len(serialized),))}, sig_name,
                                  info, context)
        return vs, sig_name, outputs

    async def classify(self, req: Message, info: CallInfo, context: Any) -> Message:
        vs, sig_name, outputs = await self._examples(req.model_spec, req.input, codec.CLASSIFY_METHOD, info, context)
        resp = message_class("ClassificationResponse")(model_spec=self._spec_out(vs, sig_name))
        classification_result(outputs, _batch(req.input), resp.result)
        return resp

    async def regress(self, req: Message, info: CallInfo, context: Any) -> Message:
        vs, sig_name, outputs = await self._examples(req.model_spec, req.input, codec.REGRESS_METHOD, info, context)
        resp = message_class("RegressionResponse")(model_spec=self._spec_out(vs, sig_name))
        regression_result(outputs, _batch(req.input), resp.result)
        return resp

    async def multi_inference(self, req: Message, info: CallInfo, context: Any) -> Message:
        tasks = list(req.tasks)
        first = tasks[0].model_spec
        names = set()
        for t in tasks:
            if t.model_spec.name != first.name or t.model_spec.WhichOneof("version_choice") != first.WhichOneof(
                    "version_choice") or t.model_spec.version.value != first.version.value or \
                    t.model_spec.version_label != first.version_label:
                raise bad("Input request contains inconsistent model specs")
            sig = t.model_spec.signature_name or "serving_default"
            if sig in names:
                raise bad(f"Duplicate evaluation of signature: {sig[:128]}")
            names.add(sig)
            if t.method_name not in (codec.CLASSIFY_METHOD, codec.REGRESS_METHOD):
                raise bad(f"Unsupported signature method_name: {t.method_name[:128]}")
        resp = message_class("MultiInferenceResponse")()
        batch = _batch(req.input)
        for t in tasks:
            vs, sig_name, outputs = await self._examples(t.model_spec, req.input, t.method_name, info, context)
            result = resp.results.add(model_spec=self._spec_out(vs, sig_name))
            if t.method_name == codec.CLASSIFY_METHOD:
                classification_result(outputs, batch, result.classification_result)
            else:
                regression_result(outputs, batch, result.regression_result)
        return resp

    async def metadata(self, req: Message, info: CallInfo, context: Any) -> Message:
        fields = list(req.metadata_field)
        if not fields:
            raise bad("GetModelMetadataRequest must specify at least one metadata_field")
        for f in fields:
            if f != "signature_def":
                raise bad(f"Metadata field {f[:128]} is not supported")
        vs = self._resolve(req.model_spec, info)
        resp = message_class("GetModelMetadataResponse")(model_spec=self._spec_out(vs, None))
        sig_map = message_class("SignatureDefMap")()
        json_format.ParseDict(codec.signature_def_map(vs.pool.signatures, vs.methods), sig_map,
                              ignore_unknown_fields=True)
        any_msg = resp.metadata["signature_def"]
        any_msg.type_url = SIGNATURE_DEF_MAP_URL
        any_msg.value = sig_map.SerializeToString(deterministic=True)
        return resp

    # -- ModelService ------------------------------------------------------------------------------------

    async def status(self, req: Message, info: CallInfo, context: Any) -> Message:
        spec = req.model_spec
        entry = self.app.registry.entry(spec.name)
        if spec.WhichOneof("version_choice"):
            states = [self._resolve(spec, info, require_available=False)]
        else:
            states = [vs for _, vs in sorted(entry.versions.items(), reverse=True)]
            if not states:
                raise RequestError(404, f"Could not find any versions of model {spec.name[:128]}", kind="not_found")
        resp = message_class("GetModelStatusResponse")()
        for vs in states:
            s = resp.model_version_status.add(version=vs.version, state=VERSION_STATES.get(vs.state, 0))
            s.status.error_code = ERROR_CODES.get(vs.error_code, ERROR_CODES["UNKNOWN"])
            s.status.error_message = vs.error_message
        return resp


# -- classify / regress helpers ------------------------------------------------------------------------


def serialized_input(inp: Message) -> list[bytes]:
    """``Input`` -> one serialized tf.Example per example (the context's bytes first, as TF Serving merges)."""
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        examples, context = inp.example_list.examples, b""
    elif kind == "example_list_with_context":
        examples = inp.example_list_with_context.examples
        context = inp.example_list_with_context.context.SerializeToString(deterministic=True)
    else:
        raise bad("Input is empty")
    if not examples:
        raise bad("Input is empty")
    return [context + e.SerializeToString(deterministic=True) for e in examples]


def _batch(inp: Message) -> int:
    kind = inp.WhichOneof("kind")
    return len(getattr(inp, kind).examples) if kind else 0


def _rows(doc: dict | bytes) -> list:
    """The one list a REST classify/regress reply holds (a dict or its JSON; key ``result`` or ``results``)."""
    if isinstance(doc, (bytes, str)):
        doc = json.loads(doc)
    return next(iter(doc.values()))


def classification_result(outputs: dict[str, np.ndarray], batch: int, result: Message) -> None:
    for row in _rows(codec.format_classify(outputs, batch)):  # the REST formatter validates shapes and dtypes
        c = result.classifications.add()
        for label, score in row:
            if isinstance(label, dict):  # rendered as {"b64": ...}: not UTF-8, which proto3 strings must be
                label = decode_b64(label, "class label").decode("utf-8", "replace")
            c.classes.add(label=label, score=score)


def regression_result(outputs: dict[str, np.ndarray], batch: int, result: Message) -> None:
    for value in _rows(codec.format_regress(outputs, batch)):
        result.regressions.add(value=value)
