"""The op capability catalog: data (``ops.toml``, ``stock_ops.txt``) plus a small loader.

The catalog says what an op *can* do; analysis decides whether a given node
does it (attribute conditions are evaluated here, dataflow there).

``ops.toml`` is the source people edit.  ``ops.json`` is the same data compiled for
start-up speed (a JSON parse is ~10x cheaper than TOML's, and ``tomllib`` need not be
imported); it records the SHA-256 of the ``ops.toml`` it was compiled from and is used
only when that still matches, so an edited TOML is never shadowed by a stale JSON.
Rebuild it with ``python -m modelwarden.catalog.compile`` (``tests/test_catalog_compiled.py``
fails until you do).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING

from modelwarden.analysis.interface import Severity
from modelwarden.record import field, record, replace

if TYPE_CHECKING:
    from modelwarden.ir import Node
    from modelwarden.policy.interface import Policy


@record
class CapabilityKind:
    name: str
    severity: Severity
    rule: str
    summary: str


@record
class OpSpec:
    op: str
    capabilities: tuple[str, ...]
    paths: tuple[int, ...] = ()
    path_attrs: tuple[str, ...] = ()
    graph_inputs: tuple[int, ...] = ()  # inputs carrying a serialized GraphDef the op runs
    when_attr: Mapping[str, str] = field(default_factory=dict)
    when_nonempty: tuple[str, ...] = ()
    empty_path_ok: bool = False
    severity: Severity | None = None
    note: str = ""


def _attr_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, tuple):
        return ",".join(_attr_text(v) for v in value)
    return "" if value is None else str(value)


@record(slots=False)
class Catalog:
    kinds: Mapping[str, CapabilityKind]
    specs: Mapping[str, OpSpec]
    stock_ops: frozenset[str]

    def lookup(self, op: str) -> OpSpec | None:
        return self.specs.get(op)

    def is_stock(self, op: str) -> bool:
        return op in self.stock_ops

    def active(self, node: "Node") -> tuple[str, ...]:
        """Capabilities this node has given its attributes (``when_*`` conditions applied)."""
        spec = self.specs.get(node.op)
        if spec is None:
            return ()
        for attr, pattern in spec.when_attr.items():
            if not re.search(pattern, _attr_text(node.attrs.get(attr, ""))):
                return ()
        if spec.when_nonempty and not any(_attr_text(node.attrs.get(a, "")) for a in spec.when_nonempty):
            return ()
        return spec.capabilities

    def severity_of(self, spec: OpSpec, capability: str) -> Severity:
        return spec.severity if spec.severity is not None else self.kinds[capability].severity

    def with_policy(self, policy: "Policy") -> "Catalog":
        """The effective catalog under a policy: ops added or allowed by the user."""
        if not policy.extra_ops and not policy.allowed_ops:
            return self
        specs = dict(self.specs)
        for op in policy.allowed_ops:
            specs.pop(op, None)
        for op, caps in policy.extra_ops.items():
            base = specs.get(op) or OpSpec(op=op, capabilities=())
            specs[op] = replace(base, capabilities=tuple(dict.fromkeys(base.capabilities + tuple(caps))))
        return replace(self, specs=specs)


def _parse(data: dict, stock: frozenset[str]) -> Catalog:
    kinds = {
        name: CapabilityKind(name, Severity.parse(v["severity"]), v.get("rule", ""), v.get("summary", ""))
        for name, v in data["capabilities"].items()
    }
    specs: dict[str, OpSpec] = {}
    for op, v in data.get("ops", {}).items():
        caps = tuple(v["capabilities"])
        unknown = [c for c in caps if c not in kinds]
        if unknown:
            raise ValueError(f"catalog: op {op} has unknown capabilities {unknown}")
        specs[op] = OpSpec(
            op=op,
            capabilities=caps,
            paths=tuple(v.get("paths", ())),
            path_attrs=tuple(v.get("path_attrs", ())),
            graph_inputs=tuple(v.get("graph_inputs", ())),
            when_attr=dict(v.get("when_attr", {})),
            when_nonempty=tuple(v.get("when_nonempty", ())),
            empty_path_ok=bool(v.get("empty_path_ok", False)),
            severity=Severity.parse(v["severity"]) if "severity" in v else None,
            note=v.get("note", ""),
        )
    return Catalog(kinds=kinds, specs=specs, stock_ops=stock)


COMPILED_VERSION = 1  # bump when the layout of ops.json changes


def compile_ops(toml_bytes: bytes) -> dict:
    """The ``ops.json`` document for ``ops.toml`` bytes: the parts the loader reads, plus the source hash."""
    import tomllib

    data = tomllib.loads(toml_bytes.decode("utf-8"))
    return {
        "version": COMPILED_VERSION,
        "source_sha256": hashlib.sha256(toml_bytes).hexdigest(),
        "capabilities": data["capabilities"],
        "ops": data.get("ops", {}),
    }


_HERE = os.path.dirname(os.path.abspath(__file__))


def data_bytes(name: str, directory: "str | os.PathLike[str]" = _HERE) -> bytes:
    """A data file shipped in this package (``ops.toml``, ``advisories.psv``...), read from the
    package's directory (or ``directory``); through :mod:`importlib.resources` only when the
    package is not a plain directory (a zip): that module and what it imports (pathlib, tempfile,
    zipfile...) cost every ``modelwarden scan`` ~8 ms of start-up, before its pool can fork."""
    path = os.path.join(directory, name)
    if os.path.isfile(path) or directory != _HERE:
        with open(path, "rb") as fh:
            return fh.read()
    from importlib import resources

    return (resources.files(__name__) / name).read_bytes()


def data_text(name: str) -> str:
    return data_bytes(name).decode("utf-8")


def _ops_data(directory: "str | os.PathLike[str]" = _HERE) -> dict:
    """``ops.toml``'s data: from ``ops.json`` when it was compiled from these exact bytes, else parsed."""
    toml_bytes = data_bytes("ops.toml", directory)
    try:
        compiled = json.loads(data_bytes("ops.json", directory))
    except (OSError, ValueError):
        compiled = None
    if (isinstance(compiled, dict) and compiled.get("version") == COMPILED_VERSION
            and compiled.get("source_sha256") == hashlib.sha256(toml_bytes).hexdigest()):
        return compiled
    return compile_ops(toml_bytes)  # stale or missing: the TOML is the truth


@cache
def load_catalog() -> Catalog:
    """The built-in catalog shipped in the package."""
    stock = frozenset(
        line.strip()
        for line in data_text("stock_ops.txt").splitlines()
        if line.strip() and not line.startswith("#")
    )
    return _parse(_ops_data(), stock)
