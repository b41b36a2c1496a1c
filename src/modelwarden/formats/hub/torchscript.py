"""TorchScript archives: the ``code/`` members are source that ``torch.jit.load`` compiles and runs.

A TorchScript archive is a ``torch.save`` zip plus ``<root>/code/**.py`` (one module per
class namespace, ``__torch__/...``) and ``constants.pkl``.  ``torch.jit.load`` compiles
the source with TorchScript's own frontend; ``__setstate__`` methods run while the
archive loads, ``forward`` on every call.  The source is Python syntax, so it is parsed
with :mod:`ast` (never executed) into the same :class:`PythonSource` facts as other code
run on load; the TorchScript rules say which ops need native libraries, touch files or
talk to other processes.
"""

from __future__ import annotations

import os
import zipfile

from modelwarden.errors import InputError
from modelwarden.formats.archive import open_regular
from modelwarden.formats.hub.pysource import MAX_SOURCE_BYTES, SourceBudget
from modelwarden.formats.interface import DEFAULT_LIMITS, Limits
from modelwarden.ir import TORCHSCRIPT_ROLE as ROLE
from modelwarden.ir import PythonSource

MAX_CODE_MEMBERS = 5000


def torchscript_sources(path: str, names: list[str], limits: Limits = DEFAULT_LIMITS) -> tuple[PythonSource, ...]:
    """Parse the archive's ``code/*.py`` members ``names`` (bounded in count and size)."""
    out: list[PythonSource] = []
    budget = SourceBudget()
    with os.fdopen(open_regular(path), "rb") as fh:
        try:
            with zipfile.ZipFile(fh) as zf:
                for name in names[:MAX_CODE_MEMBERS]:
                    try:
                        with zf.open(name) as member:
                            data = member.read(min(MAX_SOURCE_BYTES, limits.max_member_bytes) + 1)
                    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, KeyError) as exc:
                        out.append(PythonSource(name, ROLE, error=f"member cannot be read ({exc})"))
                        continue
                    out.append(budget.parse(data, name, ROLE))
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise InputError(path, f"not a valid zip archive ({exc})") from None
    return tuple(out)
