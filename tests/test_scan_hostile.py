"""Hostile inputs: every one ends in exit 2 (a clear message naming the file) or in findings.

Each scan runs as a real ``python -m modelwarden scan`` process under
``RLIMIT_AS`` = 1 GiB with a wall-clock bound; its peak RSS comes from
``os.wait4``.  A traceback, a hang, a crash by signal or a memory blow-up fails.

Byte-level inputs (random bytes, 100k-deep nesting, huge declared lengths,
/dev/zero, a FIFO) are crafted here without TensorFlow; inputs that need a
real TF-written file (a truncated saved_model.pb, a 10,000-function library)
come from ``tests/fixtures/build_tf_scan.py``.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ROOT

AS_LIMIT = 1 << 30  # address space of the scanning process
MAX_RSS_MIB = 512  # the largest hostile input is 4 MB
WALL_S = 45.0  # generous: 2 shared cores; real scans of these take well under a second or two
DEPTH = 100_000


# --------------------------------------------------------------------------
# protobuf wire-format helpers (hand-encoding, no TF, no schema)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def saved_model(graph_def: bytes) -> bytes:
    """SavedModel{schema_version=1, meta_graphs{graph_def}}."""
    return b"\x08\x01" + ld(2, ld(2, graph_def))


def deep_attr_value(levels: int) -> bytes:
    """AttrValue{func: NameAttrList{name, attr{"a": AttrValue{func: ...}}}} ``levels`` deep, built in O(n).

    Every level is pure prefix, so the prefixes are computed inside-out and joined once.
    """
    inner = ld(2, b"x")  # AttrValue{s: "x"}
    size = len(inner)
    prefixes = []
    for _ in range(levels):
        entry_len = 3 + 1 + len(varint(size)) + size  # key "a" + value tag/len + inner
        nal_len = 3 + 1 + len(varint(entry_len)) + entry_len  # name "f" + attr tag/len + entry
        prefix = (varint(10 << 3 | 2) + varint(nal_len) + b"\x0a\x01f" + b"\x12" + varint(entry_len)
                  + b"\x0a\x01a" + b"\x12" + varint(size))
        prefixes.append(prefix)
        size += len(prefix)
    return b"".join(reversed(prefixes)) + inner


def deep_nested_saved_model(levels: int) -> bytes:
    attr = deep_attr_value(levels)
    node = ld(1, b"n") + ld(2, b"Const") + ld(5, ld(1, b"value") + ld(2, attr))
    return saved_model(ld(1, node))


# --------------------------------------------------------------------------
# running the CLI under bounds


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    maxrss_mib: float


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def scan_bounded(path: Path, *extra: str, wall_s: float = WALL_S) -> Outcome:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelwarden", "scan", str(path), "--format", "json", "--fail-on", "info", *extra],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT, preexec_fn=_limit,
        )
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > wall_s:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                pytest.fail(f"scan of {path} did not finish within {wall_s}s")
            time.sleep(0.01)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Outcome(proc.returncode, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"),
                       wall, usage.ru_maxrss / 1024)


def assert_contained(o: Outcome, path: Path, allowed=(1, 2)) -> None:
    """Exit 2 with a message naming the file, or exit 1 with findings; never a crash."""
    assert o.returncode >= 0, f"killed by signal {-o.returncode}: {o.stderr[-2000:]}"
    assert "Traceback" not in o.stderr, o.stderr[-4000:]
    assert o.returncode in allowed, f"exit {o.returncode}\nstdout: {o.stdout[-2000:]}\nstderr: {o.stderr[-2000:]}"
    assert o.maxrss_mib < MAX_RSS_MIB, f"peak RSS {o.maxrss_mib:.0f} MiB"
    if o.returncode == 2:
        names = {path.name, "saved_model.pb", "saved_model.pbtxt"}
        assert any(n in o.stderr or n in o.stdout for n in names), f"message does not name the file: {o.stderr!r}"
        assert o.stderr.strip(), "exit 2 without a message"
    elif o.returncode == 1:
        doc = json.loads(o.stdout)
        assert "MW" in json.dumps(doc), "exit 1 without findings in the JSON report"


# --------------------------------------------------------------------------
# crafted without TF


def model_dir(tmp_path: Path, name: str, pb: bytes | None = None) -> Path:
    d = tmp_path / name
    (d / "variables").mkdir(parents=True)
    if pb is not None:
        (d / "saved_model.pb").write_bytes(pb)
    return d


def test_encoders_are_sound():
    """The hand encoder produces what a protobuf parser accepts (shallow) — so the deep input is not just junk."""
    from modelwarden.formats import tfproto

    sm = tfproto.parse("SavedModel", deep_nested_saved_model(5), "probe")
    assert len(sm.meta_graphs) == 1
    assert sm.meta_graphs[0].graph_def.node[0].op == "Const"
    assert len(deep_nested_saved_model(DEPTH)) > DEPTH * 10


def test_random_bytes(tmp_path):
    rng = random.Random(1234)
    d = model_dir(tmp_path, "random_bytes", bytes(rng.getrandbits(8) for _ in range(65536)))
    assert_contained(scan_bounded(d), d)


def test_deeply_nested_protobuf(tmp_path):
    d = model_dir(tmp_path, "deep_nesting", deep_nested_saved_model(DEPTH))
    o = scan_bounded(d)
    assert_contained(o, d)


def test_deeply_nested_groups(tmp_path):
    # 100k nested start-group tags of an unknown field: parsers that recurse on groups must bound depth
    d = model_dir(tmp_path, "deep_groups", b"\x08\x01" + b"\x7b" * DEPTH + b"\x7c" * DEPTH)
    assert_contained(scan_bounded(d), d, allowed=(0, 1, 2))  # unknown fields may be legitimately skipped


def test_huge_declared_length(tmp_path):
    d = model_dir(tmp_path, "huge_length", b"\x08\x01\x12" + varint(1 << 40) + b"\x00" * 16)
    o = scan_bounded(d)
    assert_contained(o, d, allowed=(2,))


def test_huge_nested_declared_length(tmp_path):
    # the outer lengths are consistent; the innermost NodeDef claims 2 GiB
    node = b"\x0a" + varint((1 << 31) - 1) + b"n"
    d = model_dir(tmp_path, "huge_nested_length", saved_model(b"\x0a" + varint(len(node)) + node))
    assert_contained(scan_bounded(d), d, allowed=(2,))


def test_sparse_file_larger_than_protobuf_limit(tmp_path):
    d = model_dir(tmp_path, "sparse_huge")
    with open(d / "saved_model.pb", "wb") as f:
        f.write(b"\x08\x01")
        f.truncate(3 * 1024**3)  # sparse: costs no disk, would cost 3 GiB to read
    o = scan_bounded(d)
    assert_contained(o, d, allowed=(2,))
    assert o.wall_s < 15, "a too-large file must be refused by its size, not by reading it"


def test_saved_model_pb_symlinked_to_dev_zero(tmp_path):
    d = model_dir(tmp_path, "dev_zero")
    os.symlink("/dev/zero", d / "saved_model.pb")
    assert_contained(scan_bounded(d), d)


def test_saved_model_pb_is_a_fifo(tmp_path):
    d = model_dir(tmp_path, "fifo_pb")
    os.mkfifo(d / "saved_model.pb")
    assert_contained(scan_bounded(d), d)


def test_symlink_loop_in_model_dir(tmp_path, fixture_dir):
    src = fixture_dir("build_tf_scan") / "models" / "variables_benign"
    d = tmp_path / "loop"
    shutil.copytree(src, d)
    os.symlink("..", d / "variables" / "up")
    os.symlink("self", d / "self")  # dangling self-loop
    o = scan_bounded(d)
    assert_contained(o, d, allowed=(0, 1, 2))


# --------------------------------------------------------------------------
# built by real TF (tests/fixtures/build_tf_scan.py)


@pytest.fixture(scope="module")
def hostile(fixture_dir) -> dict[str, Path]:
    root = fixture_dir("build_tf_scan")
    data = json.loads((root / "manifest.json").read_text())
    return {h["name"]: root / h["path"] for h in data["hostile"]}


def test_truncated_saved_model(hostile):
    assert_contained(scan_bounded(hostile["truncated"]), hostile["truncated"])


@pytest.mark.parametrize("name", ["library_10k", "library_10k_wide", "graphdef_10k"])
def test_ten_thousand_function_library(hostile, name):
    o = scan_bounded(hostile[name])
    assert_contained(o, hostile[name])
    if o.returncode == 1:  # read fully: the cycles in it must be reported
        assert "MW109" in o.stdout, o.stdout[-2000:]


def test_hostile_manifest_complete(hostile):
    assert set(hostile) == {"truncated", "library_10k", "library_10k_wide", "graphdef_10k"}
    assert all(p.exists() for p in hostile.values())


@pytest.mark.parametrize("decoy", ["s", "i", "type"])
def test_a_function_list_mixed_with_other_kinds_is_still_followed(tmp_path, decoy):
    """An attr list holding functions beside other kinds (strings, ints, dtypes) is malformed, but the
    functions it names are still part of the call graph: the file read in the named function is
    found and reached through the call, and the artifact is not lost to an internal error."""
    from modelwarden.formats import tfproto
    from modelwarden.scanner import scan

    gd = tfproto.message_class("GraphDef")()
    fdef = gd.library.function.add()
    fdef.signature.name = "evil"
    path = fdef.node_def.add()
    path.name, path.op = "path", "Const"
    path.attr["value"].tensor.dtype = 7
    path.attr["value"].tensor.string_val.append(b"/etc/shadow")
    read = fdef.node_def.add()
    read.name, read.op = "read", "ReadFile"
    read.input.append("path:output:0")
    x = gd.node.add()
    x.name, x.op = "x", "Placeholder"
    call = gd.node.add()
    call.name, call.op = "call", "PartitionedCall"
    call.input.append("x")
    lst = call.attr["f"].list
    getattr(lst, decoy).append({"s": b"decoy", "i": 7, "type": 1}[decoy])
    lst.func.add().name = "evil"
    f = tmp_path / "mixed.pb"
    f.write_bytes(gd.SerializeToString())
    r = scan(str(f))
    assert not r.errors, r.errors
    reads = [x for x in r.findings if x.rule_id == "MW101"]
    assert reads and reads[0].location.function == "evil"
    assert "call" in reads[0].location.call_path
