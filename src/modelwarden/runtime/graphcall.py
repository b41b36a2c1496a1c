"""A SavedModel's signatures run by one TensorFlow session in the calling thread, inside the worker.

Why: an eager call of a signature, even the flat call of :mod:`leancall` on TensorFlow's
single-threaded executor, hands the function to an inter-op pool thread and waits for its
notification: two thread wake-ups per call.  On a small model they cost more than the model,
and far more when the other vCPU is idle (it halts, and waking it is slow): the dense benchmark
model took 57 µs per eager call on a busy host and 130-150 µs on an idle one, against ~5 µs
here in both cases (bench/README.md).  TensorFlow Serving runs SavedModels in a session too.

How: TensorFlow's own SavedModel loader (``tf.saved_model.load``) loads the model into a private
graph (graph mode: it wires the checkpoint restore into the variables' initializers and the
tables' initializer collection), each signature is called once on placeholders made from its
input specs, the initializers run once, the graph is finalized, and one session with
``inter_op_parallelism_threads = -1`` (TensorFlow: "all operations are performed in caller's
thread"; the intra-op pool still parallelises big kernels, and sleeps when idle) runs each
signature through a callable made at load, with feeds in the worker's input order and fetches
in its output order.  The outputs are those of the eager call, bit for bit, on every fixture
(``tests/test_graphcall.py``).

**Private TensorFlow API**: ``Session._make_callable_from_options`` (the public ``make_callable``
spends ~60 µs of Python per call).  When it is missing, or the model cannot be loaded or
initialised in graph mode (TensorFlow refuses some, e.g. registered checkpoint savers),
:func:`load` returns ``None`` with the reason and the worker loads the model eagerly as before
(:mod:`leancall`).

Input dtypes and shapes are *not* checked here: the worker checks every input against the
signature's published specs first (``protocol.check_inputs``), and those specs are the
placeholders'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from modelwarden.runtime.leancall import string_array


class GraphSignature:
    """One signature as a session callable: inputs by name in feed order, outputs by name in fetch order."""

    __slots__ = ("inputs", "outputs", "strings_out", "_call")

    def __init__(self, inputs: tuple[str, ...], outputs: tuple[str, ...], strings_out: tuple[bool, ...],
                 call: Callable[..., Sequence[Any]]) -> None:
        self.inputs, self.outputs, self.strings_out, self._call = inputs, outputs, strings_out, call

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        flat = self._call(*[inputs[k] for k in self.inputs])
        return {name: string_array(v) if s else np.asarray(v) for name, v, s in zip(self.outputs, flat, self.strings_out)}


class GraphModel:
    """A SavedModel in its own graph and session; ``functions`` are TensorFlow's signature objects
    (graph mode: their structured signatures give the specs), ``signatures`` the callables."""

    def __init__(self, session: Any, functions: dict[str, Any], signatures: dict[str, GraphSignature]) -> None:
        self.session, self.functions, self.signatures = session, functions, signatures

    def close(self) -> None:
        self.session.close()


def load(tf: Any, path: str) -> tuple[GraphModel | None, str]:
    """The SavedModel at ``path`` in a session, or ``(None, reason)``: the worker then loads it eagerly."""
    from tensorflow.core.protobuf import config_pb2

    session = None
    try:
        config = config_pb2.ConfigProto(inter_op_parallelism_threads=-1)
        config.experimental.disable_thread_spinning = True
        graph = tf.Graph()
        with graph.as_default():
            loaded = tf.saved_model.load(path)
            functions = dict(loaded.signatures.items())
            wired: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
            for name, fn in functions.items():
                args, kwargs = fn.structured_input_signature
                if args or not isinstance(kwargs, dict):
                    return None, f"signature {name!r}: inputs are not keyword tensors"
                feeds = {k: tf.compat.v1.placeholder(s.dtype, s.shape) for k, s in sorted(kwargs.items())}
                outs = fn(**feeds)
                if not isinstance(outs, dict) or not all(isinstance(t, tf.Tensor) for t in outs.values()):
                    return None, f"signature {name!r}: outputs are not a dict of tensors"
                wired[name] = (feeds, outs)
            # the loader creates every variable with tf.Variable in this graph (so in these collections)
            # and restores it through its initializer; tables go to the tables' collection
            init = [tf.compat.v1.global_variables_initializer(), tf.compat.v1.local_variables_initializer(),
                    tf.compat.v1.tables_initializer()]
        graph.finalize()
        session = tf.compat.v1.Session(graph=graph, config=config)
        session.run(init)
        signatures = {}
        for name, (feeds, outs) in wired.items():
            options = config_pb2.CallableOptions()
            in_names, out_names = tuple(feeds), tuple(sorted(outs))
            options.feed.extend(feeds[k].name for k in in_names)
            options.fetch.extend(outs[k].name for k in out_names)
            call = session._make_callable_from_options(options)
            signatures[name] = GraphSignature(in_names, out_names, tuple(outs[k].dtype == tf.string for k in out_names),
                                              call)
        return GraphModel(session, functions, signatures), ""
    except Exception as exc:  # noqa: BLE001 - any refusal means the eager route, which reports its own errors
        if session is not None:
            session.close()
        if isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError":
            raise
        return None, f"{type(exc).__name__}: {exc}"[:300]
