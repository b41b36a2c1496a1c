"""``catalog/ops.json`` (ops.toml compiled for start-up speed) is never a stale silent cache."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

from modelwarden import catalog
from modelwarden.catalog import compile as compile_mod

CATALOG = Path(catalog.__file__).resolve().parent


def test_shipped_ops_json_matches_ops_toml():
    assert compile_mod.main(["--check"]) == 0, "catalog/ops.json is stale: run python -m modelwarden.catalog.compile"
    data = json.loads((CATALOG / "ops.json").read_text("utf-8"))
    toml = tomllib.loads((CATALOG / "ops.toml").read_text("utf-8"))
    assert data["capabilities"] == toml["capabilities"] and data["ops"] == toml["ops"]
    assert list(data["capabilities"]) == list(toml["capabilities"])  # order too (docs/rules.md lists it)


def test_loaded_catalog_is_the_toml_catalog():
    stock = catalog.load_catalog().stock_ops
    from_toml = catalog._parse(tomllib.loads((CATALOG / "ops.toml").read_text("utf-8")), stock)
    assert catalog.load_catalog() == from_toml
    assert len(from_toml.specs) > 100


def _package_copy(tmp_path: Path) -> Path:
    for name in ("ops.toml", "ops.json"):
        shutil.copy(CATALOG / name, tmp_path / name)
    return tmp_path


def test_compiled_json_is_used_only_for_the_toml_it_was_built_from(tmp_path):
    pkg = _package_copy(tmp_path)
    compiled = json.loads((pkg / "ops.json").read_text("utf-8"))
    # a JSON whose hash matches is what the loader returns (sentinel op present only there)
    compiled["ops"]["SentinelOnlyInJson"] = {"capabilities": ["file-read"]}
    (pkg / "ops.json").write_text(json.dumps(compiled), "utf-8")
    assert "SentinelOnlyInJson" in catalog._ops_data(pkg)["ops"]
    # edit the TOML: the (now stale) JSON is ignored and the TOML is parsed
    toml = (pkg / "ops.toml").read_text("utf-8")
    (pkg / "ops.toml").write_text(toml + '\n[ops.EditedInToml]\ncapabilities = ["network"]\n', "utf-8")
    ops = catalog._ops_data(pkg)["ops"]
    assert "EditedInToml" in ops and "SentinelOnlyInJson" not in ops


def test_missing_or_broken_json_falls_back_to_the_toml(tmp_path):
    pkg = _package_copy(tmp_path)
    (pkg / "ops.json").write_text("{not json", "utf-8")
    assert catalog._ops_data(pkg)["ops"] == tomllib.loads((pkg / "ops.toml").read_text("utf-8"))["ops"]
    (pkg / "ops.json").unlink()
    assert "ReadFile" in catalog._ops_data(pkg)["ops"]
    compiled = json.loads((CATALOG / "ops.json").read_text("utf-8"))
    compiled["version"] = -1  # an older layout with the right hash is not trusted either
    compiled["ops"]["SentinelOnlyInJson"] = {"capabilities": ["file-read"]}
    (pkg / "ops.json").write_text(json.dumps(compiled), "utf-8")
    assert "SentinelOnlyInJson" not in catalog._ops_data(pkg)["ops"]
