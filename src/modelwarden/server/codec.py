"""TensorFlow Serving's REST JSON: request parsing against a signature, response shapes.

Request: ``{"signature_name": ..., "instances": [...]}`` (row format) or
``{"signature_name": ..., "inputs": ...}`` (columnar), values as nested lists,
``NaN``/``Infinity`` literals, ``{"b64": "..."}`` for binary values.  Response:
``{"predictions": [...]}`` for the row format (one object per instance when the
signature has several outputs), ``{"outputs": ...}`` for the columnar one.

DT_STRING inputs take JSON strings (UTF-8 encoded) and ``{"b64": ...}`` values; a
``{"b64": ...}`` value for a ``uint8`` input becomes that element's uint8 vector.  String
outputs are written as text when they are valid UTF-8 and the output's name does not end
in ``_bytes``, else as ``{"b64": ...}``.  ``:classify``/``:regress`` requests become
serialized ``tf.Example`` protos (:mod:`modelwarden.server.example`) fed to the signature's
string input; results are ``{"results": ...}`` as TF Serving writes them.

As TF Serving's ``json_tensor.cc`` does: unknown top-level keys are ignored, and so are
named inputs of a columnar ``inputs`` object that the signature does not have (a row
format object must name exactly the signature's inputs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelwarden.sandbox import protocol
from modelwarden.server import jsonfmt
from modelwarden.server.example import decode_b64, serialized_examples
from modelwarden.server.limits import RequestError

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
INIT_SIGNATURE = "__saved_model_init_op"  # TF2 SavedModels' init signature, listed in metadata

TF_DTYPES = {
    "float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int32": "DT_INT32", "uint8": "DT_UINT8", "int16": "DT_INT16",
    "int8": "DT_INT8", "complex64": "DT_COMPLEX64", "int64": "DT_INT64", "bool": "DT_BOOL", "uint16": "DT_UINT16",
    "float16": "DT_HALF", "uint32": "DT_UINT32", "uint64": "DT_UINT64", "complex128": "DT_COMPLEX128",
    "string": "DT_STRING", "object": "DT_STRING", "bytes": "DT_STRING", "str": "DT_STRING",
}


def bad(message: str) -> RequestError:
    return RequestError(400, message, kind="invalid_argument")


@dataclass
class PredictRequest:
    signature_name: str | None
    inputs: dict[str, np.ndarray]
    row_format: bool


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _unwrap_b64(value: Any, name: str, dtype: str, budget: list[int]) -> Any:
    """Replace every ``{"b64": s}`` in ``value`` by the decoded bytes as a list of ints (uint8 inputs)."""
    if _is_b64(value):
        if dtype != "uint8":
            raise bad(f"input {name!r}: binary values ({{\"b64\": ...}}) need a DT_STRING input; this input is "
                      f"{TF_DTYPES.get(dtype, dtype)} (uint8 inputs accept b64 bytes too)")
        raw = decode_b64(value, f"input {name!r}")
        budget[0] -= len(raw)
        if budget[0] < 0:
            raise RequestError(413, "decoded binary values exceed the element limit", kind="too_large")
        return np.frombuffer(raw, np.uint8)
    if isinstance(value, list):
        if any(isinstance(v, (list, dict)) for v in value):
            return [_unwrap_b64(v, name, dtype, budget) for v in value]
        return value
    if isinstance(value, dict):
        raise bad(f"input {name!r}: unexpected JSON object (only {{\"b64\": ...}} objects are values)")
    return value


def _stack(values: list, name: str) -> np.ndarray:
    """np.array over b64-decoded vectors (same length) or plain nested lists."""
    try:
        if values and all(isinstance(v, np.ndarray) for v in values):
            if len({v.shape for v in values}) != 1:
                raise bad(f"input {name!r}: binary values of different lengths cannot form one tensor")
            return np.stack(values)
        return np.array(values)
    except (ValueError, OverflowError, TypeError) as exc:
        raise bad(f"input {name!r}: values do not form a tensor of consistent shape and type ({str(exc)[:200]})") from None


def _string_leaves(value: Any, name: str, out: list[bytes], budget: list[int]) -> tuple[int, ...]:
    """Append the strings of a nested JSON list to ``out``; returns its shape (must be regular).

    Recursion is bounded by the JSON depth limit the body already passed.
    """
    if isinstance(value, list):
        shapes = {_string_leaves(v, name, out, budget) for v in value}
        if len(shapes) > 1:
            raise bad(f"input {name!r}: string values do not form a tensor of consistent shape")
        return (len(value), *(shapes.pop() if shapes else ()))
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate such as "\ud800" is not text
            raise bad(f"input {name!r}: JSON Parse error: The surrogate pair in string is invalid") from None
    elif _is_b64(value):
        raw = decode_b64(value, f"input {name!r}")
    else:
        raise bad(f"input {name!r}: expected strings or {{\"b64\": ...}} values (DT_STRING), got "
                  f"{type(value).__name__ if not isinstance(value, dict) else 'a JSON object'}")
    budget[0] -= len(raw)
    if budget[0] < 0:
        raise RequestError(413, "decoded string values exceed the element limit", kind="too_large")
    out.append(raw)
    return ()


def string_array(value: Any, name: str, budget: list[int]) -> np.ndarray:
    """A JSON value (strings / b64 objects, nested lists) as an object array of bytes."""
    leaves: list[bytes] = []
    shape = _string_leaves(value, name, leaves, budget)
    return protocol.string_array(leaves, shape)


def to_array(value: Any, name: str, dtype: str, budget: list[int]) -> np.ndarray:
    """A JSON value as an array of ``dtype``; refuses lossy or impossible conversions (400)."""
    if dtype == protocol.STRING:
        return string_array(value, name, budget)
    raw = _plain_array(value)
    if raw is None:  # objects ({"b64": ...}) or ragged lists: the slow, checked path
        value = _unwrap_b64(value, name, dtype, budget)
        if isinstance(value, np.ndarray):
            raw = value
        elif isinstance(value, list):
            raw = _stack(value, name) if any(isinstance(v, np.ndarray) for v in value) else _array(value, name)
        else:
            raw = _array(value, name)
    return convert(raw, name, dtype)


def convert(raw: np.ndarray, name: str, dtype: str) -> np.ndarray:
    """Numbers parsed from JSON as ``dtype``, with TF Serving's type and precision rules (400)."""
    try:
        target = np.dtype(dtype)
    except TypeError:
        raise bad(f"input {name!r}: dtype {dtype} is not supported by this server") from None
    kind = raw.dtype.kind
    if raw.size == 0 and kind == "f":
        return raw.astype(target)
    if kind not in "biuf":
        if kind in "US":
            raise bad(f"input {name!r}: string values need a DT_STRING input; the signature expects "
                      f"{TF_DTYPES.get(dtype, dtype)}")
        raise bad(f"input {name!r}: values are not numbers of consistent shape (expected {TF_DTYPES.get(dtype, dtype)})")
    tk = target.kind
    if tk == "b":
        if kind != "b":
            raise bad(f"input {name!r}: expected booleans (DT_BOOL)")
    elif tk in "iu":
        if kind not in "iu":
            raise bad(f"input {name!r}: expected integers ({TF_DTYPES.get(dtype, dtype)}), got "
                      f"{'booleans' if kind == 'b' else 'non-integer numbers'}")
        if raw.size:
            info = np.iinfo(target)
            lo, hi = int(raw.min()), int(raw.max())
            if lo < info.min or hi > info.max:
                raise bad(f"input {name!r}: value out of range for {TF_DTYPES.get(dtype, dtype)}")
    elif tk in "fc":
        if kind == "b":
            raise bad(f"input {name!r}: expected numbers ({TF_DTYPES.get(dtype, dtype)}), got booleans")
        _check_lossless(raw, target, name)
    else:
        raise bad(f"input {name!r}: dtype {dtype} is not supported by this server")
    return raw.astype(target, copy=False)


