"""A SavedModel signature called through its flat TensorFlow function, inside the worker.

``signature(x=tf.constant(x))`` spends ~80-100 µs per call in TensorFlow's Python argument
handling (binding keyword arguments to the function type, casting each tensor to its spec,
flattening the captured variables, re-packing the outputs) — a third of a small model's call.
For a signature whose inputs and outputs are a flat dict of plain tensors all of that is
fixed at load time: the flat input order, the captured variable handles, the flat output
names.  :func:`plan` resolves them once, from TensorFlow's own objects, and
:meth:`LeanSignature.__call__` then hands tensors in that order straight to the eager runtime.

**Private TensorFlow API** (``ConcreteFunction._inference_function``, ``._captured_inputs``,
``FunctionType._sorted_parameters``, ``AtomicFunction._call_options`` / ``._bound_context``,
``execute.execute`` with the context's function-call attributes), every piece checked by :func:`plan` at load: when one is missing
or the structure is not a flat dict of ``TensorSpec`` inputs and plain tensor outputs,
:func:`plan` returns ``None`` with the reason and the worker keeps the standard call.
``tests/test_leancall.py`` checks the outputs are identical to the standard call's on real
models (variables, several inputs and outputs, strings, scalars, integer dtypes, TF1 graphs).

The first calls of a signature alternate between TensorFlow's default executor and its
single-threaded one and keep the faster (:class:`LeanSignature`); both run the same kernels.

Input dtypes and shapes are *not* checked here: the worker checks every input against the
signature's published specs first (``protocol.check_inputs``), the same specs :func:`plan`
verified to equal the function's own, so what TensorFlow's cast would reject never gets here.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from modelwarden.sandbox import protocol


TUNE_CALLS = 9  # calls timed per executor before a signature settles on one (the first of each not counted)
SINGLE = "SINGLE_THREADED_EXECUTOR"


class LeanSignature:
    """One signature, resolved: inputs by name in flat order, captures, outputs by name in flat order.

    Two executors can run the flat function: TensorFlow's default one (independent ops in parallel
    on the inter-op thread pool) and its single-threaded one (every kernel inline on the calling
    thread: no hand-off between threads, which on a small model costs more than the model).  The
    first calls alternate between them and the signature keeps the faster by median; a failure
    on the single-threaded executor (it refuses some graphs) settles on the default one.
    """

    __slots__ = ("inputs", "strings_in", "captures", "outputs", "strings_out", "_invokers", "_chosen", "_times",
                 "_constant", "_string")

    def __init__(self, tf: Any, inputs: tuple[str, ...], strings_in: tuple[bool, ...], captures: tuple[Any, ...],
                 outputs: tuple[str, ...], strings_out: tuple[bool, ...],
                 invokers: tuple[Callable[[list], Sequence[Any]], ...]) -> None:
        self.inputs, self.strings_in, self.captures = inputs, strings_in, captures
        self.outputs, self.strings_out = outputs, strings_out
        self._invokers = invokers  # flat tensors (inputs + captures) -> flat outputs; [0]: default executor
        self._chosen: Callable[[list], Sequence[Any]] | None = invokers[0] if len(invokers) == 1 else None
        self._times: tuple[list[float], ...] = tuple([] for _ in invokers)
        self._constant, self._string = tf.constant, tf.string

    @property
    def executor(self) -> str | None:
        """``"default"`` or ``"single-threaded"`` once settled, None while still timing both."""
        if self._chosen is None:
            return None
        return "default" if self._chosen is self._invokers[0] else "single-threaded"

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        const, string = self._constant, self._string
        args = [const(inputs[k], string) if s else const(inputs[k]) for k, s in zip(self.inputs, self.strings_in)]
        args.extend(self.captures)
        invoke = self._chosen
        flat = invoke(args) if invoke is not None else self._timed(args)
        return {name: _string_numpy(t) if s else np.asarray(t.numpy())
                for name, t, s in zip(self.outputs, flat, self.strings_out)}

    def _timed(self, args: list) -> Sequence[Any]:
        which = (len(self._times[0]) + len(self._times[1])) % 2
        invoke = self._invokers[which]
        t0 = time.perf_counter()
        try:
            flat = invoke(args)
        except Exception:  # noqa: BLE001 - re-raised below unless the single-threaded executor refused
            if which == 0:
                raise
            self._chosen = self._invokers[0]
            return self._chosen(args)
        self._times[which].append(time.perf_counter() - t0)
        if len(self._times[1]) > TUNE_CALLS:
            default, single = (statistics.median(t[1:]) for t in self._times)
            self._chosen = self._invokers[1] if single < default else self._invokers[0]
        return flat


def no_spinning(tf: Any) -> str:
    """Make TensorFlow's thread pools sleep when idle instead of spinning; "" or why not.

    Eigen's pools spin for a while after each parallel section.  The worker never spins (on a
    shared host a spinning worker takes the CPU its parent needs to pick up the reply), and its
    pools spinning after every call did exactly that: on the 2-vCPU host a MobileNet reply
    reached the parent ~0.9 ms after the worker wrote it, ~0.17 ms without spinning, and the
    model itself ran faster.  Spinning also burnt the worker's CPU budget between calls.
    ``ConfigProto.experimental.disable_thread_spinning`` must be set before the eager context
    starts (private: ``Context._config``; checked, and skipped when the context already runs).
    """
    try:
        from tensorflow.core.protobuf import config_pb2
        from tensorflow.python.eager import context

        ctx = context.context()
        if getattr(ctx, "_initialized", True) or not hasattr(ctx, "_config"):
            return "the eager context is already initialized"
        config = config_pb2.ConfigProto()
        if ctx._config is not None:
            config.CopyFrom(ctx._config)
        config.experimental.disable_thread_spinning = True
        ctx._config = config
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        return f"TensorFlow internals not as expected: {type(exc).__name__}: {exc}"[:300]
    return ""


def to_numpy(tf: Any, t: Any) -> np.ndarray:
    """A TF tensor as numpy; tf.string becomes an object array of bytes (also for scalars)."""
    return _string_numpy(t) if t.dtype == tf.string else np.asarray(t.numpy())


def _string_numpy(t: Any) -> np.ndarray:
    return string_array(t.numpy())


def string_array(value: Any) -> np.ndarray:
    """A string tensor's numpy value as an object array of bytes (a scalar comes back as bare bytes)."""
    return np.array(value, dtype=object) if isinstance(value, np.ndarray) else protocol.string_array([value], ())


