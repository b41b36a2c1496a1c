"""The built-in policy profiles: ``default`` (deny by capability) and ``strict`` (allowlist).

``default`` lets the capability catalog decide: an op is a finding only when
the catalog says it can touch the host.  ``strict`` additionally refuses every
op outside a curated allowlist of pure-compute ops (``strict_allowlist.txt``;
the graph pass reports the rest as MW110), and fails at ``low``.
"""

from __future__ import annotations

from functools import cache

from modelwarden.analysis.interface import Severity
from modelwarden.policy.interface import Policy

PROFILE_NAMES: tuple[str, ...] = ("default", "strict")


@cache
def strict_allowlist() -> frozenset[str]:
    """The op names in ``catalog/strict_allowlist.txt`` (comments and blanks skipped)."""
    from modelwarden.catalog import data_text

    text = data_text("strict_allowlist.txt")
    ops = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return frozenset(op for op in ops if op)


def default_profile() -> Policy:
    return Policy(name="default", fail_on=Severity.MEDIUM)


def strict_profile() -> Policy:
    return Policy(name="strict", allowlist=strict_allowlist(), fail_on=Severity.LOW)


def profile(name: str) -> Policy | None:
    """The built-in profile called ``name``, or ``None``."""
    if name == "default":
        return default_profile()
    if name == "strict":
        return strict_profile()
    return None
