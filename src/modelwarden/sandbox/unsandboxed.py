"""No isolation at all: the worker runs as a plain child process (rlimits only).

Only reachable through ``--unsafe-no-sandbox-run-untrusted-code`` /
``Sandbox(backend="unsafe-none")``; useful for measurements and debugging.
"""

from __future__ import annotations

from modelwarden.sandbox.interface import Backend, LaunchSpec, WorkerProcess
from modelwarden.sandbox.namespaces import popen_python


class UnsandboxedBackend(Backend):
    name = "unsafe-none"
    description = "NO ISOLATION: runs untrusted model code as you, with your files and network"
    boot_frame = False

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return True, "always (and never safe)"

    def start(self, spec: LaunchSpec) -> WorkerProcess:
        proc = popen_python("exec_main", spec.channel_fd, spec.debug)
        for path in spec.cgroup_procs:
            with open(path, "w") as f:
                f.write(str(proc.pid))
        return WorkerProcess(proc, kill_pids=[])
