"""Runtime dependencies of ``run`` and ``serve``: present or not, and the exact command that installs them.

Checked without importing them: TensorFlow takes seconds to import and must never load in
the host process.  The sandboxed worker runs this same interpreter with only the path entries
``sandbox.interface.plan_filesystem`` binds (the Python prefixes and site-packages
directories, never PYTHONPATH or a checkout), so a package is looked up on exactly those
entries too, with ``PathFinder`` (which locates a top-level package without executing it).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from modelwarden.errors import ModelwardenError


@dataclass(frozen=True)
class Requirement:
    """A module a command needs, and the extra of ``modelwarden`` that provides it."""

    module: str
    extra: str
    needed_by: str  # for people: "`modelwarden run` and `serve`"


RUN = (Requirement("tensorflow", "tf", "`modelwarden run` and `serve`"),
       Requirement("numpy", "tf", "`modelwarden run` and `serve`"))
SERVE = tuple(Requirement(m, "serve", "`modelwarden serve`") for m in ("uvicorn", "orjson", "grpc"))


class MissingDependency(ModelwardenError):
    """A package ``run`` or ``serve`` needs is not installed (exit 3)."""

    exit_code = 3


def install_command(extras: str) -> str:
    """The pip command that installs ``modelwarden[extras]`` into this interpreter."""
    pip = f"{shlex.quote(sys.executable)} -m pip install"
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").is_file() and (checkout / "src" / "modelwarden").is_dir():
        return f"{pip} -e {shlex.quote(f'{checkout}[{extras}]')}"  # an editable install of a checkout
    return f"{pip} {shlex.quote(f'modelwarden[{extras}]')}"


def worker_path() -> list[str]:
    """The import path a sandboxed worker gets: sys.path entries inside the Python prefixes or
    named site-packages/dist-packages (the rule ``plan_filesystem`` applies)."""
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix)}
    out = []
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and (real.endswith(("site-packages", "dist-packages"))
                     or any(real == r or real.startswith(r + "/") for r in roots)):
            out.append(entry)
    return out


def installed(module: str) -> bool:
    """Whether a sandboxed worker could import ``module``: importable by this interpreter, and
    found on the worker's path (located, never imported)."""
    try:
        return (importlib.util.find_spec(module) is not None
                and importlib.machinery.PathFinder.find_spec(module, worker_path()) is not None)
    except (ImportError, ValueError):
        return False


def missing(requirements: tuple[Requirement, ...]) -> list[Requirement]:
    return [r for r in requirements if not installed(r.module)]


def require(command: str, requirements: tuple[Requirement, ...]) -> None:
    """Raise :class:`MissingDependency` naming every missing module and the install command."""
    gone = missing(requirements)
    if gone:
        extras = ",".join(dict.fromkeys(r.extra for r in gone))
        names = ", ".join(r.module for r in gone)
        raise MissingDependency(f"`modelwarden {command}` needs {names}, which this Python "
                                f"({sys.executable}) cannot import; install with: {install_command(extras)}")
