"""Checkpoint consistency rules (MW500-MW529): the index against its data shards and itself.

TensorFlow trusts a bundle's index when restoring: an entry whose byte range
runs past its shard, overlaps another, or whose size disagrees with its
dtype and shape is at best a corrupt download and at worst a crafted file
aimed at the restore path (huge allocations from a declared shape, reads
of another tensor's bytes).  These rules apply to every artifact with
checkpoints (standalone bundles and a SavedModel's ``variables/``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.formats.tfproto import DTYPE_NAMES, DTYPE_SIZES
from modelwarden.ir import Checkpoint, CheckpointEntry

_SIZE_BY_NAME = {DTYPE_NAMES[k]: v for k, v in DTYPE_SIZES.items()}
_KNOWN = set(DTYPE_NAMES.values()) - {"invalid"}

TRUNCATED = RuleMeta(
    id="MW500",
    name="checkpoint-truncated",
    severity=Severity.MEDIUM,
    summary="A checkpoint entry's bytes extend past the end of its data file",
    description="The index says the tensor is stored at [offset, offset+size) of a shard that is shorter; "
    "the bundle is truncated or the index was edited.",
    remediation="Re-download or re-export the checkpoint; do not restore it as is.",
)
MISSING_SHARD = RuleMeta(
    id="MW501",
    name="checkpoint-missing-shard",
    severity=Severity.MEDIUM,
    summary="A checkpoint data shard named by the index is missing",
    description="The index declares N data files (PREFIX.data-i-of-N) and at least one is absent or not a regular file.",
    remediation="Obtain the complete checkpoint; restoring will fail or read attacker-placed files.",
)
OVERLAP = RuleMeta(
    id="MW502",
    name="checkpoint-overlap",
    severity=Severity.MEDIUM,
    summary="Two checkpoint entries claim overlapping bytes of one data shard",
    description="TensorFlow never writes overlapping tensors; overlap means a hand-edited index.",
    remediation="Treat the checkpoint as tampered with; re-export it from a trusted source.",
)
SIZE_MISMATCH = RuleMeta(
    id="MW503",
    name="checkpoint-size-mismatch",
    severity=Severity.MEDIUM,
    summary="A checkpoint entry's byte size disagrees with its dtype and shape",
    description="For fixed-size dtypes the stored size must be elements x element size. A shape far larger "
    "than the stored bytes makes the loader allocate that shape before reading (memory exhaustion).",
    remediation="Treat the checkpoint as corrupt or tampered with; re-export it.",
)
BAD_SHARD = RuleMeta(
    id="MW504",
    name="checkpoint-bad-shard-id",
    severity=Severity.MEDIUM,
    summary="A checkpoint entry names a data shard the bundle does not have",
    description="The entry's shard_id is negative or not below the header's num_shards.",
    remediation="Treat the checkpoint as corrupt or tampered with; re-export it.",
)
BAD_DTYPE = RuleMeta(
    id="MW505",
    name="checkpoint-bad-dtype",
    severity=Severity.MEDIUM,
    summary="A checkpoint entry has an invalid or unknown dtype",
    description="DT_INVALID, reference dtypes and numbers TensorFlow does not define never appear in a real bundle.",
    remediation="Treat the checkpoint as corrupt or tampered with; re-export it.",
)
BIG_ENDIAN = RuleMeta(
    id="MW506",
    name="checkpoint-big-endian",
    severity=Severity.INFO,
    summary="The checkpoint was written big-endian",
    description="Bundles written on big-endian hosts are byte-swapped on restore; rare, worth knowing.",
    remediation="None needed if the source is expected to be a big-endian host.",
)


def _elements(shape: tuple[int, ...]) -> int | None:
    n = 1
    for d in shape:
        if d < 0:
            return None
        n *= d
    return n


def _is_full_sliced(e: CheckpointEntry) -> bool:
    """The header entry of a sliced variable: full shape, no bytes of its own."""
    return e.sliced and e.size == 0


@register
class CheckpointConsistency(Rule):
    """One pass over each checkpoint owning MW500-MW506."""

    metas = (TRUNCATED, MISSING_SHARD, OVERLAP, SIZE_MISMATCH, BAD_SHARD, BAD_DTYPE, BIG_ENDIAN)
    meta = TRUNCATED

    def applies_to(self, ctx: AnalysisContext) -> bool:
        return bool(ctx.artifact.checkpoints)

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        for ckpt in ctx.artifact.checkpoints:
            yield from self._check(ctx, ckpt)

    def _check(self, ctx: AnalysisContext, ckpt: Checkpoint) -> Iterator[Finding]:
        index = ckpt.prefix + ".index"
        shards = {s.shard: s for s in ckpt.shards}
        if ckpt.endianness != "little":
            yield ctx.finding(BIG_ENDIAN, f"checkpoint {ckpt.prefix} is {ckpt.endianness}-endian", ctx.location(file=index))
        for s in ckpt.shards:
            if s.size is None:
                yield ctx.finding(
                    MISSING_SHARD,
                    f"data shard {s.shard} of {ckpt.num_shards} ({s.path}) is missing",
                    ctx.location(file=s.path),
                )
        by_shard: dict[int, list[CheckpointEntry]] = defaultdict(list)
        for e in ckpt.entries:
            if e.dtype not in _KNOWN:
                yield ctx.finding(
                    BAD_DTYPE, f"entry {e.name!r} has dtype {e.dtype}", ctx.location(file=index, node=e.name)
                )
            if _is_full_sliced(e):
                continue
            yield from self._size(ctx, index, e)
            shard = shards.get(e.shard)
            if shard is None:
                yield ctx.finding(
                    BAD_SHARD,
                    f"entry {e.name!r} is in shard {e.shard}, but the bundle has {ckpt.num_shards} shard(s)",
                    ctx.location(file=index, node=e.name),
                    evidence={"shard_id": str(e.shard), "num_shards": str(ckpt.num_shards)},
                )
                continue
            if shard.size is not None and e.offset + e.size > shard.size:
                yield ctx.finding(
                    TRUNCATED,
                    f"entry {e.name!r} needs bytes [{e.offset}, {e.offset + e.size}) "
                    f"but {shard.path} has {shard.size}",
                    ctx.location(file=shard.path, node=e.name),
                    evidence={"offset": str(e.offset), "size": str(e.size), "file_size": str(shard.size)},
                )
            if e.size > 0:
                by_shard[e.shard].append(e)
        for shard_id, items in by_shard.items():
            items.sort(key=lambda x: (x.offset, x.size))
            reach = items[0]
            for e in items[1:]:
                if e.offset < reach.offset + reach.size:
                    yield ctx.finding(
                        OVERLAP,
                        f"entry {e.name!r} [{e.offset}, {e.offset + e.size}) overlaps {reach.name!r} "
                        f"[{reach.offset}, {reach.offset + reach.size}) in {shards[shard_id].path}",
                        ctx.location(file=shards[shard_id].path, node=e.name),
                    )
                if e.offset + e.size > reach.offset + reach.size:
                    reach = e

    def _size(self, ctx: AnalysisContext, index: str, e: CheckpointEntry) -> Iterator[Finding]:
        n = _elements(e.shape)
        if n is None:
            yield ctx.finding(SIZE_MISMATCH, f"entry {e.name!r} has a negative dimension in shape {list(e.shape)}",
                              ctx.location(file=index, node=e.name))
            return
        elsize = _SIZE_BY_NAME.get(e.dtype)
        if elsize is not None:
            expected = n * elsize
            if expected != e.size:
                yield ctx.finding(
                    SIZE_MISMATCH,
                    f"entry {e.name!r} is {e.dtype}{list(e.shape)} = {expected} bytes, but the index says {e.size}",
                    ctx.location(file=index, node=e.name),
                    evidence={"dtype": e.dtype, "shape": str(list(e.shape)), "expected": str(expected), "size": str(e.size)},
                )
        elif e.dtype == "string" and n > e.size:
            # Every string element takes at least one length byte.
            yield ctx.finding(
                SIZE_MISMATCH, f"string entry {e.name!r} claims {n} elements in {e.size} bytes",
                ctx.location(file=index, node=e.name),
            )
