"""Docs that are generated must stay true."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_rules_doc_is_up_to_date():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_rules_doc.py"), "--check"], cwd=ROOT)
    assert proc.returncode == 0, "docs/rules.md is stale: run python tools/gen_rules_doc.py"


def test_catalog_ops_are_stock_or_documented_legacy():
    from modelwarden.catalog import load_catalog

    cat = load_catalog()
    legacy = {"Rpc", "TryRpc"}  # removed from TensorFlow; still recognised in old graphs
    assert {op for op in cat.specs if not cat.is_stock(op)} <= legacy
