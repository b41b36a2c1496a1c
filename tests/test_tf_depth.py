"""Issue 11 TensorFlow classes (``build_tf_depth``): TF1 assets, saver machinery, audited ops.

Each fixture is a real model built by TensorFlow; the manifest says which rules must and
must not be reported.  The hostile savers were confirmed by loading them in the builder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelwarden.analysis.interface import Severity
from modelwarden.scanner import scan

from .conftest import build_fixtures


@pytest.fixture(scope="module")
def fx() -> Path:
    return build_fixtures("build_tf_depth")


def _entries() -> list[str]:
    return ["tf1_vocab_asset", "tf1_sharded_saver", "saver_derived_write", "saver_restore_writes", "vocab_remapping.pb",
            "dataset_from_graph.pb", "dataset_from_graph_benign.pb", "dataset_from_graph_input.pb"]


def test_manifest_is_covered(fx):
    names = [e["name"] for e in json.loads((fx / "manifest.json").read_text())["fixtures"]]
    assert sorted(names) == sorted(_entries())


@pytest.mark.parametrize("name", _entries())
def test_fixture(fx, name):
    (e,) = [e for e in json.loads((fx / "manifest.json").read_text())["fixtures"] if e["name"] == name]
    r = scan(str(fx / name))
    assert not r.errors, [err.message for err in r.errors]
    got: dict[str, Severity] = {}
    for f in r.findings:
        got[f.rule_id] = max(got.get(f.rule_id, Severity.INFO), f.severity)
    msgs = [f"{f.rule_id} {f.message}" for f in r.findings]
    assert set(e["rules"]) <= set(got), msgs
    assert not set(e["absent"]) & {rid for rid, s in got.items() if s > Severity.INFO}, msgs
    for rid, sev in e["severity"].items():
        assert got[rid] == Severity.parse(sev), msgs
    if e["clean"]:
        assert all(s < Severity.MEDIUM for s in got.values()), msgs


def test_tf1_asset_is_reported_as_the_models_asset(fx):
    r = scan(str(fx / "tf1_vocab_asset"))
    (f,) = [f for f in r.findings if f.rule_id == "MW101"]
    assert f.severity is Severity.INFO and "vocab.txt" in f.message and "_src" not in f.message


def test_embedded_graph_findings_name_the_carrying_node(fx):
    r = scan(str(fx / "dataset_from_graph.pb"))
    (f,) = [f for f in r.findings if f.rule_id == "MW101"]
    assert "from_graph" in (f.location.graph or "") + " ".join(f.location.call_path)


def test_derived_saver_path_names_the_transform(fx):
    r = scan(str(fx / "saver_derived_write"))
    (f,) = [f for f in r.findings if f.rule_id == "MW102"]
    assert f.evidence["op"] == "SaveV2" and "evil/path" in f.message


def test_fuzz_mutated_graphs_with_embedded_graphs(fx, tmp_path):
    """Seeded mutations of the GraphDefs (outer and embedded): clean findings or clean errors."""
    from .test_real_world import fuzz_scan

    seeds = [fx / n for n in ("dataset_from_graph.pb", "dataset_from_graph_benign.pb", "vocab_remapping.pb")]
    fuzz_scan(seeds, tmp_path, 1111, 150)


@pytest.mark.parametrize("what", ["index", "shard", "dir"])
def test_symlink_in_variables_pointing_outside_is_the_escape_finding(fx, tmp_path, what):
    """One fact, one outcome: a link out of variables/ is MW201, not an unreadable input."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(fx / "tf1_sharded_saver", model, symlinks=True)
    outside = tmp_path / "outside"
    shutil.copytree(model / "variables", outside)
    var = model / "variables"
    if what == "dir":
        shutil.rmtree(var)
        var.symlink_to(outside)
    else:
        victim = var / "variables.index" if what == "index" else next(var.glob("variables.data-*"))
        victim.unlink()
        victim.symlink_to(outside / victim.name)
    r = scan(str(model))
    assert not r.errors, [e.message for e in r.errors]
    assert "MW201" in {f.rule_id for f in r.findings}, [f.message for f in r.findings]
    assert r.exit_code == 1


def _with_graph_def(fx, tmp_path, blob: bytes) -> Path:
    from modelwarden.formats import tfproto

    gd = tfproto.parse("GraphDef", (fx / "dataset_from_graph.pb").read_bytes(), "t")
    (const,) = [n for n in gd.node if n.op == "Const" and n.attr["value"].tensor.string_val]
    const.attr["value"].tensor.string_val[0] = blob
    out = tmp_path / "g.pb"
    out.write_bytes(gd.SerializeToString())
    return out


def test_unparsable_embedded_graph_is_not_an_error(fx, tmp_path):
    r = scan(str(_with_graph_def(fx, tmp_path, b"\xff\xfe not a graph")))
    assert not r.errors and r.exit_code == 0


def test_nested_embedded_graphs_are_followed(fx, tmp_path):
    """A DatasetFromGraph whose constant graph carries another: the inner ReadFile is still found."""
    inner = (fx / "dataset_from_graph.pb").read_bytes()
    r = scan(str(_with_graph_def(fx, tmp_path, inner)))
    assert not r.errors
    (f,) = [f for f in r.findings if f.rule_id == "MW101"]
    assert f.location.graph.count("from_graph") == 2


def test_restore_path_write_says_it_runs_at_load(fx):
    r = scan(str(fx / "saver_restore_writes"))
    (f,) = [f for f in r.findings if f.rule_id == "MW102"]
    assert "restore path" in f.message and f.evidence["op"] == "SaveV2"


def test_embedded_graph_amplification_is_bounded(fx, tmp_path):
    """64 DatasetFromGraph nodes sharing one constant that itself holds 64 of them: a clean limit
    (one budget for the whole recursion, not 64 per level)."""
    from modelwarden.formats import tfproto

    def fan_out(inner: bytes) -> bytes:
        gd = tfproto.message_class("GraphDef")()
        c = gd.node.add()
        c.name, c.op = "g", "Const"
        c.attr["dtype"].type = 7
        c.attr["value"].tensor.dtype = 7
        c.attr["value"].tensor.string_val.append(inner)
        for i in range(64):
            n = gd.node.add()
            n.name, n.op = f"d{i}", "DatasetFromGraph"
            n.input.append("g")
        return gd.SerializeToString()

    blob = (fx / "dataset_from_graph_benign.pb").read_bytes()
    for _ in range(3):
        blob = fan_out(blob)
    path = tmp_path / "fan.pb"
    path.write_bytes(blob)
    r = scan(str(path))
    assert r.exit_code == 2 and "serialized graphs" in r.errors[0].message


def test_shared_join_dag_resolves_in_linear_time(tmp_path):
    """60 StringJoins each joining the previous one twice (2^60 paths) feeding ReadFile: resolved once
    per node (memoised), so the scan finishes and reports the read."""
    from modelwarden.formats import tfproto

    gd = tfproto.message_class("GraphDef")()
    c = gd.node.add()
    c.name, c.op = "j0", "Placeholder"
    for i in range(1, 61):
        n = gd.node.add()
        n.name, n.op = f"j{i}", "StringJoin"
        n.input.extend([f"j{i - 1}", f"j{i - 1}"])
    r_ = gd.node.add()
    r_.name, r_.op = "read", "ReadFile"
    r_.input.append("j60")
    path = tmp_path / "dag.pb"
    path.write_bytes(gd.SerializeToString())
    r = scan(str(path))
    assert "MW101" in {f.rule_id for f in r.findings}
