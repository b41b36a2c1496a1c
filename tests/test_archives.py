"""Zip/tar containers (MW870-MW877): described before anything is read, never extracted."""

from __future__ import annotations

import os
import time

from modelwarden.formats.archive import inspect_file
from modelwarden.scanner import scan
from tests.test_pickle import check_entry, fx, manifest_entries  # noqa: F401 - fixture reuse


def test_every_fixture_matches_the_manifest(fx):  # noqa: F811
    entries = manifest_entries(fx, ("archive",))
    assert len(entries) >= 17
    for e in entries:
        check_entry(fx, e)


def test_scanning_never_writes_to_disk(fx, tmp_path):  # noqa: F811
    before = set(os.listdir(fx))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for name in ("zipslip.zip", "abs.tar", "symlink.tar", "pickle.tar.gz", "nested_payload.zip"):
            scan(str(fx / name))
    finally:
        os.chdir(cwd)
    assert set(os.listdir(fx)) == before and not os.listdir(tmp_path)
    assert not os.path.exists("/etc/cron.d/job")


def test_bomb_is_reported_from_the_directory_without_decompressing(fx):  # noqa: F811
    t = time.perf_counter()
    insp = inspect_file(str(fx / "bomb.zip"))
    assert time.perf_counter() - t < 2
    m = insp.members[0]
    assert m.size == 64 << 20 and m.compressed < (1 << 20)


def test_nested_payload_is_found_in_memory_with_its_container_chain(fx):  # noqa: F811
    insp = inspect_file(str(fx / "nested_payload.zip"))
    assert [p.source for p in insp.pickles] == ["bundle.dat!inner/weights.bin"]
    assert insp.max_depth == 1
    deep = inspect_file(str(fx / "nested.zip"))
    assert deep.max_depth >= 3 and any("deeper than" in s for s in deep.skipped)


def test_gzip_tar_bomb_is_bounded(tmp_path):
    import gzip
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        ti = tarfile.TarInfo("zeros")
        ti.size = 200 << 20
        tf.addfile(ti, io.BytesIO(b"\0" * ti.size))
    (tmp_path / "b.tar.gz").write_bytes(gzip.compress(raw.getvalue(), 9))
    t = time.perf_counter()
    r = scan(str(tmp_path / "b.tar.gz"))
    assert time.perf_counter() - t < 20
    assert r.errors and "bomb" in r.errors[0].message
