"""Hostile model-hub inputs through the whole ``modelwarden scan`` process: bounded memory and time,
exit 1 with findings or exit 2 naming the file, never a traceback (harness of test_scan_hostile)."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from tests.test_gguf import _mutate
from tests.test_scan_hostile import assert_contained, scan_bounded


@pytest.fixture(scope="module")
def hub(fixture_dir) -> Path:
    return fixture_dir("build_hub_formats")


def _gguf_string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def _gguf(kvs: bytes, n_kv: int, tensors: bytes = b"", n_tensors: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kvs + tensors


CRAFTED = [
    ("huge_array", _gguf(_gguf_string(b"k") + struct.pack("<IIQ", 9, 8, 1 << 60), 1)),
    ("huge_string", _gguf(_gguf_string(b"k") + struct.pack("<IQ", 8, 1 << 62), 1)),
    ("deep_arrays", _gguf(_gguf_string(b"k") + struct.pack("<IIQ", 9, 9, 1) * 10_000, 1)),
    ("many_empty_arrays", _gguf(_gguf_string(b"k") + struct.pack("<IIQ", 9, 9, 300_000)
                                + struct.pack("<IQ", 0, 0) * 300_000, 1)),
    ("huge_tensor_table", _gguf(b"", 0, _gguf_string(b"t") + struct.pack("<I", 1) + struct.pack("<Q", 8)
                                + struct.pack("<IQ", 0, 0), 1 << 40)),
    ("many_tensors", _gguf(b"", 0, (_gguf_string(b"t") + struct.pack("<IQIQ", 1, 1 << 62, 0, 1 << 63)) * 100_000,
                           100_000)),
    ("template_bomb", _gguf(_gguf_string(b"tokenizer.chat_template") + struct.pack("<I", 8)
                            + _gguf_string(b"{{" + b"(" * 50_000 + b"x" + b")" * 50_000 + b"}}"), 1)),
]


@pytest.mark.parametrize("name,data", CRAFTED, ids=[n for n, _ in CRAFTED])
def test_crafted_gguf(tmp_path, name, data):
    p = tmp_path / f"{name}.gguf"
    p.write_bytes(data)
    assert_contained(scan_bounded(p), p, allowed=(0, 1, 2))  # some are valid files; none may crash


def test_mutated_hub_files_in_one_process(hub, tmp_path):
    """Seeded mutations of the hub fixtures, scanned by one bounded process: loose files, and whole
    Hugging Face / MLflow directories with one or two of their files (configs, code, templates) mutated."""
    import shutil

    rng = random.Random(20261130)
    seeds = [p for p in sorted(hub.rglob("*")) if p.is_file() and not p.name.startswith(".")
             and p.name != "manifest.json" and 0 < p.stat().st_size < 1 << 20]
    assert len(seeds) >= 40
    for i in range(80):
        src = rng.choice(seeds)
        (tmp_path / f"m{i:03d}_{src.name}").write_bytes(_mutate(bytearray(src.read_bytes()), rng))
    dirs = sorted(p for kind in ("hf", "mlflow") for p in (hub / kind).iterdir() if p.is_dir())
    for i in range(24):
        d = shutil.copytree(rng.choice(dirs), tmp_path / f"dir{i:02d}")
        small = [p for p in sorted(d.rglob("*")) if p.is_file() and 0 < p.stat().st_size < 1 << 16]
        for p in rng.sample(small, min(2, len(small))):
            p.write_bytes(_mutate(bytearray(p.read_bytes()), rng))
    o = scan_bounded(tmp_path, wall_s=180)
    assert o.returncode >= 0 and "Traceback" not in o.stderr, o.stderr[-3000:]
    assert "internal error" not in o.stdout + o.stderr, (o.stdout + o.stderr)[-3000:]
    assert o.maxrss_mib < 512