class _Unsupported(Exception):
    """The signature takes the standard call (the message says why)."""


def plan(tf: Any, fn: Any) -> tuple[LeanSignature | None, str]:
    """The lean call of a loaded SavedModel signature, or ``(None, reason)`` for the standard call."""
    try:
        return _plan(tf, fn), ""
    except _Unsupported as exc:
        return None, str(exc)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:  # TF internals moved
        return None, f"TensorFlow internals not as expected: {type(exc).__name__}: {exc}"[:300]


def _plan(tf: Any, fn: Any) -> LeanSignature:
    from tensorflow.core.function.polymorphism.function_type import sanitize_arg_name
    from tensorflow.python.eager import context

    if not tf.executing_eagerly():
        raise _Unsupported("not executing eagerly")
    args, kwargs = fn.structured_input_signature
    if args or not isinstance(kwargs, dict) or not all(type(s) is tf.TensorSpec for s in kwargs.values()):
        raise _Unsupported("inputs are not a flat dict of TensorSpecs")
    by_param = {sanitize_arg_name(k): k for k in kwargs}
    if len(by_param) != len(kwargs):
        raise _Unsupported("input names collide once sanitized")
    ftype = fn.function_type
    params = list(ftype._sorted_parameters)  # the order unpack_inputs flattens them in
    flat_in = list(ftype.flat_inputs)
    if len(params) != len(kwargs) or len(flat_in) != len(params):
        raise _Unsupported("the function's parameters are not one tensor per input")
    names = []
    for p, flat in zip(params, flat_in):
        key = by_param.get(p.name)
        spec = kwargs.get(key) if key is not None else None
        tc = p.type_constraint
        if spec is None or type(tc) is not tf.TensorSpec or not (flat is tc or flat == tc):
            raise _Unsupported(f"parameter {p.name!r} is not a plain TensorSpec input")
        if tc.dtype != spec.dtype or tc.shape != spec.shape or tc.dtype in (tf.resource, tf.variant):
            raise _Unsupported(f"parameter {p.name!r} differs from the signature's spec")
        names.append(key)
    if any(callable(c) for c in fn._captured_inputs):
        raise _Unsupported("deferred captures (resolved at every call)")
    captures = tuple(fn.captured_inputs)
    if not all(isinstance(c, tf.Tensor) for c in captures):
        raise _Unsupported("a capture is not a tensor")
    atomic = fn._inference_function
    if len(atomic.cached_definition.signature.input_arg) != len(names) + len(captures):
        raise _Unsupported("the flat function does not take inputs + captures")
    outs, strings_out = _outputs(tf, fn, ftype, atomic)
    return LeanSignature(tf, tuple(names), tuple(kwargs[k].dtype == tf.string for k in names), captures, outs,
                         strings_out, _invokers(context, atomic, len(outs)))


