"""Keras 3 loader attacks (MW310-MW312): lookup vocabularies read from host files or URLs, TFSMLayer
loading an external SavedModel, TorchModuleWrapper unpickling its config.

Built by real Keras 3 in ``tests/fixtures/build_hub_keras.py``; every hostile behaviour is confirmed
there by loading with ``safe_mode=False`` (the host file lands in the vocabulary, the external
SavedModel loads, the embedded pickle writes its marker).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modelwarden.analysis.interface import Severity
from modelwarden.scanner import scan
from tests.test_hub_directories import check_manifest


@pytest.fixture(scope="module")
def kfx(fixture_dir) -> Path:
    return fixture_dir("build_hub_keras")


def test_every_fixture_matches_the_manifest(kfx):
    check_manifest(kfx, "keras-hub", 10)


def test_relative_vocabulary_is_found_where_path_heuristics_are_silent(kfx):
    r = scan(str(kfx / "string_lookup_relative.keras"))
    assert {f.rule_id for f in r.findings} == {"MW310"}
    assert "'host-secret'" in r.findings[0].message


def test_severities_say_what_the_loader_does(kfx):
    url = [f for f in scan(str(kfx / "integer_lookup_url.keras")).findings if f.rule_id == "MW310"]
    assert url[0].severity == Severity.CRITICAL and url[0].capability == "network"
    for name in ("tfsm_relative.keras", "torch_wrapper_linear.keras"):
        assert max(f.severity for f in scan(str(kfx / name)).findings) == Severity.CRITICAL
