"""Server configuration: a TOML file, and TensorFlow Serving's ``model_config_list`` text format.

The configuration is written by the operator (trusted), but it is still parsed with bounds
and every error names the file and the field.  Model paths come only from here: no
endpoint can add a model or point one at another path.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modelwarden.analysis.interface import Severity
from modelwarden.errors import InputError, UsageError
from modelwarden.sandbox.interface import MiB, SandboxLimits, parse_duration, parse_size

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
MAX_CONFIG_BYTES = 4 * MiB
MAX_VERSION = 2**63 - 1


@dataclass(frozen=True)
class ModelConfig:
    """One served model: ``base_path/<version>/`` directories, a version policy, labels."""

    name: str
    base_path: str
    version_policy: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)
    workers: int = 1
    memory_bytes: int = 2 << 30
    timeout_s: float | None = None  # per-call deadline inside the sandbox (default: the request deadline)
    fail_on: str | None = None  # scan-gate threshold for this model (default: the server's)
    max_processes: int = 256
    spare_workers: int = 1  # warm, loaded workers held back to replace a crashed one at once


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8501
    grpc_port: int | None = None  # TF Serving's gRPC API on this port (0: any free port); None: off
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    token_db: str | None = None
    policy: str = "default"
    fail_on: str | None = None
    backend: str = "auto"
    access_log: str | None = None  # file path; None: stderr
    http_parser: str = "auto"  # HTTP/1.1 parser: httptools when installed (fast), else h11; same guards
    max_body_bytes: int = 64 * MiB
    max_json_depth: int = 48
    max_json_elements: int = 8_000_000
    gzip_max_ratio: int = 100
    request_timeout_s: float = 30.0
    max_concurrent_requests: int = 64
    rate_per_token: float = 1000.0  # sustained requests per second per token
    rate_burst: int = 2000
    load_concurrency: int = 2  # workers started at the same time (TF start-up is CPU heavy)
    header_timeout_s: float = 10.0  # a whole request head must arrive within this (slowloris)
    max_connections: int = 1024  # open HTTP connections; above: 503 and close
    max_inflight_per_token: int = 16  # requests of one token being read or served at once (fairness)
    enable_batching: bool = False  # TF Serving's --enable_batching: concurrent requests share worker calls
    max_batch_size: int = 32
    batch_timeout_s: float = 0.002
    poll_interval_s: float = 1.0  # base_path polling for new versions (TF's file_system_poll_wait_seconds); 0: off
    models: tuple[ModelConfig, ...] = ()

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)


# -- TOML ------------------------------------------------------------------------------------------

_SERVER_KEYS = {"host", "port", "grpc_port", "token_db", "policy", "fail_on", "backend", "access_log", "tls",
                "model_config_file", "poll_interval", "http_parser"}
HTTP_PARSERS = ("auto", "httptools", "h11")
_TLS_KEYS = {"cert", "key", "client_ca"}
_LIMIT_KEYS = {"max_body", "max_json_depth", "max_json_elements", "gzip_max_ratio", "request_timeout",
               "max_concurrent_requests", "rate_per_token", "rate_burst", "load_concurrency", "header_timeout",
               "max_connections", "max_inflight_per_token"}
_MODEL_KEYS = {"name", "base_path", "version_policy", "num_versions", "versions", "labels", "workers",
               "memory", "timeout", "fail_on", "max_processes", "spare_workers"}
_BATCHING_KEYS = {"enabled", "max_batch_size", "batch_timeout"}


def _err(path: str, msg: str) -> InputError:
    return InputError(path, msg)


def _check_keys(path: str, where: str, table: Any, allowed: set[str]) -> dict:
    if not isinstance(table, dict):
        raise _err(path, f"[{where}] must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _err(path, f"[{where}]: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    return table


def _typed(path: str, where: str, value: Any, typ: type | tuple[type, ...]) -> Any:
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise _err(path, f"{where} has the wrong type ({type(value).__name__})")
    return value


def _rel(base: Path, value: str) -> str:
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p))


def _size(path: str, where: str, value: Any) -> int:
    try:
        return value if isinstance(value, int) and not isinstance(value, bool) else parse_size(str(value))
    except UsageError as exc:
        raise _err(path, f"{where}: {exc}") from None


def _duration(path: str, where: str, value: Any) -> float:
    try:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else parse_duration(str(value))
    except UsageError as exc:
        raise _err(path, f"{where}: {exc}") from None


def model_from_dict(path: str, base: Path, d: Any, index: int) -> ModelConfig:
    where = f"models[{index}]"
    d = _check_keys(path, where, d, _MODEL_KEYS)
    if "name" not in d or "base_path" not in d:
        raise _err(path, f"{where}: name and base_path are required")
    name = _typed(path, f"{where}.name", d["name"], str)
    base_path = _rel(base, _typed(path, f"{where}.base_path", d["base_path"], str))
    versions = tuple(_typed(path, f"{where}.versions[]", v, int) for v in _typed(path, f"{where}.versions", d.get("versions", []), list))
    labels = {str(k): _typed(path, f"{where}.labels.{k}", v, int)
              for k, v in _typed(path, f"{where}.labels", d.get("labels", {}), dict).items()}
    policy = d.get("version_policy", "specific" if versions else "latest")
    m = ModelConfig(
        name=name, base_path=base_path, version_policy=_typed(path, f"{where}.version_policy", policy, str),
        num_versions=_typed(path, f"{where}.num_versions", d.get("num_versions", 1), int),
        versions=versions, labels=labels, workers=_typed(path, f"{where}.workers", d.get("workers", 1), int),
        memory_bytes=_size(path, f"{where}.memory", d.get("memory", "2GiB")),
        timeout_s=_duration(path, f"{where}.timeout", d["timeout"]) if "timeout" in d else None,
        fail_on=_typed(path, f"{where}.fail_on", d["fail_on"], str) if "fail_on" in d else None,
        max_processes=_typed(path, f"{where}.max_processes", d.get("max_processes", 256), int),
        spare_workers=_typed(path, f"{where}.spare_workers", d.get("spare_workers", 1), int),
    )
    return validate_model(path, m)


def validate_model(path: str, m: ModelConfig) -> ModelConfig:
    where = f"model {m.name!r}"
    if not NAME_RE.match(m.name):
        raise _err(path, f"{where}: model names are 1-128 characters of letters, digits, '_', '.', '-'")
    if m.version_policy not in ("latest", "all", "specific"):
        raise _err(path, f"{where}: version_policy must be latest, all or specific")
    if m.version_policy == "specific" and not m.versions:
        raise _err(path, f"{where}: version_policy specific needs versions")
    if not 1 <= m.num_versions <= 1000:
        raise _err(path, f"{where}: num_versions must be between 1 and 1000")
    if any(not 0 <= v <= MAX_VERSION for v in m.versions) or len(m.versions) > 1000:
        raise _err(path, f"{where}: versions must be non-negative 64-bit integers (at most 1000)")
    for label, v in m.labels.items():
        if not LABEL_RE.match(label):
            raise _err(path, f"{where}: invalid label {label[:80]!r}")
        if not 0 <= v <= MAX_VERSION:
            raise _err(path, f"{where}: label {label!r} points to an invalid version")
    if not 1 <= m.workers <= 64:
        raise _err(path, f"{where}: workers must be between 1 and 64")
    if not 0 <= m.spare_workers <= 8:
        raise _err(path, f"{where}: spare_workers must be between 0 and 8")
    if not os.path.isabs(m.base_path):
        raise _err(path, f"{where}: base_path must be an absolute path")
    _check_severity(path, f"{where}: fail_on", m.fail_on)
    try:  # the sandbox's own bounds (e.g. TensorFlow needs at least 256 MiB): refused now, not at load
        SandboxLimits(memory_bytes=m.memory_bytes, max_processes=m.max_processes,
                      **({"timeout_s": m.timeout_s} if m.timeout_s else {}))
    except UsageError as exc:
        raise _err(path, f"{where}: {str(exc).replace('SandboxLimits.', '')}") from None
    return m


SEVERITIES = tuple(s.label for s in Severity)
BACKENDS = ("auto", "namespaces", "bwrap")


def _check_severity(path: str, where: str, value: str | None) -> None:
    if value is not None and value not in SEVERITIES:
        raise _err(path, f"{where} {value[:40]!r} is not a severity (expected one of {', '.join(SEVERITIES)})")


def load_toml(path: str) -> ServerConfig:
    """Parse a server TOML file (see docs/serve.md for every key)."""
    from modelwarden.formats.safeio import read_file

    data = read_file(path, MAX_CONFIG_BYTES, what="server configuration")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _err(path, f"not valid TOML ({exc})") from None
    base = Path(path).resolve().parent
    _check_keys(path, "top level", doc, {"server", "limits", "models", "batching", "ray"})  # [ray]: server/ray_serve.py
    srv = _check_keys(path, "server", doc.get("server", {}), _SERVER_KEYS)
    tls = _check_keys(path, "server.tls", srv.get("tls", {}), _TLS_KEYS)
    lim = _check_keys(path, "limits", doc.get("limits", {}), _LIMIT_KEYS)
    kw: dict[str, Any] = {}
    for key in ("host", "policy", "fail_on", "backend", "http_parser"):
        if key in srv:
            kw[key] = _typed(path, f"server.{key}", srv[key], str)
    for key in ("port", "grpc_port"):
        if key in srv:
            kw[key] = _typed(path, f"server.{key}", srv[key], int)
    for key in ("token_db", "access_log"):
        if key in srv:
            kw[key] = _rel(base, _typed(path, f"server.{key}", srv[key], str))
    if kw.get("http_parser", "auto") not in HTTP_PARSERS:
        raise _err(path, f"server.http_parser must be one of {', '.join(HTTP_PARSERS)}")
    if kw.get("policy") not in (None, "default", "strict"):
        kw["policy"] = _rel(base, kw["policy"])
    for key, dst in (("cert", "tls_cert"), ("key", "tls_key"), ("client_ca", "tls_client_ca")):
        if key in tls:
            kw[dst] = _rel(base, _typed(path, f"server.tls.{key}", tls[key], str))
    if "max_body" in lim:
        kw["max_body_bytes"] = _size(path, "limits.max_body", lim["max_body"])
    if "request_timeout" in lim:
        kw["request_timeout_s"] = _duration(path, "limits.request_timeout", lim["request_timeout"])
    bat = _check_keys(path, "batching", doc.get("batching", {}), _BATCHING_KEYS)
    if "enabled" in bat:
        kw["enable_batching"] = _typed(path, "batching.enabled", bat["enabled"], bool)
    if "max_batch_size" in bat:
        kw["max_batch_size"] = _typed(path, "batching.max_batch_size", bat["max_batch_size"], int)
    if "batch_timeout" in bat:
        kw["batch_timeout_s"] = _duration(path, "batching.batch_timeout", bat["batch_timeout"])
    if "poll_interval" in srv:
        kw["poll_interval_s"] = _duration(path, "server.poll_interval", srv["poll_interval"])
    if "header_timeout" in lim:
        kw["header_timeout_s"] = _duration(path, "limits.header_timeout", lim["header_timeout"])
    for key in ("max_json_depth", "max_json_elements", "gzip_max_ratio", "max_concurrent_requests", "rate_burst",
                "load_concurrency", "max_connections", "max_inflight_per_token"):
        if key in lim:
            kw[key] = _typed(path, f"limits.{key}", lim[key], int)
    if "rate_per_token" in lim:
        kw["rate_per_token"] = float(_typed(path, "limits.rate_per_token", lim["rate_per_token"], (int, float)))
    models = [model_from_dict(path, base, m, i) for i, m in enumerate(_typed(path, "models", doc.get("models", []), list))]
    if "model_config_file" in srv:
        mc_path = _rel(base, _typed(path, "server.model_config_file", srv["model_config_file"], str))
        models += load_model_config_list(mc_path)
    cfg = ServerConfig(**kw, models=tuple(models))
    return validate(path, cfg)


def validate(path: str, cfg: ServerConfig) -> ServerConfig:
    names = [m.name for m in cfg.models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _err(path, f"model name(s) configured twice: {', '.join(dup)}")
    if not 0 <= cfg.port <= 65535:
        raise _err(path, "server.port must be between 0 and 65535")
    if cfg.grpc_port is not None and not 0 <= cfg.grpc_port <= 65535:
        raise _err(path, "server.grpc_port must be between 0 and 65535")
    if cfg.grpc_port and cfg.grpc_port == cfg.port:
        raise _err(path, "server.grpc_port and server.port must differ")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise _err(path, "TLS needs both a certificate and a key")
    if cfg.tls_client_ca and not cfg.tls_cert:
        raise _err(path, "mutual TLS (client_ca) needs a server certificate and key")
    for name in ("max_body_bytes", "max_json_depth", "max_json_elements", "gzip_max_ratio", "max_concurrent_requests",
                 "rate_burst", "load_concurrency", "max_connections", "max_inflight_per_token"):
        if getattr(cfg, name) <= 0:
            raise _err(path, f"{name} must be positive")
    if not 1 <= cfg.max_batch_size <= 1_000_000 or not 0 <= cfg.batch_timeout_s <= 10:
        raise _err(path, "batching: max_batch_size must be 1..1000000 and batch_timeout at most 10s")
    if cfg.poll_interval_s < 0:
        raise _err(path, "server.poll_interval must not be negative (0 turns polling off)")
    if not cfg.request_timeout_s > 0 or not cfg.rate_per_token > 0 or not cfg.header_timeout_s > 0:
        raise _err(path, "request_timeout, header_timeout and rate_per_token must be positive")
    _check_severity(path, "server.fail_on", cfg.fail_on)
    if cfg.backend not in BACKENDS:
        raise _err(path, f"server.backend {cfg.backend[:40]!r} is not one of {', '.join(BACKENDS)}")
    return cfg


def check_startup(cfg: ServerConfig) -> None:
    """What :func:`validate` cannot see from the text alone: the files and directories the
    configuration names exist and the policy loads.  Raises :class:`UsageError` naming the
    setting, so a broken configuration stops ``serve`` before it binds (exit 2)."""
    from modelwarden.errors import ModelwardenError
    from modelwarden.policy import load_policy

    try:
        load_policy(cfg.policy)
    except ModelwardenError as exc:
        raise UsageError(f"policy (--policy / server.policy): {exc}") from None
    for setting, file in (("TLS certificate (--tls-cert / server.tls.cert)", cfg.tls_cert),
                          ("TLS key (--tls-key / server.tls.key)", cfg.tls_key),
                          ("TLS client CA (--tls-client-ca / server.tls.client_ca)", cfg.tls_client_ca)):
        if file is not None:
            _require(setting, file, os.path.isfile, "is not a regular file", os.R_OK)
    if cfg.access_log is not None:
        check_writable("access log (--access-log / server.access_log)", cfg.access_log)
    for m in cfg.models:
        _require(f"base_path of model {m.name!r}", m.base_path, os.path.isdir, "is not a directory",
                 os.R_OK | os.X_OK)


def check_writable(setting: str, path: str) -> None:
    """``path`` can be written: an existing regular file, or a new file in an existing directory."""
    if os.path.lexists(path):
        _require(setting, path, os.path.isfile, "is not a regular file", os.W_OK)
    else:
        _require(f"directory of the {setting}", os.path.dirname(os.path.abspath(path)), os.path.isdir,
                 "is not a directory", os.W_OK)


def _require(setting: str, path: str, kind: Any, not_kind: str, access: int) -> None:
    try:
        os.stat(path)
    except OSError as exc:
        raise UsageError(f"{setting}: {path}: {exc.strerror}") from None
    if not kind(path):
        raise UsageError(f"{setting}: {path} {not_kind}")
    if not os.access(path, access):
        raise UsageError(f"{setting}: {path}: permission denied")


# -- TensorFlow Serving's text format --------------------------------------------------------------

_TOKEN_RE = re.compile(r"""\s+|\#[^\n]*|(?P<p>[{}<>:\[\],;])|(?P<s>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')|(?P<w>[A-Za-z0-9_.+\-]+)""")
_MAX_DEPTH = 16
_MAX_TOKENS = 200_000


