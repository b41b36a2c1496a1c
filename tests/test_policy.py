"""Policies: built-in profiles, TOML loading and its errors, ignores and severity overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelwarden.analysis import registry
from modelwarden.analysis.interface import Finding, Location, Severity
from modelwarden.catalog import load_catalog
from modelwarden.errors import PolicyError
from modelwarden.policy import Ignore, Policy, load_policy
from modelwarden.policy.loader import MAX_POLICY_BYTES, parse_policy
from modelwarden.policy.profiles import strict_allowlist

ROOT = Path(__file__).resolve().parents[1]


def finding(rule: str = "MW101", severity: Severity = Severity.HIGH, artifact: str = "models/a",
            graph: str = "serve", function: str = "f", node: str = "read") -> Finding:
    return Finding(rule, severity, f"{rule} message", Location(artifact, "saved_model.pb", graph, function, node, "ReadFile"))


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------- profiles


def test_default_profile_is_capability_based() -> None:
    p = load_policy("default")
    assert p.name == "default" and p.allowlist is None and p.fail_on is Severity.MEDIUM
    assert load_policy(None) == p


def test_strict_profile_uses_the_allowlist() -> None:
    p = load_policy("strict")
    assert p.name == "strict" and p.allowlist == strict_allowlist()
    assert {"MatMul", "Conv2D", "StatefulPartitionedCall", "VarHandleOp", "While"} <= p.allowlist
    assert p.fail_on is Severity.LOW


def test_strict_allowlist_has_no_catalog_op() -> None:
    """Nothing the capability catalog knows as host-touching may be on the pure-compute list."""
    catalog = load_catalog()
    assert not (strict_allowlist() & set(catalog.specs)), sorted(strict_allowlist() & set(catalog.specs))


def test_strict_allowlist_ops_are_stock_tensorflow_ops() -> None:
    catalog = load_catalog()
    unknown = sorted(op for op in strict_allowlist() if not catalog.is_stock(op) and not op.startswith("_"))
    assert not unknown, unknown


def test_policy_instance_passes_through() -> None:
    p = Policy(name="mine")
    assert load_policy(p) is p


def test_unknown_profile_name_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="unknown policy 'strickt'"):
        load_policy("strickt")


def test_missing_policy_file() -> None:
    with pytest.raises(PolicyError, match="policy file not found"):
        load_policy("does/not/exist.toml")


# ---------------------------------------------------------------- TOML


def test_full_policy_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
extends = "strict"
fail_on = "high"
name = "team"
[ops]
allow = ["PrintV2"]
strict_allow = ["MyPureOp"]
[ops.add]
MyOp = ["file-read", "network"]
[severity]
MW104 = "low"
[[ignore]]
rule = "MW101"
justification = "reads its own vocabulary"
artifact = "models/*"
where = "serve/*"
""")
    p = load_policy(str(path))
    assert p.name == "team" and p.source == str(path)
    assert p.fail_on is Severity.HIGH
    assert p.allowlist is not None and {"MyPureOp", "PrintV2", "MatMul"} <= p.allowlist
    assert p.allowed_ops == {"PrintV2"}
    assert p.extra_ops == {"MyOp": ("file-read", "network")}
    assert p.severity == {"MW104": Severity.LOW}
    assert p.ignores == (Ignore("MW101", "reads its own vocabulary", "models/*", "serve/*"),)


def test_policy_extends_default_by_default(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, '[ops]\nallow = ["PrintV2"]\n'))
    assert p.allowlist is None and p.fail_on is Severity.MEDIUM
    assert p.name == "default+policy.toml"


