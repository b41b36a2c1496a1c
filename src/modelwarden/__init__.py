"""modelwarden: audit, sandbox and serve machine-learning models you did not write.

Models are programs.  ``modelwarden.scan`` audits artifacts without executing
them; ``modelwarden.Sandbox`` executes them in an isolated worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from modelwarden.report.interface import Report


def scan(path: "str | list[str]", policy: Any = None, **kwargs: Any) -> "Report":
    """Scan one path or several; see :func:`modelwarden.scanner.scan`."""
    from modelwarden.scanner import scan as _scan

    return _scan(path, policy=policy, **kwargs)


def __getattr__(name: str) -> Any:  # lazy: importing modelwarden stays cheap
    if name in ("Sandbox", "SandboxLimits"):
        import modelwarden.sandbox as sandbox

        return getattr(sandbox, name)
    raise AttributeError(name)
