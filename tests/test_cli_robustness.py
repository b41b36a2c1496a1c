"""Every subcommand and every option, driven with hostile values: a documented exit code, never a traceback.

Generated from the argparse parsers (``modelwarden.cli.build_parser``), so a new option or a
new command is covered without editing this file.  Each case runs the real CLI in-process
(``modelwarden.cli.main``); a sample also runs as a real process.  ``serve`` always gets
``--check-config`` so it validates its configuration and exits without listening; ``run``
gets a model path that does not exist unless the model itself is the value under test, so
it stops after validating its arguments.
"""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelwarden import cli

from .conftest import ROOT

# Exit codes each command documents (README tables; cli/*_cmd.py docstrings).  1 means
# "findings" to a CI gate, so a command may exit 1 only where README says so.
DOCUMENTED = {
    "scan": {0, 1, 2, 4},
    "rules": {0, 2},
    "advisories": {0, 1, 2},
    "doctor": {0, 3},
    "serve": {0, 2, 3},
    "token": {0, 2},
    "run": {0, 2, 3, *range(10, 20)},
}

# Hostile values: names are resolved to files in the ``hostile`` fixture, the rest are literal.
FILE_VALUES = ("missing", "dangling", "loop", "unreadable", "directory", "empty_file", "junk_file")
LITERAL_VALUES = {
    "empty": "",
    "huge": "9" * 40,
    "negative": "-1",
    "zero": "0",
    "float": "1e309",
    "unicode": "模型-é-\u202e-✓",
    "spaces": "a b  c",
    "junk": "!@#$%^&*()[]{};'\\\"<>?|`~\x01\x7f",
    "long": "x" * 5000,
}


@dataclass(frozen=True)
class Case:
    command: tuple[str, ...]  # ("token", "create")
    option: str  # "--memory" or the positional's dest
    value: str  # a key of FILE_VALUES / LITERAL_VALUES, or "<flag>" / a choice


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every leaf command's parser, e.g. ("scan",), ("token", "create")."""
    out: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for name in cli.COMMANDS:
        top = cli.build_parser([name])
        p = _subparsers(top)[name]
        nested = _subparsers(p)
        if nested:
            out.update({(name, sub): q for sub, q in nested.items()})
        else:
            out[(name,)] = p
    return out


def _is_skipped(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)) or (
        action.dest.startswith("_"))


# Value-less flags whose only effect is slow and tested on its own (tests/test_cli_doctor.py).
SLOW_FLAGS = {(("doctor",), "--probe")}


def generate_cases() -> list[Case]:
    cases = []
    for command, parser in command_parsers().items():
        for action in parser._actions:
            if _is_skipped(action):
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest
            if (command, name) in SLOW_FLAGS:
                continue
            if action.nargs == 0:
                cases.append(Case(command, name, "<flag>"))
                continue
            values = [*FILE_VALUES, *LITERAL_VALUES]
            if action.choices:
                values = [*map(str, action.choices), "junk", "empty", "unicode"]
            cases.extend(Case(command, name, v) for v in values)
    return cases


CASES = generate_cases()


@pytest.fixture
def hostile(tmp_path_factory) -> dict[str, str]:
    """The hostile filesystem objects, and a harmless model (a plain .npy array) for scan.

    New for every case: a case may change them (``--output`` written through the dangling link)."""
    import numpy as np

    d = tmp_path_factory.mktemp("hostile")
    (d / "dangling").symlink_to(d / "nowhere")
    (d / "loop").symlink_to(d / "loop")
    (d / "unreadable").write_bytes(b"secret")
    os.chmod(d / "unreadable", 0)
    (d / "directory").mkdir()
    (d / "empty_file").write_bytes(b"")
    (d / "junk_file").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(200))
    np.save(d / "array.npy", np.arange(6, dtype=np.float32))
    (d / "models").mkdir()
    out = {k: str(d / k) for k in FILE_VALUES}
    out["missing"] = str(d / "no such file")
    out["npy"] = str(d / "array.npy")
    out["db"] = str(d / "tokens.json")
    out["models"] = str(d / "models")
    yield out
    os.chmod(d / "unreadable", stat.S_IRUSR | stat.S_IWUSR)


def _value(case: Case, hostile: dict[str, str]) -> str:
    if case.value in FILE_VALUES:
        return hostile[case.value]
    return LITERAL_VALUES.get(case.value, case.value)


def base_args(command: tuple[str, ...], hostile: dict[str, str]) -> tuple[list[str], list[str]]:
    """(options, positionals) that make ``command`` valid, cheap and side-effect free."""
    db = ["--token-db", hostile["db"]]
    return {
        ("scan",): (["--no-progress"], [hostile["npy"]]),
        ("rules",): ([], []),
        ("advisories",): ([], ["AddV2"]),
        ("doctor",): ([], []),
        ("serve",): (["--check-config", *db], []),
        ("token", "create"): (["--scope", "metadata", "--model", "m", *db], []),
        ("token", "list"): (db, []),
        ("token", "revoke"): (db, ["0123456789ab"]),
        ("run",): (["--inputs", "{}"], [os.path.join(hostile["missing"], "model")]),
    }[command]


