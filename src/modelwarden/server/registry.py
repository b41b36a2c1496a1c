"""Served models: version discovery under ``base_path``, version policies, labels, the scan gate.

Model paths come only from the configuration.  A version is a direct child directory of
``base_path`` named by a decimal number; symlinked versions are refused (a link could point
anywhere).  Every version is scanned statically under the server's policy before any
worker starts; a version that fails the gate stays unavailable and its report is kept
for admins.

Like TF Serving's file-system source, ``base_path`` is polled every ``poll_interval_s``: a
new version the policy wants is scanned, loaded in fresh sandboxed workers and served as
soon as it is AVAILABLE; versions the policy no longer wants are retired only once every
wanted version has settled and one of them is AVAILABLE (availability preserving: a refused
or broken new version leaves the previous one serving).  A retired version stops taking
new requests at once, its in-flight requests finish (up to the request deadline), then its
workers are closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import time
import stat
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any, Callable

from modelwarden.server.batching import BatchingConfig
from modelwarden.server.codec import INIT_SIGNATURE
from modelwarden.server.config import ModelConfig, ServerConfig
from modelwarden.server.limits import RequestError
from modelwarden.server.pool import PoolSpec, WorkerPool, pool_limits

MAX_VERSION_DIGITS = 18
KEEP_ENDED = 8  # unloaded/refused versions the policy no longer wants, kept in the status per model


@dataclass
class VersionState:
    model: str
    version: int
    path: str
    state: str = "START"  # START | LOADING | AVAILABLE | UNLOADING | END (TF Serving's ManagerState names)
    error_code: str = "OK"
    error_message: str = ""
    pool: WorkerPool | None = None
    report: Any = None  # modelwarden Report of the scan gate
    methods: dict[str, tuple[str, dict, dict]] = field(default_factory=dict)
    users: int = 0  # requests between resolving this version and their reply

    @contextlib.contextmanager
    def use(self) -> Iterator[None]:
        """Hold the version for one request: retiring it waits for holders to finish."""
        self.users += 1
        try:
            yield
        finally:
            self.users -= 1

    def status_json(self) -> dict:
        return {"version": str(self.version), "state": self.state,
                "status": {"error_code": self.error_code, "error_message": self.error_message}}


@dataclass
class ModelEntry:
    config: ModelConfig
    versions: dict[int, VersionState] = field(default_factory=dict)
    discovery_error: str = ""


def not_found(message: str) -> RequestError:
    return RequestError(404, message, kind="not_found")


def discover_versions(m: ModelConfig) -> tuple[list[tuple[int, str]], str]:
    """(version, path) pairs under base_path chosen by the version policy, and an error text."""
    try:
        st = os.stat(m.base_path)
    except OSError as exc:
        return [], f"base_path {m.base_path}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return [], f"base_path {m.base_path} is not a directory"
    found: list[tuple[int, str]] = []
    problems: list[str] = []
    try:
        entries = list(os.scandir(m.base_path))[:100_000]
    except OSError as exc:
        return [], f"cannot list {m.base_path}: {exc.strerror}"
    for e in entries:
        if not e.name.isdigit() or not e.name.isascii() or len(e.name) > MAX_VERSION_DIGITS:
            continue
        if e.is_symlink():
            problems.append(f"version {e.name} is a symbolic link (refused)")
            continue
        if not e.is_dir(follow_symlinks=False):
            continue
        found.append((int(e.name), e.path))
    found.sort(reverse=True)
    if m.version_policy == "latest":
        chosen = found[: m.num_versions]
    elif m.version_policy == "all":
        chosen = found
    else:
        by_version = dict(found)
        chosen = [(v, by_version[v]) for v in sorted(m.versions, reverse=True) if v in by_version]
        missing = sorted(set(m.versions) - set(by_version))
        if missing:
            problems.append(f"specific version(s) not found under {m.base_path}: {', '.join(map(str, missing))}")
    if not found:
        problems.append(f"no version directories under {m.base_path}")
    return chosen, "; ".join(problems)


def signature_methods(path: str) -> dict[str, tuple[str, dict, dict]]:
    """Method name and graph tensor names per signature, read statically (best effort)."""
    try:
        from modelwarden.formats.detect import discover
        from modelwarden.ir import ArtifactFormat
        from modelwarden.scanner import read_artifact

        cands, _ = discover([path])
        out: dict[str, tuple[str, dict, dict]] = {}
        for c in cands:
            if c.format != ArtifactFormat.SAVEDMODEL:
                continue
            for g in read_artifact(c).graphs:
                if "serve" not in g.tags and g.tags:
                    continue
                for s in g.signatures:
                    out.setdefault(s.name, (s.method or "", {t.name: t.tensor for t in s.inputs},
                                            {t.name: t.tensor for t in s.outputs}))
                for ep in g.entry_points:  # TF2's init signature: metadata shows it, nothing calls it
                    if ep.name == "init-op" and ep.tensors:
                        out.setdefault(INIT_SIGNATURE, ("", {}, {INIT_SIGNATURE: ep.tensors[0]}))
        return out
    except Exception:  # noqa: BLE001 - metadata extras only; the scan gate already judged the model
        return {}


class Registry:
    def __init__(self, cfg: ServerConfig, on_event: Callable[[str, dict], None]) -> None:
        self.cfg = cfg
        self.models: dict[str, ModelEntry] = {m.name: ModelEntry(m) for m in cfg.models}
        self._on_event = on_event
        self._loader = concurrent.futures.ThreadPoolExecutor(max_workers=cfg.load_concurrency,
                                                             thread_name_prefix="mw-load")
        self._scanner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mw-scan")
        self.ready = False  # start-up (discovery, scans, worker starts) has finished
        self.startup_error = ""
        self._poller: asyncio.Task | None = None
        self._tasks: set[asyncio.Future] = set()

    def not_ready(self) -> list[str]:
        """Why ``/readyz`` is not ready: empty once start-up finished and every configured model has
        versions, each either AVAILABLE or deliberately refused (FAILED_PRECONDITION: scan gate or
        in-sandbox op check).  A version that failed to load, or a model with no version, keeps it not ready."""
        if self.startup_error:
            return [f"start-up failed: {self.startup_error}"]
        if not self.ready:
            return ["starting: models are being scanned and loaded"]
        out = []
        for name, e in self.models.items():
            if not e.versions:
                out.append(f"model {name}: no version could be loaded ({e.discovery_error or 'none found'})")
            for v, vs in sorted(e.versions.items()):
                if vs.state != "AVAILABLE" and vs.error_code != "FAILED_PRECONDITION":
                    out.append(f"model {name} version {v}: {vs.state} {vs.error_code} {vs.error_message[:300]}".rstrip())
        return out

    # -- start-up ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(*(self._discover(entry) for entry in self.models.values()))
        self.ready = True
        if self.cfg.poll_interval_s > 0 and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_interval_s)
            for entry in self.models.values():
                try:
                    await self._discover(entry, wait=False)
                except Exception as exc:  # noqa: BLE001 - keep polling; report
                    self._on_event("model_discovery", {"model": entry.config.name, "error": f"{exc}"[:500]})

    async def _discover(self, entry: ModelEntry, wait: bool = True) -> None:
        """Load versions the policy wants and does not have; retire those it no longer wants."""
        chosen, err = discover_versions(entry.config)
        if err != entry.discovery_error:
            entry.discovery_error = err
            if err:
                self._on_event("model_discovery", {"model": entry.config.name, "error": err})
        wanted = {v for v, _ in chosen}
        tasks = []
        for v, path in chosen:
            if v not in entry.versions:
                vs = entry.versions[v] = VersionState(entry.config.name, v, path)
                tasks.append(self._track(self._load(entry.config, vs)))
        if wait:
            await asyncio.gather(*tasks)
        self._retire(entry, wanted)

    def _track(self, coro: Any) -> Any:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _retire(self, entry: ModelEntry, wanted: set[int]) -> None:
        mine = [entry.versions[v] for v in wanted if v in entry.versions]
        settled = all(vs.state in ("AVAILABLE", "END") for vs in mine)
        if not (settled and any(vs.state == "AVAILABLE" for vs in mine)):
            return  # availability preserving: the old versions serve until a wanted one does
        ended = []
        for v, vs in list(entry.versions.items()):
            if v in wanted:
                continue
            if vs.state == "AVAILABLE":
                vs.state = "UNLOADING"
                self._track(self._unload(vs))
            elif vs.state == "END":
                ended.append(v)
        for v in sorted(ended)[:-KEEP_ENDED] if len(ended) > KEEP_ENDED else ():
            del entry.versions[v]

    async def _unload(self, vs: VersionState) -> None:
        """Stop new requests (state UNLOADING), let in-flight ones finish, close the workers."""
        self._on_event("model_unloading", {"model": vs.model, "version": vs.version})
        end = time.monotonic() + self.cfg.request_timeout_s + 5
        while vs.users and time.monotonic() < end:
            await asyncio.sleep(0.05)
        if vs.pool:
            vs.pool.close()
            vs.pool = None
        vs.state, vs.error_code, vs.error_message = "END", "OK", ""
        self._on_event("model_unloaded", {"model": vs.model, "version": vs.version})

    def _scan(self, m: ModelConfig, vs: VersionState) -> Any:
        from modelwarden.scanner import scan

        return scan(vs.path, policy=self.cfg.policy, fail_on=m.fail_on or self.cfg.fail_on)

    async def _load(self, m: ModelConfig, vs: VersionState) -> None:
        loop = asyncio.get_running_loop()
        vs.state = "LOADING"
        try:
            report = await loop.run_in_executor(self._scanner, self._scan, m, vs)
        except Exception as exc:  # noqa: BLE001 - an unreadable model is refused, not a crash
            self._fail(vs, "FAILED_PRECONDITION", f"scan gate could not scan the model: {exc}")
            return
        vs.report = report
        failing = report.failing()
        if report.errors or failing:
            parts = [f"{f.rule_id} {f.severity.label}" for f in failing[:10]] + \
                    [f"unreadable: {e.message}" for e in report.errors[:5]]
            self._fail(vs, "FAILED_PRECONDITION",
                       f"refused by the scan gate ({len(failing)} finding(s) at or above {report.fail_on.label}, "
                       f"{len(report.errors)} error(s)): {', '.join(parts)}")
            self._on_event("scan_refused", {"model": m.name, "version": vs.version,
                                            "findings": [f.rule_id for f in failing[:50]]})
            return
        vs.methods = await loop.run_in_executor(self._scanner, signature_methods, vs.path)
        batching = BatchingConfig(self.cfg.max_batch_size, self.cfg.batch_timeout_s) if self.cfg.enable_batching \
            else None
        spec = PoolSpec(vs.path, pool_limits(m.memory_bytes, m.timeout_s, m.max_processes), self.cfg.backend,
                        self.cfg.policy, m.fail_on or self.cfg.fail_on, m.workers, m.spare_workers, batching)
        pool = WorkerPool(f"{m.name}/{vs.version}", spec, self._loader, self._on_event)
        try:
            await pool.start()
        except Exception as exc:  # noqa: BLE001
            pool.close()
            code = getattr(exc, "code", "") or type(exc).__name__
            self._fail(vs, "UNAVAILABLE" if code != "op_blocked" else "FAILED_PRECONDITION",
                       f"could not start a sandboxed worker ({code}): {str(exc)[:1000]}")
            return
        vs.pool = pool
        vs.state = "AVAILABLE"
        self._on_event("model_loaded", {"model": m.name, "version": vs.version, "workers": len(pool.workers)})

    def _fail(self, vs: VersionState, code: str, message: str) -> None:
        vs.state, vs.error_code, vs.error_message = "END", code, message
        self._on_event("model_unavailable", {"model": vs.model, "version": vs.version, "error": message[:2000]})

    # -- lookup ------------------------------------------------------------------------------------

    def entry(self, name: str) -> ModelEntry:
        e = self.models.get(name)
        if e is None:
            raise not_found(f"Servable not found for request: Latest({name[:128]})")
        return e

    def resolve(self, name: str, version: str | None = None, label: str | None = None,
                require_available: bool = True) -> VersionState:
        """TF Serving's lookup: a specific version, a label, or the latest available version."""
        e = self.entry(name)
        if label is not None:
            if label not in e.config.labels:
                raise RequestError(404, f"Unrecognized servable version label: {label[:64]}", kind="not_found")
            v = e.config.labels[label]
            vs = e.versions.get(v)
            what = f"Specific({name}, {v})"
        elif version is not None:
            v = int(version)
            vs = e.versions.get(v)
            what = f"Specific({name}, {v})"
        else:
            avail = [vs for vs in e.versions.values() if vs.state == "AVAILABLE"]
            vs = max(avail, key=lambda s: s.version) if avail else None
            what = f"Latest({name})"
        if vs is None or (require_available and vs.state != "AVAILABLE"):
            raise not_found(f"Servable not found for request: {what}")
        return vs

    def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for t in list(self._tasks):
            t.cancel()
        for e in self.models.values():
            for vs in e.versions.values():
                if vs.pool:
                    vs.pool.close()
        self._loader.shutdown(wait=False, cancel_futures=True)
        self._scanner.shutdown(wait=False, cancel_futures=True)
