"""Published TensorFlow security advisories by op name, and which TensorFlow versions they affect.

The data is ``catalog/advisories.psv`` (format and provenance: docs/advisories.md).
An advisory lists the first patched release on each release line it was
back-ported to (``2.2.1,2.3.1,2.4.0``).  A version V is *fixed* when

* V is at or above the highest listed fix (every later line carries it), or
* a listed fix is on V's own ``major.minor`` line and V is at or above it;

otherwise it is *affected* — including lines older than every listed fix and
lines between them that got no back-port — unless the advisory names the
first affected release (``introduced``) and V is older than that.
Pre-releases sort below their release (``2.4.0rc1`` < ``2.4.0``), so a
release candidate of a fixing release counts as affected (conservative).

Nothing here imports TensorFlow: the installed version is read from package
metadata.
"""

from __future__ import annotations

import re
from functools import cache, total_ordering

from modelwarden.record import record

# stage order within one release: dev < a < b < rc < final < post
_STAGES = {"dev": 0, "a": 1, "alpha": 1, "b": 2, "beta": 2, "rc": 3, "c": 3, "": 4, "post": 5}
_VERSION = re.compile(
    r"^\s*v?(\d{1,4})(?:\.(\d{1,4}))?(?:\.(\d{1,6}))?"  # release
    r"(?:[.\-_]?(dev|alpha|beta|a|b|rc|c|post)[.\-_]?(\d{0,12}))?"  # one pre/post/dev tag
    r"(?:[.\-_]?(dev)[.\-_]?\d{0,12})?"  # rc0.dev123 style suffix: treat as dev
    r"(?:\+[0-9A-Za-z.\-_]{0,64})?\s*$"  # local version (+cpu, +nv23.03)
)
CLASS_LABELS = {"memory": "memory-safety", "dos": "denial-of-service"}
PYPI_NAMES = (
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-gpu",
    "tensorflow-intel",
    "tensorflow-macos",
    "tensorflow-aarch64",
    "tensorflow-cpu-aws",
    "tf-nightly",
    "tf-nightly-cpu",
    "tf-nightly-gpu",
    "tflite-runtime",  # versioned in step with TensorFlow (its TFLite kernels)
)


class VersionError(ValueError):
    """A version string that is not a TensorFlow release number."""


@total_ordering
@record
class Version:
    """A TensorFlow release number, e.g. ``2.16.0rc0`` -> (2, 16, 0, rc, 0)."""

    major: int
    minor: int
    patch: int
    stage: int = _STAGES[""]
    serial: int = 0
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> "Version":
        m = _VERSION.match(text or "")
        if not m:
            raise VersionError(f"not a TensorFlow version: {text[:60]!r} (expected e.g. 2.12.0 or 2.16.0rc1)")
        major, minor, patch, tag, serial, dev = m.groups()
        stage = _STAGES[tag or ""]
        if dev and stage != _STAGES["dev"]:
            stage, serial = _STAGES["dev"], 0  # "2.4.0rc1.dev5": before the rc itself, be conservative
        return cls(int(major), int(minor or 0), int(patch or 0), stage, int(serial or 0), text.strip())

    @property
    def line(self) -> tuple[int, int]:
        return (self.major, self.minor)

    @property
    def key(self) -> tuple[int, int, int, int, int]:
        return (self.major, self.minor, self.patch, self.stage, self.serial)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.key < other.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return self.text or f"{self.major}.{self.minor}.{self.patch}"


@record
class Advisory:
    id: str  # TFSA-2021-029
    cve: str
    klass: str  # "memory" | "dos"
    ops: tuple[str, ...]
    fixed: tuple[Version, ...]  # ascending
    introduced: Version | None = None
    flags: tuple[str, ...] = ()
    title: str = ""

    @property
    def class_label(self) -> str:
        return CLASS_LABELS.get(self.klass, self.klass)

    @property
    def url(self) -> str:
        return f"https://github.com/tensorflow/tensorflow/blob/master/tensorflow/security/advisory/{self.id.lower()}.md"

    def is_fixed(self, v: Version) -> bool:
        if not self.fixed:
            return False
        if v >= self.fixed[-1]:
            return True
        return any(f.line == v.line and v >= f for f in self.fixed)

    def affects(self, v: Version) -> bool:
        if self.introduced is not None and v < self.introduced:
            return False
        return not self.is_fixed(v)

    def fixed_text(self) -> str:
        """``2.2.1, 2.3.1, 2.4.0+``: the fix on each line, then every later release."""
        if not self.fixed:
            return "no fixed release"
        return ", ".join(str(f) for f in self.fixed[:-1]) + (", " if len(self.fixed) > 1 else "") + f"{self.fixed[-1]}+"


