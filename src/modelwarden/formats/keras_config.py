"""Keras configs (any container format) -> :class:`~modelwarden.ir.KerasModel`.

A Keras config is a JSON tree in which every dict carrying ``class_name`` is
something the loader will deserialise: models, layers, wrappers' inner layers,
initializers, regularizers, losses, optimizers, dtype policies, custom objects,
Lambda functions.  :func:`model_from_config` records each one as a
:class:`~modelwarden.ir.KerasObject` with its path, and every string value as a
:class:`~modelwarden.ir.ConfigString`.  Lambda bytecode (base64 ``marshal``)
is decoded by :mod:`modelwarden.formats.marshal_facts`, never executed.

Paths read like ``config.layers[3].config.layer``; the root object's path is ``""``.
Objects with ``class_name == "function"`` keep the function's name in ``name``
(Keras stores it as the object's ``config``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from modelwarden.errors import InputError, LimitExceeded
from modelwarden.formats import safeio
from modelwarden.formats.interface import DEFAULT_LIMITS, Limits
from modelwarden.formats.marshal_facts import code_facts
from modelwarden.ir import CodeFacts, ConfigString, KerasModel, KerasObject
from modelwarden.record import field, record

MAX_STRINGS = 1_000_000  # ConfigStrings per model; more is a LimitExceeded, never a silent cut
MAX_STRING_CHARS = 4096  # each recorded string value is cut to this length
LAMBDA_FUNCTION_KEYS = ("function", "output_shape", "mask")
_EMPTY: Mapping[str, object] = MappingProxyType({})


@record(frozen=False, slots=False)
class _Collector:
    """Accumulates objects and strings across one or more config trees."""

    source: str
    limits: Limits
    objects: list[KerasObject] = field(default_factory=list)
    strings: list[ConfigString] = field(default_factory=list)

    def walk(self, tree: object, prefix: str = "") -> None:
        """Visit every node of ``tree`` iteratively (depth bounded by ``max_json_depth``)."""
        stack: list[tuple[object, str, int]] = [(tree, prefix, 0)]
        while stack:
            node, path, depth = stack.pop()
            if depth > self.limits.max_json_depth:
                raise LimitExceeded(self.source, f"Keras config nested deeper than {self.limits.max_json_depth} levels")
            if isinstance(node, str):
                if len(self.strings) >= MAX_STRINGS:
                    raise LimitExceeded(self.source, f"Keras config holds more than {MAX_STRINGS} strings")
                self.strings.append(ConfigString(path, node[:MAX_STRING_CHARS]))
            elif isinstance(node, dict):
                if isinstance(node.get("class_name"), str):
                    self._object(node, path)
                children = [(v, f"{path}.{k}" if path else str(k), depth + 1) for k, v in node.items()]
                stack.extend(reversed(children))
            elif isinstance(node, list):
                stack.extend(reversed([(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node)]))

    def _object(self, node: dict, path: str) -> None:
        if len(self.objects) >= self.limits.max_nodes:
            raise LimitExceeded(self.source, f"Keras config holds more than {self.limits.max_nodes} objects")
        class_name = node["class_name"]
        inner = node.get("config")
        name = _text(node.get("name")) or (_text(inner.get("name")) if isinstance(inner, dict) else "")
        if class_name == "function" and isinstance(inner, str):
            name = inner
        code, kind = self._lambda_facts(node, class_name, inner)
        self.objects.append(
            KerasObject(
                path=path,
                class_name=class_name,
                module=_text(node.get("module")),
                registered_name=_text(node.get("registered_name")),
                name=name,
                config=MappingProxyType(inner) if isinstance(inner, dict) else _EMPTY,
                lambda_code=code,
                lambda_source_kind=kind,
            )
        )

    def _lambda_facts(self, node: dict, class_name: str, inner: object) -> tuple[CodeFacts | None, str]:
        """Bytecode facts for ``__lambda__`` objects and Lambda layers (Keras 2 and 3 spellings)."""
        if class_name == "__lambda__":
            return self._lambda_blob(inner)
        if not isinstance(inner, dict) or not any(k in inner for k in LAMBDA_FUNCTION_KEYS):
            return None, ""
        if class_name != "Lambda" and "function_type" not in inner:
            return None, ""
        facts: list[CodeFacts] = []
        kinds: list[str] = []
        for key in LAMBDA_FUNCTION_KEYS:
            value = inner.get(key)
            if value is None:
                continue
            if isinstance(value, dict) and value.get("class_name") == "__lambda__":
                code, kind = self._lambda_blob(value.get("config"))
            else:  # Keras 2 / tf.keras: a separate "<key>_type" says how to read the value
                code, kind = self._legacy_function(value, _text(inner.get(f"{key}_type")) or _default_type(key, value))
            if code is not None:
                facts.append(code)
            if kind:
                kinds.append(kind)
        if not kinds:
            return None, ""
        kind = "bytecode" if "bytecode" in kinds else kinds[0]
        return (_merge(facts) if facts else None), kind

    def _lambda_blob(self, inner: object) -> tuple[CodeFacts | None, str]:
        """``__lambda__`` config: Lambda layers store ``code``; serialize_keras_object stores ``value``."""
        if not isinstance(inner, dict):
            return CodeFacts((), (), 0, error="__lambda__ without a config"), "bytecode"
        blob = inner.get("code")
        if blob is None and isinstance(inner.get("value"), list) and inner["value"]:
            blob = inner["value"][0]
        return self._decode(blob), "bytecode"

    def _legacy_function(self, value: object, ftype: str) -> tuple[CodeFacts | None, str]:
        if ftype == "lambda":
            blob = value[0] if isinstance(value, list) and value else value
            return self._decode(blob), "bytecode"
        if ftype == "function":
            return None, "function-name"
        if ftype == "raw":
            return None, "raw"
        return None, ""

    def _decode(self, blob: object) -> CodeFacts:
        if not isinstance(blob, str):
            return CodeFacts((), (), 0, error="Lambda code is not a base64 string")
        limit = self.limits.max_marshal_bytes
        if len(blob) > limit * 4 // 3 + 1024:
            return CodeFacts((), (), 0, error=f"Lambda code is over the {limit}-byte limit")
        try:
            raw = base64.b64decode(blob.encode("ascii"), validate=False)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            return CodeFacts((), (), 0, error="Lambda code is not valid base64")
        return code_facts(raw, max_bytes=limit, max_depth=self.limits.max_marshal_depth)

    def model(self, keras_version: str = "", backend: str = "", weight_files: Iterable[str] = ()) -> KerasModel:
        return KerasModel(
            source_file=self.source,
            keras_version=keras_version,
            backend=backend,
            objects=tuple(self.objects),
            strings=tuple(self.strings),
            weight_files=tuple(weight_files),
        )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _default_type(key: str, value: object) -> str:
    """Keras 2 configs without ``<key>_type``: a 3-list is func_dump output."""
    if key == "function" and isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
        return "lambda"
    return ""


def _merge(facts: list[CodeFacts]) -> CodeFacts:
    if len(facts) == 1:
        return facts[0]
    return CodeFacts(
        names=tuple(dict.fromkeys(n for f in facts for n in f.names)),
        strings=tuple(dict.fromkeys(s for f in facts for s in f.strings)),
        code_objects=sum(f.code_objects for f in facts),
        python_layout=",".join(dict.fromkeys(f.python_layout for f in facts if f.python_layout)),
        error="; ".join(f.error for f in facts if f.error),
    )


def model_from_config(
    trees: Iterable[tuple[str, object]],
    source_file: str,
    limits: Limits = DEFAULT_LIMITS,
    *,
    keras_version: str = "",
    backend: str = "",
    weight_files: Iterable[str] = (),
) -> KerasModel:
    """Build a KerasModel from parsed config trees, each with a path prefix (``""`` for the model)."""
    collector = _Collector(source_file, limits)
    for prefix, tree in trees:
        collector.walk(tree, prefix)
    return collector.model(keras_version, backend, weight_files)


def model_from_keras_metadata(
    nodes: Iterable[tuple[str, int | str, str | bytes]],
    source_file: str,
    limits: Limits = DEFAULT_LIMITS,
) -> KerasModel | None:
    """KerasModel from a tf.keras SavedModel's ``keras_metadata.pb`` nodes.

    ``nodes`` holds ``(node_path, identifier, metadata_json)``; each metadata is a
    JSON object with ``class_name``/``config``.  Paths are ``<node_path>.config...``.
    Returns ``None`` when there are no nodes.
    """
    collector = _Collector(source_file, limits)
    version = ""
    count = 0
    for node_path, _identifier, metadata in nodes:
        count += 1
        if count > limits.max_nodes:
            raise LimitExceeded(source_file, f"keras metadata holds more than {limits.max_nodes} nodes")
        if not metadata:
            continue
        tree = safeio.load_json(
            metadata, source_file, max_bytes=limits.max_json_bytes,
            max_depth=limits.max_json_depth, what=f"Keras metadata of node {node_path!r}",
        )
        if not isinstance(tree, dict):
            raise InputError(source_file, f"Keras metadata of node {node_path!r} is not a JSON object")
        version = version or _text(tree.get("keras_version"))
        collector.walk(tree, str(node_path) or "root")
    if count == 0:
        return None
    return collector.model(keras_version=version)
