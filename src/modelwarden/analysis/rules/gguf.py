"""GGUF rules (MW900-MW909): a tensor table that lies about the data.

llama.cpp maps the data section and points tensors into it by offset: offsets past the
end, overlapping tensors, misaligned offsets, element counts that overflow, unknown
types and duplicate names are how out-of-bounds reads and parser differentials (two
loaders, two models) are built.  Structural breakage is an input error of the reader.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelwarden.analysis.interface import AnalysisContext, Finding, Rule, RuleMeta, Severity
from modelwarden.analysis.registry import register
from modelwarden.ir import GgufFile

INT64_MAX = (1 << 63) - 1

FORMATS = ("gguf",)
MAX_REPORTED = 20


def _meta(id_: str, name: str, sev: Severity, summary: str, description: str, remediation: str) -> RuleMeta:
    return RuleMeta(id_, name, sev, summary, description, remediation, FORMATS, ("gguf",))


_REEXPORT = "Do not load the file; convert the model again with llama.cpp's tools from a trusted source."
META = {m.id: m for m in (
    _meta("MW900", "gguf-tensor-out-of-file", Severity.HIGH, "GGUF tensor data lies outside the file",
          "A tensor's offset plus its size runs past the end of the data section: a loader that trusts the "
          "table reads beyond the mapping.", _REEXPORT),
    _meta("MW901", "gguf-tensor-overlap", Severity.HIGH, "GGUF tensors overlap",
          "Two tensors claim the same bytes: writing one changes the other, and loaders disagree about "
          "what the model is.", _REEXPORT),
    _meta("MW902", "gguf-misaligned-offset", Severity.MEDIUM, "GGUF tensor offset is not aligned",
          "Offsets must be multiples of general.alignment; llama.cpp rejects the file, other readers "
          "accept it: a parser differential.", _REEXPORT),
    _meta("MW903", "gguf-bad-tensor-type", Severity.MEDIUM,
          "GGUF tensor has an unknown ggml type or a partial block",
          "The tensor's type is not one ggml knows, or its element count is not a whole number of blocks, "
          "so its size cannot be known and loaders compute different extents.", _REEXPORT),
    _meta("MW904", "gguf-dims-overflow", Severity.HIGH, "GGUF tensor dimensions overflow",
          "The product of the dimensions (or the byte size) does not fit ggml's int64 element counts: "
          "size computations wrap around in native loaders.", _REEXPORT),
    _meta("MW905", "gguf-bad-alignment", Severity.MEDIUM, "GGUF general.alignment is invalid",
          "general.alignment must be a non-zero power of two stored as uint32; loaders fall back to 32 or "
          "reject the file, and the data section starts somewhere else.", _REEXPORT),
    _meta("MW906", "gguf-duplicate-name", Severity.MEDIUM, "GGUF repeats a metadata key or tensor name",
          "Readers disagree on which entry wins (first or last): two loaders can see two models.", _REEXPORT),
    _meta("MW907", "gguf-hidden-bytes", Severity.LOW, "GGUF data section has bytes no tensor covers",
          "Bytes beyond alignment padding that belong to no tensor can carry a payload in another format.",
          "Convert the model again."),
)}


@register
class GgufRules(Rule):
    metas = tuple(META.values())

    def check(self, ctx: AnalysisContext) -> Iterable[Finding]:
        g = ctx.artifact.gguf
        if g is not None:
            yield from self._table(ctx, g)
            yield from self._header(ctx, g)

    def _table(self, ctx: AnalysisContext, g: GgufFile) -> Iterable[Finding]:
        data_size = max(0, g.file_size - g.data_offset)
        counts = {k: 0 for k in META}

        def emit(rid: str, msg: str, name: str, **kw) -> list[Finding]:
            counts[rid] += 1
            if counts[rid] > MAX_REPORTED:
                return []
            return [ctx.finding(META[rid], msg, ctx.location(file=g.source, node=name[:200], op="tensor"), **kw)]

        spans = []
        for t in g.tensors:
            shown = repr(t.name[:200])
            elements = 1
            for d in t.dims:
                elements *= d
            if elements > INT64_MAX or any(d > INT64_MAX for d in t.dims) or (t.nbytes or 0) > INT64_MAX:
                yield from emit("MW904", f"Tensor {shown} has dims {list(t.dims)}: {elements} elements overflow int64", t.name)
                continue
            if t.nbytes is None:
                yield from emit("MW903", f"Tensor {shown} has ggml type {t.ggml_type} and {elements} elements: "
                         "its size is undefined", t.name)
                continue
            if t.offset % g.alignment:
                yield from emit("MW902", f"Tensor {shown} offset {t.offset} is not a multiple of {g.alignment}", t.name)
            if t.offset + t.nbytes > data_size:
                yield from emit("MW900", f"Tensor {shown} needs bytes [{t.offset}, {t.offset + t.nbytes}) of a "
                         f"{data_size}-byte data section", t.name,
                         evidence={"offset": str(t.offset), "nbytes": str(t.nbytes), "data_size": str(data_size)})
            spans.append((t.offset, t.offset + t.nbytes, t.name))
        spans.sort()
        covered = 0
        hidden = 0
        for begin, end, name in spans:
            if begin < covered and end > begin:
                yield from emit("MW901", f"Tensor {name[:200]!r} [{begin}, {end}) overlaps bytes already claimed up to "
                         f"{covered}", name)
            elif begin - covered >= g.alignment:
                hidden += begin - covered
            covered = max(covered, end)
        if data_size - covered >= g.alignment:
            hidden += data_size - covered
        if hidden:
            yield from emit("MW907", f"{hidden} byte(s) of the data section belong to no tensor", "(data section)")

    def _header(self, ctx: AnalysisContext, g: GgufFile) -> Iterable[Finding]:
        if "general.alignment" in g.metadata:
            value, vtype = g.metadata["general.alignment"], g.value_types.get("general.alignment")
            if vtype != "uint32" or not isinstance(value, int) or value <= 0 or value & (value - 1):
                yield ctx.finding(META["MW905"], f"general.alignment is {str(value)[:50]} ({vtype}); loaders "
                                  f"use {g.alignment}", ctx.location(file=g.source, node="general.alignment"))
        for key in g.duplicate_keys[:MAX_REPORTED]:
            yield ctx.finding(META["MW906"], f"Metadata key {key[:200]!r} appears more than once",
                              ctx.location(file=g.source, node=key[:200]))
        for name in g.duplicate_tensors[:MAX_REPORTED]:
            yield ctx.finding(META["MW906"], f"Tensor name {name[:200]!r} appears more than once",
                              ctx.location(file=g.source, node=name[:200], op="tensor"))
