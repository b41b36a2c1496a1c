"""Limits, the filesystem view every backend builds, and the Backend interface."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelwarden.errors import UsageError

GiB = 1 << 30
MiB = 1 << 20

# Where things appear inside the sandbox.
SANDBOX_MODEL_DIR = "/model"
SANDBOX_PKG_DIR = "/opt/modelwarden/pkg"  # parent of the read-only modelwarden package
SANDBOX_PY_ROOT = "/opt/modelwarden/py"  # Python prefix(es) and site dirs: /opt/modelwarden/py/N
SANDBOX_POLICY_FILE = "/opt/modelwarden/policy/policy.toml"  # its directory is the copy's own tmpfs


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one worker; every field has a safe default.

    ``timeout_s`` is the wall-clock deadline of one call (load or predict); when it passes
    the worker's whole process tree is killed.  ``cpu_seconds`` is the worker's lifetime CPU
    budget (RLIMIT_CPU).  ``max_processes`` counts tasks, i.e. processes *and threads*
    (TensorFlow starts one thread per core per pool).  ``memory_bytes`` is enforced by a
    memory cgroup when the host delegates one, else by RLIMIT_AS (see docs/sandbox.md).
    """

    memory_bytes: int = 2 * GiB
    timeout_s: float = 30.0
    load_timeout_s: float = 120.0
    cpu_seconds: int = 900
    max_processes: int = 256
    max_file_bytes: int = 64 * MiB
    max_open_files: int = 256
    tmpfs_bytes: int = 64 * MiB
    max_output_bytes: int = 256 * MiB
    max_input_bytes: int = 1 * GiB
    cpus: int | None = None
    rlimit_as_headroom: int | None = None  # address space beyond memory_bytes under RLIMIT_AS; None: measured default

    def as_headroom(self) -> int:
        """Virtual address space TensorFlow reserves without using it (thread stacks, code, arenas).

        Measured (docs/sandbox.md): MobileNetV2 peaks at 1.21 GiB of address space for 0.62 GiB
        resident on 2 cores with MALLOC_ARENA_MAX=2; stacks grow with the core count.
        """
        if self.rlimit_as_headroom is not None:
            return self.rlimit_as_headroom
        return GiB + 32 * MiB * (os.cpu_count() or 1)

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "cpu_seconds", "max_processes", "max_file_bytes", "max_open_files",
                     "tmpfs_bytes", "max_output_bytes", "max_input_bytes"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise UsageError(f"SandboxLimits.{name} must be a positive integer, got {value!r}")
        for name in ("timeout_s", "load_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0 or value != value:
                raise UsageError(f"SandboxLimits.{name} must be a positive number of seconds, got {value!r}")
        if self.cpus is not None and (type(self.cpus) is not int or not 1 <= self.cpus <= (os.cpu_count() or 1)):
            raise UsageError(f"SandboxLimits.cpus must be between 1 and {os.cpu_count()}, got {self.cpus!r}")
        if self.max_open_files < 32:
            raise UsageError("SandboxLimits.max_open_files must be at least 32 (Python and TensorFlow need some)")
        if self.memory_bytes < 256 * MiB:
            raise UsageError("SandboxLimits.memory_bytes must be at least 256 MiB (TensorFlow alone needs more)")


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)
_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``2GiB``/``512M``/``1048576`` -> bytes (K/M/G/T are binary multiples either way)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(f"invalid size {text!r} (examples: 2GiB, 512MiB, 1048576)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def parse_duration(text: str) -> float:
    """``30s``/``500ms``/``2m``/``30`` -> seconds."""
    m = _TIME_RE.match(text)
    if not m:
        raise UsageError(f"invalid duration {text!r} (examples: 30s, 500ms, 2m)")
    mult = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[(m.group(2) or "").lower() or None]
    return float(m.group(1)) * mult


# -- the filesystem view ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bind:
    """Host path ``src`` appears read-only at ``dst`` inside the sandbox."""

    src: str
    dst: str
    noexec: bool = False


@dataclass(frozen=True)
class FsPlan:
    """What the worker sees: read-only binds, symlinks, its sys.path and the model path."""

    binds: tuple[Bind, ...]
    symlinks: tuple[tuple[str, str], ...]  # (path inside, target)
    sys_path: tuple[str, ...]
    model_path: str  # the model as seen inside
    host_model: str
    python: str  # interpreter path inside (for exec-based backends)
    ld_library_path: str = ""
    policy_path: str = ""


_SYSTEM_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32")


def _package_dir() -> Path:
    import modelwarden

    return Path(modelwarden.__file__).resolve().parent


def plan_filesystem(model: str | os.PathLike, policy_file: str | None = None) -> FsPlan:
    """The minimal view for running ``model``: system libraries, the Python runtime and its
    site dirs, the modelwarden package alone (never the checkout around it), the model.

    Nothing under a home directory, /root, /tmp or the project checkout is bound except the
    exact directories above; they appear under /opt/modelwarden/ so their host location
    (e.g. ``/root/.pyenv/...``) does not exist inside.
    """
    model_path = Path(model).resolve()
    binds: list[Bind] = []
    symlinks: list[tuple[str, str]] = []
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            symlinks.append((d, os.readlink(d)))
        elif os.path.isdir(d):
            binds.append(Bind(d, d))
    if os.path.isfile("/etc/ld.so.cache"):
        binds.append(Bind("/etc/ld.so.cache", "/etc/ld.so.cache"))

    pkg = _package_dir()
    checkout = pkg.parent
    roots: dict[str, str] = {}  # host root -> sandbox root

    def mapped(path: str) -> str | None:
        real = os.path.realpath(path)
        for d in _SYSTEM_DIRS:
            if not os.path.islink(d) and (real == d or real.startswith(d + "/")):
                return real
        for host, inside in roots.items():
            if real == host or real.startswith(host + "/"):
                return inside + real[len(host):]
        return None

    def add_root(path: str) -> None:
        real = os.path.realpath(path)
        if mapped(real) is None and os.path.isdir(real):
            inside = f"{SANDBOX_PY_ROOT}/{len(roots)}"
            roots[real] = inside
            binds.append(Bind(real, inside))

    for p in dict.fromkeys([sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix]):
        add_root(p)
    sys_path: list[str] = []
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        real = os.path.realpath(entry)
        in_prefix = any(real == r or real.startswith(r + "/") for r in list(roots))
        if not in_prefix and not real.endswith(("site-packages", "dist-packages")):
            continue  # the script's directory, PYTHONPATH, an editable checkout (src/): never bound
        if real == str(checkout) and not checkout.name.endswith(("site-packages", "dist-packages")):
            continue
        add_root(real)
        inside = mapped(real)
        if inside:
            sys_path.append(inside)
    if not (checkout.name.endswith(("site-packages", "dist-packages")) and mapped(str(pkg))):
        binds.append(Bind(str(pkg), f"{SANDBOX_PKG_DIR}/modelwarden"))
        sys_path.insert(0, SANDBOX_PKG_DIR)

    if model_path.is_dir():
        binds.append(Bind(str(model_path), SANDBOX_MODEL_DIR, noexec=True))
        inside_model = SANDBOX_MODEL_DIR
    elif model_path.is_file():
        inside_model = f"{SANDBOX_MODEL_DIR}/{model_path.name}"
        binds.append(Bind(str(model_path), inside_model, noexec=True))
    else:
        raise UsageError(f"{model}: no such model file or directory")
    policy_inside = ""
    if policy_file:
        binds.append(Bind(str(Path(policy_file).resolve()), SANDBOX_POLICY_FILE, noexec=True))
        policy_inside = SANDBOX_POLICY_FILE

    exe = mapped(os.path.realpath(sys.executable)) or mapped(sys.executable) or sys.executable
    libdir = mapped(os.path.join(sys.base_prefix, "lib")) or ""
    return FsPlan(tuple(binds), tuple(symlinks), tuple(dict.fromkeys(sys_path)), inside_model,
                  str(model_path), exe, libdir, policy_inside)


# -- backends --------------------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A started worker: the host-side process to wait for and the pid whose death ends the tree."""

    proc: subprocess.Popen
    kill_pids: list[int] = field(default_factory=list)  # killed (SIGKILL) to tear the tree down
    notes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a backend needs to start one worker."""

    plan: FsPlan
    limits: SandboxLimits
    channel_fd: int  # the worker's end of the socketpair (inherited; every other fd is closed)
    runtime_config: dict
    cgroup_procs: tuple[str, ...] = ()  # cgroup.procs files the worker must be placed in
    debug: bool = False
    copies: tuple[dict, ...] = ()  # model trees the worker receives as descriptors (snapshot.manifest)
    template: Any = None  # namespaces backend: fork the boot process from this template.Template
    debug_fd: int | None = None  # with a template and debug: the pipe the forked worker writes to
    model_fd: int | None = None  # boot_frame backends: where the copies arrive once the scan gate passed


def worker_output(debug: bool) -> dict:
    """Popen keywords for the worker's stdout/stderr: nothing, or (debug) one pipe the parent
    copies to its stderr with control sequences neutralised, never the caller's terminal."""
    if debug:
        return {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    return {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


class Backend(ABC):
    """One isolation mechanism.  ``start`` launches a worker that speaks :mod:`protocol`.

    ``copies_model``: the worker receives the model (and policy file) as descriptors and copies
    them into its own tmpfs (:mod:`snapshot`) instead of binding the host paths.
    ``shared_memory``: warm calls may use the shared-memory fast path (:mod:`shmchannel`).
    """

    name: str = ""
    description: str = ""
    copies_model: bool = False
    shared_memory: bool = True

    @classmethod
    @abstractmethod
    def availability(cls) -> tuple[bool, str]:
        """(usable, reason) on this host, cheap enough to call per run."""

    @abstractmethod
    def start(self, spec: LaunchSpec) -> WorkerProcess:
        """Launch the worker; it must be fully isolated before any model byte is parsed."""

    def layers(self) -> list[str]:
        """Isolation layers this backend applies (for doctor and reports)."""
        return []
