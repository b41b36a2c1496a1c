"""Checkpoint (tensor bundle) reader and MW5xx rules, on bundles written by real TensorFlow."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelwarden.analysis.interface import AnalysisContext
from modelwarden.analysis.rules.checkpoint import CheckpointConsistency
from modelwarden.catalog import load_catalog
from modelwarden.errors import InputError, LimitExceeded
from modelwarden.formats.checkpoint import CheckpointReader, read_checkpoint, read_entry_bytes
from modelwarden.formats.interface import Candidate, Limits
from modelwarden.formats.sstable import SSTable, crc32c, mask_crc, unmask_crc
from modelwarden.ir import ArtifactFormat
from modelwarden.policy.interface import Policy


@pytest.fixture(scope="module")
def ckdir(fixture_dir):
    return fixture_dir("build_checkpoints")


@pytest.fixture(scope="module")
def manifest(ckdir):
    return json.loads((ckdir / "manifest.json").read_text())


def _read(ckdir, prefix: str):
    path = str(ckdir / (prefix + ".index"))
    return CheckpointReader().read(Candidate(path, ArtifactFormat.TF_CHECKPOINT, prefix + ".index"))


def _rule_ids(artifact) -> set[str]:
    ctx = AnalysisContext(artifact, load_catalog(), Policy())
    return {f.rule_id for f in CheckpointConsistency().check(ctx)}


def test_crc32c_known_vectors():
    # RFC 3720 test vectors for CRC32C.
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    for v in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert unmask_crc(mask_crc(v)) == v


def test_crc32c_c_and_python_agree():
    """The C implementation (google-crc32c) and the table-driven fallback give the same CRC for
    every kind of buffer the readers pass, continued or not."""
    import random

    from modelwarden.formats import sstable

    assert sstable._implementation == "c"  # the dependency is installed: scans use it
    rng = random.Random(13)
    for n in (0, 1, 7, 64, 1000):
        data = bytes(rng.randrange(256) for _ in range(n))
        for buf in (data, bytearray(data), memoryview(data)):
            for start in (0, 0xE3069283):
                assert crc32c(buf, start) == sstable._crc32c_python(data, start)


@pytest.mark.parametrize("prefix", ["plain/model", "sharded/model", "rewritten/model"])
def test_entries_match_tensorflow(ckdir, prefix):
    """Names, dtypes and shapes equal what tf.train.list_variables / load_checkpoint report."""
    expected = json.loads((ckdir / (prefix + ".vars.json")).read_text())
    art = _read(ckdir, prefix)
    (ckpt,) = art.checkpoints
    got = {}
    for e in ckpt.entries:
        # A sliced variable has one entry with the full shape (no bytes) plus its slices.
        if e.sliced and e.size == 0 or not e.sliced:
            got[e.name] = {"dtype": e.dtype, "shape": list(e.shape)}
    assert got == expected
    assert len(got) >= 10
    assert ckpt.endianness == "little"


def test_sharded_bundle_has_several_shards_and_slices(ckdir):
    (ckpt,) = _read(ckdir, "sharded/model").checkpoints
    assert ckpt.num_shards > 1
    assert len(ckpt.shards) == ckpt.num_shards
    assert all(s.size is not None and s.size > 0 for s in ckpt.shards)
    assert {e.shard for e in ckpt.entries if e.size} == set(range(ckpt.num_shards))
    assert any(e.sliced and e.size for e in ckpt.entries), "expected slice entries from MaxShardSizePolicy"


@pytest.mark.parametrize("prefix", ["plain/model", "sharded/model"])
def test_read_entry_bytes_verifies_every_tensor(ckdir, prefix):
    base = str(ckdir / prefix)
    ckpt = read_checkpoint(base, prefix)
    n = 0
    for e in ckpt.entries:
        if e.size:
            assert len(read_entry_bytes(base, e, 1 << 20, num_shards=ckpt.num_shards)) == e.size
            assert len(read_entry_bytes(base, e, 1 << 20)) == e.size  # shard file found by listing
            n += 1
    assert n >= 10


def test_read_entry_bytes_detects_corruption_and_bounds(ckdir, tmp_path):
    src = ckdir / "plain"
    dst = tmp_path / "plain"
    shutil.copytree(src, dst)
    base = str(dst / "model")
    ckpt = read_checkpoint(base, "plain/model")
    kernel = next(e for e in ckpt.entries if e.name.startswith("layer/kernel"))
    vocab = next(e for e in ckpt.entries if e.name.startswith("vocab"))
    with pytest.raises(LimitExceeded):
        read_entry_bytes(base, kernel, kernel.size - 1)
    data_file = dst / "model.data-00000-of-00001"
    for entry in (kernel, vocab):
        raw = bytearray(data_file.read_bytes())
        raw[entry.offset + entry.size - 1] ^= 0x01
        data_file.write_bytes(raw)
        with pytest.raises(InputError, match="CRC32C mismatch"):
            read_entry_bytes(base, entry, 1 << 20)
    os.truncate(data_file, 10)
    with pytest.raises(InputError, match="extends past"):
        read_entry_bytes(base, kernel, 1 << 20)


def test_manifest_rules_and_errors(ckdir, manifest):
    """Every fixture: exactly the expected rule ids, or the expected InputError, quickly."""
    assert len(manifest) >= 14
    for prefix, want in manifest.items():
        start = time.monotonic()
        if want["error"] is not None:
            with pytest.raises(InputError, match=want["error"]) as info:
                _read(ckdir, prefix)
            assert prefix in str(info.value)  # names the file
        else:
            assert _rule_ids(_read(ckdir, prefix)) == set(want["rules"]), prefix
        assert time.monotonic() - start < 2, prefix


def test_finding_locations(ckdir):
    art = _read(ckdir, "truncated_data/model")
    findings = list(CheckpointConsistency().check(AnalysisContext(art, load_catalog(), Policy())))
    assert findings and all(f.rule_id == "MW500" for f in findings)
    assert all(f.location.file == "truncated_data/model.data-00000-of-00001" for f in findings)
    assert all(f.location.node for f in findings)
    art = _read(ckdir, "size_mismatch/model")
    (f,) = CheckpointConsistency().check(AnalysisContext(art, load_catalog(), Policy()))
    assert f.location.node == "layer/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    assert f.location.file == "size_mismatch/model.index"
    assert f.evidence["expected"] == "96" and f.evidence["size"] == "40"


def test_entry_limit(ckdir):
    with pytest.raises(LimitExceeded, match="more than 3 entries"):
        read_checkpoint(str(ckdir / "plain" / "model"), "plain/model", Limits(max_checkpoint_entries=3))


def test_symlinked_index_is_refused(ckdir, tmp_path):
    os.symlink(ckdir / "plain" / "model.index", tmp_path / "model.index")
    with pytest.raises(InputError, match="symbolic link"):
        read_checkpoint(str(tmp_path / "model"), "model")


def _table_bytes(ckdir) -> bytes:
    return (ckdir / "plain" / "model.index").read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_index_only_input_errors(ckdir, tmp_path_factory, data):
    """Mutations of a real index (with and without CRC checking): InputError or success, nothing else."""
    raw = bytearray(_table_bytes(ckdir))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    for verify in (True, False):
        try:
            table = SSTable(bytes(raw), "fuzz.index", verify_crc=verify)
            for _ in table.entries(10_000):
                pass
        except InputError:
            pass
    d = tmp_path_factory.mktemp("fz")
    (d / "model.index").write_bytes(bytes(raw))
    try:
        read_checkpoint(str(d / "model"), "fz/model")
    except InputError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_fuzz_synthetic_footer(body, off, size):
    """Arbitrary bodies with a valid magic and arbitrary index handles never escape as other errors."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    footer = (varint(0) + varint(0) + varint(off) + varint(size)).ljust(40, b"\0")[:40]
    data = body + footer + struct.pack("<Q", 0xDB4775248B80FB57)
    for verify in (True, False):
        try:
            for _ in SSTable(data, "f.index", verify_crc=verify).entries(1000):
                pass
        except InputError:
            pass


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _one_block_table(block_entries: bytes) -> bytes:
    """A table with one data block holding ``block_entries`` and an index block pointing at it."""
    block = block_entries + struct.pack("<II", 0, 1)
    data = block + b"\x00" + struct.pack("<I", mask_crc(crc32c(block + b"\x00")))
    handle = _varint(0) + _varint(len(block))
    index = _varint(0) + _varint(4) + _varint(len(handle)) + b"\xff\xff\xff\xff" + handle + struct.pack("<II", 0, 1)
    index_off = len(data)
    data += index + b"\x00" + struct.pack("<I", mask_crc(crc32c(index + b"\x00")))
    footer = (_varint(0) + _varint(0) + _varint(index_off) + _varint(len(index))).ljust(40, b"\0")
    return data + footer + struct.pack("<Q", 0xDB4775248B80FB57)


def test_hand_built_table_parses():
    entries = _varint(0) + _varint(3) + _varint(1) + b"abcX" + _varint(2) + _varint(1) + _varint(1) + b"dY"
    assert list(SSTable(_one_block_table(entries), "t.index").entries(10)) == [(b"abc", b"X"), (b"abd", b"Y")]


def test_prefix_compression_bomb_is_bounded():
    """Every entry re-shares the whole previous key and adds a byte: a quadratic rebuild, cut off."""
    n = 100_000
    entries = bytearray(_varint(0) + _varint(1) + _varint(0) + b"a")
    for i in range(1, n):
        entries += _varint(i) + _varint(1) + _varint(0) + b"b"
    start = time.monotonic()
    with pytest.raises(LimitExceeded):
        for _ in SSTable(_one_block_table(bytes(entries)), "bomb.index").entries(10**7):
            pass
    assert time.monotonic() - start < 5
