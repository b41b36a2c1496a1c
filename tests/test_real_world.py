"""Real-world files without false alarms, and their hostile twins (``build_real_world``).

Non-model HDF5 datasets are data; protobufs that merely parse as a GraphDef are not
GraphDefs; Python 2 pickle names are judged after the unpickler's own mapping.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelwarden.analysis.interface import Severity
from modelwarden.formats.detect import sniff
from modelwarden.scanner import scan

from .conftest import build_fixtures

FX = "build_real_world"


@pytest.fixture(scope="module")
def fx() -> Path:
    return build_fixtures(FX)


def _manifest(fx: Path) -> list[dict]:
    return json.loads((fx / "manifest.json").read_text())["fixtures"]


def check_manifest_entry(fx: Path, e: dict) -> None:
    """Rules present with their severities, clean, absent rules absent, or exit 2."""
    path = fx / e["file"]
    if e.get("undetected"):
        assert sniff(str(path)) is None, e["file"]
        return
    r = scan(str(path))
    got: dict[str, Severity] = {}
    for f in r.findings:
        got[f.rule_id] = max(got.get(f.rule_id, Severity.INFO), f.severity)
    if e["error"]:
        assert r.errors and r.exit_code == 2, (e["file"], got)
        return
    assert not r.errors, (e["file"], [err.message for err in r.errors])
    assert set(e["rules"]) <= set(got), (e["file"], e["rules"], [f.message for f in r.findings])
    assert not set(e["absent"]) & set(got), (e["file"], [f.message for f in r.findings])
    for rid, sev in e.get("severity", {}).items():
        assert got[rid] == Severity.parse(sev), (e["file"], rid, got[rid])
    if e["clean"]:
        assert all(s < Severity.MEDIUM for s in got.values()), (e["file"], [f.message for f in r.findings])
        assert r.exit_code == 0


def test_manifest_entries(fx):
    entries = _manifest(fx)
    assert len(entries) >= 10
    for e in entries:
        check_manifest_entry(fx, e)


def test_hdf5_dataset_is_scanned_as_data(fx):
    r = scan(str(fx / "train_data.h5"))
    assert not r.errors and not r.findings and r.exit_code == 0
    (a,) = r.artifacts
    assert "not a Keras model" in a.metadata["content"]


def test_hdf5_dataset_in_a_folder_does_not_hide_a_model(fx, tmp_path):
    import shutil

    shutil.copy(fx / "train_data.h5", tmp_path / "train_data.h5")
    shutil.copy(fx / "py2_eval.pkl", tmp_path / "model.pkl")
    r = scan(str(tmp_path))
    assert not r.errors and r.exit_code == 1
    assert {f.rule_id for f in r.findings} == {"MW800"}


def test_installed_tensorflow_descriptor_sets_are_not_graphs():
    """The files that produced the false alarms, where TensorFlow is installed beside us."""
    import importlib.util

    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorflow is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(root.rglob("*-descriptor-set.proto.bin"))
    if not files:
        pytest.skip("this TensorFlow ships no descriptor sets")
    assert [f for f in files if sniff(str(f)) is not None] == []


def test_python2_names_are_recorded_with_how_they_were_written(fx):
    from modelwarden.formats.pickle_ops import parse_stream

    data = (fx / "py2_eval.pkl").read_bytes()
    (prog,) = parse_stream(data, 0, len(data), "t")
    (imp,) = prog.imports
    assert imp.dotted == "builtins.eval" and "__builtin__.eval" in imp.detail


def _mutate(data: bytes, rng) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not buf:
            break
        i = rng.randrange(len(buf))
        kind = rng.choice(("flip", "insert", "delete", "truncate"))
        if kind == "flip":
            buf[i] = rng.randrange(256)
        elif kind == "insert":
            buf.insert(i, rng.randrange(256))
        elif kind == "delete":
            del buf[i]
        else:
            del buf[i:]
    return bytes(buf)


def fuzz_scan(seeds: list[Path], tmp_path: Path, seed: int, rounds: int) -> None:
    """Scan ``rounds`` seeded mutations of the seed files: a clean report or a clean error each."""
    import random

    rng = random.Random(seed)
    for n in range(rounds):
        src = seeds[n % len(seeds)]
        target = tmp_path / f"m{n}{src.suffix}"
        target.write_bytes(_mutate(src.read_bytes(), rng))
        r = scan(str(target))
        assert r.exit_code in (0, 1, 2)
        assert all(e.message for e in r.errors)
        target.unlink()


def test_fuzz_mutated_fixtures_scan_cleanly(fx, tmp_path):
    """Seeded mutations of every small fixture: a clean report or a clean error, never an exception."""
    seeds = [p for p in sorted(fx.iterdir()) if p.suffix not in (".h5", ".json") and p.stat().st_size < 1 << 20]
    assert len(seeds) >= 12
    fuzz_scan(seeds, tmp_path, 1011, 240)


def test_fuzz_graphdef_structure_check_never_raises():
    import random

    from modelwarden.formats.graphdef import graphdef_encoding

    node = b"\x0a\x01a\x12\x05Const\x2a\x0b\x0a\x05dtype\x12\x02\x30\x01"
    seed = b"\x0a" + bytes([len(node)]) + node + b"\x22\x02\x08\x1b"
    assert graphdef_encoding(seed, len(seed)) == "binary"
    rng = random.Random(7)
    for _ in range(3000):
        data = _mutate(seed, rng)
        assert graphdef_encoding(data, len(data)) in ("", "binary", "text")


@pytest.mark.parametrize("length", [0x41, 0x4E, 0x6E, 0x7A])
def test_printable_binary_graphdef_is_one_decision(tmp_path, length):
    """A binary GraphDef whose first bytes read as text ('\\nN\\n...'): detection and the reader agree."""
    from modelwarden.formats import tfproto
    from modelwarden.ir import ArtifactFormat

    gd = tfproto.message_class("GraphDef")()
    node = gd.node.add()
    node.op = "ReadFile"
    node.input.append("path")
    node.name = "r" * (length - len(node.SerializeToString()) - 2)
    c = gd.node.add()
    c.name, c.op = "path", "Placeholder"
    data = gd.SerializeToString()
    assert data[1] == length and chr(data[1]).isalpha()
    f = tmp_path / "g.pb"
    f.write_bytes(data)
    assert sniff(str(f)) is ArtifactFormat.GRAPHDEF
    r = scan(str(f))
    assert not r.errors and "MW101" in {x.rule_id for x in r.findings}


def test_keras_symlink_member_is_one_finding(fx, tmp_path):
    """A link inside a .keras zip: the archive rule says it once (not MW201 as well)."""
    import shutil
    import zipfile

    path = tmp_path / "link.keras"
    shutil.copy(fx / "plain.keras", path)
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("assets/vocab.txt")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    r = scan(str(path))
    assert not r.errors
    assert [(f.rule_id, f.severity) for f in r.findings if f.severity > Severity.INFO] == [("MW871", Severity.HIGH)]


@pytest.mark.parametrize("gz", [False, True])
def test_members_behind_two_damaged_tar_headers_are_inspected(tmp_path, gz):
    """Large members between damaged headers are skipped block by block (streamed, like GNU tar)."""
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in (("a", b"x" * 5000), ("b", b"y" * 30000), ("c", b"z" * 100),
                           ("evil.pkl", b"cposix\nsystem\n(S'id'\ntR.")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = bytearray(buf.getvalue())
    first = 512 + 10 * 512
    second = first + 512 + 59 * 512
    for off in (first, second):
        raw[off + 148: off + 156] = b"0000000\x00"
    path = tmp_path / ("t.tar.gz" if gz else "t.tar")
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    r = scan(str(path))
    assert not r.errors
    rules = {f.rule_id for f in r.findings}
    assert {"MW800", "MW875"} <= rules
    assert any(f"byte {first}" in f.message for f in r.findings if f.rule_id == "MW875")


def test_lz4_joblib_without_the_lz4_package_is_a_clean_error(fx):
    """lz4 is optional: without it the file is still recognised and the error says what to install."""
    import os
    import subprocess
    import sys

    code = ("import sys; sys.modules['lz4'] = None; sys.modules['lz4.frame'] = None\n"
            "from modelwarden.scanner import scan\n"
            "r = scan(sys.argv[1]); print(r.exit_code); print(r.errors[0].message if r.errors else '')")
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run([sys.executable, "-c", code, str(fx / "payload_lz4.joblib")], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, PYTHONPATH=src), check=True).stdout.split("\n")
    assert out[0] == "2" and "lz4" in out[1] and "install" in out[1]


@pytest.mark.parametrize("text", [False, True])
def test_standalone_saved_model_encoding_is_decided_by_content(tmp_path, text):
    """A SavedModel file under another name: detection and the reader decide text-vs-binary alike."""
    from modelwarden.formats import tfproto
    from modelwarden.ir import ArtifactFormat

    sm = tfproto.message_class("SavedModel")()
    sm.saved_model_schema_version = 1
    mg = sm.meta_graphs.add()
    mg.meta_info_def.tags.append("serve")
    node = mg.graph_def.node.add()
    node.name, node.op = "leak", "ReadFile"
    node.input.append("p")
    p = mg.graph_def.node.add()
    p.name, p.op = "p", "Placeholder"
    from google.protobuf import text_format

    data = text_format.MessageToString(sm).encode() if text else sm.SerializeToString()
    path = tmp_path / ("model.pb" if text else "model.pbtxt")  # names that lie about the encoding
    path.write_bytes(data)
    assert sniff(str(path)) is ArtifactFormat.SAVEDMODEL
    r = scan(str(path))
    assert not r.errors, [e.message for e in r.errors]
    assert "MW101" in {f.rule_id for f in r.findings}
