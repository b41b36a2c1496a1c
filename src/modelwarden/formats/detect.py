"""Find artifacts: walk directories and recognise formats by their bytes, not their names.

A SavedModel directory is one artifact (its variables, assets and metadata
files belong to it and are not reported again).  Symbolic links are never
followed during a walk; the reader of the owning artifact reports them.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator

from modelwarden.errors import InputError, LimitExceeded
from modelwarden.formats import safeio
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits
from modelwarden.ir import ArtifactFormat
from modelwarden.formats.protoschema import read_varint

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
TABLE_MAGIC = (0xDB4775248B80FB57).to_bytes(8, "little")  # LevelDB table footer (tensor bundle .index)
ZIP_MAGIC = b"PK\x03\x04"
UNRECOGNISED = (
    "not a recognised model format (SavedModel, GraphDef, Keras, TFLite, checkpoint, pickle, "
    "PyTorch, NumPy, ONNX, safetensors, GGUF, zip/tar)"
)
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__"})


def sniff_protobuf(path: str, head: bytes, size: int) -> ArtifactFormat | None:
    """Binary or text SavedModel/GraphDef, or None."""
    if not head:
        return None
    from modelwarden.formats.graphdef import graphdef_encoding, is_function_name, text_key
    from modelwarden.formats.savedmodel import SAVEDMODEL_TEXT_KEYS

    if graphdef_encoding(head, size):
        return ArtifactFormat.GRAPHDEF
    if b"\x00" not in head[:256] and text_key(head) in SAVEDMODEL_TEXT_KEYS:
        return ArtifactFormat.SAVEDMODEL
    tag = head[0]
    if tag == 0x08 and len(head) > 2 and head[2] == 0x12:  # saved_model_schema_version, meta_graphs
        return ArtifactFormat.SAVEDMODEL
    if tag == 0x12:  # SavedModel.meta_graphs or GraphDef.library: decide by parsing
        n, _ = read_varint(head, 1)
        if n <= 0 or n > size:
            return None
        from modelwarden.formats import tfproto

        data = safeio.read_file(path, DEFAULT_LIMITS.max_proto_bytes)
        try:
            sm = tfproto.parse("SavedModel", data, path)
            if any(mg.meta_info_def.tags or mg.graph_def.node or mg.signature_def for mg in sm.meta_graphs):
                return ArtifactFormat.SAVEDMODEL
        except InputError:
            pass
        try:
            gd = tfproto.parse("GraphDef", data, path)
            if gd.library.function and all(is_function_name(f.signature.name) for f in gd.library.function):
                return ArtifactFormat.GRAPHDEF
        except InputError:
            pass
    return None


def _zip_names(path: str) -> list[str] | None:
    """Member names from the central directory (bounded), or None when it is not a readable zip."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return [info.filename for info in zf.infolist()[: DEFAULT_LIMITS.max_zip_members + 1]]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return None


def _is_keras_zip(path: str) -> bool:
    names = _zip_names(path)
    return names is not None and "config.json" in names


def sniff_zip(path: str) -> ArtifactFormat:
    """Which container a zip is: Keras v3, PyTorch, NumPy .npz, or a plain archive."""
    names = _zip_names(path)
    if names is None:
        return ArtifactFormat.ARCHIVE  # the archive reader says what is wrong with it
    if "config.json" in names:
        return ArtifactFormat.KERAS_V3
    from modelwarden.formats.pytorch import is_torch_zip_names

    if is_torch_zip_names(names):
        return ArtifactFormat.PYTORCH
    files = [n for n in names if not n.endswith("/")]
    if files and all(n.endswith(".npy") for n in files):
        return ArtifactFormat.NUMPY
    return ArtifactFormat.ARCHIVE


_LEGACY_TORCH = bytes.fromhex("80028a0a6cfc9c46f9206aa850192e")
_COMPRESSED_HEAD = 1 << 16


