"""Worker-supplied text reaches the terminal only with its control characters made visible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelwarden.sanitize import printable

ROOT = Path(__file__).resolve().parents[1]
RAW = [b"\x1b", b"\x07", b"\x9b", b"\r", "\u202e".encode(), b"\xc2\x9b"]  # ESC, BEL, C1 CSI, CR, RLO


def _dangerous(ch: str) -> bool:
    import unicodedata

    return (ch not in "\n\t" and (ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0)) or unicodedata.category(ch) in (
        "Cf", "Cs", "Co", "Zl", "Zp")


def test_escape_sequences_become_visible_text():
    text = "a\x1b[2J\x1b]52;c;aGk=\x07b\rc\u202eevil\u2066\x9b31m\x00\x7f é 中\n\tend"
    out = printable(text)
    assert out == ("a\\x1b[2J\\x1b]52;c;aGk=\\x07b\\x0dc\\u202eevil\\u2066\\x9b31m\\x00\\x7f é 中\n\tend")
    assert printable("plain text\nline 2") == "plain text\nline 2"
    assert printable("x" * 50, 10) == "x" * 10 + "... [truncated, 50 characters in all]"
    assert printable("\x1b" * 50, 10) == "\\x1b\\x1b\\x" + "... [truncated, 50 characters in all]"
    assert printable("x" * 10, 10) == "x" * 10
    assert printable(42) == "42"  # type: ignore[arg-type]


@given(st.text())
def test_no_dangerous_character_survives(text):
    assert not any(_dangerous(ch) for ch in printable(text))


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Zl", "Zp")), max_size=50))
def test_harmless_text_is_unchanged(text):
    assert printable(text) == text


def _sandbox_ok() -> tuple[bool, str]:
    from modelwarden.sandbox.namespaces import probe_namespaces

    return probe_namespaces()


_NS_OK, _NS_WHY = _sandbox_ok()


@pytest.mark.sandbox
@pytest.mark.skipif(not _NS_OK, reason=f"namespaces unavailable: {_NS_WHY}")
def test_attacker_exception_messages_are_neutralised():
    from modelwarden.sandbox import ExecutionFailed
    from tests.attacker import AttackerWorker
    from tests.fixtures.build_terminal import PAYLOAD

    with AttackerWorker() as w:
        assert w.run("result = 1") == 1  # control: the attacker's code runs
        with pytest.raises(ExecutionFailed) as info:
            w.run(f"raise RuntimeError({PAYLOAD!r})")
    message = str(info.value)
    assert "\\x1b[2J" in message and "\\x1b]52;c;cm0gLXJmIH4=\\x07" in message  # the attack arrived, visibly
    assert not any(_dangerous(ch) for ch in message)


@pytest.mark.sandbox
@pytest.mark.skipif(not _NS_OK, reason=f"namespaces unavailable: {_NS_WHY}")
def test_cli_stderr_has_no_raw_control_bytes(fixture_dir):
    model = fixture_dir("build_terminal") / "terminal"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run([sys.executable, "-m", "modelwarden", "run", str(model), "--skip-scan",
                          "--inputs", json.dumps({"x": [1.0]})], capture_output=True, timeout=180, env=env, cwd=ROOT)
    assert res.returncode == 19, res.stderr[-2000:]  # ExecutionFailed: the assertion fired
    assert b"\\x1b[2J" in res.stderr and b"\\x1b]52;c;" in res.stderr  # control: the payload reached the parent
    for raw in RAW:
        assert raw not in res.stderr, raw
    ok = subprocess.run([sys.executable, "-m", "modelwarden", "run", str(model), "--skip-scan",
                         "--inputs", json.dumps({"x": [-1.0]})], capture_output=True, timeout=180, env=env, cwd=ROOT)
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"y": [-2.0]}  # the model itself works
