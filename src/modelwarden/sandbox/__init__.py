"""Execute untrusted models in an isolated worker: ``Sandbox``, ``SandboxLimits``, errors.

Importing this package is cheap; the parent side never imports TensorFlow.
"""

from __future__ import annotations

from typing import Any

from modelwarden.sandbox.errors import (  # noqa: F401 - re-exported
    DeadlineExceeded, ExecutionFailed, InvalidInput, MemoryLimitExceeded, ModelLoadFailed, OpBlocked,
    OutputTooLarge, ProtocolViolation, SandboxError, SandboxUnavailable, ScanRefused, WorkerCrashed,
)
from modelwarden.sandbox.interface import SandboxLimits  # noqa: F401

__all__ = ["Sandbox", "SandboxLimits", "SandboxedModel", "SandboxError", "ScanRefused", "OpBlocked",
           "MemoryLimitExceeded", "DeadlineExceeded", "WorkerCrashed", "InvalidInput", "OutputTooLarge",
           "ProtocolViolation", "SandboxUnavailable", "ModelLoadFailed", "ExecutionFailed"]


def __getattr__(name: str) -> Any:  # numpy and the client are imported only when used
    if name in ("Sandbox", "SandboxedModel"):
        from modelwarden.sandbox import client

        return getattr(client, name)
    raise AttributeError(name)