def test_policy_ops_change_the_effective_catalog(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, '[ops]\nallow = ["PrintV2"]\n[ops.add]\nMyOp = ["file-write"]\n'))
    catalog = load_catalog().with_policy(p)
    assert catalog.lookup("PrintV2") is None
    spec = catalog.lookup("MyOp")
    assert spec is not None and spec.capabilities == ("file-write",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('fail_on = "severe"', "unknown severity 'severe'"),
        ('extends = "paranoid"', "unknown profile 'paranoid'"),
        ('colour = "red"', "unknown key 'colour'"),
        ('[ops]\nalow = ["X"]', "unknown key 'alow' \\(did you mean 'allow'\\?\\)"),
        ('[ops]\nallow = "PrintV2"', "expected a list of strings"),
        ('[ops]\nallow = ["bad op name!"]', "not a valid op name"),
        ('[ops.add]\nMyOp = ["file-reed"]', "unknown capability 'file-reed' \\(did you mean 'file-read'\\?\\)"),
        ('[ops.add]\nMyOp = []', "at least one capability"),
        ('[ops]\nallow = ["MyOp"]\n[ops.add]\nMyOp = ["network"]', "both allowed"),
        ('[ops]\nstrict_allow = ["Foo"]', 'only applies to policies with extends = "strict"'),
        ('[severity]\nMW999 = "low"', "unknown rule id 'MW999'"),
        ('[severity]\nMW104 = "lowest"', "unknown severity 'lowest'"),
        ('[[ignore]]\nrule = "MW101"', "needs a non-empty 'justification'"),
        ('[[ignore]]\nrule = "MW101"\njustification = "   "', "needs a non-empty 'justification'"),
        ('[[ignore]]\njustification = "x"', "missing 'rule'"),
        ('[[ignore]]\nrule = "MW0*"\njustification = "x"', "unknown rule id 'MW0\\*'"),
        ('[[ignore]]\nrule = "MW101"\njustification = "x"\nwhy = "y"', "unknown key 'why'"),
        ("ignore = 3", "expected an array of tables"),
        ("this is not toml", "invalid TOML"),
    ],
)
def test_policy_errors_are_clear(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError, match=message) as info:
        load_policy(str(path))
    assert str(path) in str(info.value)  # every message names the file
    assert info.value.exit_code == 2


def test_glob_ignore_rule_must_match_a_known_rule(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, '[[ignore]]\nrule = "MW10*"\njustification = "legacy models"\n'))
    assert p.ignores[0].rule == "MW10*"


def test_oversized_and_binary_policy_files(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_POLICY_BYTES + 1))
    with pytest.raises(PolicyError, match="larger than"):
        load_policy(str(big))
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(str(binary))
    with pytest.raises(PolicyError, match="is a directory"):
        load_policy(str(tmp_path) + "/")
    deep = write(tmp_path, "a = " + "[" * 100_000 + "]" * 100_000, "deep.toml")
    with pytest.raises(PolicyError, match="nested too deeply"):
        load_policy(str(deep))


def test_known_rule_ids_come_from_the_registry() -> None:
    ids = set(registry.known_ids())
    assert {"MW101", "MW104", "MW110"} <= ids
    for rid in ids:
        parse_policy(f'[severity]\n{rid} = "info"\n', "p.toml")


# ---------------------------------------------------------------- apply()


def test_apply_overrides_severity_then_ignores(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, """
[severity]
MW104 = "low"
[[ignore]]
rule = "MW101"
justification = "vocab file shipped with the model"
artifact = "models/*"
where = "serve/f/*"
"""))
    findings = [
        finding("MW101"),  # suppressed: everything matches
        finding("MW101", artifact="other/a"),  # artifact glob does not match
        finding("MW101", function="g"),  # where glob does not match
        finding("MW104", Severity.MEDIUM),  # lowered
    ]
    kept, suppressed = p.apply(findings)
    assert [f.suppressed_by for f in suppressed] == ["vocab file shipped with the model"]
    assert suppressed[0].location.artifact == "models/a"
    assert [(f.rule_id, f.location.artifact, f.location.function) for f in kept] == [
        ("MW101", "other/a", "f"), ("MW101", "models/a", "g"), ("MW104", "models/a", "f")]
    assert kept[-1].severity is Severity.LOW


def test_example_policy_in_docs_loads() -> None:
    p = load_policy(str(ROOT / "examples" / "policy-example.toml"))
    assert p.ignores and all(ig.justification for ig in p.ignores)