def _check_lossless(raw: np.ndarray, target: np.dtype, name: str) -> None:
    """TF Serving's ``IsLosslessDecimal``: integers beyond the float's mantissa and finite
    numbers beyond its range are refused rather than rounded."""
    if not raw.size:
        return
    width = target.itemsize // (2 if target.kind == "c" else 1)
    ftype = np.dtype(f"f{width}")
    if raw.dtype.kind in "iu":
        limit = (1 << np.finfo(ftype).nmant + 1) - 1
        bad_value = raw[np.abs(raw.astype(np.float64)) > limit] if raw.dtype.kind == "i" else raw[raw > limit]
    elif raw.dtype.kind == "f" and raw.dtype.itemsize > width:
        big = np.abs(raw) > np.finfo(ftype).max
        bad_value = raw[big & np.isfinite(raw)]
    else:
        return
    if bad_value.size:
        target_name = {"f2": "half", "f4": "float", "f8": "double"}.get(ftype.str[1:], ftype.name)
        raise bad(f"input {name!r}: Cannot convert JSON value: {bad_value.flat[0]!r} to {target_name} "
                  f"without loss of precision.")


def _plain_array(value: Any) -> np.ndarray | None:
    """Numbers/booleans nested in regular lists straight into one contiguous array (numpy's C
    loop over orjson's lists), or None when the value holds objects or is ragged."""
    if isinstance(value, dict):
        return None
    try:
        arr = np.array(value)
    except (ValueError, OverflowError, TypeError):
        return None
    return None if arr.dtype.kind == "O" else arr


