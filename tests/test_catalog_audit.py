"""The catalog audit: every stock op whose signature looks file-ish has a recorded decision.

``catalog/stock_op_signatures.tsv`` is generated from TensorFlow's own op definitions
(tools/gen_stock_ops.py).  An op whose name, input names or string attributes name
files, paths, patterns, directories, URLs, addresses or serialized graphs/modules must
appear in ``ops.toml`` either under ``[ops]`` (a capability) or under ``[reviewed]``
(why it has none).  A new TensorFlow op of that kind fails this test until someone
decides.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from modelwarden.catalog import load_catalog

CATALOG = Path(__file__).resolve().parents[1] / "src" / "modelwarden" / "catalog"
FILEISH_ARG = re.compile(
    r"file|path|pattern|(^|_)dirs?($|_)|director|url|uri|vocab|graph|prefix|address|protocol|serialized|module|"
    r"program|target_name|descriptor|stream|sql|snapshot|checkpoint", re.I)
FILEISH_OP = re.compile(
    r"File|Path|Vocab|Graph|Reader|Writer|Summary|Save|Restore|Checkpoint|Record|Debug|Print|Snapshot|Rpc|Remote|"
    r"Service|Distributed|Sql|Lmdb|CSV|Matching|Import|Export|Dump|Event|Proto|Host|Send|Recv|Load|Url|Custom|Module")
TEXT_ATTRS = ("string", "list(string)")


def signatures() -> dict[str, tuple[list[str], list[tuple[str, str]]]]:
    out = {}
    for line in (CATALOG / "stock_op_signatures.tsv").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        op, inputs, attrs = (line.split("\t") + ["", ""])[:3]
        out[op] = ([i for i in inputs.split(",") if i],
                   [tuple(a.split(":", 1)) for a in attrs.split(",") if a])  # type: ignore[misc]
    return out


def fileish(op: str, inputs: list[str], attrs: list[tuple[str, str]]) -> bool:
    return bool(FILEISH_OP.search(op) or any(FILEISH_ARG.search(i) for i in inputs)
                or any(FILEISH_ARG.search(n) for n, t in attrs if t in TEXT_ATTRS))


@pytest.fixture(scope="module")
def data() -> dict:
    return tomllib.loads((CATALOG / "ops.toml").read_text("utf-8"))


def test_signatures_cover_the_stock_op_list():
    sig = signatures()
    assert len(sig) > 1500
    assert set(sig) <= load_catalog().stock_ops


def test_every_fileish_stock_op_has_a_decision(data):
    decided = set(data["ops"]) | set(data["reviewed"])
    missing = sorted(op for op, (ins, attrs) in signatures().items() if fileish(op, ins, attrs) and op not in decided)
    assert missing == [], f"stock ops with file-ish signatures and no catalog decision: {missing}"


def test_reviewed_ops_are_stock_undecided_elsewhere_and_explained(data):
    stock = load_catalog().stock_ops
    for op, why in data["reviewed"].items():
        assert op in stock, op
        assert op not in data["ops"], f"{op} is both reviewed and catalogued"
        assert isinstance(why, str) and len(why) > 20, op


@pytest.mark.parametrize("op,caps", [
    ("GenerateVocabRemapping", {"file-read"}), ("FixedUnigramCandidateSampler", {"file-read"}),
    ("Skipgram", {"file-read"}), ("DatasetFromGraph", {"graph-execution"}), ("MlirPassthroughOp", {"graph-execution"}),
    ("RegisterDatasetV2", {"network"}), ("XlaCustomCallV2", {"code-execution"}),
    ("InitializeTableFromTextFile", {"file-read"}), ("InitializeTableFromTextFileV2", {"file-read"}),
])
def test_audited_ops_are_catalogued(op, caps):
    spec = load_catalog().lookup(op)
    assert spec is not None and set(spec.capabilities) == caps


def test_the_audit_regex_finds_the_known_misses():
    """The two misses of issue 11 (a vocabulary reader, a graph runner) are file-ish by this definition."""
    sig = signatures()
    for op in ("GenerateVocabRemapping", "DatasetFromGraph", "InitializeTableFromTextFileV2"):
        assert fileish(op, *sig[op]), op
