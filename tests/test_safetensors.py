"""safetensors reader and rules MW850-MW857: every header violation is a finding or exit 2."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelwarden.errors import InputError
from modelwarden.formats.detect import sniff
from modelwarden.formats.safetensors import read_header
from modelwarden.ir import ArtifactFormat
from modelwarden.scanner import scan
from tests.test_pickle import check_entry, fx, manifest_entries  # noqa: F401 - fixture reuse


def test_every_fixture_matches_the_manifest(fx):  # noqa: F811
    entries = manifest_entries(fx, ("safetensors",))
    assert len(entries) >= 13
    for e in entries:
        check_entry(fx, e)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "uint8", "bool", "int8", "float64", "int32"])
def test_real_files_of_every_dtype_are_clean(tmp_path, dtype):
    from safetensors.numpy import load_file, save_file

    arrays = {"a": np.ones((3, 5), dtype), "b": np.zeros(0, dtype), "c": np.ones((2, 1, 2), dtype)}
    save_file(arrays, tmp_path / "m.safetensors")
    assert load_file(tmp_path / "m.safetensors")["a"].shape == (3, 5)
    assert sniff(str(tmp_path / "m.safetensors")) is ArtifactFormat.SAFETENSORS
    r = scan(str(tmp_path / "m.safetensors"))
    assert not r.findings and not r.errors


def test_hostile_header_lengths_never_allocate(tmp_path):
    for n in (2**63, 2**64 - 1, 10**12):
        p = tmp_path / f"h{n}.safetensors"
        p.write_bytes(struct.pack("<Q", n) + b'{"a": 1}')
        with pytest.raises(InputError):
            read_header(str(p), p.name)
        assert sniff(str(p)) is ArtifactFormat.SAFETENSORS  # found in a directory walk, then refused


@settings(max_examples=200, deadline=None)
@given(header=st.dictionaries(st.text(max_size=5), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=8),
    max_size=4), tail=st.binary(max_size=64))
def test_fuzzed_headers_end_in_findings_or_input_errors(tmp_path_factory, header, tail):
    p = tmp_path_factory.mktemp("st") / "f.safetensors"
    h = json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(h)) + h + tail)
    r = scan(str(p))
    assert all(e.message for e in r.errors)
    assert not any("internal error" in e.message for e in r.errors)
