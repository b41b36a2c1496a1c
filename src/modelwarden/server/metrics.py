"""Prometheus text exposition (format 0.0.4) without a client library.

Counters and histograms keyed by label tuples; label values are escaped; the number of
label combinations is bounded (model names come from the configuration, never from
requests: unknown models are counted under ``model=""``).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MAX_SERIES = 10_000


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


Visible = Optional[frozenset]


def _shown(names: tuple[str, ...], values: tuple[str, ...], visible: Visible) -> bool:
    """Series of other models (and of unknown ones, ``model=""``) are hidden from scoped tokens."""
    if visible is None or "model" not in names:
        return True
    return values[names.index("model")] in visible


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_esc(v)}"' for n, v in zip(names, values)) + "}"


@dataclass
class Counter:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=lambda: defaultdict(float))

    def inc(self, *label_values: str, by: float = 1.0) -> None:
        if label_values in self.values or len(self.values) < MAX_SERIES:
            self.values[label_values] += by

    def render(self, visible: Visible = None) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        out += [f"{self.name}{_labels(self.labels, k)} {v:g}" for k, v in sorted(self.values.items())
                if _shown(self.labels, k, visible)]
        return out


@dataclass
class Gauge(Counter):
    def set(self, value: float, *label_values: str) -> None:
        if label_values in self.values or len(self.values) < MAX_SERIES:
            self.values[label_values] = value

    def render(self, visible: Visible = None) -> list[str]:
        return [line.replace(" counter", " gauge") if line.startswith("# TYPE") else line
                for line in super().render(visible)]


@dataclass
class Histogram:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    series: dict[tuple[str, ...], list[float]] = field(default_factory=dict)  # bucket counts..., sum, count

    def observe(self, value: float, *label_values: str) -> None:
        s = self.series.get(label_values)
        if s is None:
            if len(self.series) >= MAX_SERIES:
                return
            s = self.series[label_values] = [0.0] * (len(BUCKETS) + 2)
        for i, b in enumerate(BUCKETS):
            if value <= b:
                s[i] += 1
        s[-2] += value
        s[-1] += 1

    def render(self, visible: Visible = None) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for k, s in sorted(self.series.items()):
            if not _shown(self.labels, k, visible):
                continue
            for i, b in enumerate(BUCKETS):
                out.append(f"{self.name}_bucket{_labels(self.labels + ('le',), k + (f'{b:g}',))} {s[i]:g}")
            out.append(f"{self.name}_bucket{_labels(self.labels + ('le',), k + ('+Inf',))} {s[-1]:g}")
            out.append(f"{self.name}_sum{_labels(self.labels, k)} {s[-2]:.6f}")
            out.append(f"{self.name}_count{_labels(self.labels, k)} {s[-1]:g}")
        return out


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = Counter("modelwarden_requests_total", "HTTP requests by model, API and status code.",
                                ("model", "api", "code"))
        self.latency = Histogram("modelwarden_request_duration_seconds", "Request latency by model and API.",
                                 ("model", "api"))
        self.errors = Counter("modelwarden_errors_total", "Refused or failed requests by kind.", ("model", "kind"))
        self.restarts = Counter("modelwarden_worker_restarts_total", "Sandboxed workers replaced, by reason.",
                                ("model", "reason"))
        self.limit_hits = Counter("modelwarden_sandbox_limit_hits_total",
                                  "Sandbox limits hit (memory, deadline, cpu, output size).", ("model", "limit"))
        self.workers = Gauge("modelwarden_workers", "Live sandboxed workers per model version.", ("model", "version"))
        self.inflight = Gauge("modelwarden_inflight_requests", "Requests being handled.")

    def render(self, visible: Visible = None) -> str:
        """Prometheus text; ``visible``: the model names a scoped token may see (None: all)."""
        with self.lock:
            lines: list[str] = []
            for m in (self.requests, self.latency, self.errors, self.restarts, self.limit_hits, self.workers,
                      self.inflight):
                lines += m.render(visible)
            return "\n".join(lines) + "\n"
