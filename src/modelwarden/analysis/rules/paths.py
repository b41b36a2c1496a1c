"""MW200–MW203: files of a model directory and asset names that escape it."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.ir import FileKind


def escapes(path: str) -> bool:
    """Absolute, drive-qualified, or climbing out with ``..`` once normalised."""
    p = path.replace("\\", "/")
    if p.startswith("/") or (len(p) > 1 and p[1] == ":") or "://" in p:
        return True
    norm = posixpath.normpath(p)
    return norm == ".." or norm.startswith("../")


@register
class AssetEscapeRule(Rule):
    meta = RuleMeta(
        "MW200", "asset-path-escape", Severity.HIGH,
        "An asset filename is absolute or climbs out of the model directory: loading reads a host file.",
        remediation="Assets must be plain names inside assets/; reject the model.",
        formats=("tf-savedmodel",), tags=("path",),
    )

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        for g in ctx.artifact.graphs:
            for asset in g.assets:
                if escapes(asset.filename):
                    loc = ctx.location(file=g.source_file, graph=g.name, node=asset.tensor)
                    yield ctx.finding(self.meta, f"asset filename {asset.filename!r} points outside the model directory",
                                      loc, capability="file-read", evidence={"path": asset.filename})


@register
class FileEntryRule(Rule):
    metas = (
        RuleMeta(
            "MW201", "symlink-escape", Severity.HIGH,
            "A symbolic link in the model directory points outside it: loading or serving reads a host file.",
            remediation="Copy the model without following links (e.g. `cp -P`) and reject links that leave it.",
            tags=("path",),
        ),
        RuleMeta(
            "MW202", "hard-link", Severity.MEDIUM,
            "A file in the model directory has other hard links: its bytes are shared with a path elsewhere.",
            remediation="Copy the model's files instead of linking them; a link can expose or alter another file.",
            tags=("path",),
        ),
        RuleMeta(
            "MW203", "special-file", Severity.HIGH,
            "A FIFO, socket or device node in the model directory: reading it can block or touch hardware.",
            remediation="Model directories contain regular files and directories only; reject it.",
            tags=("path",),
        ),
    )
    meta = metas[0]

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        symlink, hardlink, special = self.metas
        if ctx.artifact.archive is not None:
            return  # members of a zip model (.keras) are the archive rules' (MW870-MW877): one finding each
        for entry in ctx.artifact.files:  # (a location is made only for a finding: most files have none)
            if entry.kind is FileKind.SYMLINK and not entry.resolves_inside:
                yield ctx.finding(symlink, f"{entry.relpath} is a symlink to {entry.link_target!r}, outside the model",
                                  ctx.location(file=entry.relpath), capability="file-read",
                                  evidence={"target": entry.link_target})
            elif entry.kind is FileKind.FILE and entry.nlink > 1:
                yield ctx.finding(hardlink, f"{entry.relpath} has {entry.nlink} hard links",
                                  ctx.location(file=entry.relpath), evidence={"links": str(entry.nlink)})
            elif entry.kind is FileKind.OTHER:
                yield ctx.finding(special, f"{entry.relpath} is not a regular file or directory",
                                  ctx.location(file=entry.relpath))
