"""Bearer tokens: created by ``modelwarden token create``, stored only as SHA-256 hashes.

A token is ``mwt_<id>_<secret>``: ``id`` (12 hex digits) is public and names the
record (it appears in logs and ``token list``); ``secret`` is 256 random bits.  The
store keeps ``sha256(token)``, never the token; verification compares hashes with
:func:`hmac.compare_digest`.  Scopes: ``metadata`` < ``predict`` (includes metadata)
< ``admin`` (everything, including scan reports and metrics); ``metrics`` only reads
``/monitoring/prometheus/metrics``.  Each token is valid for the models it names
(``*``: all).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from modelwarden.errors import InputError, UsageError

SCOPES = ("metadata", "predict", "admin", "metrics")
_IMPLIES = {"admin": {"admin", "predict", "metadata", "metrics"}, "predict": {"predict", "metadata"},
            "metadata": {"metadata"}, "metrics": {"metrics"}}
TOKEN_RE = re.compile(r"^mwt_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})$")
MAX_STORE_BYTES = 16 << 20
_DUMMY_HASH = hashlib.sha256(b"modelwarden-dummy").hexdigest()


@dataclass
class TokenRecord:
    id: str
    hash: str  # sha256 hex of the whole token
    scope: str
    models: list[str]
    created: float
    expires: float | None = None
    revoked: float | None = None
    note: str = ""

    def allows(self, scope: str, model: str | None) -> bool:
        if scope not in _IMPLIES.get(self.scope, set()):
            return False
        return model is None or "*" in self.models or model in self.models

    def state(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"


@dataclass(frozen=True)
class Identity:
    """Who a request is: the token id (never the token) and its grants."""

    token_id: str
    record: TokenRecord


class AuthError(Exception):
    def __init__(self, status: int, message: str, token_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.token_id = token_id


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def parse_expiry(text: str, now: float | None = None) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s`` from now, or an ISO 8601 date/time (UTC unless given)."""
    now = time.time() if now is None else now
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if m:
        return now + float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"invalid --expires {text!r} (examples: 30d, 12h, 2030-01-01T00:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


@dataclass
class TokenStore:
    """A JSON file of token records (mode 0600), re-read when it changes on disk."""

    path: str
    records: dict[str, TokenRecord] = field(default_factory=dict)
    _stamp: tuple | None = None
    _checked: float = 0.0
    _broken: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- file handling ---------------------------------------------------------------------------

    def _read(self) -> dict[str, TokenRecord]:
        from modelwarden.formats.safeio import load_json, read_file

        data = read_file(self.path, MAX_STORE_BYTES, what="token store")
        doc = load_json(data, self.path, max_bytes=MAX_STORE_BYTES, max_depth=8, what="token store")
        if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("tokens"), list):
            raise InputError(self.path, "not a modelwarden token store (version 1)")
        out = {}
        for raw in doc["tokens"]:
            try:
                rec = TokenRecord(**raw)
            except TypeError as exc:
                raise InputError(self.path, f"bad token record ({exc})") from None
            if (not isinstance(rec.id, str) or not re.fullmatch(r"[0-9a-f]{12}", rec.id) or not isinstance(rec.hash, str)
                    or len(rec.hash) != 64 or rec.scope not in SCOPES or not isinstance(rec.models, list)):
                raise InputError(self.path, f"bad token record {str(raw.get('id'))[:20]!r}")
            out[rec.id] = rec
        return out

    def load(self) -> "TokenStore":
        if os.path.exists(self.path):
            self.records = self._read()
            st = os.stat(self.path)
            self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        return self

    def refresh(self, min_interval: float = 0.5) -> None:
        """Re-read the file if it changed (revocations apply within ``min_interval``).

        If it becomes unreadable or invalid the store fails closed: every token is refused.
        """
        now = time.monotonic()
        if now - self._checked < min_interval:
            return
        with self._lock:
            self._checked = now
            try:
                st = os.stat(self.path)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                if stamp != self._stamp:
                    self.records = self._read()
                    self._stamp = stamp
                self._broken = ""
            except (OSError, InputError) as exc:
                self._broken = str(exc)
                self.records = {}

    def _save(self) -> None:
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, mode=0o700, exist_ok=True)
        tmp = f"{self.path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "tokens": [asdict(r) for r in self.records.values()]}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _locked(self):
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, mode=0o700, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    # -- administration (CLI) --------------------------------------------------------------------

    def create(self, models: list[str], scope: str, expires: float | None = None, note: str = "") -> tuple[str, TokenRecord]:
        if scope not in SCOPES:
            raise UsageError(f"unknown scope {scope!r} (choose from {', '.join(SCOPES)})")
        if not models:
            raise UsageError("name the model(s) the token is for (--model NAME, or --model '*' for all)")
        lock = self._locked()
        try:
            self.load()
            tid = secrets.token_hex(6)
            while tid in self.records:
                tid = secrets.token_hex(6)
            token = f"mwt_{tid}_{secrets.token_urlsafe(32)}"
            rec = TokenRecord(tid, hash_token(token), scope, sorted(set(models)), time.time(), expires, None, note)
            self.records[tid] = rec
            self._save()
        finally:
            os.close(lock)
        return token, rec

    def revoke(self, token_id: str) -> TokenRecord:
        lock = self._locked()
        try:
            self.load()
            rec = self.records.get(token_id)
            if rec is None:
                raise UsageError(f"no token with id {token_id!r} (see `modelwarden token list`)")
            if rec.revoked is None:
                rec.revoked = time.time()
                self._save()
            return rec
        finally:
            os.close(lock)

    # -- verification (server) -------------------------------------------------------------------

    def authenticate(self, header: str | None) -> Identity:
        """``Authorization`` header value -> Identity, or AuthError(401)."""
        if self._broken:
            raise AuthError(401, "authentication unavailable (token store unreadable)")
        if not header:
            raise AuthError(401, "missing bearer token (Authorization: Bearer mwt_...)")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "use the Authorization: Bearer scheme")
        m = TOKEN_RE.match(token)
        rec = self.records.get(m.group(1)) if m else None
        digest = hash_token(token) if m else _DUMMY_HASH
        ok = hmac.compare_digest(digest, rec.hash if rec else _DUMMY_HASH) and rec is not None
        if not ok:
            raise AuthError(401, "invalid token")
        state = rec.state()
        if state != "active":
            raise AuthError(401, f"token {state}", rec.id)
        return Identity(rec.id, rec)


def authorize(identity: Identity, scope: str, model: str | None) -> None:
    """AuthError(403) unless the token grants ``scope`` on ``model``."""
    if not identity.record.allows(scope, model):
        what = f"model {model!r}" if model else "this endpoint"
        raise AuthError(403, f"token {identity.token_id} does not grant {scope} on {what}", identity.token_id)


def default_store_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "modelwarden", "tokens.json")
