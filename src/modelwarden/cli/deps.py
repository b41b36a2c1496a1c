"""Runtime dependencies of ``run`` and ``serve``: present or not, and the exact command that installs them.

Checked without importing them (``importlib.util.find_spec`` only locates a top-level
package; TensorFlow takes seconds to import and must never load in the host process).
The sandboxed worker runs this same interpreter with this interpreter's site directories,
so what is findable here is what the worker can import.
"""

from __future__ import annotations

import importlib.util
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
SERVE = (Requirement("starlette", "serve", "`modelwarden serve`"), Requirement("uvicorn", "serve", "`modelwarden serve`"))


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


def installed(module: str) -> bool:
    """Whether ``module`` can be imported by this interpreter (located, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
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
