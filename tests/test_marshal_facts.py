"""marshal_facts: a hand-written marshal reader, cross-checked against this Python's marshal.dumps."""

from __future__ import annotations

import marshal
import os
import struct
import time
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelwarden.formats.marshal_facts import code_facts

PROGRAM = '''
import os
def f(x, y="abc"):
    import subprocess
    return subprocess.Popen(["sh", "-c", "id"]) if x else (lambda z: eval(z))(y)
class K:
    def m(self):
        return getattr(os, "sys" + "tem")("ls")
x = {1: frozenset({"q"}), 2.5: 3j, 10 ** 40: b"by", "t": (None, True, ..., 1.5)}
'''


def _all_codes(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _all_codes(const)


def _expected(code: types.CodeType) -> tuple[set[str], set[str], int]:
    names: set[str] = set()
    strings: set[str] = set()
    codes = list(_all_codes(code))

    def consts(value):
        if isinstance(value, str):
            strings.add(value)
        elif isinstance(value, bytes):
            strings.add(value.decode("latin-1"))
        elif isinstance(value, (tuple, frozenset)):
            for item in value:
                consts(item)

    for c in codes:
        names.update(c.co_names)
        for const in c.co_consts:
            if not isinstance(const, types.CodeType):
                consts(const)
    return names, strings, len(codes)


@pytest.mark.parametrize("version", range(marshal.version + 1))
def test_matches_real_code_objects_for_every_marshal_version(version):
    code = compile(PROGRAM, "<prog>", "exec")
    facts = code_facts(marshal.dumps(code, version))
    names, strings, count = _expected(code)
    assert facts.error == ""
    assert facts.python_layout == "3.11+"
    assert set(facts.names) == names
    assert set(facts.strings) == strings
    assert facts.code_objects == count
    assert {"os", "subprocess", "Popen", "eval", "getattr"} <= set(facts.names)


def test_lambda_code_like_keras_stores_it():
    fn = lambda t: t if os.system("true") else t  # noqa: E731
    facts = code_facts(marshal.dumps(fn.__code__))
    assert facts.names == ("os", "system")
    assert facts.strings == ("true",)
    assert facts.code_objects == 1


def test_refs_to_shared_strings_and_nested_code():
    # Interned names repeated across code objects are written once and then referenced (FLAG_REF / 'r').
    src = "\n".join(f"def f{i}():\n    return open('x').read() + shared_name_{i % 3}" for i in range(20))
    data = marshal.dumps(compile(src, "<s>", "exec"))
    assert b"r" in data  # back-references present
    facts = code_facts(data)
    assert facts.error == ""
    assert facts.code_objects == 21
    assert {"open", "read", "shared_name_0", "shared_name_2"} <= set(facts.names)


# A CPython 3.8-3.10 code object, assembled field by field in that layout (no ref flags).
def _code_38(consts: tuple, names: tuple[str, ...], name: str = "<lambda>") -> bytes:
    def obj(value) -> bytes:
        return marshal.dumps(value, 2)  # version 2: no FLAG_REF, so parts concatenate

    parts = [b"c", struct.pack("<6i", 1, 0, 0, 1, 2, 67)]
    parts += [obj(b"t\x00\xa0\x01d\x01\xa1\x01S\x00"), b"(" + struct.pack("<i", len(consts))]
    parts += [c if isinstance(c, bytes) and c[:1] == b"c" else obj(c) for c in consts]
    parts += [obj(names), obj(("x",)), obj(()), obj(()), obj("<file>"), obj(name), struct.pack("<i", 1), obj(b"")]
    return b"".join(parts)


def test_python38_layout():
    inner = _code_38((None, "rm -rf /"), ("os", "system"), "inner")
    facts = code_facts(_code_38((None, inner, "inner"), ("__import__",)))
    assert facts.error == ""
    assert facts.python_layout == "3.8-3.10"
    assert set(facts.names) == {"os", "system", "__import__"}
    assert "rm -rf /" in facts.strings
    assert facts.code_objects == 2


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"", "empty"),
        (marshal.dumps(1), "not a code object"),
        (b"\xe3" + b"\x00" * 3, "not a marshalled code object"),
        (b"r\x05\x00\x00\x00", "not a marshalled code object"),  # ref before any object
        (b"(\xff\xff\xff\x7f", "not a marshalled code object"),  # 2**31 items claimed
        (b"\xa8\x01\x00\x00\x00r\x00\x00\x00\x00", "not a marshalled code object"),  # tuple holding itself
        (b")" * 10_000, "not a marshalled code object"),  # nesting past the depth bound
    ],
)
def test_malformed_inputs_give_clean_errors(data, needle):
    facts = code_facts(data)
    assert needle in facts.error
    assert facts.names == ()


def test_size_bound():
    data = marshal.dumps(compile("x = 1", "<s>", "exec"))
    assert "limit" in code_facts(data, max_bytes=len(data) - 1).error
    assert code_facts(data, max_bytes=len(data)).error == ""


def test_truncations_of_real_code_never_raise():
    data = marshal.dumps(compile(PROGRAM, "<prog>", "exec"))
    for cut in range(len(data)):
        facts = code_facts(data[:cut])
        assert facts.error  # every strict prefix is incomplete


@settings(max_examples=400, deadline=2000)
@given(st.binary(max_size=2048))
def test_random_bytes_never_raise_or_hang(data):
    start = time.monotonic()
    facts = code_facts(data)
    assert time.monotonic() - start < 1.0
    assert isinstance(facts.error, str)


@settings(max_examples=300, deadline=2000)
@given(st.data())
def test_mutated_real_code_never_raises(data):
    blob = bytearray(marshal.dumps(compile(PROGRAM, "<prog>", "exec")))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    start = time.monotonic()
    facts = code_facts(bytes(blob))
    assert time.monotonic() - start < 1.0
    assert isinstance(facts.names, tuple)