def _outputs(tf: Any, fn: Any, ftype: Any, atomic: Any) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """Flat output names, in the order the flat function returns them (TensorFlow's own packing)."""
    structured = fn.structured_outputs
    if not isinstance(structured, dict) or not structured:
        raise _Unsupported("outputs are not a dict")
    flat_out = list(atomic.function_type.flat_outputs)
    if list(ftype.flat_outputs) != flat_out or len(flat_out) != len(structured):
        raise _Unsupported("outputs are not one tensor each")
    for spec in flat_out:
        if type(spec) is not tf.TensorSpec or spec.dtype in (tf.resource, tf.variant):
            raise _Unsupported("an output is not a plain tensor")
    packed = ftype.pack_output(list(range(len(flat_out))))  # where TensorFlow puts flat output i
    if not isinstance(packed, dict) or set(packed) != set(structured) \
            or sorted(i for i in packed.values() if type(i) is int) != list(range(len(flat_out))):
        raise _Unsupported("outputs do not pack into a flat dict")
    names = [""] * len(flat_out)
    for name, i in packed.items():
        names[i] = name
    for name, spec in zip(names, flat_out):
        if structured[name].dtype != spec.dtype:
            raise _Unsupported(f"output {name!r}: flat dtype differs from the structured one")
    if not all(isinstance(n, str) for n in names):
        raise _Unsupported("output names are not strings")
    return tuple(names), tuple(spec.dtype == tf.string for spec in flat_out)


def _invokers(context: Any, atomic: Any, n_out: int) -> tuple[Callable[[list], Sequence[Any]], ...]:
    """The eager runtime's call of the flat function with the default executor and the single-threaded
    one, or only the atomic function's own ``call_flat``.

    ``call_flat`` adds, around the runtime's call, a pause of gradient recording (no tape exists in
    the worker), control dependencies (empty: checked) and error-message interpolation; the
    function-call attributes (executor, config) are the context's, fixed at load.
    """
    from tensorflow.python.eager import execute

    ctx = context.context()
    if atomic._call_options.control_captures or atomic._bound_context is not ctx or not n_out:
        call_flat = atomic.call_flat
        return (lambda args: call_flat(*args),)
    name = atomic.name.decode("utf-8")
    attrs = ctx.function_call_options.as_attrs()
    if set(attrs) != {"executor_type", "config_proto"} or attrs["executor_type"]:
        call_flat = atomic.call_flat
        return (lambda args: call_flat(*args),)
    run = execute.execute

    def invoker(executor: str) -> Callable[[list], Sequence[Any]]:
        flat_attrs = ("executor_type", executor, "config_proto", attrs["config_proto"])
        return lambda args: run(name, n_out, args, flat_attrs, ctx)

    return invoker(""), invoker(SINGLE)
