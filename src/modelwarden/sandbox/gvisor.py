"""gVisor (``runsc``) backend: detected and reported; not implemented on this host.

``runsc`` intercepts every syscall in a user-space kernel, the strongest layer this
project could use.  It is optional: when ``runsc`` is absent the backend reports
itself unavailable (``modelwarden doctor`` says why) and ``auto`` never picks it.
"""

from __future__ import annotations

import shutil

from modelwarden.sandbox.errors import SandboxUnavailable
from modelwarden.sandbox.interface import Backend, LaunchSpec, WorkerProcess


class GvisorBackend(Backend):
    name = "gvisor"
    description = "gVisor runsc (user-space kernel)"
    boot_frame = False

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        path = shutil.which("runsc")
        if not path:
            return False, "runsc is not installed (https://gvisor.dev/docs/user_guide/install/)"
        return False, f"runsc found at {path}, but the gVisor backend is not implemented yet"

    def start(self, spec: LaunchSpec) -> WorkerProcess:
        raise SandboxUnavailable(self.availability()[1])