def _array(value: Any, name: str) -> np.ndarray:
    try:
        return np.array(value)
    except (ValueError, OverflowError, TypeError) as exc:
        raise bad(f"input {name!r}: values do not form a tensor of consistent shape and type ({str(exc)[:200]})") from None


def parse_predict(doc: Any, specs_for: Any, max_elements: int) -> PredictRequest:
    """Validate a predict body; ``specs_for(signature_name) -> {input name: TensorSpec}``."""
    if not isinstance(doc, dict):
        raise bad("JSON Value: request body must be a JSON object")
    sig_name = doc.get("signature_name")
    if sig_name is not None and not isinstance(sig_name, str):
        raise bad("'signature_name' must be a string")
    if "instances" in doc and "inputs" in doc:
        raise bad("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if "instances" not in doc and "inputs" not in doc:
        raise bad("Missing 'inputs' or 'instances' key")
    specs: Mapping[str, Any] = specs_for(sig_name)
    names = list(specs)
    budget = [max_elements]
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list) or not instances:
            raise bad("'instances' must be a non-empty JSON list")
        if all(isinstance(i, dict) and not _is_b64(i) for i in instances):
            keys = set(instances[0])
            for idx, inst in enumerate(instances):
                if set(inst) != keys:
                    raise bad(f"Failed to process element: {idx} of 'instances' list. JSON object has different "
                              f"named inputs than the first element")
            _check_names(keys, names)
            arrays = {k: to_array([inst[k] for inst in instances], k, specs[k].dtype, budget) for k in keys}
        elif any(isinstance(i, dict) and not _is_b64(i) for i in instances):
            raise bad("'instances' mixes named (object) and unnamed elements")
        else:
            if len(names) != 1:
                raise bad(f"the signature has {len(names)} inputs ({', '.join(names)}): each instance must be a JSON "
                          f"object naming them")
            arrays = {names[0]: to_array(instances, names[0], specs[names[0]].dtype, budget)}
        return PredictRequest(sig_name, arrays, True)
    inputs = doc["inputs"]
    if isinstance(inputs, dict) and not _is_b64(inputs):
        for k in names:  # names the signature does not have are ignored, as TF Serving does
            if k not in inputs:
                raise bad(f"Missing named input: {k} in 'inputs' object.")
        arrays = {k: to_array(inputs[k], k, specs[k].dtype, budget) for k in names}
    else:
        if len(names) != 1:
            raise bad(f"the signature has {len(names)} inputs ({', '.join(names)}): 'inputs' must be a JSON object naming them")
        arrays = {names[0]: to_array(inputs, names[0], specs[names[0]].dtype, budget)}
    return PredictRequest(sig_name, arrays, False)


def _check_names(given: set[str], expected: list[str]) -> None:
    unknown = sorted(given - set(expected))
    if unknown:
        raise bad(f"JSON object: does not have named input: {unknown[0][:80]} (inputs: {', '.join(expected)})")
    missing = sorted(set(expected) - given)
    if missing:
        raise bad(f"missing input(s): {', '.join(missing)}")


def check_row_outputs(outputs: Mapping[str, np.ndarray]) -> None:
    """The row format needs every output batched alike (TF Serving's messages)."""
    if len(outputs) < 2:
        return
    batch = None
    for k, v in outputs.items():
        if v.ndim == 0:
            raise RequestError(400, f"Tensor name: {k} has no shape information", kind="invalid_argument")
        if batch is None:
            batch = v.shape[0]
        elif v.shape[0] != batch:
            raise RequestError(400, f"Tensor name: {k} has inconsistent batch size: {v.shape[0]} expecting: {batch}",
                               kind="invalid_argument")


