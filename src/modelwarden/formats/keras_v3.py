"""Keras 3 ``.keras`` archives: a zip of config.json, metadata.json, weights and assets.

The archive is read in place with :mod:`zipfile`, never extracted.
``config.json`` and ``metadata.json`` are decompressed, in chunks, stopping at
the size limit and at the compression-ratio limit whatever the headers claim,
so a zip bomb posing as ``.keras`` ends in :class:`LimitExceeded` quickly and
in little memory.  Every other member is inspected like a plain archive's
(:func:`~modelwarden.formats.archive.inspect_zip`): pickles, NumPy object
arrays, nested archives, links and ``../`` names are reported.  The HDF5
weights file is not read.
"""

from __future__ import annotations

import os
import posixpath
import stat
import zipfile
import zlib
from collections import Counter

from modelwarden.errors import InputError, LimitExceeded
from modelwarden.formats import safeio
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.formats.keras_config import model_from_config
from modelwarden.ir import Artifact, ArtifactFormat, FileEntry, FileKind

CHUNK = 1 << 16
RATIO_FLOOR = 1 << 20  # below this many bytes a high compression ratio is harmless
MAX_LINK_TARGET = 4096
WEIGHT_MEMBERS = ("model.weights.h5", "model.weights.npz")


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, max_bytes: int, max_ratio: int) -> bytes:
    """Decompress one member, bounded by ``max_bytes`` and ``max_ratio`` as actually read."""
    what = f"archive member {info.filename!r}"
    if info.file_size > max_bytes:
        raise LimitExceeded(path, f"{what} declares {info.file_size} bytes, over the {max_bytes}-byte limit")
    ratio_cap = max(RATIO_FLOOR, max(info.compress_size, 1) * max_ratio)
    chunks: list[bytes] = []
    total = 0
    try:
        with zf.open(info) as fh:
            while True:
                chunk = fh.read(CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise LimitExceeded(path, f"{what} decompresses past the {max_bytes}-byte limit")
                if total > ratio_cap:
                    raise LimitExceeded(
                        path, f"{what} decompresses more than {max_ratio}x its compressed size (zip bomb?)"
                    )
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise InputError(path, f"{what} is corrupt ({exc})") from None
    except NotImplementedError as exc:
        raise InputError(path, f"{what} uses an unsupported compression ({exc})") from None
    except RuntimeError as exc:  # encrypted members
        raise InputError(path, f"{what} cannot be read ({exc})") from None
    return b"".join(chunks)


def _entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, limits: Limits) -> FileEntry:
    mode = info.external_attr >> 16
    if info.is_dir():
        return FileEntry(info.filename, FileKind.DIR)
    if stat.S_ISLNK(mode):
        raw = read_member(zf, info, path, MAX_LINK_TARGET, limits.max_zip_ratio)
        target = raw.decode("utf-8", "replace")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(info.filename), target))
        inside = not target.startswith("/") and resolved != ".." and not resolved.startswith("../")
        return FileEntry(info.filename, FileKind.SYMLINK, info.file_size, 1, target, inside)
    kind = FileKind.FILE if stat.S_IFMT(mode) in (0, stat.S_IFREG) else FileKind.OTHER
    return FileEntry(info.filename, kind, info.file_size)


def _open_regular(path: str) -> int:
    return safeio.open_regular(path, "Keras archive")


class KerasV3Reader(Reader):
    format = ArtifactFormat.KERAS_V3

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        path = candidate.path
        with os.fdopen(_open_regular(path), "rb") as fh:
            try:
                zf = zipfile.ZipFile(fh)
            except zipfile.BadZipFile as exc:
                raise InputError(path, f"not a valid Keras archive: not a zip file or truncated ({exc})") from None
            except (OSError, EOFError, ValueError, zlib.error) as exc:
                raise InputError(path, f"not a valid Keras archive ({exc})") from None
            with zf:
                return self._read_zip(zf, candidate, limits)

    def _read_zip(self, zf: zipfile.ZipFile, candidate: Candidate, limits: Limits) -> Artifact:
        path = candidate.path
        infos = zf.infolist()
        if len(infos) > limits.max_zip_members:
            raise LimitExceeded(path, f"archive has {len(infos)} members, over the {limits.max_zip_members} limit")
        names = [i.filename for i in infos]
        duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
        files = tuple(_entry(zf, i, path, limits) for i in infos)

        def member_json(name: str) -> object | None:
            if name not in names:
                return None
            info = zf.getinfo(name)  # the last one of that name, as Keras itself would read
            data = read_member(zf, info, path, min(limits.max_json_bytes, limits.max_member_bytes), limits.max_zip_ratio)
            return safeio.load_json(
                data, path, max_bytes=limits.max_json_bytes, max_depth=limits.max_json_depth, what=name
            )

        config = member_json("config.json")
        if config is None:
            raise InputError(path, "not a Keras archive: it has no config.json")
        if not isinstance(config, dict):
            raise InputError(path, "config.json is not a JSON object")
        metadata = member_json("metadata.json")
        meta = metadata if isinstance(metadata, dict) else {}
        version = meta.get("keras_version") if isinstance(meta.get("keras_version"), str) else ""
        keras = model_from_config(
            [("", config)], "config.json", limits,
            keras_version=version, weight_files=[n for n in names if n in WEIGHT_MEMBERS],
        )
        info: dict[str, str] = {"members": str(len(infos))}
        if version:
            info["keras_version"] = version
        if isinstance(meta.get("date_saved"), str):
            info["date_saved"] = meta["date_saved"][:100]
        if duplicates:
            info["duplicate_members"] = ", ".join(duplicates[:20])
        from modelwarden.formats.archive import inspect_zip

        insp = inspect_zip(zf, path, limits, _member_role)
        return Artifact(
            path=path, display=candidate.display, format=ArtifactFormat.KERAS_V3,
            keras=keras, files=files, metadata=info, pickles=tuple(insp.pickles), archive=insp.facts(),
        )


def _member_role(name: str) -> str | None:
    """The weights file is raw tensor storage (never read); other members are inspected."""
    return "skip-unless-clean" if name == "model.weights.h5" else None
