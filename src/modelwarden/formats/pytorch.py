"""PyTorch checkpoints: the ``torch.save`` zip layout and the legacy pickle-sequence format.

Zip layout (torch >= 1.6): ``<root>/data.pkl`` is the pickle ``torch.load`` runs,
``<root>/data/<key>`` hold raw storage bytes, ``<root>/version``,
``<root>/byteorder``, ``<root>/.data/*``; TorchScript archives add
``constants.pkl`` and ``code/``.  Every member is sniffed by content
(:mod:`~modelwarden.formats.archive`), so a pickle in a member with an innocent
name is found.  Storage members (``<root>/data/<digits>``) are never read: torch
only ever copies their bytes into tensors, never unpickles them, and skipping them
keeps a multi-gigabyte checkpoint scan at the cost of reading ``data.pkl``.

Legacy format: a magic-number pickle, a protocol-version pickle, a sys-info
pickle, the data pickle, a storage-keys pickle, then raw storage bytes.
"""

from __future__ import annotations

import posixpath
import re

from modelwarden.formats import archive, pickle_ops
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.formats.pickle_file import map_file
from modelwarden.ir import Artifact, ArtifactFormat

LEGACY_MAGIC = bytes.fromhex("80028a0a6cfc9c46f9206aa850192e")  # pickle of 0x1950a86a20f9469cfc6c
LEGACY_ROLES = ("legacy torch magic number", "legacy torch protocol version", "legacy torch sys info",
                "torch data pickle", "legacy torch storage keys")
_DATA_MEMBER = re.compile(r"^(?:[^/]+/)?data/\d+$")
_CODE_MEMBER = re.compile(r"^(?:[^/]+/)?code/.+\.py$")


def is_torch_zip_names(names: list[str]) -> bool:
    """Does a zip's member list have the ``torch.save`` layout?"""
    roots = {n.split("/", 1)[0] for n in names if "/" in n}
    return any(n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1) for n in names) \
        and (any(n.endswith("/version") or n == "version" for n in names) or len(roots) == 1)


def member_role(name: str) -> str | None:
    base = posixpath.basename(name)
    top_level = name.count("/") <= 1
    if base == "data.pkl" and top_level:
        return "torch data.pkl"
    if base == "constants.pkl" and top_level:
        return "torchscript constants.pkl"
    if _DATA_MEMBER.match(name):
        return "skip-unless-clean"
    return None


class PyTorchReader(Reader):
    format = ArtifactFormat.PYTORCH

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        head = archive.open_head(candidate.path, 16)
        if head.startswith(LEGACY_MAGIC[:4]):
            return self._legacy(candidate, limits)
        insp = archive.inspect_file(candidate.path, limits, member_role)
        code = [m.name for m in insp.members if not m.container and _CODE_MEMBER.match(m.name)]
        meta = {"layout": "zip", "members": str(insp.total)}
        python = ()
        if code:
            from modelwarden.formats.hub.torchscript import torchscript_sources

            meta["torchscript_code"] = "\n".join(code[:20])
            python = torchscript_sources(candidate.path, code, limits)
        if not any(p.role == "torch data.pkl" for p in insp.pickles):
            meta["data_pkl"] = "missing"
        return Artifact(path=candidate.path, display=candidate.display, format=ArtifactFormat.PYTORCH,
                        pickles=tuple(insp.pickles), archive=insp.facts(), metadata=meta, python=python)

    def _legacy(self, candidate: Candidate, limits: Limits) -> Artifact:
        import mmap

        buf, size = map_file(candidate.path)
        try:
            progs, end = pickle_ops.parse_streams(buf, 0, size, candidate.display, max_streams=len(LEGACY_ROLES))
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()
        from modelwarden.record import replace

        labelled = []
        main = [p for p in progs if p.role != "joblib object array"]
        for i, p in enumerate(main):
            labelled.append(replace(p, role=LEGACY_ROLES[i] if i < len(LEGACY_ROLES) else "legacy torch stream"))
        labelled += [p for p in progs if p.role == "joblib object array"]
        return Artifact(path=candidate.path, display=candidate.display, format=ArtifactFormat.PYTORCH,
                        pickles=tuple(labelled),
                        metadata={"layout": "legacy", "bytes": str(size), "storage_bytes": str(size - end)})