def _tokens(path: str, text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            line = text.count("\n", 0, pos) + 1
            raise _err(path, f"line {line}: unexpected character {text[pos]!r}")
        pos = m.end()
        if m.group("p"):
            out.append(("p", m.group("p")))
        elif m.group("s"):
            raw = m.group("s")[1:-1]
            try:
                value = raw.encode("latin-1", "backslashreplace").decode("unicode_escape")
            except UnicodeDecodeError:
                raise _err(path, f"bad escape in string {raw[:40]!r}") from None
            out.append(("s", value))
        elif m.group("w"):
            out.append(("w", m.group("w")))
        if len(out) > _MAX_TOKENS:
            raise _err(path, "text format file has too many tokens")
    return out


def parse_text_proto(path: str, text: str) -> dict[str, list]:
    """Generic protobuf text format -> {field: [values]} (messages are nested dicts)."""
    toks = _tokens(path, text)
    i = 0

    def message(depth: int, close: str | None) -> dict[str, list]:
        nonlocal i
        if depth > _MAX_DEPTH:
            raise _err(path, f"text format nested deeper than {_MAX_DEPTH} levels")
        out: dict[str, list] = {}
        while i < len(toks):
            kind, val = toks[i]
            if kind == "p" and val in "};>" and close == val:
                i += 1
                return out
            if kind == "p" and val in ",;":
                i += 1
                continue
            if kind != "w":
                raise _err(path, f"expected a field name, got {val!r}")
            name = val
            i += 1
            if i < len(toks) and toks[i] == ("p", ":"):
                i += 1
            if i >= len(toks):
                raise _err(path, f"field {name!r} has no value")
            kind, val = toks[i]
            if kind == "p" and val in "{<":
                i += 1
                out.setdefault(name, []).append(message(depth + 1, "}" if val == "{" else ">"))
            elif kind == "p" and val == "[":
                i += 1
                while i < len(toks) and toks[i] != ("p", "]"):
                    k2, v2 = toks[i]
                    if k2 == "p" and v2 == ",":
                        i += 1
                        continue
                    if k2 == "p" and v2 in "{<":
                        i += 1
                        out.setdefault(name, []).append(message(depth + 1, "}" if v2 == "{" else ">"))
                    elif k2 in ("s", "w"):
                        out.setdefault(name, []).append(v2)
                        i += 1
                    else:
                        raise _err(path, f"field {name!r}: unexpected {v2!r} in list")
                if i >= len(toks):
                    raise _err(path, f"field {name!r}: unterminated list")
                i += 1
            elif kind in ("s", "w"):
                i += 1
                value = val
                while kind == "s" and i < len(toks) and toks[i][0] == "s":  # adjacent strings concatenate
                    value += toks[i][1]
                    i += 1
                out.setdefault(name, []).append(value)
            else:
                raise _err(path, f"field {name!r}: unexpected {val!r}")
        if close is not None:
            raise _err(path, "unterminated message (missing '}')")
        return out

    return message(0, None)


def _one(path: str, msg: dict, name: str, where: str, kind: type = str) -> Any:
    values = msg.get(name, [])
    if len(values) > 1:
        raise _err(path, f"{where}.{name} is given more than once")
    if not values:
        return None
    v = values[0]
    if kind is dict:
        if not isinstance(v, dict):
            raise _err(path, f"{where}.{name} must be a message")
        return v
    if not isinstance(v, str):
        raise _err(path, f"{where}.{name} must be a scalar")
    if kind is int:
        try:
            return int(v, 0)
        except ValueError:
            raise _err(path, f"{where}.{name}: {v[:40]!r} is not an integer") from None
    return v


_CONFIG_FIELDS = {"name", "base_path", "model_platform", "model_version_policy", "version_labels",
                  "logging_config", "model_type"}


def model_configs_from_text(path: str, text: str) -> list[ModelConfig]:
    """``model_config_list { config { name: ... base_path: ... model_version_policy {...} } }``."""
    root = parse_text_proto(path, text)
    if set(root) - {"model_config_list"}:
        raise _err(path, f"unsupported top-level field(s): {', '.join(sorted(set(root) - {'model_config_list'}))}"
                         " (only model_config_list is accepted)")
    lst = _one(path, root, "model_config_list", "", dict) or {}
    if set(lst) - {"config"}:
        raise _err(path, "model_config_list may only contain config entries")
    out = []
    for idx, c in enumerate(lst.get("config", [])):
        where = f"config[{idx}]"
        if not isinstance(c, dict):
            raise _err(path, f"{where} must be a message")
        unknown = set(c) - _CONFIG_FIELDS
        if unknown:
            raise _err(path, f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        platform = _one(path, c, "model_platform", where)
        if platform not in (None, "tensorflow"):
            raise _err(path, f"{where}: model_platform {platform!r} is not supported (tensorflow only)")
        name, base_path = _one(path, c, "name", where), _one(path, c, "base_path", where)
        if not name or not base_path:
            raise _err(path, f"{where}: name and base_path are required")
        policy, num, versions = "latest", 1, ()
        vp = _one(path, c, "model_version_policy", where, dict)
        if vp:
            kinds = set(vp)
            if len(kinds) != 1 or not kinds <= {"latest", "all", "specific"}:
                raise _err(path, f"{where}.model_version_policy must hold exactly one of latest, all, specific")
            policy = kinds.pop()
            body = _one(path, vp, policy, where, dict) or {}
            if policy == "latest":
                num = _one(path, body, "num_versions", where, int) or 1
            elif policy == "specific":
                try:
                    versions = tuple(int(v, 0) for v in body.get("versions", []) if isinstance(v, str))
                except ValueError:
                    raise _err(path, f"{where}: specific versions must be integers") from None
        labels: dict[str, int] = {}
        for entry in c.get("version_labels", []):
            if not isinstance(entry, dict):
                raise _err(path, f"{where}.version_labels must be messages")
            key, value = _one(path, entry, "key", where), _one(path, entry, "value", where, int)
            if key is None or value is None:
                raise _err(path, f"{where}.version_labels needs key and value")
            labels[key] = value
        base = Path(path).resolve().parent
        out.append(validate_model(path, ModelConfig(name=name, base_path=_rel(base, base_path), version_policy=policy,
                                                    num_versions=num, versions=versions, labels=labels)))
    return out


def load_model_config_list(path: str) -> list[ModelConfig]:
    from modelwarden.formats.safeio import read_file

    data = read_file(path, MAX_CONFIG_BYTES, what="model config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _err(path, "model config file is not UTF-8") from None
    return model_configs_from_text(path, text)


def with_overrides(cfg: ServerConfig, **kw: Any) -> ServerConfig:
    """``cfg`` with the non-None keyword overrides (command-line flags win over the file)."""
    return validate("command line", replace(cfg, **{k: v for k, v in kw.items() if v is not None}))