def argv_for(case: Case, hostile: dict[str, str]) -> list[str]:
    options, positionals = base_args(case.command, hostile)
    value = _value(case, hostile)
    if case.option.startswith("-"):
        given = [case.option] if case.value == "<flag>" else [f"{case.option}={value}"]
        options = _without(options, case.option, takes_value=case.value != "<flag>")
        return [*case.command, *options, *given, *_positional(positionals)]
    parser = command_parsers()[case.command]
    dests = [a.dest for a in parser._actions if not a.option_strings and not _is_skipped(a)]
    positionals = [value if dest == case.option else positionals[i] for i, dest in enumerate(dests)]
    return [*case.command, *options, *_positional(positionals)]


def _without(options: list[str], option: str, takes_value: bool) -> list[str]:
    """``options`` minus ``option`` (and its value), so the case's own value is the only one."""
    out, skip = [], False
    for o in options:
        if skip:
            skip = False
        elif o == option:
            skip = takes_value
        else:
            out.append(o)
    return out


def _positional(values: list[str]) -> list[str]:
    """Positionals after ``--`` (a value may start with '-'); nothing at all when there are none."""
    return ["--", *values] if values else []


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse: usage errors and --help
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, hostile, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative junk paths (e.g. --output) land here, not in the checkout
    monkeypatch.setenv("MODELWARDEN_TOKEN_DB", hostile["db"])
    monkeypatch.delenv("MODELWARDEN_DEBUG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")


BASE_EXIT = {"run": 2}  # run's base names a model that does not exist: it stops after validating


@pytest.mark.parametrize("command", sorted(command_parsers()), ids="-".join)
def test_base_arguments_are_valid(command: tuple[str, ...], hostile, capsys):
    """Positive control: without a hostile value each command succeeds, so a case's exit is its value's doing."""
    options, positionals = base_args(command, hostile)
    code, out, err = run_in_process([*command, *options, *_positional(positionals)], capsys)
    if command == ("token", "revoke"):  # no such token id in the (empty) store
        assert code == 2 and "no token with id" in err
        return
    assert code == BASE_EXIT.get(command[0], 0), err
    if command == ("run",):
        assert "no such file or directory" in err


def test_every_command_and_option_is_covered():
    covered = {(c.command, c.option) for c in CASES}
    assert {c[0] for c, _ in covered} == set(cli.COMMANDS)
    for must in ((("scan",), "--fail-on"), (("serve",), "--tls-cert"), (("run",), "--memory"),
                 (("token", "create"), "--expires"), (("scan",), "paths")):
        assert must in covered
    assert len(CASES) > 300


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{'-'.join(c.command)}:{c.option}={c.value}")
def test_hostile_value_gets_a_documented_exit_and_no_traceback(case: Case, hostile, capsys):
    argv = argv_for(case, hostile)
    code, out, err = run_in_process(argv, capsys)
    assert "Traceback" not in err + out, (argv, err[-3000:])
    assert "internal error" not in err, (argv, err[-2000:])
    assert code in DOCUMENTED[case.command[0]], (argv, code, err[-2000:])
    assert "unrecognized arguments" not in err, (argv, err[-2000:])  # the case itself must be well formed
    if code not in (0, 1, 4):
        assert (err + out).strip(), (argv, code, "an error exit must say what is wrong")


SAMPLE = ["scan:paths=dangling", "serve:--fail-on=junk", "run:--memory=junk", "token-create:--expires=negative"]


@pytest.mark.parametrize("label", SAMPLE)
def test_a_sample_as_real_processes(label: str, hostile, tmp_path):
    case = next(c for c in CASES if f"{'-'.join(c.command)}:{c.option}={c.value}" == label)
    env = dict(os.environ, MODELWARDEN_TOKEN_DB=hostile["db"], PYTHONPATH=str(ROOT / "src"))
    env.pop("MODELWARDEN_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "modelwarden", *argv_for(case, hostile)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    said = proc.stdout + proc.stderr
    assert "Traceback" not in said and "error" in said
    if case.value in FILE_VALUES:
        assert _value(case, hostile) in said  # names the file
    if case.value == "dangling":
        assert "dangling symbolic link" in said


def test_a_crash_is_one_line_and_exit_70_never_1(monkeypatch, capsys):
    """Control for the net the cases above rely on: a bug in a command is not a traceback, and
    not exit 1 (which a CI gate reads as "findings")."""
    import modelwarden.cli.rules_cmd as rules_cmd

    def boom(args):
        raise KeyError("bug")

    monkeypatch.setattr(rules_cmd, "run", boom)
    code, out, err = run_in_process(["rules"], capsys)
    assert code == cli.EXIT_INTERNAL == 70
    assert "internal error: KeyError" in err and "Traceback" not in err and err.count("\n") == 1
    monkeypatch.setenv("MODELWARDEN_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.main(["rules"])
