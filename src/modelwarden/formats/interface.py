"""The reader interface: a reader turns one artifact's bytes into an :class:`~modelwarden.ir.Artifact`.

Readers never judge and never execute.  Anything wrong with the bytes is an
:class:`~modelwarden.errors.InputError` naming the file and what is wrong;
every size, depth and count is bounded by :class:`Limits`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from modelwarden.ir import Artifact, ArtifactFormat
from modelwarden.record import record


@record
class Limits:
    """Safety bounds for reading hostile artifacts.  Defaults fit real models with wide margins."""

    max_proto_bytes: int = 2 * 1024**3  # protobuf's own hard limit
    max_json_bytes: int = 64 * 1024**2  # Keras config.json / model_config
    max_json_depth: int = 200
    max_nodes: int = 5_000_000  # across one artifact
    max_functions: int = 1_000_000
    max_zip_members: int = 100_000
    max_zip_ratio: int = 200  # uncompressed/compressed, per member, for members we read
    max_member_bytes: int = 256 * 1024**2  # any single member we decompress into memory
    max_tensor_decode: int = 64  # elements decoded from a constant tensor for evidence
    max_dir_entries: int = 1_000_000
    max_checkpoint_entries: int = 10_000_000
    max_marshal_bytes: int = 16 * 1024**2
    max_marshal_depth: int = 64


DEFAULT_LIMITS = Limits()


@record
class Candidate:
    """An artifact found by detection, before reading."""

    path: str  # file, or directory for SavedModel
    format: ArtifactFormat
    display: str
    claimed: tuple[str, ...] = ()  # files inside a directory artifact it owns (not scanned again)


class Reader(ABC):
    """One module per format implements this."""

    format: ArtifactFormat

    @abstractmethod
    def read(self, candidate: Candidate, limits: Limits = DEFAULT_LIMITS) -> Artifact:
        """Read the artifact; raise :class:`~modelwarden.errors.InputError` on malformed input."""
