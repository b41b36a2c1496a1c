"""Command-line entry point.  Each subcommand is a module with ``add_parser`` and ``run``.

Exit codes (README): 0 ok / nothing at or above the threshold; 1 findings at or
above it (scan); 2 usage error or unreadable input; 70 an internal error (a bug: never a
traceback, and never 1, which a CI gate reads as "findings"); other codes are documented
per command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from modelwarden import __version__
from modelwarden.errors import ModelwardenError

EXIT_INTERNAL = 70  # EX_SOFTWARE

# name -> module; modules are imported only when their command runs (fast startup).
COMMANDS: dict[str, tuple[str, str]] = {
    "scan": ("modelwarden.cli.scan_cmd", "statically audit model artifacts without executing them"),
    "rules": ("modelwarden.cli.rules_cmd", "list every rule: stable id, severity, description"),
    "run": ("modelwarden.cli.run_cmd", "execute a model inside the sandbox"),
    "doctor": ("modelwarden.cli.doctor_cmd", "show which isolation layers this host offers"),
    "serve": ("modelwarden.cli.serve_cmd", "serve audited models over TensorFlow Serving's REST API, sandboxed"),
    "token": ("modelwarden.cli.token_cmd", "create, list and revoke bearer tokens for `modelwarden serve`"),
    "advisories": (
        "modelwarden.cli.advisories_cmd",
        "list published TensorFlow security advisories for an op or a model's ops",
    ),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with a one-line message
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _selected(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first non-option word), if any."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the selected command's module is imported (startup time matters)."""
    chosen = _selected(sys.argv[1:] if argv is None else argv)
    parser = _Parser(
        prog="modelwarden",
        description="Audit, sandbox and serve machine-learning models you did not write. Models are programs.",
    )
    parser.add_argument("--version", action="version", version=f"modelwarden {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == chosen:
            importlib.import_module(module).add_parser(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
    finally:
        if argv is None:  # the program itself (not a caller's main([...])), about to exit
            _skip_final_collection()
    if argv is None and _ends_at_once:
        _exit_now(code)
    return code


_ends_at_once = False  # the command that ran says nothing is left to do at exit (its ends_at_once)


def _exit_now(code: int) -> None:
    """End a finished command without the interpreter's teardown (freeing every module and the
    whole report: ~7 ms after a directory scan).  Only a command whose ``ends_at_once(args)``
    says so: its output is written (flushed here), its processes and files closed, and nothing
    it used registered work to do at exit."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: the text is lost either way, as it would be
            pass
    os._exit(code)


def _skip_final_collection() -> None:
    """Move every object still alive into the GC's permanent generation.

    A scan runs with the collector paused (:func:`modelwarden.scanner.paused_gc`), so what it
    allocated is still in the youngest generation when the process exits, and the interpreter's
    final collection traverses all of it: ~15 ms of a MobileNetV2 scan.  Nothing alive here can
    become garbage before exit, so that traversal finds nothing.
    """
    import gc

    gc.freeze()


def _main(argv: list[str] | None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help(sys.stderr)
        return 2
    global _ends_at_once
    try:
        module = importlib.import_module(args._module)
        code = int(module.run(args))
        _ends_at_once = bool(getattr(module, "ends_at_once", lambda _: False)(args))
        return code
    except ModelwardenError as exc:
        print(f"modelwarden: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a file or directory the command named could not be used
        if os.environ.get("MODELWARDEN_DEBUG"):
            raise
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"modelwarden: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug; say so plainly instead of a traceback
        if os.environ.get("MODELWARDEN_DEBUG"):
            raise
        print(f"modelwarden: internal error: {type(exc).__name__}: {str(exc)[:500]} (a bug in modelwarden; "
              "MODELWARDEN_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
