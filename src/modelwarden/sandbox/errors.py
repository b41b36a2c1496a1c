"""Sandbox failures: one type per way a run can fail, each with its CLI exit code.

Every error leaves nothing behind: by the time it is raised the worker's whole
process tree has been killed and reaped, its cgroups removed and its mounts
gone with its mount namespace.
"""

from __future__ import annotations

from modelwarden.errors import ModelwardenError


class SandboxError(ModelwardenError):
    """Base class of every sandbox failure (exit 1 unless a subclass says otherwise)."""

    exit_code = 1
    code = "sandbox_error"  # stable machine-readable name (CLI --json, server)


class SandboxUnavailable(SandboxError):
    """The requested isolation backend cannot run on this host (see ``modelwarden doctor``)."""

    exit_code = 3
    code = "sandbox_unavailable"


class ScanRefused(SandboxError):
    """The static scan found problems at or above the threshold; nothing was executed."""

    exit_code = 10
    code = "scan_refused"

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class OpBlocked(SandboxError):
    """The in-sandbox re-check of the exact bytes TensorFlow would load refused the model."""

    exit_code = 11
    code = "op_blocked"


class MemoryLimitExceeded(SandboxError):
    """The worker hit its memory limit (cgroup OOM kill or allocation failure)."""

    exit_code = 12
    code = "memory_limit"


class DeadlineExceeded(SandboxError):
    """A call did not finish before its wall-clock deadline; the worker tree was killed."""

    exit_code = 13
    code = "deadline"


class WorkerCrashed(SandboxError):
    """The worker died (signal, CPU-time limit, abort) or closed the channel unexpectedly."""

    exit_code = 14
    code = "worker_crashed"


class InvalidInput(SandboxError):
    """Inputs do not match the signature (unknown/missing name, dtype or shape)."""

    exit_code = 15
    code = "invalid_input"


class OutputTooLarge(SandboxError):
    """The model produced more output than ``SandboxLimits.max_output_bytes``."""

    exit_code = 16
    code = "output_too_large"


class ProtocolViolation(SandboxError):
    """The worker sent something malformed over the channel; it was killed."""

    exit_code = 17
    code = "protocol_violation"


class ModelLoadFailed(SandboxError):
    """TensorFlow could not load the model inside the sandbox (not a policy decision)."""

    exit_code = 18
    code = "load_failed"


class ExecutionFailed(SandboxError):
    """The model raised an error while running (TensorFlow error inside the sandbox)."""

    exit_code = 19
    code = "execution_failed"


ERRORS_BY_CODE: dict[str, type[SandboxError]] = {
    cls.code: cls
    for cls in (
        SandboxError, SandboxUnavailable, ScanRefused, OpBlocked, MemoryLimitExceeded,
        DeadlineExceeded, WorkerCrashed, InvalidInput, OutputTooLarge, ProtocolViolation,
        ModelLoadFailed, ExecutionFailed,
    )
}

# Error codes the worker may report itself; anything else it claims becomes a SandboxError.
WORKER_REPORTABLE = frozenset({
    "op_blocked", "memory_limit", "invalid_input", "output_too_large", "load_failed",
    "execution_failed", "sandbox_error",
})
