"""Known-vulnerable ops: the shipped advisory data, version semantics, the MW70x rule and the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from modelwarden import advisories as adv
from modelwarden.advisories import Version
from modelwarden.formats import tfproto
from modelwarden.formats.tflite import BUILTIN_OPS
from modelwarden.scanner import scan

STOCK = Path(__file__).resolve().parents[1] / "src/modelwarden/catalog/stock_ops.txt"


def by_id(tid: str) -> adv.Advisory:
    return next(a for a in adv.load() if a.id == tid)


# ---------------------------------------------------------------- versions


@pytest.mark.parametrize(
    "lower, higher",
    [
        ("2.4.0", "2.10.0"),  # numeric, not lexicographic
        ("2.16.0rc0", "2.16.0"),
        ("2.16.0rc0", "2.16.0rc1"),
        ("2.16.0.dev20231205", "2.16.0rc0"),
        ("1.15.3", "1.15.4"),
        ("2.3", "2.3.1"),
        ("2.12.0", "2.12.0.post1"),
    ],
)
def test_version_order(lower: str, higher: str) -> None:
    assert Version.parse(lower) < Version.parse(higher)


def test_version_equality_ignores_spelling() -> None:
    assert Version.parse("2.3") == Version.parse("2.3.0") == Version.parse("v2.3.0+cpu")


@pytest.mark.parametrize("bad", ["", "x.y", "2.3.0; rm -rf /", "latest", "2..3", "2.3.0rc1rc2"])
def test_version_rejects_garbage(bad: str) -> None:
    with pytest.raises(adv.VersionError):
        Version.parse(bad)


@pytest.mark.parametrize(
    "version, affected",
    [
        ("1.14.0", False),  # the advisory lists 1.15.0 as the first vulnerable release
        ("1.15.3", True),
        ("1.15.4", False),  # the patch on the 1.15 line
        ("2.0.2", True),
        ("2.0.3", False),
        ("2.3.0", True),
        ("2.3.1", False),
        ("2.4.0", False),  # the highest fix: every later version is fixed
        ("2.4.0rc0", True),  # a release candidate of the fixing release: conservatively affected
        ("2.10.0", False),
        ("2.16.0rc0", False),
    ],
)
def test_fixed_version_semantics_stringngrams_2020_011(version: str, affected: bool) -> None:
    a = by_id("TFSA-2020-011")
    assert [str(f) for f in a.fixed] == ["1.15.4", "2.0.3", "2.1.2", "2.2.1", "2.3.1", "2.4.0"]
    assert a.affects(Version.parse(version)) is affected


def test_line_older_than_every_fix_is_affected() -> None:
    a = by_id("TFSA-2021-029")  # fixed 2.1.4 ... 2.5.0, no 1.15 or 2.0 patch
    assert a.introduced is None
    assert a.affects(Version.parse("2.0.4")) and a.affects(Version.parse("1.15.5"))
    assert not a.affects(Version.parse("2.1.4"))


def test_line_between_fixed_lines_without_backport_is_affected() -> None:
    a = by_id("TFSA-2022-145")  # DynamicStitch: fixed 2.10.1 and 2.11.0 only
    assert a.affects(Version.parse("2.9.3"))
    assert a.affects(Version.parse("2.10.0"))
    assert not a.affects(Version.parse("2.10.1"))
    assert not a.affects(Version.parse("2.11.0"))


def test_introduced_bounds_old_releases() -> None:
    a = by_id("TFSA-2020-002")  # TFLite segment sum: vulnerable 2.2.0 and 2.3.0 only
    assert not a.affects(Version.parse("2.1.0"))
    assert a.affects(Version.parse("2.2.0"))
    assert not a.affects(Version.parse("2.2.1"))
    assert a.affects(Version.parse("2.3.0"))
    assert not a.affects(Version.parse("2.4.0"))


def test_affected_lookup_and_upgrade_target() -> None:
    hits = adv.affected("StringNGrams", "2.3.0")
    assert {a.id for a in hits} == {"TFSA-2020-011", "TFSA-2021-029", "TFSA-2021-030", "TFSA-2021-120", "TFSA-2022-009"}
    # TFSA-2022-009 has no 2.3 back-port: the lowest release fixing all five is 2.5.3
    assert str(adv.upgrade_target(hits, Version.parse("2.3.0"))) == "2.5.3"
    assert adv.affected("StringNGrams", "2.12.0") == []
    assert adv.affected("NoSuchOp", "2.3.0") == []
    with pytest.raises(adv.VersionError):
        adv.affected("StringNGrams", "two")


# ---------------------------------------------------------------- the data


def test_data_is_well_formed_and_names_real_ops() -> None:
    stock = {line.strip() for line in STOCK.read_text().splitlines() if line.strip() and not line.startswith("#")}
    rows = adv.load()
    assert len(rows) > 300
    assert len({a.id for a in rows}) == len(rows)
    for a in rows:
        assert a.id.startswith("TFSA-") and a.cve.startswith("CVE-"), a
        assert a.klass in ("memory", "dos"), a
        assert a.fixed, a
        assert a.ops, a
        for op in a.ops:
            if op.startswith("tfl:"):
                assert op[4:] in BUILTIN_OPS, (a.id, op)
            else:
                assert op in stock, (a.id, op)
    assert sum("verified" in a.flags for a in rows) >= 20


def test_corrections_from_verification_are_shipped() -> None:
    # TFSA-2021-005: the advisory's PoC pastes a Conv3D snippet; the bug is in RaggedTensorToVariant only
    assert by_id("TFSA-2021-005").ops == ("RaggedTensorToVariant",)
    # TFSA-2020-020: DenseCountSparseOutput has the check; the other two do not
    assert set(by_id("TFSA-2020-020").ops) == {"SparseCountSparseOutput", "RaggedCountSparseOutput"}
    # class "X" resolved by reading the advisory
    assert by_id("TFSA-2021-170").klass == "memory"  # arbitrary memory read in ImmutableConst
    assert by_id("TFSA-2022-008").klass == "dos"  # OOM in ThreadPoolHandle
    assert by_id("TFSA-2021-177").introduced == Version.parse("2.6.0")


# ---------------------------------------------------------------- version choice


def test_version_choice_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert adv.choose_version("2.3.0", "2.1.0", "model").source == "--tf-version"
    monkeypatch.setattr(adv, "installed_tf", lambda: ("2.15.1", "tensorflow-cpu"))
    c = adv.choose_version("", "2.1.0", "the model")
    assert (str(c.version), c.source) == ("2.15.1", "installed package tensorflow-cpu")
    monkeypatch.setattr(adv, "installed_tf", lambda: None)
    c = adv.choose_version("", "2.1.0", "the model")
    assert (str(c.version), c.source) == ("2.1.0", "the model")
    assert adv.choose_version("", "", "").version is None
    with pytest.raises(adv.VersionError):
        adv.choose_version("nope", "", "")


def test_installed_version_found_without_importing_tensorflow() -> None:
    import sys

    found = adv.installed_tf.__wrapped__()  # type: ignore[attr-defined]
    assert "tensorflow" not in sys.modules
    if found is not None:  # this machine has TensorFlow installed beside modelwarden
        Version.parse(found[0])


# ---------------------------------------------------------------- the rule, end to end


@pytest.fixture(scope="module")
def graphdef(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GraphDef with two StringNGrams (memory-safety advisories) and a Conv2D (DoS-only advisories)."""
    gd = tfproto.message_class("GraphDef")()
    for name, op in [("x", "Placeholder"), ("ng", "StringNGrams"), ("ng2", "StringNGrams"), ("conv", "Conv2D"),
                     ("add", "AddV2")]:
        node = gd.node.add()
        node.name, node.op = name, op
        if name != "x":
            node.input.append("x")
    path = tmp_path_factory.mktemp("adv") / "model.pb"
    path.write_bytes(gd.SerializeToString())
    return path


