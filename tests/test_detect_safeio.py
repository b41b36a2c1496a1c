"""Detection by content and bounded, link-refusing IO."""

import os

import pytest

from modelwarden.errors import InputError, LimitExceeded
from modelwarden.formats import safeio, tfproto
from modelwarden.formats.detect import discover, sniff
from modelwarden.ir import ArtifactFormat, FileKind


def _graphdef_bytes():
    gd = tfproto.message_class("GraphDef")()
    gd.node.add(name="x", op="Placeholder")
    gd.node.add(name="r", op="ReadFile", input=["x"])
    return gd.SerializeToString()


def test_sniff_by_content_not_name(tmp_path):
    (tmp_path / "model.bin").write_bytes(_graphdef_bytes())
    (tmp_path / "graph.txt").write_text('# comment\nnode {\n  name: "x"\n  op: "Placeholder"\n}\n')
    (tmp_path / "notes.pb").write_text("hello world, not a model\n")
    (tmp_path / "weights.tflite.bak").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    (tmp_path / "w.weights").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    assert sniff(str(tmp_path / "model.bin")) is ArtifactFormat.GRAPHDEF
    assert sniff(str(tmp_path / "graph.txt")) is ArtifactFormat.GRAPHDEF
    assert sniff(str(tmp_path / "notes.pb")) is None
    assert sniff(str(tmp_path / "weights.tflite.bak")) is ArtifactFormat.TFLITE
    assert sniff(str(tmp_path / "w.weights")) is ArtifactFormat.KERAS_H5


def test_discover_walks_once_and_savedmodel_owns_its_subtree(tmp_path):
    sm = tmp_path / "a" / "sm"
    (sm / "variables").mkdir(parents=True)
    (sm / "saved_model.pb").write_bytes(b"\x08\x01\x12\x00")
    (sm / "inner.pb").write_bytes(_graphdef_bytes())  # owned by the SavedModel: not separate
    (tmp_path / "b.pb").write_bytes(_graphdef_bytes())
    os.symlink(tmp_path / "b.pb", tmp_path / "link.pb")  # links are never followed in a walk
    cands, errors = discover([str(tmp_path), str(tmp_path / "b.pb")])
    assert not errors
    kinds = sorted((c.format.value, os.path.basename(c.path)) for c in cands)
    assert kinds == [("tf-graphdef", "b.pb"), ("tf-savedmodel", "sm")]


def test_discover_errors_name_the_path(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing")
    _, errors = discover([str(tmp_path / "missing"), str(tmp_path / "readme.txt")])
    assert [e.reason for e in errors] == [
        "no such file or directory",
        "not a recognised model format (SavedModel, GraphDef, Keras, TFLite, checkpoint, pickle, "
        "PyTorch, NumPy, ONNX, safetensors, GGUF, zip/tar)",
    ]


def test_read_file_refuses_links_fifos_and_big_files(tmp_path):
    target = tmp_path / "t"
    target.write_bytes(b"x" * 100)
    os.symlink(target, tmp_path / "l")
    os.mkfifo(tmp_path / "f")
    with pytest.raises(InputError, match="symbolic link"):
        safeio.read_file(str(tmp_path / "l"), 1000)
    with pytest.raises(InputError, match="not a regular file"):
        safeio.read_file(str(tmp_path / "f"), 1000)  # O_NONBLOCK: never blocks on a FIFO
    with pytest.raises(LimitExceeded, match="over the 10-byte limit"):
        safeio.read_file(str(target), 10)


def test_read_file_reads_what_is_there_not_what_the_size_says(tmp_path):
    """Reads are sized by the file's length, yet everything is read: a file whose size the kernel
    reports as 0 (procfs) in full, a large file across chunks, and the limit still holds."""
    status = "/proc/self/status"
    assert os.stat(status).st_size == 0
    with open(status, "rb") as fh:
        expected = fh.read()
    got = safeio.read_file(status, 1 << 20)
    assert got.split(b"\n")[0] == expected.split(b"\n")[0] and len(got) > 100  # (it changes as it is read)
    with pytest.raises(LimitExceeded, match="grew past"):
        safeio.read_file(status, 50)  # size 0 passes the first check; the bytes do not
    big = tmp_path / "big"
    data = os.urandom(3 << 20)
    big.write_bytes(data)
    assert safeio.read_file(str(big), 4 << 20) == data
    (tmp_path / "empty").write_bytes(b"")
    assert safeio.read_file(str(tmp_path / "empty"), 10) == b""


def test_json_depth_and_size_bounds():
    with pytest.raises(InputError, match="nested deeper"):
        safeio.load_json("[" * 100_000 + "]" * 100_000, "c.json", max_bytes=10**7, max_depth=200)
    with pytest.raises(LimitExceeded):
        safeio.load_json(b"{}" * 100, "c.json", max_bytes=10, max_depth=5)
    with pytest.raises(InputError, match="not valid UTF-8"):
        safeio.load_json(b"\xff\xfe", "c.json", max_bytes=10, max_depth=5)
    assert safeio.load_json('{"a": "[[[["}', "c.json", max_bytes=100, max_depth=2) == {"a": "[[[["}


def test_walk_tree_reports_links_without_following(tmp_path):
    (tmp_path / "assets").mkdir()
    os.symlink("/etc/passwd", tmp_path / "assets" / "v.txt")
    os.symlink("../assets", tmp_path / "assets" / "up")  # resolves inside the root
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_text("x")
    os.link(outside, tmp_path / "hard")
    entries = {e.relpath: e for e in safeio.walk_tree(str(tmp_path), 100)}
    assert entries["assets/v.txt"].kind is FileKind.SYMLINK and not entries["assets/v.txt"].resolves_inside
    assert entries["assets/up"].resolves_inside
    assert entries["hard"].nlink == 2
    with pytest.raises(LimitExceeded):
        safeio.walk_tree(str(tmp_path), 2)


def test_discover_finds_each_artifact_once_however_it_is_named(tmp_path, monkeypatch):
    """The walk keys artifacts by real path without a realpath per artifact: a model named as a
    directory, with a trailing slash, through its saved_model.pb, through a symlinked parent or
    inside a walked tree is still one candidate, displayed as the walk names it."""
    import shutil
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "models" / "dense_savedmodel"
    tree = tmp_path / "tree"
    shutil.copytree(example, tree / "a" / "m1")
    shutil.copytree(example, tree / "m2")
    (tmp_path / "link").symlink_to(tree)
    monkeypatch.chdir(tmp_path)
    paths = ["tree", "tree/", "./tree//a", "link", "tree/m2/saved_model.pb", "tree/a/m1/", str(tree / "m2")]
    found, errors = discover(paths)
    assert not errors
    assert sorted(c.display for c in found) == ["tree/a/m1", "tree/m2"]
    assert all(c.format is ArtifactFormat.SAVEDMODEL for c in found)
