"""The rule registry: rules register themselves with a stable id (bandit-style)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable

from modelwarden.analysis.interface import Rule, RuleMeta

_RULES: dict[str, type[Rule]] = {}
_META: dict[str, RuleMeta] = {}
_loaded = False
_ordered: list[type[Rule]] | None = None  # rule_classes(), until the next register()
_by_format: dict[str, list[type[Rule]]] = {}  # rules_for(), until the next register()


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator: add a rule; ids must be unique."""
    for meta in cls.all_meta():
        if meta.id in _META and _RULES.get(meta.id) is not cls:
            raise RuntimeError(f"duplicate rule id {meta.id}")
        _META[meta.id] = meta
        _RULES[meta.id] = cls
    global _ordered
    _ordered = None
    _by_format.clear()
    return cls


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    import modelwarden.analysis.rules as pkg

    # every module of the rules package (os.listdir, not pkgutil, which imports inspect: start-up time)
    names = sorted({f[:-3] for d in pkg.__path__ for f in os.listdir(d) if f.endswith(".py") and f != "__init__.py"})
    for name in names:
        importlib.import_module(f"{pkg.__name__}.{name}")
    _loaded = True


def rule_classes() -> list[type[Rule]]:
    """Every registered rule class, once, in id order (sorted once, not per artifact)."""
    global _ordered
    _load_builtin()
    if _ordered is None:
        seen: dict[type[Rule], None] = {}
        for rid in sorted(_RULES):
            seen.setdefault(_RULES[rid], None)
        _ordered = list(seen)
    return list(_ordered)


def rules_for(fmt: str) -> list[type[Rule]]:
    """The rule classes that may apply to an artifact of format ``fmt``, in id order: those whose
    formats include it (or are all formats) and those that decide for themselves (their own
    ``applies_to``).  Rules for other formats are not even instantiated per artifact."""
    rules = _by_format.get(fmt)
    if rules is None:
        rules = [cls for cls in rule_classes()
                 if cls.applies_to is not Rule.applies_to or not cls.formats() or fmt in cls.formats()]
        _by_format[fmt] = rules
    return rules


def all_meta() -> list[RuleMeta]:
    _load_builtin()
    return [_META[k] for k in sorted(_META)]


def meta(rule_id: str) -> RuleMeta | None:
    _load_builtin()
    return _META.get(rule_id)


def known_ids() -> Iterable[str]:
    _load_builtin()
    return _META.keys()