def _parse_line(line: str, lineno: int) -> Advisory:
    parts = line.split("|")
    if len(parts) != 8:
        raise ValueError(f"advisories.psv line {lineno}: expected 8 fields, got {len(parts)}")
    tid, cve, klass, ops, fixed, introduced, flags, title = (p.strip() for p in parts)
    if klass not in CLASS_LABELS:
        raise ValueError(f"advisories.psv line {lineno}: unknown class {klass!r}")
    return Advisory(
        id=tid,
        cve=cve,
        klass=klass,
        ops=tuple(o.strip() for o in ops.split(",") if o.strip()),
        fixed=tuple(sorted(Version.parse(f) for f in fixed.split(",") if f.strip())),
        introduced=Version.parse(introduced) if introduced else None,
        flags=tuple(f for f in flags.split(",") if f),
        title=title,
    )


@cache
def _lines() -> tuple[tuple[int, str], ...]:
    """``(line number, text)`` of every advisory line of the shipped file."""
    from modelwarden.catalog import data_text

    text = data_text("advisories.psv")
    return tuple((n, line) for n, line in enumerate(text.splitlines(), 1)
                 if line.strip() and not line.lstrip().startswith("#"))


@cache
def _advisory(i: int) -> Advisory:
    return _parse_line(*reversed(_lines()[i]))


@cache
def load() -> tuple[Advisory, ...]:
    """Every shipped advisory (parsed once)."""
    return tuple(_advisory(i) for i in range(len(_lines())))


@cache
def _by_op() -> dict[str, tuple[int, ...]]:
    """op -> indexes of the advisories naming it; only the ops column is read here (a scan
    parses just the advisories of the ops its graphs use)."""
    index: dict[str, list[int]] = {}
    for i, (n, line) in enumerate(_lines()):
        parts = line.split("|")
        if len(parts) != 8:
            _parse_line(line, n)  # raises the error naming the line
        for op in parts[3].split(","):
            if op.strip():
                index.setdefault(op.strip(), []).append(i)
    return {op: tuple(ids) for op, ids in index.items()}


def for_op(op: str) -> tuple[Advisory, ...]:
    """Every advisory naming ``op`` (TensorFlow op name, or ``tfl:NAME`` for a TFLite builtin)."""
    return tuple(_advisory(i) for i in _by_op().get(op, ()))


def known_ops() -> frozenset[str]:
    return frozenset(_by_op())


def affected(op: str, tf_version: "str | Version") -> list[Advisory]:
    """Advisories for ``op`` that affect ``tf_version`` (raises :class:`VersionError` if unparsable)."""
    v = tf_version if isinstance(tf_version, Version) else Version.parse(tf_version)
    return [a for a in for_op(op) if a.affects(v)]


def upgrade_target(advisories: "list[Advisory] | tuple[Advisory, ...]", v: Version) -> Version | None:
    """The lowest release above ``v`` that none of ``advisories`` affects (a listed fix), if any."""
    candidates = sorted({f for a in advisories for f in a.fixed if f > v})
    for c in candidates:
        if not any(a.affects(c) for a in advisories):
            return c
    return None


# --------------------------------------------------------------------------
# Which TensorFlow to judge


@record
class VersionChoice:
    version: Version | None
    source: str  # "--tf-version", "installed package tensorflow", "model (...)", or why none


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


@cache
def installed_tf() -> tuple[str, str] | None:
    """(version, distribution) of a TensorFlow installed beside modelwarden, without importing it.

    Reads the ``NAME-VERSION.dist-info`` directory names on ``sys.path`` (what
    ``importlib.metadata`` does, without importing it and the e-mail and socket
    modules it pulls in: this runs in every scan of a model with advisory ops).
    """
    import os
    import sys

    wanted = {_normalise(n): n for n in PYPI_NAMES}
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for d in names:
            if not d.endswith(".dist-info") or "-" not in d:
                continue
            dist, _, version = d[: -len(".dist-info")].rpartition("-")
            key = _normalise(dist)
            if key in wanted and wanted[key] not in found:
                found[wanted[key]] = version
    for name in PYPI_NAMES:  # preference order
        if name in found:
            return found[name], name
    return None


def choose_version(explicit: str, model_version: str, model_source: str) -> VersionChoice:
    """``--tf-version`` beats the installed runtime, which beats the version recorded in the model.

    Raises :class:`VersionError` only for an unparsable explicit version (a usage error);
    unparsable installed/model versions are skipped.
    """
    if explicit:
        return VersionChoice(Version.parse(explicit), "--tf-version")
    inst = installed_tf()
    if inst is not None:
        try:
            return VersionChoice(Version.parse(inst[0]), f"installed package {inst[1]}")
        except VersionError:
            pass
    if model_version:
        try:
            return VersionChoice(Version.parse(model_version), model_source)
        except VersionError:
            return VersionChoice(None, f"{model_source} is not a version ({model_version[:40]!r})")
    return VersionChoice(None, "no --tf-version, no TensorFlow installed, no version recorded in the model")
