"""Renderers on hand-built reports: text layout, JSON schema, SARIF 2.1.0 schema, hostile strings."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from modelwarden.analysis import registry
from modelwarden.analysis.interface import Finding, Location, Severity
from modelwarden.report import clean, renderer
from modelwarden.report.interface import EXIT_EMPTY, ArtifactSummary, Report, ScanError, SkippedFile
from modelwarden.report.json_report import SCHEMA_VERSION
from modelwarden.report.sarif import artifact_uri
from modelwarden.report.text import ScanProgress, TextRenderer

ROOT = Path(__file__).resolve().parents[1]
JSON_SCHEMA = json.loads((ROOT / "src/modelwarden/report/scan-report.schema.json").read_text())
SARIF_SCHEMA = json.loads((ROOT / "tests/data/sarif-2.1.0-schema.json").read_text())

EVIL = "models/evil"
PYFUNC = Finding(
    "MW100", Severity.CRITICAL, "EagerPyFunc node 'pyfunc' calls a Python function registered in the loader",
    Location(EVIL, "saved_model.pb", "serve", "__inference_call_12", "pyfunc", "EagerPyFunc",
             ("signature:serving_default", "__inference_call_12"), "signature:serving_default"),
    remediation="Do not load outside the sandbox.", capability="code-execution", evidence={"token": "pyfunc_3"},
)
DEAD_PRINT = Finding(
    "MW104", Severity.MEDIUM, "PrintV2 writes tensors to file:///tmp/x",
    Location(EVIL, "saved_model.pb", "serve", "__inference_dead_3", "print", "PrintV2", (), "unreachable"),
    capability="debug-sink", evidence={"output_stream": "file:///tmp/x"},
)
LOW = Finding("MW506", Severity.LOW, "big-endian checkpoint", Location("ckpt/model.ckpt.index"))
VOCAB = Finding(
    "MW101", Severity.HIGH, "ReadFile reads assets/vocab.txt",
    Location(EVIL, "saved_model.pb", "serve", "__inference_init_1", "read", "ReadFile", (), "load-time"),
    suppressed_by="vocab file shipped in the model's assets",
)
ARTIFACTS = (
    ArtifactSummary(EVIL, "/abs/models/evil", "tf-savedmodel", 1, 12, 140, {"tf_version": "2.21.0"}),
    ArtifactSummary("ckpt/model.ckpt.index", "/abs/ckpt/model.ckpt.index", "tf-checkpoint"),
    ArtifactSummary("clean.keras", "/abs/clean.keras", "keras-v3"),
)


def make_report(findings=(PYFUNC, DEAD_PRINT, LOW), suppressed=(VOCAB,), errors=(), fail_on=Severity.MEDIUM) -> Report:
    return Report("0.1.0", "default", fail_on, ARTIFACTS, tuple(findings), tuple(suppressed), tuple(errors),
                  0.25, ("models", "ckpt", "clean.keras"))


ERRORS = (ScanError("broken/saved_model.pb", "truncated protobuf at byte 1234"),)


# ---------------------------------------------------------------- text


def test_text_groups_findings_by_artifact_most_severe_first() -> None:
    out = TextRenderer(color=False).render(make_report())
    assert "\x1b" not in out
    lines = out.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith(("models/evil", "ckpt/", "clean.keras"))]
    assert [lines[i].split()[0] for i in heads] == ["models/evil", "ckpt/model.ckpt.index", "clean.keras"]
    evil = "\n".join(lines[heads[0]:heads[1]])
    assert evil.index("CRITICAL") < evil.index("MEDIUM")
    assert "(tf-savedmodel · 1 graph · 12 functions · 140 nodes)" in lines[heads[0]]
    assert "saved_model.pb › graph serve › function __inference_call_12 › node pyfunc (EagerPyFunc)" in evil
    assert "signature:serving_default → __inference_call_12" in evil
    assert "not reachable from any signature" in evil
    assert "token: pyfunc_3" in evil and "Do not load outside the sandbox." in evil
    assert "1 suppressed finding" in evil and "vocab file shipped in the model's assets" in evil
    assert "no findings" in "\n".join(lines[heads[2]:])


def test_text_summary_line_and_verdicts() -> None:
    out = TextRenderer(color=False).render(make_report())
    summary = out.rstrip().splitlines()[-1]
    assert summary.startswith("summary: 1 critical, 0 high, 1 medium, 1 low, 0 info")
    assert "3 artifacts scanned" in summary and "1 suppressed" in summary
    assert "threshold medium → FAIL (exit 1)" in summary
    ok = TextRenderer(color=False).render(make_report(findings=(LOW,)))
    assert ok.rstrip().endswith("threshold medium → PASS (exit 0)")
    err = TextRenderer(color=False).render(make_report(errors=ERRORS))
    assert "errors (inputs that could not be read):" in err
    assert "broken/saved_model.pb: truncated protobuf at byte 1234" in err
    assert err.rstrip().endswith("→ ERROR (exit 2)")


def test_text_color_uses_ansi_and_same_words() -> None:
    report = make_report()
    colored = TextRenderer(color=True, width=200).render(report)
    assert "\x1b[" in colored
    stripped = re.sub(r"\x1b\[[0-9;]*m", "", colored)
    assert stripped == TextRenderer(color=False).render(report)


def test_no_color_env_disables_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert TextRenderer().color is False


HOSTILE_NAME = "evil\x1b]0;pwned\x07\x1b[2J\u202etxt.exe\udcff[bold]x[/bold]"


@pytest.mark.parametrize("color", [False, True])
def test_text_escapes_terminal_control_sequences_from_artifacts(color: bool) -> None:
    f = Finding("MW106", Severity.HIGH, f"custom op {HOSTILE_NAME}",
                Location(HOSTILE_NAME, HOSTILE_NAME, node=HOSTILE_NAME, op=HOSTILE_NAME), evidence={HOSTILE_NAME: HOSTILE_NAME})
    report = Report("0.1.0", "default", Severity.MEDIUM, (), (f,), errors=(ScanError(HOSTILE_NAME, HOSTILE_NAME),))
    out = TextRenderer(color=color, width=300).render(report)
    body = re.sub(r"\x1b\[[0-9;]*m", "", out)  # our own SGR styling only
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", body)
    assert "\\x1b]0;pwned\\x07" in body and "\\u202e" in body
    assert "[bold]x[/bold]" in body  # rich markup in a name is shown literally, never interpreted
    out.encode("utf-8")  # no lone surrogates left


def test_clean() -> None:
    assert clean("a\x1bb\nc\td") == "a\\x1bb\\nc\\td"
    assert clean("a\nb\tc", newlines=True) == "a\nb\tc"
    assert clean("\udcff").encode("utf-8") == b"\\udcff"


def test_progress_draws_only_for_many_inputs() -> None:
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    with ScanProgress(stream) as progress:
        progress(0, 1, "only/one")
        assert progress._bar is None
    stream = Tty()
    with ScanProgress(stream) as progress:
        for i in range(3):
            progress(i, 3, f"model_{i}\x1b[2J[red]")
        assert progress._bar is not None
    assert "\x1b[2J" not in stream.getvalue()


# ---------------------------------------------------------------- json


def json_validator() -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(JSON_SCHEMA)
    return jsonschema.Draft202012Validator(JSON_SCHEMA, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("errors", [(), ERRORS])
def test_json_validates_against_shipped_schema(errors) -> None:
    data = json.loads(renderer("json").render(make_report(errors=errors)))
    json_validator().validate(data)
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["exit_code"] == (2 if errors else 1)
    assert data["verdict"] == ("error" if errors else "fail")


def test_json_content() -> None:
    data = json.loads(renderer("json").render(make_report()))
    assert data["tool"] == {"name": "modelwarden", "version": "0.1.0"}
    assert data["policy"] == "default" and data["fail_on"] == "medium"
    assert data["counts"] == {"info": 0, "low": 1, "medium": 1, "high": 0, "critical": 1}
    assert data["failing"] == 2
    assert data["inputs"] == ["models", "ckpt", "clean.keras"]
    first = data["findings"][0]
    assert first["rule_id"] == "MW100" and first["rule_name"] == registry.meta("MW100").name
    assert first["severity"] == "critical" and first["capability"] == "code-execution"
    assert first["location"]["logical"] == "serve/__inference_call_12/pyfunc"
    assert first["location"]["call_path"] == ["signature:serving_default", "__inference_call_12"]
    assert first["fingerprint"] == PYFUNC.fingerprint
    assert first["evidence"] == {"token": "pyfunc_3"}
    assert data["suppressed"][0]["justification"] == "vocab file shipped in the model's assets"
    evil = data["artifacts"][0]
    assert evil["counts"]["critical"] == 1 and evil["suppressed"] == 1 and evil["metadata"] == {"tf_version": "2.21.0"}


def test_json_schema_rejects_drift() -> None:
    """The schema is strict enough to catch a renamed or missing field."""
    data = json.loads(renderer("json").render(make_report()))
    validator = json_validator()
    broken = json.loads(json.dumps(data))
    broken["findings"][0]["ruleId"] = broken["findings"][0].pop("rule_id")
    assert list(validator.iter_errors(broken))
    broken = json.loads(json.dumps(data))
    del broken["suppressed"][0]["justification"]
    assert list(validator.iter_errors(broken))
    broken = json.loads(json.dumps(data))
    broken["findings"][0]["severity"] = "severe"
    assert list(validator.iter_errors(broken))


def test_json_hostile_strings_stay_valid_utf8() -> None:
    f = Finding("MW106", Severity.HIGH, HOSTILE_NAME, Location(HOSTILE_NAME, node=HOSTILE_NAME), evidence={"k": "\udcff"})
    text = renderer("json").render(Report("0.1.0", "default", Severity.MEDIUM, (), (f,)))
    text.encode("utf-8")
    data = json.loads(text)
    json_validator().validate(data)
    assert "\x1b" not in data["findings"][0]["message"]


@pytest.mark.parametrize("fmt", ["json", "sarif"])
def test_rendered_text_is_the_standard_encoders(fmt: str) -> None:
    """jsontext writes exactly what json.dumps(indent=2, ensure_ascii=False) writes (reports
    whose keys and values are plain data; the hostile strings included)."""
    hostile = Finding("MW106", Severity.HIGH, HOSTILE_NAME, Location(HOSTILE_NAME, node=HOSTILE_NAME),
                      evidence={"k": "\udcff", "q": 'a"b\\c\u2028'})
    for report in (make_report(), make_report(errors=ERRORS), Report("0.1.0", "default", Severity.MEDIUM, (), (hostile,))):
        text = renderer(fmt).render(report)
        assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("data", [
    {}, [], {"a": [], "b": {}}, [1, -0.0, 1e-07, 10**30, None, True, False, "é\x00\ud800"],
    {"x": [float("nan"), float("inf"), -float("inf")]}, {"deep": [[[[{"k": (1, "2")}]]]]},
    {1: "non-string key"}, {"set": {1}},
])
def test_jsontext_matches_json_dumps(data: object) -> None:
    from modelwarden.report import jsontext

    for indent in (0, 2, 4):
        try:
            expected = json.dumps(data, indent=indent, ensure_ascii=False)
        except TypeError:
            with pytest.raises(TypeError):
                jsontext.dumps(data, indent)
            continue
        assert jsontext.dumps(data, indent) == expected


def test_json_counts_per_artifact_for_many_artifacts() -> None:
    """Per-artifact counts come from one pass over the findings (a directory of n models is not O(n^2))."""
    n = 300
    arts = tuple(ArtifactSummary(f"m{i}", f"m{i}", "tf-savedmodel", 1, 1, 1, {}) for i in range(n))
    found = tuple(Finding("MW104", Severity.MEDIUM if i % 2 else Severity.LOW, "x", Location(f"m{i}", node=f"n{j}"))
                  for i in range(n) for j in range(i % 3))
    sup = (Finding("MW101", Severity.HIGH, "y", Location("m7"), suppressed_by="ok"),)
    data = json.loads(renderer("json").render(Report("0.1.0", "default", Severity.MEDIUM, arts, found, suppressed=sup)))
    for i, a in enumerate(data["artifacts"]):
        sev = "medium" if i % 2 else "low"
        assert a["counts"][sev] == i % 3 and sum(a["counts"].values()) == i % 3
        assert a["suppressed"] == (1 if i == 7 else 0)


# ---------------------------------------------------------------- sarif


def sarif_validator() -> jsonschema.Draft4Validator:
    jsonschema.Draft4Validator.check_schema(SARIF_SCHEMA)
    return jsonschema.Draft4Validator(SARIF_SCHEMA, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


@pytest.mark.parametrize("errors", [(), ERRORS])
def test_sarif_validates_against_official_schema(errors) -> None:
    data = json.loads(renderer("sarif").render(make_report(errors=errors)))
    sarif_validator().validate(data)


def test_sarif_schema_catches_mistakes() -> None:
    data = json.loads(renderer("sarif").render(make_report()))
    validator = sarif_validator()
    for mutate in (
        lambda d: d["runs"][0]["results"][0].update(level="fatal"),
        lambda d: d["runs"][0]["results"][0].pop("message"),
        lambda d: d["runs"][0]["invocations"][0].pop("executionSuccessful"),
        lambda d: d["runs"][0]["results"][-1]["suppressions"][0].update(kind="policy"),
        lambda d: d.update(version="2.0.0"),
    ):
        broken = json.loads(json.dumps(data))
        mutate(broken)
        assert list(validator.iter_errors(broken))


def test_sarif_driver_lists_every_rule() -> None:
    data = json.loads(renderer("sarif").render(make_report(findings=())))
    driver = data["runs"][0]["tool"]["driver"]
    assert driver["name"] == "modelwarden" and driver["version"] == "0.1.0"
    assert driver["informationUri"].startswith("https://")
    metas = registry.all_meta()
    assert [r["id"] for r in driver["rules"]] == [m.id for m in metas]
    by_id = {r["id"]: r for r in driver["rules"]}
    mw100 = by_id["MW100"]
    assert mw100["name"] == registry.meta("MW100").name
    assert mw100["shortDescription"]["text"] == registry.meta("MW100").summary
    assert mw100["defaultConfiguration"]["level"] == "error"
    assert mw100["properties"]["security-severity"] == "9.5"
    assert by_id["MW104"]["defaultConfiguration"]["level"] == "warning"
    assert all(r["help"]["text"] and r["fullDescription"]["text"] for r in driver["rules"])


def test_sarif_results() -> None:
    data = json.loads(renderer("sarif").render(make_report(errors=ERRORS)))
    run = data["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    results = run["results"]
    assert len(results) == 4  # three findings and one suppressed
    first = results[0]
    assert first["ruleId"] == "MW100" and rules[first["ruleIndex"]]["id"] == "MW100"
    assert first["level"] == "error"
    loc = first["locations"][0]
    assert loc["physicalLocation"]["artifactLocation"]["uri"] == "models/evil/saved_model.pb"
    assert [(l["kind"], l["fullyQualifiedName"]) for l in loc["logicalLocations"]] == [
        ("module", "serve"), ("function", "serve/__inference_call_12"), ("member", "serve/__inference_call_12/pyfunc")]
    assert first["partialFingerprints"] == {"modelwarden/v1": PYFUNC.fingerprint}
    assert first["properties"]["callPath"] == ["signature:serving_default", "__inference_call_12"]
    assert "suppressions" not in first
    assert results[2]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "ckpt/model.ckpt.index"
    assert results[2]["level"] == "note"
    suppressed = results[3]
    assert suppressed["ruleId"] == "MW101"
    assert suppressed["suppressions"] == [
        {"kind": "external", "status": "accepted", "justification": "vocab file shipped in the model's assets"}]
    inv = run["invocations"][0]
    assert inv["exitCode"] == 2 and inv["executionSuccessful"] is False
    note = inv["toolExecutionNotifications"][0]
    assert note["level"] == "error" and "truncated protobuf" in note["message"]["text"]
    assert note["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "broken/saved_model.pb"


def test_sarif_overridden_severity_sets_result_level() -> None:
    lowered = DEAD_PRINT.with_severity(Severity.LOW)
    data = json.loads(renderer("sarif").render(make_report(findings=(lowered,), suppressed=())))
    assert data["runs"][0]["results"][0]["level"] == "note"
    assert data["runs"][0]["invocations"][0]["exitCode"] == 0


def test_sarif_unregistered_rule_still_has_a_descriptor() -> None:
    f = Finding("MW999", Severity.LOW, "from a plugin", Location("x.pb"))
    data = json.loads(renderer("sarif").render(make_report(findings=(f,), suppressed=())))
    sarif_validator().validate(data)
    result = data["runs"][0]["results"][0]
    assert data["runs"][0]["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == "MW999"


@pytest.mark.parametrize(
    ("artifact", "file", "uri"),
    [
        ("models/evil", "saved_model.pb", "models/evil/saved_model.pb"),
        ("models/evil", "", "models/evil"),
        ("model.pb", "model.pb", "model.pb"),
        ("models/evil", "variables/variables.index", "models/evil/variables/variables.index"),
        ("/abs/m dir", "saved_model.pb", "file:///abs/m%20dir/saved_model.pb"),
        ("c:odd#name?.pb", "", "c%3Aodd%23name%3F.pb"),
        ("../up/m.pb", "", "../up/m.pb"),
    ],
)
def test_artifact_uri(artifact: str, file: str, uri: str) -> None:
    assert artifact_uri(artifact, file) == uri


# RFC 3986 URI-reference: allowed characters, and a relative reference's first segment has no ':'
_URI_CHARS = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _uris(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "uri":
                yield value
            else:
                yield from _uris(value)
    elif isinstance(node, list):
        for item in node:
            yield from _uris(item)


def assert_uri_references(data) -> None:
    """jsonschema has no 'uri-reference' checker installed, so check the format here."""
    uris = list(_uris(data))
    assert uris
    for uri in uris:
        assert _URI_CHARS.match(uri), uri
        assert not re.search(r"%(?![0-9A-F]{2})", uri), uri
        if not _SCHEME.match(uri):
            assert ":" not in uri.split("/", 1)[0], uri


def test_sarif_hostile_strings_validate() -> None:
    f = Finding("MW106", Severity.HIGH, HOSTILE_NAME, Location(HOSTILE_NAME, HOSTILE_NAME, HOSTILE_NAME, node=HOSTILE_NAME))
    text = renderer("sarif").render(Report("0.1.0", "default", Severity.MEDIUM, (), (f,),
                                           errors=(ScanError("a b:c/%zz", "x"),)))
    text.encode("utf-8")
    data = json.loads(text)
    sarif_validator().validate(data)
    assert_uri_references(data)


def test_sarif_uris_are_uri_references() -> None:
    assert_uri_references(json.loads(renderer("sarif").render(make_report(errors=ERRORS))))


def test_unknown_renderer() -> None:
    with pytest.raises(ValueError, match="unknown report format 'xml'"):
        renderer("xml")


# ---------------------------------------------------------------- empty scans, files not scanned

SKIPPED = (SkippedFile("data/notes.txt", "unrecognised format"), SkippedFile("data/\x1b[31mevil", "unrecognised format"),
           SkippedFile("data/link", "symbolic link (never followed)"))


def test_exit_codes_for_empty_scans() -> None:
    empty = Report("0.1.0", "default", Severity.MEDIUM, (), ())
    assert empty.empty and empty.exit_code == EXIT_EMPTY == 4
    assert replace(empty, allow_empty=True).exit_code == 0
    assert replace(empty, errors=ERRORS).exit_code == 2 and not replace(empty, errors=ERRORS).empty
    assert not make_report().empty and make_report().exit_code == 1


@pytest.mark.parametrize("fmt", ["text", "json", "sarif", "html"])
def test_every_format_counts_files_not_scanned_and_lists_them_when_verbose(fmt: str) -> None:
    report = replace(make_report(), skipped=SKIPPED)
    quiet, loud = renderer(fmt).render(report), renderer(fmt, verbose=True).render(report)
    assert "\x1b" not in quiet + loud  # hostile file names are cleaned
    if fmt == "json":
        q, v = json.loads(quiet), json.loads(loud)
        for doc in (q, v):
            jsonschema.Draft202012Validator(JSON_SCHEMA).validate(doc)
        assert q["skipped"] == {"count": 3, "files": [],
                                "reasons": {"unrecognised format": 2, "symbolic link (never followed)": 1}}
        assert [f["path"] for f in v["skipped"]["files"]] == ["data/notes.txt", "data/\\x1b[31mevil", "data/link"]
        return
    if fmt == "sarif":
        for doc in (quiet, loud):
            jsonschema.Draft7Validator(SARIF_SCHEMA).validate(json.loads(doc))
    assert "2 unrecognised format" in quiet and "1 symbolic link (never followed)" in quiet
    assert "notes.txt" not in quiet and "notes.txt" in loud and "data/link" in loud


@pytest.mark.parametrize("fmt", ["text", "json", "sarif", "html"])
def test_every_format_says_nothing_was_found(fmt: str) -> None:
    empty = Report("0.1.0", "default", Severity.MEDIUM, (), (), inputs=("wrong/folder",))
    out = renderer(fmt).render(empty)
    if fmt == "json":
        assert json.loads(out)["verdict"] == "empty" and json.loads(out)["exit_code"] == 4
        assert json.loads(renderer(fmt).render(replace(empty, allow_empty=True)))["verdict"] == "pass"
    elif fmt == "sarif":
        inv = json.loads(out)["runs"][0]["invocations"][0]
        assert inv["exitCode"] == 4 and inv["toolExecutionNotifications"][0]["level"] == "warning"
        assert "wrong/folder" in inv["toolExecutionNotifications"][0]["message"]["text"]
    else:
        assert "no model artifacts found" in out and "exit 4" in out