def sniff_other(path: str, head: bytes, size: int) -> ArtifactFormat | None:
    """Pickle-family, NumPy, safetensors, ONNX, tar: by content, reading at most a few KB."""
    if head.startswith(b"\x93NUMPY"):
        return ArtifactFormat.NUMPY
    if head.startswith(_LEGACY_TORCH):
        return ArtifactFormat.PYTORCH
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        # a hostile length is still recognised (then refused by the reader) when its bytes hold
        # NUL or 0xff, which text never does (0xff is invalid UTF-8)
        if 2 <= n <= size - 8 or (n > size and (b"\x00" in head[:8] or b"\xff" in head[:8])):
            return ArtifactFormat.SAFETENSORS
    from modelwarden.formats.onnx import sniff_onnx

    if sniff_onnx(head, size):
        return ArtifactFormat.ONNX
    if len(head) >= 262 and head[257:262] == b"ustar":
        return ArtifactFormat.ARCHIVE
    from modelwarden.formats.archive import is_pickle_head
    from modelwarden.formats.pickle_file import compression_of

    kind = compression_of(head)
    if kind:
        inner = _decompressed_head(head if len(head) < 4096 else safeio.read_head(path, _COMPRESSED_HEAD), kind)
        if kind == "gzip" and len(inner) >= 262 and inner[257:262] == b"ustar":
            return ArtifactFormat.ARCHIVE
        return ArtifactFormat.PICKLE if is_pickle_head(inner, size * 1000) else None
    if is_pickle_head(head, size):
        return ArtifactFormat.PICKLE
    return None


def _decompressed_head(data: bytes, kind: str) -> bytes:
    """The first 4096 decompressed bytes of a compressed (joblib) stream, or b"" when it is not one."""
    import lzma
    import zlib

    from modelwarden.formats.pickle_file import _decompressor

    try:
        d = _decompressor(kind, "")
    except InputError:
        return b"\x80\x02}."  # lz4 without the lz4 package: the reader says what is missing
    try:
        return d.decompress(data, 4096)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError, RuntimeError):
        return b""


def sniff(path: str) -> ArtifactFormat | None:
    """Recognise one regular file by content; None when it is not a model artifact we read."""
    head = safeio.read_head(path, 4096)
    try:
        size = os.stat(path, follow_symlinks=False).st_size
    except OSError:
        return None
    if len(head) < 8:
        from modelwarden.formats.archive import is_pickle_head

        return ArtifactFormat.PICKLE if len(head) >= 4 and is_pickle_head(head, size) else None
    if head.startswith(b"GGUF"):
        return ArtifactFormat.GGUF
    if head[4:8] == b"TFL3":
        return ArtifactFormat.TFLITE
    if head.startswith(HDF5_MAGIC) or _hdf5_at_userblock(path, size):
        return ArtifactFormat.KERAS_H5
    if head.startswith((ZIP_MAGIC, b"PK\x05\x06")):
        return sniff_zip(path)
    if size >= 48 and _tail(path, 8) == TABLE_MAGIC:
        return ArtifactFormat.TF_CHECKPOINT
    return sniff_other(path, head, size) or sniff_protobuf(path, head, size)


