"""Policies: which ops pass, how severe each rule is, and justified exceptions."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

from modelwarden.analysis.interface import Finding, Severity
from modelwarden.record import field, record, replace


@record
class Ignore:
    """Suppress ``rule`` where the globs match; a written justification is mandatory."""

    rule: str
    justification: str
    artifact: str = "*"  # fnmatch glob against the artifact's display path
    where: str = "*"  # fnmatch glob against "graph/function/node" (Location.logical())

    def matches(self, finding: Finding) -> bool:
        loc = finding.location
        return (
            (self.rule == finding.rule_id or fnmatch.fnmatchcase(finding.rule_id, self.rule))
            and fnmatch.fnmatchcase(loc.artifact, self.artifact)
            and fnmatch.fnmatchcase(loc.logical() or loc.file, self.where)
        )


@record(slots=False)
class Policy:
    """A named profile, possibly extended by a user TOML file.

    ``allowlist`` set means strict mode: only those ops pass (rule MW110).
    ``extra_ops`` adds capabilities to ops; ``allowed_ops`` removes all of an op's.
    """

    name: str = "default"
    allowlist: frozenset[str] | None = None
    extra_ops: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    allowed_ops: frozenset[str] = frozenset()
    severity: Mapping[str, Severity] = field(default_factory=dict)
    ignores: tuple[Ignore, ...] = ()
    fail_on: Severity | None = None  # the profile's default threshold, if it sets one
    source: str = ""  # file the policy came from, for reports

    def apply(self, findings: Iterable[Finding]) -> tuple[tuple[Finding, ...], tuple[Finding, ...]]:
        """Apply severity overrides and ignores: returns (kept, suppressed)."""
        kept: list[Finding] = []
        suppressed: list[Finding] = []
        for f in findings:
            if f.rule_id in self.severity:
                f = f.with_severity(self.severity[f.rule_id])
            for ig in self.ignores:
                if ig.matches(f):
                    suppressed.append(replace(f, suppressed_by=ig.justification))
                    break
            else:
                kept.append(f)
        return tuple(kept), tuple(suppressed)
