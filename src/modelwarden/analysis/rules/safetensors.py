"""safetensors rules (MW850-MW869): a header that the reference loader would reject, or read differently.

safetensors has no code in it; what can go wrong is the header lying about the bytes:
unknown dtypes, sizes that do not match the byte range, offsets outside the file,
overlapping or gapped tensors (hidden bytes, parser differentials), non-string metadata
and duplicate keys.  Structural breakage (length past the end, invalid JSON) is an
input error (exit 2) raised by the reader.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.ir import SafetensorsHeader

FORMATS = ("safetensors",)
# dtype -> size in bits (the safetensors spec's Dtype enum).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16,
    "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


def _meta(id_: str, name: str, sev: Severity, summary: str, description: str, remediation: str) -> RuleMeta:
    return RuleMeta(id_, name, sev, summary, description, remediation, FORMATS, ("safetensors",))


META = {m.id: m for m in (
    _meta("MW850", "safetensors-unknown-dtype", Severity.MEDIUM, "safetensors tensor has an unknown dtype",
          "The dtype is not one the safetensors specification defines; loaders reject it or interpret its bytes "
          "differently.", "Re-export the weights with a standard dtype."),
    _meta("MW851", "safetensors-size-mismatch", Severity.HIGH,
          "safetensors tensor's byte range does not match its shape and dtype",
          "shape x dtype size must equal end - begin; a mismatch is how out-of-bounds reads and parser "
          "differentials are built.", "Do not load the file; re-export it."),
    _meta("MW852", "safetensors-offset-out-of-range", Severity.HIGH,
          "safetensors tensor's data offsets fall outside the data section",
          "begin must not exceed end and end must lie within the bytes after the header.",
          "Do not load the file; obtain an intact copy."),
    _meta("MW853", "safetensors-overlap", Severity.HIGH, "safetensors tensors overlap",
          "Two tensors claim the same bytes: the reference loader rejects this; others alias the data.",
          "Do not load the file; re-export it."),
    _meta("MW854", "safetensors-gap", Severity.MEDIUM, "safetensors data has gaps or trailing bytes",
          "Bytes not covered by any tensor can hide a payload (a second file format) and the reference "
          "loader rejects a buffer that tensors do not cover exactly.", "Re-export the weights."),
    _meta("MW855", "safetensors-metadata-not-string", Severity.MEDIUM,
          "safetensors __metadata__ is not a map of strings",
          "The specification allows only string keys and values in __metadata__.", "Re-export the weights."),
    _meta("MW856", "safetensors-duplicate-key", Severity.MEDIUM, "safetensors header repeats a key",
          "JSON parsers disagree on duplicate keys (first or last wins): two loaders can see two different "
          "models.", "Do not load the file; re-export it."),
    _meta("MW857", "safetensors-unexpected-field", Severity.LOW, "safetensors tensor entry has extra fields",
          "Tensor entries hold dtype, shape and data_offsets only.", "Re-export the weights."),
)}


def tensor_nbytes(dtype: str, shape: tuple[int, ...]) -> int | None:
    bits = DTYPE_BITS.get(dtype)
    if bits is None:
        return None
    n = bits
    for d in shape:
        n *= d
    return (n + 7) // 8


@register
class SafetensorsRules(Rule):
    metas = tuple(META.values())

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        for h in ctx.artifact.safetensors:
            yield from self._header(ctx, h)

    def _header(self, ctx: AnalysisContext, h: SafetensorsHeader) -> Iterable[Finding]:
        data_size = h.file_size - 8 - h.header_len

        def loc(name: str, op: str = ""):
            return ctx.location(file=h.source, node=name, op=op)

        for t in h.tensors:
            shown = t.name[:200]
            nbytes = tensor_nbytes(t.dtype, t.shape)
            if nbytes is None:
                yield ctx.finding(META["MW850"], f"Tensor {shown!r} has unknown dtype {t.dtype[:50]!r}",
                                  loc(t.name, t.dtype[:50]))
            elif nbytes != t.end - t.begin:
                yield ctx.finding(META["MW851"], f"Tensor {shown!r} ({t.dtype} {list(t.shape)}) needs {nbytes} bytes "
                                  f"but its data_offsets [{t.begin}, {t.end}] span {t.end - t.begin}",
                                  loc(t.name, t.dtype), evidence={"expected": str(nbytes), "actual": str(t.end - t.begin)})
            if t.begin > t.end or t.end > data_size:
                yield ctx.finding(META["MW852"], f"Tensor {shown!r} has data_offsets [{t.begin}, {t.end}] outside "
                                  f"the {data_size}-byte data section", loc(t.name, t.dtype))
            if t.extra_keys:
                yield ctx.finding(META["MW857"], f"Tensor {shown!r} has extra fields {', '.join(t.extra_keys[:10])}",
                                  loc(t.name))
        spans = sorted((t.begin, t.end, t.name) for t in h.tensors if t.begin <= t.end)
        covered = 0
        overlaps = gaps = 0
        for begin, end, name in spans:
            if begin < covered and overlaps < 20:
                overlaps += 1
                yield ctx.finding(META["MW853"], f"Tensor {name[:200]!r} [{begin}, {end}] overlaps bytes already "
                                  f"claimed up to {covered}", loc(name))
            elif begin > covered and gaps < 20:
                gaps += 1
                yield ctx.finding(META["MW854"], f"{begin - covered} byte(s) at [{covered}, {begin}] before tensor "
                                  f"{name[:200]!r} belong to no tensor", loc(name))
            covered = max(covered, end)
        if data_size > covered:
            yield ctx.finding(META["MW854"], f"{data_size - covered} trailing byte(s) after the last tensor "
                              "belong to no tensor", loc("(end of data)"))
        bad = [k for k, v in h.metadata.items() if not isinstance(v, str)]
        if bad:
            yield ctx.finding(META["MW855"], f"__metadata__ values that are not strings: {', '.join(map(repr, bad[:10]))}",
                              loc("__metadata__"))
        for key in h.duplicate_keys[:20]:
            yield ctx.finding(META["MW856"], f"Header key {key[:200]!r} appears more than once", loc(key))
