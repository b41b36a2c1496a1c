"""Load a user policy from TOML and merge it onto a built-in profile.

Format (see docs/policy.md)::

    extends = "default"            # or "strict"
    fail_on = "high"
    [ops]
    allow = ["PrintV2"]            # drop every capability of these ops
    strict_allow = ["MyPureOp"]    # extend the strict allowlist
    [ops.add]
    MyOp = ["file-read"]           # give custom ops capabilities
    [severity]
    MW104 = "low"
    [[ignore]]
    rule = "MW101"
    justification = "reads its own vocabulary file"
    artifact = "models/*"
    where = "*"

Anything unknown or ill-typed is a :class:`~modelwarden.errors.PolicyError`
naming the file, the key and what was expected.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modelwarden.analysis.interface import Severity
from modelwarden.errors import PolicyError
from modelwarden.policy.interface import Ignore, Policy
from modelwarden.policy.profiles import PROFILE_NAMES, profile
from modelwarden.record import replace

MAX_POLICY_BYTES = 1024 * 1024
MAX_LIST = 100_000
_OP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_>./-]{0,255}$")
_TOP_KEYS = ("extends", "name", "description", "fail_on", "ops", "severity", "ignore")
_OPS_KEYS = ("allow", "strict_allow", "add")
_IGNORE_KEYS = ("rule", "justification", "artifact", "where")
_SEVERITIES = tuple(s.label for s in Severity)


class _Ctx:
    """Error helper: every message starts with the policy file's name."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, where: str, message: str) -> PolicyError:
        prefix = f"{self.source}: {where}: " if where else f"{self.source}: "
        return PolicyError(prefix + message)

    def unknown_keys(self, table: dict, allowed: Iterable[str], where: str) -> None:
        allowed = tuple(allowed)
        for key in table:
            if key not in allowed:
                hint = _hint(key, allowed)
                raise self.error(where, f"unknown key {key!r}{hint} (allowed: {', '.join(allowed)})")

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self.error(where, f"expected a string, got {_type(value)}")
        return value

    def strings(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise self.error(where, f"expected a list of strings, got {_type(value)}")
        return [self.string(v, f"{where}[{i}]") for i, v in enumerate(value)]

    def op_name(self, value: str, where: str) -> str:
        if not _OP_NAME.match(value):
            raise self.error(where, f"{value!r} is not a valid op name")
        return value

    def severity(self, value: Any, where: str) -> Severity:
        text = self.string(value, where)
        try:
            return Severity.parse(text)
        except ValueError:
            raise self.error(
                where, f"unknown severity {text!r}{_hint(text.lower(), _SEVERITIES)} (expected one of {', '.join(_SEVERITIES)})"
            ) from None


def _type(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _hint(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _known_rule_ids() -> frozenset[str]:
    from modelwarden.analysis import registry

    return frozenset(registry.known_ids())


def _known_capabilities() -> tuple[str, ...]:
    from modelwarden.catalog import load_catalog

    return tuple(load_catalog().kinds)


def _rule_id(ctx: _Ctx, value: Any, where: str, known: frozenset[str], *, glob: bool = False) -> str:
    rid = ctx.string(value, where).strip()
    if rid in known:
        return rid
    if glob and any(c in rid for c in "*?[") and any(fnmatch.fnmatchcase(k, rid) for k in known):
        return rid
    raise ctx.error(where, f"unknown rule id {rid!r}{_hint(rid, known)} (run `modelwarden rules` for the list)")


def read_policy_text(path: Path) -> str:
    """The policy file's text, bounded; unreadable files are a PolicyError."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError(f"{path}: policy file not found") from None
    except IsADirectoryError:
        raise PolicyError(f"{path}: policy is a directory, expected a TOML file") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy file: {exc.strerror or exc}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"{path}: policy file is larger than {MAX_POLICY_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: policy file is not UTF-8 (byte {exc.start})") from None


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Build a :class:`Policy` from TOML text; ``source`` names it in errors."""
    ctx = _Ctx(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ctx.error("", f"invalid TOML: {exc}") from None
    except RecursionError:
        raise ctx.error("", "invalid TOML: nested too deeply") from None
    ctx.unknown_keys(data, _TOP_KEYS, "")

    base_name = ctx.string(data.get("extends", "default"), "extends")
    base = profile(base_name)
    if base is None:
        raise ctx.error("extends", f"unknown profile {base_name!r} (expected one of {', '.join(PROFILE_NAMES)})")

    fail_on = ctx.severity(data["fail_on"], "fail_on") if "fail_on" in data else base.fail_on
    name = ctx.string(data.get("name", ""), "name").strip() or f"{base_name}+{Path(source).name}"
    if "description" in data:
        ctx.string(data["description"], "description")

    allowed, strict_allow, extra = _parse_ops(ctx, data.get("ops", {}), base)
    severity = _parse_severity(ctx, data.get("severity", {}))
    ignores = _parse_ignores(ctx, data.get("ignore", []))

    allowlist = base.allowlist
    if allowlist is not None:
        allowlist = allowlist | strict_allow | allowed
    return replace(
        base,
        name=name,
        allowlist=allowlist,
        extra_ops={**base.extra_ops, **extra},
        allowed_ops=base.allowed_ops | allowed,
        severity={**base.severity, **severity},
        ignores=base.ignores + ignores,
        fail_on=fail_on,
        source=source,
    )


def _parse_ops(ctx: _Ctx, ops: Any, base: Policy) -> tuple[frozenset[str], frozenset[str], dict[str, tuple[str, ...]]]:
    if not isinstance(ops, dict):
        raise ctx.error("ops", f"expected a table, got {_type(ops)}")
    ctx.unknown_keys(ops, _OPS_KEYS, "[ops]")
    allowed = frozenset(ctx.op_name(o, "[ops] allow") for o in ctx.strings(ops.get("allow", []), "[ops] allow"))
    strict_allow = frozenset(
        ctx.op_name(o, "[ops] strict_allow") for o in ctx.strings(ops.get("strict_allow", []), "[ops] strict_allow")
    )
    if strict_allow and base.allowlist is None:
        raise ctx.error("[ops] strict_allow", 'only applies to policies with extends = "strict"')
    add = ops.get("add", {})
    if not isinstance(add, dict):
        raise ctx.error("[ops.add]", f"expected a table of op = [capabilities], got {_type(add)}")
    extra: dict[str, tuple[str, ...]] = {}
    if add:
        kinds = _known_capabilities()
        for op, caps in add.items():
            where = f"[ops.add] {op}"
            ctx.op_name(op, where)
            names = ctx.strings(caps, where)
            if not names:
                raise ctx.error(where, "expected at least one capability")
            for cap in names:
                if cap not in kinds:
                    raise ctx.error(
                        where, f"unknown capability {cap!r}{_hint(cap, kinds)} (expected one of {', '.join(kinds)})"
                    )
            if op in allowed:
                raise ctx.error(where, "op is both allowed ([ops] allow) and given capabilities ([ops.add])")
            extra[op] = tuple(dict.fromkeys(names))
    return allowed, strict_allow, extra


def _parse_severity(ctx: _Ctx, table: Any) -> dict[str, Severity]:
    if not isinstance(table, dict):
        raise ctx.error("[severity]", f"expected a table of RULE = \"severity\", got {_type(table)}")
    if not table:
        return {}
    known = _known_rule_ids()
    return {_rule_id(ctx, rid, "[severity]", known): ctx.severity(v, f"[severity] {rid}") for rid, v in table.items()}


def _parse_ignores(ctx: _Ctx, items: Any) -> tuple[Ignore, ...]:
    if not isinstance(items, list) or len(items) > MAX_LIST:
        raise ctx.error("[[ignore]]", f"expected an array of tables, got {_type(items)}")
    if not items:
        return ()
    known = _known_rule_ids()
    out: list[Ignore] = []
    for i, item in enumerate(items, 1):
        where = f"[[ignore]] #{i}"
        if not isinstance(item, dict):
            raise ctx.error(where, f"expected a table, got {_type(item)}")
        ctx.unknown_keys(item, _IGNORE_KEYS, where)
        if "rule" not in item:
            raise ctx.error(where, "missing 'rule'")
        rule = _rule_id(ctx, item["rule"], f"{where} rule", known, glob=True)
        justification = ctx.string(item.get("justification", ""), f"{where} justification").strip()
        if not justification:
            raise ctx.error(where, f"ignoring {rule} needs a non-empty 'justification' saying why it is safe")
        out.append(
            Ignore(
                rule=rule,
                justification=justification,
                artifact=ctx.string(item.get("artifact", "*"), f"{where} artifact") or "*",
                where=ctx.string(item.get("where", "*"), f"{where} where") or "*",
            )
        )
    return tuple(out)


def load_policy_file(path: str | Path) -> Policy:
    """Read and parse a TOML policy file."""
    p = Path(path)
    return parse_policy(read_policy_text(p), str(path))
