"""Legacy Keras HDF5 (``.h5``) models and weight files.

libhdf5 is C and crafted files have crashed it, so every h5py call happens in
a forked child process with an address-space, CPU and file-size limit and a
wall-clock timeout.  The child sends plain JSON back through a pipe (never
pickle); a crash, a hang or a runaway allocation becomes an
:class:`~modelwarden.errors.InputError` naming the file.

The reader keeps the root attributes Keras writes: ``model_config`` (JSON),
``training_config`` (JSON), ``keras_version``, ``backend``; a weights-only file
(``layer_names`` and no ``model_config``) yields a KerasModel with no objects.
Any other HDF5 file (a dataset written with h5py, a MATLAB 7.3 ``.mat``) is
scanned as data: an artifact with no model and a ``content`` note, never an error.
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import select
import signal
import time
from collections.abc import Callable

from modelwarden.errors import InputError, LimitExceeded
from modelwarden.formats import safeio
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.formats.keras_config import model_from_config
from modelwarden.ir import Artifact, ArtifactFormat, FileEntry, FileKind, KerasModel
from modelwarden.record import record

TIMEOUT_SECONDS = 60.0
CHILD_EXTRA_MEMORY = 2 * 1024**3  # address space the child may add to what it inherits
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ATTRS = ("model_config", "training_config", "keras_version", "backend", "layer_names")
MAX_LAYER_NAMES = 100_000
KERAS3_WEIGHT_GROUPS = frozenset({"layers", "vars", "optimizer"})  # a Keras 3 .weights.h5
DATA_ONLY = ("HDF5 data, not a Keras model: no model_config, layer_names or Keras weight groups; "
             "Keras refuses to load it and its datasets hold no code")


@record
class ChildResult:
    """What an isolated call returned: ``data`` on success, else why it failed."""

    data: object = None
    error: str = ""


def run_isolated(fn: Callable[..., object], *args: object, timeout: float, max_output: int,
                 extra_memory: int = CHILD_EXTRA_MEMORY) -> ChildResult:
    """Run ``fn(*args)`` in a forked child with resource limits; its JSON-able result comes back by pipe.

    The child's stdin/stdout/stderr go to /dev/null; it never returns into the
    parent's code (``os._exit``).  ``error`` names a signal, a timeout, an
    oversized reply or an exception in ``fn``.
    """
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        return ChildResult(error=f"could not start a child process ({exc.strerror})")
    if pid == 0:  # child
        try:
            os.close(read_fd)
            _confine(timeout, extra_memory)
            try:
                reply = {"ok": fn(*args)}
            except BaseException as exc:  # noqa: BLE001 - everything goes back as data
                reply = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            data = json.dumps(reply).encode("utf-8")
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view[: 1 << 20]):]
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks: list[bytes] = []
    total = 0
    deadline = time.monotonic() + timeout
    failure = ""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                failure = f"timed out after {timeout:g} s"
                break
            ready, _, _ = select.select([read_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > max_output:
                failure = f"reply over {max_output} bytes"
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        if failure:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if failure:
        return ChildResult(error=failure)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        reason = "CPU limit" if sig == signal.SIGXCPU else signal.Signals(sig).name if sig in _SIGNALS else ""
        return ChildResult(error=f"crashed (signal {sig}{', ' + reason if reason else ''})")
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        return ChildResult(error="child died without a complete reply")
    if "error" in reply:
        return ChildResult(error=reply["error"])
    return ChildResult(data=reply.get("ok"))


_SIGNALS = {s.value for s in signal.Signals}


def _confine(timeout: float, extra_memory: int) -> None:
    """In the child: no core dumps, no file writes, bounded memory and CPU, quiet stdio."""
    faulthandler.disable()  # an inherited handler would write the crash to the parent's stderr
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        with open("/proc/self/statm", "rb") as fh:
            current = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        current = 1024**3
    cpu = int(timeout) + 1
    for res, value in (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, 0),
        (resource.RLIMIT_AS, current + extra_memory),
        (resource.RLIMIT_CPU, cpu),
    ):
        soft, hard = resource.getrlimit(res)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(res, (value, hard))


# --------------------------------------------------------------------------
# The child side: plain h5py reads, plain JSON out.


def _plain(value: object, max_chars: int) -> object:
    """An HDF5 attribute value as JSON-able data (bytes decoded, arrays listed, bounded)."""
    import numpy as np

    if isinstance(value, bytes):
        return value[: max_chars + 1].decode("utf-8", "replace")
    if isinstance(value, str):
        return value[: max_chars + 1]
    if isinstance(value, np.ndarray):
        if value.size > MAX_LAYER_NAMES:
            return {"error": f"array attribute of {value.size} elements"}
        return [_plain(v, 4096) for v in value.reshape(-1).tolist()]
    if isinstance(value, (np.generic, int, float, bool)):
        return value.item() if isinstance(value, np.generic) else value
    return {"error": f"unsupported attribute type {type(value).__name__}"}


def _read_attrs(fd: int, max_chars: int) -> dict:
    """Open the already-open file through /proc (same inode, no path race) and read the root attrs."""
    import h5py

    with h5py.File(f"/proc/self/fd/{fd}", "r") as f:
        out: dict[str, object] = {"attrs": {}}
        for name in ATTRS:
            if name in f.attrs:
                out["attrs"][name] = _plain(f.attrs[name], max_chars)
        out["groups"] = sorted(f.keys())[:1000]
        return out


# --------------------------------------------------------------------------


class KerasH5Reader(Reader):
    format = ArtifactFormat.KERAS_H5

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        path = candidate.path
        fd = _open_regular(path)
        try:
            size = os.fstat(fd).st_size
            if not _has_signature(fd, size):
                raise InputError(path, "not an HDF5 file (bad signature)")
            import h5py  # noqa: F401 - imported once here so each child need not import it again
            result = run_isolated(
                _read_attrs, fd, limits.max_json_bytes,
                timeout=TIMEOUT_SECONDS, max_output=2 * limits.max_json_bytes + (8 << 20),
            )
        finally:
            os.close(fd)
        if result.error:
            if result.error.startswith(("crashed", "timed out", "reply over", "child died", "could not start")):
                raise InputError(path, f"HDF5 parser {result.error}")
            raise InputError(path, f"cannot read HDF5 file ({result.error})")
        data = result.data if isinstance(result.data, dict) else {}
        attrs = data.get("attrs") if isinstance(data.get("attrs"), dict) else {}
        groups = data.get("groups") if isinstance(data.get("groups"), list) else []
        keras = self._model(path, attrs, groups, limits)
        meta = {k: attrs[k][:200] for k in ("keras_version", "backend") if isinstance(attrs.get(k), str)}
        if keras is None:
            meta["content"] = DATA_ONLY
        return Artifact(
            path=path, display=candidate.display, format=ArtifactFormat.KERAS_H5,
            keras=keras, files=(FileEntry(os.path.basename(path), FileKind.FILE, size),), metadata=meta,
        )

    @staticmethod
    def _model(path: str, attrs: dict, groups: list, limits: Limits) -> KerasModel | None:
        trees: list[tuple[str, object]] = []
        for key, prefix in (("model_config", ""), ("training_config", "training_config")):
            text = attrs.get(key)
            if text is None:
                continue
            if not isinstance(text, str):
                raise InputError(path, f"HDF5 attribute {key} is not a string")
            if len(text) > limits.max_json_bytes:
                raise LimitExceeded(path, f"HDF5 attribute {key} is over the {limits.max_json_bytes}-byte limit")
            tree = safeio.load_json(
                text, path, max_bytes=limits.max_json_bytes, max_depth=limits.max_json_depth, what=key
            )
            if key == "model_config" and not isinstance(tree, dict):
                raise InputError(path, "model_config is not a JSON object")
            trees.append((prefix, tree))
        if not trees and "layer_names" not in attrs and not KERAS3_WEIGHT_GROUPS & set(groups):
            return None  # a dataset: scanned as data
        version = attrs.get("keras_version") if isinstance(attrs.get("keras_version"), str) else ""
        backend = attrs.get("backend") if isinstance(attrs.get("backend"), str) else ""
        return model_from_config(trees, os.path.basename(path), limits, keras_version=version, backend=backend)


def _has_signature(fd: int, size: int) -> bool:
    """HDF5's signature sits at 0 or after a user block of 512 * 2**k bytes."""
    offsets = [0] + [512 << k for k in range(12)]
    return any(os.pread(fd, 8, off) == HDF5_SIGNATURE for off in offsets if off + 8 <= size)


def _open_regular(path: str) -> int:
    return safeio.open_regular(path, "HDF5 file")