def _tail(path: str, n: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return b""
    try:
        return os.pread(fd, n, max(0, os.fstat(fd).st_size - n))
    finally:
        os.close(fd)


def _hdf5_at_userblock(path: str, size: int) -> bool:
    """HDF5 may start after a user block of 512 * 2^k bytes."""
    offset = 512
    while offset + 8 <= min(size, 1 << 20):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return False
        try:
            if os.pread(fd, 8, offset) == HDF5_MAGIC:
                return True
        finally:
            os.close(fd)
        offset *= 2
    return False


def _below(path: str, top: str) -> str:
    """``path`` (``top`` joined with names a walk listed) relative to ``top`` ("" for ``top``):
    string work, where ``os.path.relpath`` asks the kernel for the working directory twice."""
    return path[len(top):].lstrip("/")


def _display(path: str, base: str, top: str) -> str:
    rel = _below(path, base)
    return os.path.join(top, rel) if rel else top


def discover(paths: list[str], limits: Limits = DEFAULT_LIMITS,
             skipped: list[tuple[str, str]] | None = None) -> tuple[list[Candidate], list[InputError]]:
    """Candidates for every artifact under ``paths`` (each found once) and per-path errors.

    ``skipped`` (if given) receives ``(display path, reason)`` for each file a directory walk
    did not scan: unrecognised content, a symbolic link (never followed), a special file.
    """
    errors: list[InputError] = []
    return list(iter_discover(paths, limits, skipped, errors)), errors


def iter_discover(paths: list[str], limits: Limits = DEFAULT_LIMITS,
                  skipped: list[tuple[str, str]] | None = None,
                  errors: list[InputError] | None = None) -> Iterator[Candidate]:
    """:func:`discover` as the walk goes: each candidate as soon as it is found (in the order
    :func:`discover` lists them); per-path errors are appended to ``errors``."""
    found: set[str] = set()
    for top in paths:
        try:
            yield from _discover_one(top, found, limits, skipped)
        except InputError as exc:
            if errors is not None:
                errors.append(exc)


def _new(found: set[str], cand: Candidate, real_top: str = "", top: str = "") -> bool:
    """Is ``cand`` new, its file not found already (by real path)?  Below a walked ``top``
    every component is a real directory (links are never followed), so the real path is
    ``real_top`` joined with the rest: one ``realpath`` per walk instead of one per artifact."""
    if real_top:
        rel = _below(cand.path, top)
        key = os.path.join(real_top, rel) if rel else real_top
    else:
        key = os.path.realpath(cand.path)
    if key in found:
        return False
    found.add(key)
    return True


def _stat_problem(path: str, exc: OSError) -> str:
    """What is wrong with a named path that exists but cannot be followed."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if os.path.islink(path) and exc.errno == errno.ENOENT:
        return f"dangling symbolic link (its target {os.readlink(path)!r} does not exist)"
    return f"cannot access: {exc.strerror or exc}"


def _hub_directory(d: str, names: set[str], limits: Limits) -> ArtifactFormat | None:
    """An MLflow or Hugging Face model directory, by its marker files."""
    if "MLmodel" in names:
        return ArtifactFormat.MLFLOW
    if "config.json" in names or "tokenizer_config.json" in names:
        from modelwarden.formats.hub.hf_directory import is_hf_directory

        if is_hf_directory(d, names, limits):
            return ArtifactFormat.HF_MODEL
    return None


SKIP_UNRECOGNISED = "unrecognised format"
SKIP_SYMLINK = "symbolic link (never followed)"
SKIP_SPECIAL = "not a regular file"


def _discover_one(top: str, found: set[str], limits: Limits,
                  skipped: list[tuple[str, str]] | None = None) -> Iterator[Candidate]:
    if not os.path.lexists(top):
        raise InputError(top, "no such file or directory")
    try:
        st = os.stat(top)  # the user named this path: follow it if it is a link
    except OSError as exc:
        raise InputError(top, _stat_problem(top, exc)) from None
    if stat.S_ISREG(st.st_mode):
        base = os.path.basename(top)
        if base in ("saved_model.pb", "saved_model.pbtxt"):
            parent = os.path.dirname(top) or "."
            cand = Candidate(parent, ArtifactFormat.SAVEDMODEL, parent)
            if _new(found, cand):
                yield cand
            return
        fmt = sniff(top)
        if fmt is None:
            raise InputError(top, UNRECOGNISED)
        cand = Candidate(top, fmt, top)
        if _new(found, cand):
            yield cand
        return
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(top, "not a regular file or directory")
    from modelwarden.formats.savedmodel import find_model_files

    count = 0
    real_top = os.path.realpath(top)
    stack = [top]
    while stack:
        d = stack.pop()
        if find_model_files(d):
            cand = Candidate(d, ArtifactFormat.SAVEDMODEL, _display(d, top, top))
            if _new(found, cand, real_top, top):
                yield cand
            continue  # the SavedModel owns everything below it
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise InputError(d, f"cannot list directory: {exc.strerror}") from None
        hub = _hub_directory(d, {e.name for e in entries if e.is_file(follow_symlinks=False)}, limits)
        if hub is not None:  # the directory is an artifact; its files are still scanned one by one
            cand = Candidate(d, hub, _display(d, top, top))
            if _new(found, cand, real_top, top):
                yield cand
        for e in entries:
            count += 1
            if count > limits.max_dir_entries:
                raise LimitExceeded(top, f"more than {limits.max_dir_entries} directory entries")
            reason = ""
            if e.is_symlink():
                reason = SKIP_SYMLINK
            elif e.is_dir(follow_symlinks=False):
                if e.name not in SKIP_DIRS:
                    stack.append(e.path)
            elif e.is_file(follow_symlinks=False):
                fmt = sniff(e.path)
                if fmt is not None:
                    cand = Candidate(e.path, fmt, _display(e.path, top, top))
                    if _new(found, cand, real_top, top):
                        yield cand
                else:
                    reason = SKIP_UNRECOGNISED
            else:
                reason = SKIP_SPECIAL
            if reason and skipped is not None:
                skipped.append((_display(e.path, top, top), reason))
