"""Findings, rules and the context passes run in.

A rule is a small class registered with :func:`modelwarden.analysis.registry.register`;
its :class:`RuleMeta` carries the stable id, default severity and remediation
that ``modelwarden rules`` lists and SARIF embeds.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, ClassVar

from modelwarden.record import field, record, replace

if TYPE_CHECKING:
    from modelwarden.catalog import Catalog
    from modelwarden.ir import Artifact
    from modelwarden.policy.interface import Policy


class Severity(enum.IntEnum):
    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> "Severity":
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(s.label for s in cls)
            raise ValueError(f"unknown severity {text!r} (expected one of {names})") from None

    def lowered(self, steps: int = 1, floor: "Severity | None" = None) -> "Severity":
        floor = Severity.INFO if floor is None else floor
        return Severity(max(int(floor), int(self) - steps))


@record
class Location:
    """Where a finding is: artifact, file inside it, and the logical place in the graph."""

    artifact: str
    file: str = ""
    graph: str = ""
    function: str = ""
    node: str = ""
    op: str = ""
    call_path: tuple[str, ...] = ()
    reachability: str = ""  # "signature:serving_default", "load-time", "unreachable", ...

    def logical(self) -> str:
        """``graph/function/node`` for SARIF logical locations and text output."""
        return "/".join(p for p in (self.graph, self.function, self.node) if p)


@record
class Finding:
    rule_id: str
    severity: Severity
    message: str
    location: Location
    remediation: str = ""
    capability: str = ""
    evidence: Mapping[str, str] = field(default_factory=dict)
    suppressed_by: str = ""  # the policy justification when ignored

    @property
    def fingerprint(self) -> str:
        """Stable identity for de-duplication and SARIF ``partialFingerprints``."""
        import hashlib

        loc = self.location
        key = "\x1f".join(
            (self.rule_id, loc.artifact, loc.file, loc.graph, loc.function, loc.node, loc.op, self.message)
        )
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def with_severity(self, severity: Severity) -> "Finding":
        return replace(self, severity=severity)


@record
class RuleMeta:
    id: str  # stable: "MW101"
    name: str  # kebab-case: "file-read-op"
    severity: Severity  # default severity
    summary: str  # one line
    description: str = ""
    remediation: str = ""
    formats: tuple[str, ...] = ()  # ArtifactFormat values this rule inspects; empty = all
    tags: tuple[str, ...] = ()


@record
class ScanOptions:
    """Scan-wide inputs to analysis beyond the artifact itself."""

    tf_version: str = ""  # --tf-version: the TensorFlow that will load the model ("" = auto)
    checkpoint: str = ""  # --checkpoint PREFIX: a user-supplied checkpoint to audit against the graph


@record(frozen=False, slots=False)
class AnalysisContext:
    """What a rule may look at: the artifact, the effective op catalog, the policy.

    ``cache`` lets passes share derived structures (call graphs) per artifact.
    """

    artifact: "Artifact"
    catalog: "Catalog"
    policy: "Policy"
    options: "ScanOptions" = field(default_factory=lambda: ScanOptions())
    cache: dict[str, object] = field(default_factory=dict)

    def finding(
        self,
        meta: RuleMeta,
        message: str,
        location: Location,
        *,
        severity: Severity | None = None,
        capability: str = "",
        evidence: Mapping[str, str] | None = None,
        remediation: str | None = None,
    ) -> Finding:
        return Finding(
            rule_id=meta.id,
            severity=meta.severity if severity is None else severity,
            message=message,
            location=location,
            remediation=meta.remediation if remediation is None else remediation,
            capability=capability,
            evidence=dict(evidence or {}),
        )

    def location(self, **kwargs: object) -> Location:
        return Location(artifact=self.artifact.display, **kwargs)  # type: ignore[arg-type]


_FORMATS: dict[type, frozenset[str]] = {}  # rule class -> the formats its metas name


class Rule(ABC):
    """One check.  Subclasses set ``meta`` (or ``metas`` for a pass owning several ids)."""

    meta: ClassVar[RuleMeta]

    @classmethod
    def all_meta(cls) -> tuple[RuleMeta, ...]:
        return tuple(getattr(cls, "metas", ())) or (cls.meta,)

    @classmethod
    def formats(cls) -> frozenset[str]:
        """The artifact formats this rule's metas name (empty: every format)."""
        formats = _FORMATS.get(cls)
        if formats is None:  # once per class
            formats = _FORMATS[cls] = frozenset(f for m in cls.all_meta() for f in m.formats)
        return formats

    def applies_to(self, ctx: AnalysisContext) -> bool:
        formats = self.formats()
        return not formats or ctx.artifact.format.value in formats

    @abstractmethod
    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        """Yield findings for ``ctx.artifact``."""
