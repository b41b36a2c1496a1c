"""The sandboxed worker: imports TensorFlow, loads one model, answers predict requests.

Requests come from the (trusted) parent; replies are treated as hostile by it.
Every failure is reported as ``{"ok": false, "error": CODE, "message": ...}`` with
a CODE from :data:`modelwarden.sandbox.errors.WORKER_REPORTABLE`.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import numpy as np

from modelwarden.runtime import graphcall, leancall
from modelwarden.sandbox import protocol, shmchannel


class WorkerError(Exception):
    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


def main(fd: int, cfg: dict, layers: dict | None = None, arrived_fd: int | None = None) -> int:
    """``arrived_fd``: (built-in backend) becomes readable when the model copy is complete."""
    sock = socket.socket(fileno=fd)
    # TensorFlow is imported before the model exists in here: the parent hands the model over
    # only once its scan gate passed (the built-in backend copies it in meanwhile), and the
    # in-sandbox re-check runs before TensorFlow touches a byte of it - in a child of ours, as
    # confined as we are, as soon as the copy is complete (on the second core while we import
    # TensorFlow), or else on the ``load`` request.
    model = cfg.get("model") or {}
    early = EarlyRecheck.start(arrived_fd, model) if arrived_fd is not None and model.get("recheck") else None
    if arrived_fd is not None and early is None:
        os.close(arrived_fd)
    t0 = time.monotonic()
    from modelwarden.runtime.imports import tensorflow_without_optional_extras

    tf = tensorflow_without_optional_extras()  # the one place TF is imported
    import_s = time.monotonic() - t0
    protocol.send_frame(sock, {"op": "ready", "ok": True, "tf": tf.__version__, "import_s": round(import_s, 3)})
    worker = Worker(tf, cfg, layers or {}, early)
    max_in = int(cfg.get("max_input_bytes", 1 << 30))
    reader = protocol.FrameReader(sock)
    spin_s = float(cfg.get("spin_s", 0.0))
    fast: shmchannel.WorkerChannel | None = None  # the shared-memory fast path, once the parent sets it up
    while True:
        if fast is not None and not reader.buffered() and fast.wait(sock, fast.spin_s):
            _serve_fast(tf, worker, fast, sock)
            continue
        try:
            header, body = reader.recv(max_body=max_in, spin_s=spin_s)
        except protocol.ChannelClosed:
            return 0
        op = header.get("op")
        if op == "close":
            return 0
        if op == "shm" and fast is None:
            fast, reply = _attach_fast(sock, header)
            protocol.send_frame(sock, reply)
            continue
        try:
            reply, chunks = worker.handle(op, header, body)
        except Exception as exc:  # noqa: BLE001 - every model error goes back as a message
            reply, chunks = _error_reply(tf, exc), []
        del body
        protocol.send_frame(sock, reply, chunks)


def _error_reply(tf: Any, exc: BaseException) -> dict:
    if isinstance(exc, WorkerError):
        return {"ok": False, "error": exc.code, "message": str(exc)[:8000], **exc.details}
    if isinstance(exc, MemoryError):
        return {"ok": False, "error": "memory_limit", "message": f"out of memory: {exc}"[:2000]}
    return _classify(tf, exc)


def _attach_fast(sock: socket.socket, header: dict) -> tuple[shmchannel.WorkerChannel | None, dict]:
    """Take the region and doorbell the parent sends next (SCM_RIGHTS); the reply says whether it worked."""
    protocol.send_frame(sock, {"ok": True, "op": "shm"})  # the parent sends the descriptors after this
    msg, fds, _flags, _addr = socket.recv_fds(sock, 1, 2)
    try:
        if msg != b"F" or len(fds) != 2:
            raise ValueError("expected a region and a doorbell")
        chan = shmchannel.WorkerChannel(fds[0], fds[1], int(header["req_bytes"]), int(header["rep_bytes"]))
    except Exception as exc:  # noqa: BLE001 - the parent keeps using the JSON channel
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        return None, {"ok": False, "error": "sandbox_error", "message": f"shared memory unavailable: {exc}"[:2000]}
    return chan, {"ok": True, "op": "shm"}


def _serve_fast(tf: Any, worker: "Worker", fast: shmchannel.WorkerChannel, sock: socket.socket) -> None:
    """One request from the region; the reply goes back there, or on the channel when it cannot."""
    try:
        seq, sig_index, tensors = fast.request()
        name, outputs, run_us = worker.predict_fast(sig_index, tensors)
        order = worker.output_order(name)
        if outputs.keys() == order.keys() and fast.reply(seq, [(order[k], v) for k, v in outputs.items()], run_us):
            return
        entries, chunks, _n = protocol.encode_tensors(outputs)
        reply = {"ok": True, "tensors": entries, "run_us": run_us}
    except Exception as exc:  # noqa: BLE001
        reply, chunks = _error_reply(tf, exc), []
    protocol.send_frame(sock, reply, chunks)


def _classify(tf: Any, exc: Exception) -> dict:
    msg = f"{type(exc).__name__}: {exc}"[:8000]
    if isinstance(exc, tf.errors.ResourceExhaustedError):
        return {"ok": False, "error": "memory_limit", "message": msg}
    return {"ok": False, "error": "execution_failed", "message": msg}


def recheck(path: str, policy: Any, fail_on: Any) -> None:
    """Second opinion: scan the exact bytes TensorFlow is about to load, inside the sandbox."""
    try:
        from modelwarden.scanner import scan
    except ImportError as exc:
        raise WorkerError("sandbox_error", f"in-sandbox re-check unavailable: cannot import modelwarden.scanner ({exc})") from None
    kwargs: dict[str, Any] = {"policy": policy}
    if fail_on:
        from modelwarden.analysis.interface import Severity

        kwargs["fail_on"] = Severity.parse(str(fail_on))
    report = scan(path, **kwargs)
    failing = report.failing()
    if report.errors or failing:
        items = [f"{f.rule_id} {f.severity.label}: {f.message} ({f.location.logical() or f.location.file})"
                 for f in failing[:50]]
        items += [f"unreadable: {e.path}: {e.message}" for e in report.errors[:20]]
        raise WorkerError("op_blocked", "in-sandbox re-check refused the model: " + "; ".join(items)[:6000],
                          findings=[f.rule_id for f in failing[:200]])



class EarlyRecheck:
    """The re-check in a forked child R: R imports the scanner, waits until the boot process says
    the model copy is complete (never earlier: the copy only starts once the parent's gate passed),
    scans it and writes its verdict (JSON) on a pipe; :meth:`verdict` reads it at ``load``."""

    MAX_VERDICT = 1 << 20

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.fd = pid, fd

    @classmethod
    def start(cls, arrived_fd: int, model: dict) -> "EarlyRecheck | None":
        import json

        from modelwarden.sandbox import linux

        r, w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            os.close(arrived_fd)
            return None  # the re-check then runs at load
        if pid == 0:  # R: never touches the channel
            try:
                linux.close_fds_except({0, 1, 2, arrived_fd, w})
                try:
                    import modelwarden.scanner  # noqa: F401 - while the worker imports TensorFlow

                    if os.read(arrived_fd, 1) != b"c":
                        os._exit(0)  # no model came: the verdict reads as missing
                    recheck(str(model["path"]), model.get("policy"), model.get("fail_on"))
                    out: dict = {"ok": True}
                except WorkerError as exc:
                    out = {"ok": False, "code": exc.code, "message": str(exc)[:8000], "details": exc.details}
                except Exception as exc:  # noqa: BLE001
                    out = {"ok": False, "code": "sandbox_error", "message": f"re-check failed: {exc}"[:2000]}
                data = json.dumps(out).encode()
                while data:
                    data = data[os.write(w, data):]
            finally:
                os._exit(0)
        os.close(w)
        os.close(arrived_fd)
        return cls(pid, r)

    def verdict(self) -> None:
        """Wait for R's verdict; raise it as a WorkerError unless the model passed."""
        import json

        chunks = []
        try:
            while sum(map(len, chunks)) <= self.MAX_VERDICT:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self.fd)
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        try:
            out = json.loads(b"".join(chunks))
        except ValueError:
            raise WorkerError("sandbox_error", "the in-sandbox re-check gave no verdict") from None
        if out.get("ok") is not True:
            raise WorkerError(str(out.get("code")), str(out.get("message")), **(out.get("details") or {}))