def advisory_findings(report):  # noqa: ANN001, ANN201
    return {f.evidence.get("op", ""): f for f in report.findings if f.rule_id.startswith("MW70")}


def test_scan_reports_memory_and_dos_advisories(graphdef: Path) -> None:
    report = scan(graphdef, tf_version="2.3.0")
    assert not report.errors
    found = advisory_findings(report)
    assert set(found) == {"StringNGrams", "Conv2D"}
    ng, conv = found["StringNGrams"], found["Conv2D"]
    assert (ng.rule_id, ng.severity.label) == ("MW700", "high")
    assert ng.evidence["uses"] == "2"  # one finding per op, not per node
    assert "TFSA-2020-011" in ng.message and "CVE-2020-15205" in ng.message and "2.5.3" in ng.message
    assert ng.evidence["version_source"] == "--tf-version"
    assert (conv.rule_id, conv.severity.label) == ("MW701", "low")
    assert "2.7.4" in conv.message


def test_scan_patched_version_reports_nothing(graphdef: Path) -> None:
    assert advisory_findings(scan(graphdef, tf_version="2.12.0")) == {}
    # 2.3.1 fixes TFSA-2020-011 but not the 2021 advisories
    ng = advisory_findings(scan(graphdef, tf_version="2.3.1"))["StringNGrams"]
    assert "TFSA-2020-011" not in ng.evidence["advisories"] and "TFSA-2021-029" in ng.evidence["advisories"]


