"""GGUF (MW900-MW907) and chat templates (MW910-MW914): fixtures written by llama.cpp's ``gguf`` writer.

The template injections in the fixtures are confirmed to run by the builder (rendered with a
plain ``jinja2.Environment``); the benign templates render in transformers' sandbox.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from modelwarden.formats.detect import sniff
from modelwarden.formats.hub.gguf import read_gguf, tensor_nbytes
from modelwarden.formats.hub.templates import template_facts
from modelwarden.errors import InputError
from modelwarden.ir import ArtifactFormat, GgufArray
from modelwarden.scanner import scan
from tests.fixtures.build_hub_formats import CHATML, LLAMA3, MISTRAL_TOOLS
from tests.test_hub_directories import check_manifest


@pytest.fixture(scope="module")
def hub(fixture_dir) -> Path:
    return fixture_dir("build_hub_formats")


def test_every_gguf_fixture_matches_the_manifest(hub):
    check_manifest(hub, "gguf", 20)


def test_reader_agrees_with_gguf_py(hub):
    """Parser differential: tensors, offsets and metadata keys as llama.cpp's Python reader sees them."""
    gguf = pytest.importorskip("gguf")
    compared = 0
    for path in sorted((hub / "gguf").glob("*.gguf")):
        try:
            ref = gguf.GGUFReader(str(path))
        except Exception:
            continue  # gguf-py refuses it: our reader must refuse it or report findings (manifest test)
        data = path.read_bytes()
        ours = read_gguf(data, len(data), str(path), path.name)
        assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors], path.name
        assert [t.offset for t in ours.tensors] == [int(t.data_offset) - ref.data_offset for t in ref.tensors]
        assert [t.ggml_type for t in ours.tensors] == [int(t.tensor_type) for t in ref.tensors]
        assert [t.dims for t in ours.tensors] == [tuple(int(x) for x in t.shape) for t in ref.tensors]
        assert ours.data_offset == ref.data_offset, path.name
        assert set(ours.metadata) == {k for k in ref.fields if not k.startswith("GGUF.")}, path.name
        tokens = ours.metadata["tokenizer.ggml.tokens"]
        assert isinstance(tokens, GgufArray) and tokens.count == len(ref.fields["tokenizer.ggml.tokens"].data)
        compared += 1
    assert compared >= 10


def test_sizes_match_gguf_py_quant_table():
    gguf = pytest.importorskip("gguf")
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        assert tensor_nbytes(int(qtype), (block * 3,)) == 3 * size, qtype.name


def test_real_templates_are_clean_and_injections_are_named():
    for t in (CHATML, LLAMA3, MISTRAL_TOOLS):
        f = template_facts(t, "t")
        assert not f.error and not [a for a in f.attributes if a.startswith("_")]
    f = template_facts("{{ ''.__class__.__mro__[1].__subclasses__() }}", "t")
    assert {"__class__", "__mro__", "__subclasses__"} <= set(f.attributes)
    f = template_facts("{% set x = 'a' %}{{ x|attr(y) }}{{ x['__globals__'] }}", "t")
    assert f.dynamic_attrs == ("y",) and "__globals__" in f.attributes and f.names == ("y",)
    f = template_facts("{% generation %}{{ m }}{% endgeneration %}", "t")  # transformers' extension tag
    assert not f.error and f.names == ("m",)


def test_findings_name_the_template_and_what_it_reaches(hub):
    r = scan(str(hub / "gguf" / "ssti_cycler.gguf"))
    crit = [f for f in r.findings if f.rule_id == "MW910"]
    assert crit and "__globals__" in crit[0].message and "popen" in crit[0].message
    assert crit[0].location.file.endswith(":tokenizer.chat_template")
    r = scan(str(hub / "gguf" / "ssti_attr_named.gguf"))
    assert any(f.location.node == "tool_use" for f in r.findings if f.rule_id == "MW912")


def test_detected_by_magic(hub, tmp_path):
    p = tmp_path / "weights.bin"
    p.write_bytes((hub / "gguf" / "chatml.gguf").read_bytes())
    assert sniff(str(p)) == ArtifactFormat.GGUF


def _mutate(data: bytearray, rng: random.Random) -> bytes:
    for _ in range(rng.randint(1, 6)):
        i = rng.randrange(len(data))
        kind = rng.choice(("flip", "insert", "delete", "truncate", "big"))
        if kind == "flip":
            data[i] = rng.randrange(256)
        elif kind == "insert":
            data.insert(i, rng.randrange(256))
        elif kind == "delete":
            del data[i]
        elif kind == "truncate":
            del data[max(24, i):]
        elif i + 8 <= len(data):
            data[i:i + 8] = struct.pack("<Q", rng.choice((1 << 63, 1 << 40, 2**64 - 1, 0x7fffffff)))
        if not data:
            break
    return bytes(data)


def test_fuzz_mutated_gguf_only_findings_or_input_errors(hub):
    """Seeded, bounded mutation fuzzing over real GGUF files: never an exception but InputError."""
    rng = random.Random(1105)
    seeds = [(hub / "gguf" / n).read_bytes() for n in ("chatml.gguf", "named_templates.gguf", "no_template.gguf")]
    for _ in range(600):
        blob = _mutate(bytearray(rng.choice(seeds)), rng)
        try:
            g = read_gguf(blob, len(blob), "fuzz", "fuzz")
        except InputError:
            continue
        assert g.data_offset <= len(blob) + g.alignment
