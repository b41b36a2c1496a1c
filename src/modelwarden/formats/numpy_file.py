"""NumPy ``.npy`` and ``.npz`` files: numeric arrays are data; object arrays are pickles.

An ``.npy`` header is a Python literal (parsed with :func:`ast.literal_eval`,
bounded); when its dtype holds objects, the array data that follows is a pickle
stream and is walked like any other.  An ``.npz`` is a zip of ``.npy`` members,
inspected with :mod:`~modelwarden.formats.archive` (so pickles in members with
other names are found too).
"""

from __future__ import annotations

import mmap

from modelwarden.errors import InputError
from modelwarden.formats import archive, pickle_ops
from modelwarden.formats.interface import DEFAULT_LIMITS, Candidate, Limits, Reader
from modelwarden.formats.pickle_file import map_file
from modelwarden.ir import Artifact, ArtifactFormat

HEAD = 128 * 1024


class NumpyReader(Reader):
    format = ArtifactFormat.NUMPY

    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        path = candidate.path
        head = archive.open_head(path, HEAD)
        if head.startswith(archive.NPY_MAGIC):
            header, off = archive.npy_header(head, path)
            meta = {"layout": "npy", "descr": str(header.get("descr"))[:200], "shape": str(header.get("shape"))[:200]}
            if not archive.descr_has_object(header.get("descr")):
                return Artifact(path=path, display=candidate.display, format=ArtifactFormat.NUMPY, metadata=meta)
            buf, size = map_file(path)
            try:
                progs, _ = pickle_ops.parse_streams(buf, off, size, candidate.display, role="npy object array")
            finally:
                if isinstance(buf, mmap.mmap):
                    buf.close()
            return Artifact(path=path, display=candidate.display, format=ArtifactFormat.NUMPY,
                            pickles=tuple(progs), metadata=meta)
        if head.startswith((archive.ZIP_MAGIC, archive.ZIP_EMPTY)):
            insp = archive.inspect_file(path, limits)
            return Artifact(path=path, display=candidate.display, format=ArtifactFormat.NUMPY,
                            pickles=tuple(insp.pickles), archive=insp.facts(),
                            metadata={"layout": "npz", "members": str(insp.total)})
        raise InputError(path, "not a NumPy .npy or .npz file")