def _spec(name: str, dtype: Any, shape: Any) -> dict:
    try:
        dims = None if shape is None else [None if d is None or d < 0 else int(d) for d in shape]
    except TypeError:
        dims = None
    if dtype is None:
        dname = "unknown"
    else:
        dname = protocol.spec_dtype_name(np.dtype(dtype))  # tf.string's numpy dtype is object
    return {"name": str(name), "dtype": dname, "shape": dims}


class Worker:
    def __init__(self, tf: Any, cfg: dict, layers: dict, early: EarlyRecheck | None = None) -> None:
        self.tf = tf
        self.early = early
        self.cfg = cfg
        self.layers = layers
        self.model: Any = None
        self.kind = ""
        self.signatures: dict[str, Any] = {}
        self.specs: dict[str, dict[str, list[dict]]] = {}
        self._input_specs: dict[str, dict[str, protocol.TensorSpec]] = {}
        self._output_order: dict[str, dict[str, int]] = {}
        self._fast_names: list[tuple[str, list[str]]] | None = None
        self.graph: dict[str, graphcall.GraphSignature] = {}  # signatures run by a session in this thread
        self.graph_skipped = ""  # why the SavedModel was loaded eagerly instead ("" when it was not)
        self.lean: dict[str, leancall.LeanSignature] = {}  # eager signatures called through their flat function
        self.lean_skipped: dict[str, str] = {}  # signature -> why it keeps the standard call
        self.no_spinning_skipped = leancall.no_spinning(tf)  # why TF's thread pools may still spin ("": they sleep)

    def handle(self, op: Any, header: dict, body: bytearray) -> tuple[dict, list]:
        if op == "load":
            return self.load(header), []
        if op == "predict":
            return self.predict(header, body)
        if op == "ping":
            return {"ok": True}, []
        if op == "introspect":
            from modelwarden.runtime.introspect import introspect

            model = self.cfg.get("model") or {}
            path = str(model.get("path") or "")
            return {"ok": True, "info": introspect(self.layers, path if model.get("kind") == "saved_model"
                                                   else os.path.dirname(path))}, []
        raise WorkerError("sandbox_error", f"unknown op {str(op)[:40]!r}")

    # -- load ------------------------------------------------------------------------------------

    def load(self, header: dict) -> dict:
        if self.model is not None:
            raise WorkerError("sandbox_error", "a model is already loaded in this worker")
        path = str(header["path"])
        kind = str(header["kind"])
        model = self.cfg.get("model") or {}
        if model.get("recheck"):  # the second opinion: no byte reaches TensorFlow unless both scans agree
            early, self.early = self.early, None
            if early is not None:
                early.verdict()
            else:
                recheck(str(model["path"]), model.get("policy"), model.get("fail_on"))
        try:
            if kind == "saved_model":
                self._load_saved_model(path)
            elif kind == "keras":
                self._load_keras(path, safe_mode=bool(header.get("keras_safe_mode", True)))
            elif kind == "tflite":
                self._load_tflite(path)
            else:
                raise WorkerError("load_failed", f"unsupported model kind {kind!r}")
        except WorkerError:
            raise
        except MemoryError as exc:
            raise WorkerError("memory_limit", f"out of memory while loading: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, self.tf.errors.ResourceExhaustedError):
                raise WorkerError("memory_limit", f"{type(exc).__name__}: {exc}"[:4000]) from None
            raise WorkerError("load_failed", f"{type(exc).__name__}: {exc}"[:4000]) from None
        self.kind = kind
        return {"ok": True, "kind": kind, "signatures": self.specs, "call": self.call_route()}

    def call_route(self) -> str:
        """How predict calls the model: a session in this thread, the eager call, Keras or TFLite."""
        if self.kind == "saved_model":
            return "session" if self.graph else "eager"
        return self.kind

    def _load_saved_model(self, path: str) -> None:
        """In a session run in this thread (:mod:`graphcall`) when TensorFlow can load the model in graph
        mode, else eagerly with each signature's flat call (:mod:`leancall`) or its standard call."""
        tf = self.tf
        graph = None
        if self.cfg.get("graph_call", True):
            graph, self.graph_skipped = graphcall.load(tf, path)
        else:
            self.graph_skipped = "disabled"
        if graph is not None:
            self.model, functions = graph, graph.functions
            self.graph = dict(graph.signatures)
        else:
            self.model = tf.saved_model.load(path)
            functions = self.model.signatures
        for name, fn in functions.items():
            self.signatures[name] = fn
            self.specs[name] = _signature_specs(fn)
            if graph is None:
                lean, why = leancall.plan(tf, fn)
                if lean is not None:
                    self.lean[name] = lean
                else:
                    self.lean_skipped[name] = why

    def _load_keras(self, path: str, safe_mode: bool) -> None:
        import keras

        model = keras.saving.load_model(path, safe_mode=safe_mode, compile=False)
        self.model = model
        ins = [_spec(_keras_name(t), t.dtype, list(t.shape)) for t in model.inputs]
        names = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])
        outs = [_spec(n, t.dtype, list(t.shape)) for n, t in zip(names, model.outputs)]
        self.keras_inputs = [s["name"] for s in ins]
        self.keras_outputs = [s["name"] for s in outs]
        self.signatures["serving_default"] = model
        self.specs["serving_default"] = {"inputs": ins, "outputs": outs}

    def _load_tflite(self, path: str) -> None:
        interp = self.tf.lite.Interpreter(model_path=path)
        self.model = interp
        sigs = interp.get_signature_list()
        if sigs:
            for name in sigs:
                runner = interp.get_signature_runner(name)
                ins = [_spec(k, d["dtype"], d["shape_signature"]) for k, d in sorted(runner.get_input_details().items())]
                outs = [_spec(k, d["dtype"], d["shape_signature"]) for k, d in sorted(runner.get_output_details().items())]
                self.signatures[name] = runner
                self.specs[name] = {"inputs": ins, "outputs": outs}
        else:
            interp.allocate_tensors()
            ins = [_spec(d["name"], d["dtype"], d["shape_signature"]) for d in interp.get_input_details()]
            outs = [_spec(d["name"], d["dtype"], d["shape_signature"]) for d in interp.get_output_details()]
            self.signatures["serving_default"] = None
            self.specs["serving_default"] = {"inputs": ins, "outputs": outs}

    # -- predict ---------------------------------------------------------------------------------

    def predict(self, header: dict, body: bytearray) -> tuple[dict, list]:
        if self.model is None:
            raise WorkerError("sandbox_error", "no model loaded")
        name = str(header.get("signature") or "")
        if name not in self.signatures:
            raise WorkerError("invalid_input", f"no signature {name!r} (available: {', '.join(sorted(self.signatures))})")
        try:
            inputs = protocol.decode_tensors(header.get("tensors"), body, max_bytes=len(body) + 1)
        except protocol.FrameError as exc:
            raise WorkerError("invalid_input", str(exc)) from None
        outputs, run_us = self._checked_run(name, inputs)
        entries, chunks, _n = protocol.encode_tensors(outputs)
        return {"ok": True, "tensors": entries, "run_us": run_us}, chunks

    def predict_fast(self, sig_index: int, tensors: list[tuple[int, np.ndarray]]) -> tuple[str, dict[str, np.ndarray], int]:
        """A shared-memory request: signature and inputs by position in the table the load reply sent."""
        if self.model is None:
            raise WorkerError("sandbox_error", "no model loaded")
        if self._fast_names is None:  # the table as the load reply sent it: (signature, input names)
            self._fast_names = [(n, [s["name"] for s in spec["inputs"]]) for n, spec in self.specs.items()]
        if not 0 <= sig_index < len(self._fast_names):
            raise WorkerError("invalid_input", f"no signature #{sig_index}")
        name, in_names = self._fast_names[sig_index]
        try:
            inputs = {in_names[i]: arr for i, arr in tensors}
        except IndexError:
            raise WorkerError("invalid_input", "input index out of range") from None
        outputs, run_us = self._checked_run(name, inputs)
        return name, outputs, run_us

    def output_order(self, name: str) -> dict[str, int]:
        """Output name -> position in the signature's declared outputs (the fast path's indices)."""
        order = self._output_order.get(name)
        if order is None:
            order = self._output_order[name] = {s["name"]: i for i, s in enumerate(self.specs[name]["outputs"])}
        return order

    def _checked_run(self, name: str, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """Inputs checked against the signature, the model run, the output size bounded."""
        specs = self._input_specs.get(name)
        if specs is None:
            specs = self._input_specs[name] = protocol.specs_from_json(self.specs[name]["inputs"], "inputs")
        problems = protocol.check_inputs(inputs, specs, name)
        if problems:
            raise WorkerError("invalid_input", "; ".join(problems))
        t0 = time.perf_counter()
        outputs = self._run(name, inputs)
        run_us = int((time.perf_counter() - t0) * 1e6)
        total = sum(protocol.tensor_nbytes(a) for a in outputs.values())
        limit = int(self.cfg.get("max_output_bytes", 1 << 28))
        if total > limit:
            raise WorkerError("output_too_large", f"outputs total {total} bytes, above the limit of {limit}")
        return outputs, run_us

    def _run(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        call = self.graph.get(name) or self.lean.get(name)
        if call is not None:
            return call(inputs)
        tf = self.tf
        fn = self.signatures[name]
        if self.kind == "saved_model":
            out = fn(**{k: tf.constant(v, dtype=tf.string) if v.dtype.kind == "O" else tf.constant(v)
                        for k, v in inputs.items()})
            return {k: leancall.to_numpy(tf, v) for k, v in out.items()}
        if self.kind == "keras":
            args = [inputs[n] for n in self.keras_inputs]
            out = self.model(args[0] if len(args) == 1 else args, training=False)
            if isinstance(out, dict):
                return {str(k): np.asarray(v) for k, v in out.items()}
            if not isinstance(out, (list, tuple)):
                out = [out]
            return {n: np.asarray(v) for n, v in zip(self.keras_outputs, out)}
        if fn is not None:  # TFLite signature runner
            return {k: np.array(v) for k, v in fn(**inputs).items()}
        interp = self.model
        for d in interp.get_input_details():
            arr = inputs[d["name"]]
            if list(d["shape"]) != list(arr.shape):
                interp.resize_tensor_input(d["index"], arr.shape)
                interp.allocate_tensors()
            interp.set_tensor(d["index"], arr)
        interp.invoke()
        return {d["name"]: np.array(interp.get_tensor(d["index"])) for d in interp.get_output_details()}


def _signature_specs(fn: Any) -> dict[str, list[dict]]:
    """A SavedModel signature's published inputs and outputs (eager or graph mode alike)."""
    _args, kwargs = fn.structured_input_signature
    return {"inputs": [_spec(k, v.dtype.as_numpy_dtype, v.shape.as_list() if v.shape.rank is not None else None)
                       for k, v in sorted(kwargs.items())],
            "outputs": [_spec(k, v.dtype.as_numpy_dtype, v.shape.as_list() if v.shape.rank is not None else None)
                        for k, v in sorted(fn.structured_outputs.items())]}


def _keras_name(t: Any) -> str:
    name = getattr(t, "name", "") or "input"
    return name.split(":")[0]

