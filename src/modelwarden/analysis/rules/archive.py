"""Archive rules (MW870-MW889): what a zip/tar container would do to a disk it is extracted to.

Scanning never extracts; these rules report, from the member list alone, what
``extractall`` or a loader that unpacks the archive would do: write outside the
target (absolute or ``..`` paths), plant links, hide content (encryption),
exhaust the disk (bombs), or nest archives past what was inspected.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.ir import ArchiveMember, FileKind

FORMATS = ("archive", "pytorch", "numpy", "keras-v3")
RATIO = 200  # declared uncompressed/compressed beyond which a member is a bomb
RATIO_FLOOR = 1 << 20
_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:|\\\\|//)")


def _meta(id_: str, name: str, sev: Severity, summary: str, description: str, remediation: str) -> RuleMeta:
    return RuleMeta(id_, name, sev, summary, description, remediation, FORMATS, ("archive",))


META = {m.id: m for m in (
    _meta("MW870", "archive-path-traversal", Severity.HIGH, "Archive member path is absolute or climbs out with '..'",
          "Extracting the archive writes outside the target directory (zip slip): overwriting code, "
          "configuration or keys.", "Never extract this archive; rebuild it with relative member paths."),
    _meta("MW871", "archive-link-member", Severity.MEDIUM, "Archive holds a symbolic or hard link",
          "Links in an archive make later members (or the loader) write or read through them; one that "
          "points outside the archive (high) exposes arbitrary files; a hard link to a regular member extracted "
          "before it is a deduplicated copy (info).", "Remove links from model archives."),
    _meta("MW872", "archive-encrypted-member", Severity.MEDIUM, "Archive member is encrypted",
          "Encrypted members cannot be inspected; their content is unknown.", "Ship model archives unencrypted."),
    _meta("MW873", "archive-bomb", Severity.HIGH, "Archive member expands far beyond its compressed size",
          "A compression ratio typical of zip/tar/gzip bombs: extraction or loading exhausts memory or disk.",
          "Do not extract or load this archive."),
    _meta("MW874", "archive-nesting", Severity.MEDIUM, "Archives nested deeper than inspected",
          "Archive members that are themselves archives were inspected to a bounded depth; deeper content was "
          "not checked.", "Flatten nested archives."),
    _meta("MW875", "archive-content-not-inspected", Severity.MEDIUM, "Archive content could not be inspected",
          "A member that holds executable content (a pickle, a nested archive) exceeded a size limit or could "
          "not be decompressed, so it was not checked.", "Inspect that member separately, or raise the limits."),
    _meta("MW876", "archive-special-member", Severity.MEDIUM, "Archive holds a device, FIFO or other special file",
          "Extracting special files creates device nodes or FIFOs; model archives never need them.",
          "Remove special files from the archive."),
    _meta("MW877", "archive-duplicate-member", Severity.MEDIUM, "Archive holds two members with one name",
          "Extractors and loaders disagree on which copy wins: what was scanned may not be what is loaded.",
          "Rebuild the archive with unique member names."),
)}


def escapes(name: str) -> bool:
    """Does an archive member path point outside the extraction directory?"""
    n = name.replace("\\", "/")
    if n.startswith("/") or _WINDOWS_ABS.match(name):
        return True
    return ".." in n.split("/")


def link_escapes(m: ArchiveMember) -> bool:
    target = m.link_target.replace("\\", "/")
    if target.startswith("/") or _WINDOWS_ABS.match(m.link_target):
        return True
    if m.hardlink:
        return escapes(target)
    depth = 0
    for part in (m.name.replace("\\", "/").split("/")[:-1] + target.split("/")):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


@register
class ArchiveRules(Rule):
    metas = tuple(META.values())

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        facts = ctx.artifact.archive
        if facts is None:
            return
        earlier: set[tuple[str, str]] = set()  # regular members already extracted
        for m in facts.members:
            loc = ctx.location(file=m.display, node=m.name[:200], op=m.kind.value)
            shown = m.display[:300]
            if escapes(m.name):
                yield ctx.finding(META["MW870"], f"Member {shown!r} extracts outside the target directory", loc)
            if m.kind is FileKind.SYMLINK:
                out = link_escapes(m)
                kind = "hard link" if m.hardlink else "symbolic link"
                # a hard link to a regular member extracted before it is a deduplicated copy (tar
                # writes repeated files so, e.g. the time-zone database): it reaches nothing new
                copy = m.hardlink and not out and (m.container, m.link_target) in earlier
                yield ctx.finding(META["MW871"], f"Member {shown!r} is a {kind} to {m.link_target[:300]!r}"
                                  + (" (outside the archive)" if out else " (an earlier member: a copy)" if copy
                                     else ""), loc,
                                  severity=Severity.HIGH if out else Severity.INFO if copy else None)
            elif m.kind is FileKind.FILE:
                earlier.add((m.container, m.name))
            elif m.kind is FileKind.OTHER:
                yield ctx.finding(META["MW876"], f"Member {shown!r} is a special file", loc)
            if m.encrypted:
                yield ctx.finding(META["MW872"], f"Member {shown!r} is encrypted and was not inspected", loc)
            if m.size > RATIO_FLOOR and m.size > max(m.compressed, 1) * RATIO:
                yield ctx.finding(META["MW873"], f"Member {shown!r} declares {m.size} bytes from {m.compressed} "
                                  f"compressed ({m.size // max(m.compressed, 1)}x)", loc)
        for why in facts.skipped:
            rid = "MW873" if "bomb" in why or "decompresses" in why else \
                "MW874" if "nested archive deeper" in why else "MW875"
            yield ctx.finding(META[rid], why, ctx.location(file=why.split(":", 1)[0][:300]))
        names = Counter((m.container, m.name) for m in facts.members if m.kind is not FileKind.DIR)
        for (container, name), n in names.items():
            if n > 1:
                shown = f"{container}!{name}" if container else name
                yield ctx.finding(META["MW877"], f"Member {shown[:300]!r} appears {n} times",
                                  ctx.location(file=shown[:300]))
