"""The results store: one record per artifact, keyed by what decides the result.

Key = SHA-256 of (the artifact's bytes, the analysis code and catalog, the policy, the scan
options, the installed TensorFlow the advisories default to).  Change any of them and the
artifact is analysed again; change none and the stored record is the result.  One SQLite file
(``scan-cache.sqlite3``) in a directory only the current user can write: a store that others
can write could mark a hostile model clean, so such a directory is refused.

Hashing a file costs a read of its bytes; a file whose (device, inode, size, mtime, ctime) are
unchanged since it was last hashed reuses that digest, as git's index does (ctime cannot be set
by user space, so an in-place rewrite changes it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

from modelwarden import __version__
from modelwarden.engine import records
from modelwarden.engine.interface import ArtifactResult, ScanJob
from modelwarden.errors import UsageError
from modelwarden.formats.interface import Candidate
from modelwarden.ir import ArtifactFormat
from modelwarden.record import replace

DB_NAME = "scan-cache.sqlite3"
MAX_FILES_PER_ARTIFACT = 100_000
BATCH_WRITES = 256  # writes per transaction: one commit per artifact cost more than its analysis
_CHUNK = 1 << 20
# what decides a result: the readers, the rules, the catalog and policy profiles, the pipeline
_CODE_DIRS = ("formats", "analysis", "catalog", "policy")
_CODE_FILES = ("ir.py", "scanner.py", "advisories.py", "engine/records.py")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Digest of every source and data file that can change a scan's result."""
    pkg = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(__version__.encode())
    files = [pkg / f for f in _CODE_FILES]
    for d in _CODE_DIRS:
        files.extend(p for p in (pkg / d).rglob("*") if p.is_file() and p.suffix in (".py", ".toml", ".txt", ".psv", ".json"))
    for p in sorted(files):
        h.update(str(p.relative_to(pkg)).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def policy_fingerprint(job: ScanJob) -> str:
    p = job.policy
    data = {
        "name": p.name,
        "allowlist": None if p.allowlist is None else sorted(p.allowlist),
        "extra_ops": sorted((k, list(v)) for k, v in p.extra_ops.items()),
        "allowed_ops": sorted(p.allowed_ops),
        "severity": sorted((k, int(v)) for k, v in p.severity.items()),
        "ignores": [[i.rule, i.justification, i.artifact, i.where] for i in p.ignores],
        "fail_on": None if p.fail_on is None else int(p.fail_on),
    }
    return json.dumps(data, sort_keys=True)


def _file_digest(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class ResultStore:
    """Result records and file digests in one SQLite database under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self._check_dir()
        try:
            path = os.path.join(self.root, DB_NAME)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, record TEXT NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, sig TEXT NOT NULL, digest TEXT NOT NULL)")
        except (sqlite3.Error, OSError) as exc:
            raise UsageError(f"cannot use the scan cache in {self.root}: {exc} (use --no-cache)") from None
        self._job_key: tuple[ScanJob, str] | None = None  # the job itself is held: an id() could be reused
        self.hits = 0
        self.misses = 0
        self._batched = False
        self._writes = 0

    def _check_dir(self) -> None:
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            st = os.stat(self.root)
        except OSError as exc:
            raise UsageError(f"cannot create the scan cache directory {self.root}: {exc.strerror} (use --no-cache)") from None
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"scan cache {self.root} is not a directory")
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise UsageError(f"refusing the scan cache {self.root}: it must be owned by you and writable by nobody else "
                             "(others could mark a hostile model clean); fix its permissions or use --no-cache")

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group the writes made inside into transactions of up to BATCH_WRITES (not one per
        statement); a crash loses at most the open transaction, and a concurrent scan of the
        same store waits for one batch, not for the whole scan."""
        if self._batched:
            yield
            return
        self._batched, self._writes = True, 0
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self._batched = False
            self.db.execute("COMMIT")

    def _write(self, sql: str, params: tuple[str, ...]) -> None:
        self.db.execute(sql, params)
        if self._batched:
            self._writes += 1
            if self._writes >= BATCH_WRITES:
                self.db.execute("COMMIT")
                self.db.execute("BEGIN")
                self._writes = 0

    # -- keys ----------------------------------------------------------------------------------------

    def job_key(self, job: ScanJob) -> str:
        if self._job_key is not None and self._job_key[0] is job:
            return self._job_key[1]
        from modelwarden.advisories import installed_tf

        h = hashlib.sha256()
        for part in (str(records.RECORD_VERSION), code_digest(), policy_fingerprint(job), job.options.tf_version,
                     repr(installed_tf()), repr(job.limits), str(job.callgraphs)):
            h.update(part.encode() + b"\0")
        if job.options.checkpoint:
            h.update((self._checkpoint_digest(job.options.checkpoint) or os.urandom(16).hex()).encode())
        self._job_key = (job, h.hexdigest())
        return self._job_key[1]

    def key(self, cand: Candidate, job: ScanJob) -> str | None:
        """The record key of ``cand`` under ``job``; None when its bytes cannot be hashed (no caching)."""
        content = self.content_digest(cand)
        if content is None:
            return None
        text = f"{self.job_key(job)}\0{cand.format.value}\0{cand.display}\0{content}"
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()  # names need not be UTF-8

    def content_digest(self, cand: Candidate) -> str | None:
        """Digest of every byte the reader of ``cand`` can look at (names, link targets, contents)."""
        try:
            entries = self._entries(cand)
        except OSError:
            return None
        if entries is None:
            return None
        h = hashlib.sha256()
        for entry in entries:
            h.update("\0".join(entry).encode("utf-8", "surrogateescape") + b"\n")
        return h.hexdigest()

    def _entries(self, cand: Candidate) -> list[tuple[str, ...]] | None:
        st = os.lstat(cand.path)
        if stat.S_ISREG(st.st_mode):
            paths = [cand.path]
            if cand.format == ArtifactFormat.TF_CHECKPOINT:  # the reader also opens the data shards
                directory, name = os.path.split(cand.path)
                stem = name[: -len(".index")] if name.endswith(".index") else name
                paths += sorted(os.path.join(directory, n) for n in os.listdir(directory or ".")
                                if n.startswith(stem) and n != name)
            return [self._entry(p, os.path.basename(p)) for p in paths]
        if not stat.S_ISDIR(st.st_mode):
            return None
        out: list[tuple[str, ...]] = []
        # the walk joins plain names onto cand.path: relative and absolute paths are string work
        # (os.path.relpath/abspath would ask the kernel for the working directory per file)
        top, absolute = len(cand.path), os.path.abspath(cand.path)
        for dirpath, dirnames, filenames in os.walk(cand.path, followlinks=False):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                full = os.path.join(dirpath, name)
                rel = full[top:].lstrip("/")
                out.append(self._entry(full, rel, os.path.join(absolute, rel)))
                if len(out) > MAX_FILES_PER_ARTIFACT:
                    return None
        return out

    def _entry(self, path: str, rel: str, absolute: str = "") -> tuple[str, ...]:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return ("L", rel, os.readlink(path))
        if stat.S_ISDIR(st.st_mode):
            return ("D", rel)
        if not stat.S_ISREG(st.st_mode):
            return ("O", rel, oct(st.st_mode))
        return ("F", rel, self._digest(path, st, absolute))

    def _digest(self, path: str, st: os.stat_result, absolute: str = "") -> str:
        # a name that is not UTF-8 (lone surrogates from the file system) keyed by its escaped bytes
        real = (absolute or os.path.abspath(path)).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        sig = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
        row = self.db.execute("SELECT sig, digest FROM files WHERE path = ?", (real,)).fetchone()
        if row and row[0] == sig:
            return row[1]
        digest = _file_digest(path)
        self._write("INSERT OR REPLACE INTO files (path, sig, digest) VALUES (?, ?, ?)", (real, sig, digest))
        return digest

    def _checkpoint_digest(self, prefix: str) -> str | None:
        if prefix.endswith(".index"):
            prefix = prefix[: -len(".index")]
        cand = Candidate(prefix + ".index", ArtifactFormat.TF_CHECKPOINT, prefix)
        return self.content_digest(cand)

    # -- records -------------------------------------------------------------------------------------

    def get(self, key: str) -> ArtifactResult | None:
        row = self.db.execute("SELECT record FROM results WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        try:
            result = records.loads(row[0])
        except records.RecordError:
            self._write("DELETE FROM results WHERE key = ?", (key,))
            self.misses += 1
            return None
        self.hits += 1
        return replace(result, cached=True)

    def put(self, key: str, result: ArtifactResult) -> None:
        if result.errors or result.summary is None:
            return  # errors may be transient (resources, a worker lost): always try again
        self._write("INSERT OR REPLACE INTO results (key, record) VALUES (?, ?)", (key, records.dumps(result, ascii_only=True)))