def format_predict(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """The predict reply as JSON bytes (:mod:`modelwarden.server.jsonfmt`, TF Serving's float format)."""
    if row_format:
        check_row_outputs(outputs)
    return jsonfmt.predict_body(outputs, row_format)


# -- classify / regress ---------------------------------------------------------------------------


def parse_examples(doc: Any, specs_for: Any) -> PredictRequest:
    """A classify/regress body as the signature's one DT_STRING input of serialized tf.Examples."""
    if not isinstance(doc, dict):
        raise bad("JSON Value: request body must be a JSON object")
    sig_name = doc.get("signature_name")
    if sig_name is not None and not isinstance(sig_name, str):
        raise bad("'signature_name' must be a string")
    specs: Mapping[str, Any] = specs_for(sig_name)
    if len(specs) != 1 or next(iter(specs.values())).dtype != protocol.STRING:
        raise bad("classify/regress signatures take exactly one DT_STRING input (serialized tf.Example); this one "
                  f"takes {', '.join(s.describe() for s in specs.values()) or 'nothing'}")
    name = next(iter(specs))
    serialized = serialized_examples(doc)
    return PredictRequest(sig_name, {name: protocol.string_array(serialized, (len(serialized),))}, True)


def _batch_check(arr: np.ndarray, name: str, batch: int, ranks: tuple[int, ...]) -> None:
    if arr.ndim not in ranks or arr.shape[0] != batch:
        raise RequestError(500, f"Expected output Tensor {name!r} of shape [batch_size{', num_classes' if 2 in ranks else ''}]"
                                f" with batch_size {batch}, got {list(arr.shape)}", kind="bad_model_output")


def format_classify(outputs: Mapping[str, np.ndarray], batch: int) -> bytes:
    """``{"results": [[[label, score], ...] per example]}`` from ``classes`` and/or ``scores``."""
    classes, scores = outputs.get("classes"), outputs.get("scores")
    if classes is None and scores is None:
        raise RequestError(500, "classification signature has neither 'classes' nor 'scores' outputs",
                           kind="bad_model_output")
    if classes is not None:
        _batch_check(classes, "classes", batch, (2,))
        if classes.dtype.kind not in "OSU":
            raise RequestError(500, "Expected classes Tensor of DT_STRING", kind="bad_model_output")
    if scores is not None:
        _batch_check(scores, "scores", batch, (2,))
        if scores.dtype.kind != "f":
            raise RequestError(500, "Expected scores Tensor of DT_FLOAT", kind="bad_model_output")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise RequestError(500, f"Tensors class and score should match in shape: {list(classes.shape)} vs "
                                f"{list(scores.shape)}", kind="bad_model_output")
    n = (classes if classes is not None else scores).shape[1]
    labels = [jsonfmt.string_token(bytes(c), False) for c in classes.reshape(-1).tolist()] if classes is not None \
        else ['""'] * (batch * n)
    values = jsonfmt.encode(scores.reshape(-1))[1:-1].split(",") if scores is not None and scores.size \
        else ["0.0"] * (batch * n)
    pairs = [f"[{label},{value}]" for label, value in zip(labels, values)]
    result = ",".join("[" + ",".join(pairs[i * n:(i + 1) * n]) + "]" for i in range(batch))
    return ('{"results":[' + result + "]}").encode()


def format_regress(outputs: Mapping[str, np.ndarray], batch: int) -> bytes:
    """``{"results": [value per example]}`` from the ``outputs`` tensor ([batch] or [batch, 1])."""
    out = outputs.get("outputs")
    if out is None and len(outputs) == 1:
        out = next(iter(outputs.values()))
    if out is None or out.dtype.kind != "f":
        raise RequestError(500, "regression signature needs one DT_FLOAT 'outputs' tensor", kind="bad_model_output")
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    _batch_check(out, "outputs", batch, (1,))
    return ('{"results":' + jsonfmt.encode(out) + "}").encode()


def dumps(doc: Any) -> bytes:
    """Small JSON documents (errors, status, metadata); ASCII-escaped, so even a lone
    surrogate echoed from a request cannot make encoding fail."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=True).encode()


# -- metadata -------------------------------------------------------------------------------------


def tensor_info(spec: Any, tensor_name: str = "") -> dict:
    shape = spec.shape
    if shape is None:
        ts: dict = {"dim": [], "unknown_rank": True}
    else:
        ts = {"dim": [{"size": str(-1 if d is None else d), "name": ""} for d in shape], "unknown_rank": False}
    return {"dtype": TF_DTYPES.get(spec.dtype, "DT_INVALID"), "tensor_shape": ts, "name": tensor_name}


def signature_def_map(signatures: Mapping[str, Any], extra: Mapping[str, Any]) -> dict:
    """``signature_def`` JSON as TF Serving's GetModelMetadata returns it.

    ``extra``: per signature, (method_name, {input: tensor name}, {output: tensor name})
    read statically from saved_model.pb when available.
    """
    out = {}
    for name, sig in signatures.items():
        method, in_names, out_names = extra.get(name, (PREDICT_METHOD, {}, {}))
        out[name] = {
            "inputs": {k: tensor_info(s, in_names.get(k, "")) for k, s in sig.inputs.items()},
            "outputs": {k: tensor_info(s, out_names.get(k, "")) for k, s in sig.outputs.items()},
            "method_name": method,
            "defaults": {},  # SignatureDef.defaults (TF >= 2.13): never set by the exporters we read
        }
    if INIT_SIGNATURE in extra and INIT_SIGNATURE not in out:
        _, _, init_out = extra[INIT_SIGNATURE]
        out[INIT_SIGNATURE] = {
            "inputs": {},
            "outputs": {k: {"dtype": "DT_INVALID", "tensor_shape": {"dim": [], "unknown_rank": True}, "name": t}
                        for k, t in init_out.items()},
            "method_name": "", "defaults": {},
        }
    return {"signature_def": out}
