"""Prometheus metrics in the text exposition format, written by hand (no client library needed)."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative-bucket histogram per label value."""

    def __init__(self, name: str, help: str, buckets: Sequence[float], label: str | None = None) -> None:
        self.name, self.help, self.buckets, self.label = name, help, tuple(buckets), label
        self._counts: dict[str, list[int]] = defaultdict(lambda: [0] * (len(self.buckets) + 1))
        self._sums: dict[str, float] = defaultdict(float)

    def observe(self, value: float, label: str = "") -> None:
        self._counts[label][bisect.bisect_left(self.buckets, value)] += 1
        self._sums[label] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for label, counts in sorted(self._counts.items()):
            base = f'{self.label}="{label}",' if self.label else ""
            running = 0
            for bound, count in zip(self.buckets, counts, strict=False):
                running += count
                lines.append(f'{self.name}_bucket{{{base}le="{bound:g}"}} {running}')
            running += counts[-1]
            lines.append(f'{self.name}_bucket{{{base}le="+Inf"}} {running}')
            tail = f"{{{base[:-1]}}}" if base else ""
            lines.append(f"{self.name}_sum{tail} {self._sums[label]:.6f}")
            lines.append(f"{self.name}_count{tail} {running}")
        return lines


class Metrics:
    """Request counts, latency, batch sizes and queue depth of one server; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.inputs_total = 0
        self.latency = Histogram("tsembed_request_duration_seconds", "Request latency.", LATENCY_BUCKETS, "path")
        self.batch = Histogram("tsembed_batch_size", "Inputs per model forward pass.", BATCH_BUCKETS)
        self.forward = Histogram("tsembed_forward_duration_seconds", "Model forward (batch) time.", LATENCY_BUCKETS)
        self.queue_depth: Callable[[], int] = lambda: 0
        self.memory_releases: Callable[[], int] = lambda: 0

    def record_request(self, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(path, status)] += 1
            self.latency.observe(seconds, path)

    def record_batch(self, size: int) -> None:
        with self._lock:
            self.batch.observe(size)
            self.inputs_total += size

    def record_forward(self, seconds: float) -> None:
        with self._lock:
            self.forward.observe(seconds)

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP tsembed_requests_total Requests by path and status.",
                     "# TYPE tsembed_requests_total counter"]
            for (path, status), count in sorted(self.requests.items()):
                lines.append(f'tsembed_requests_total{{path="{path}",status="{status}"}} {count}')
            lines += ["# HELP tsembed_inputs_total Inputs embedded.", "# TYPE tsembed_inputs_total counter",
                      f"tsembed_inputs_total {self.inputs_total}"]
            lines += ["# HELP tsembed_queue_inputs Inputs waiting for the model.", "# TYPE tsembed_queue_inputs gauge",
                      f"tsembed_queue_inputs {self.queue_depth()}"]
            lines += ["# HELP tsembed_memory_releases_total Free memory handed back to the OS after load.",
                      "# TYPE tsembed_memory_releases_total counter",
                      f"tsembed_memory_releases_total {self.memory_releases()}"]
            lines += self.latency.render() + self.batch.render() + self.forward.render()
        return "\n".join(lines) + "\n"