def test_scan_bad_tf_version_is_reported_not_crashed(graphdef: Path) -> None:
    report = scan(graphdef, tf_version="two point three")
    assert not report.errors
    unknown = [f for f in report.findings if f.rule_id == "MW702"]
    assert len(unknown) == 1 and "StringNGrams" in unknown[0].message


def test_tflite_builtin_advisory(fixture_dir) -> None:  # noqa: ANN001
    model = fixture_dir("build_tflite") / "dense.tflite"
    found = advisory_findings(scan(model, tf_version="2.3.0"))
    assert "tfl:FULLY_CONNECTED" in found
    assert "TFSA-2021-154" in found["tfl:FULLY_CONNECTED"].evidence["advisories"]
    assert advisory_findings(scan(model, tf_version="2.6.0")) == {}


# ---------------------------------------------------------------- CLI


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    from modelwarden.cli import advisories_cmd

    parser = argparse.ArgumentParser()
    advisories_cmd.add_parser(parser)
    code = advisories_cmd.run(parser.parse_args(list(argv)))
    return code, capsys.readouterr().out


def test_cli_op(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, "StringNGrams", "--tf-version", "2.4.1")
    assert code == 1
    assert "fixed    TFSA-2020-011" in out and "AFFECTED TFSA-2021-029" in out
    code, out = cli(capsys, "tfl:SEGMENT_SUM", "--tf-version", "2.12.0", "-f", "json")
    data = json.loads(out)
    assert code == 0 and data["tf_version"] == "2.12.0"
    assert {a["id"] for a in data["advisories"]} == {"TFSA-2020-002", "TFSA-2020-003", "TFSA-2020-004"}
    assert not any(a["affects"] for a in data["advisories"])
    code, out = cli(capsys, "AddV2", "--tf-version", "2.3.0")
    assert code == 0 and "no published" in out


def test_cli_model(capsys: pytest.CaptureFixture[str], graphdef: Path) -> None:
    code, out = cli(capsys, str(graphdef), "--tf-version", "2.3.0", "-f", "json")
    data = json.loads(out)
    assert code == 1
    assert {o["op"] for o in data["ops"]} == {"StringNGrams", "Conv2D"}
    code, out = cli(capsys, str(graphdef), "--tf-version", "2.12.0")
    assert code == 0 and "no op" in out


def test_cli_rejects_bad_version(capsys: pytest.CaptureFixture[str]) -> None:
    from modelwarden.errors import UsageError

    with pytest.raises(UsageError):
        cli(capsys, "Conv2D", "--tf-version", "2.x")
