"""The dispatcher's metrics, rendered in Prometheus' text exposition format.

Counters and the latency histogram live in this process; queue depth and in-flight counts
come from the database at scrape time (queue_stats), so every dispatcher reports the
same queue.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Iterable

from supabase_sync.store import QueueStat

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Task types no route names get their own series only for the largest few; the rest are
# summed into OTHER_TYPES, so rows with thousands of odd types cannot flood Prometheus.
MAX_UNROUTED_TYPE_SERIES = 20
OTHER_TYPES = "_other"


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class Metrics:
    """Counters for outcomes and RunPod errors, and the INSERT -> /run latency histogram."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes: dict[str, int] = defaultdict(int)
        self.runpod_errors: dict[str, int] = defaultdict(int)
        self._buckets = [0] * len(LATENCY_BUCKETS_S)
        self._latency_count = 0
        self._latency_sum = 0.0

    def outcome(self, name: str, count: int = 1) -> None:
        with self._lock:
            self.outcomes[name] += count

    def runpod_error(self, kind: str) -> None:
        with self._lock:
            self.runpod_errors[kind] += 1

    def dispatch_latency(self, seconds: float) -> None:
        with self._lock:
            self._latency_count += 1
            self._latency_sum += seconds
            for i, bound in enumerate(LATENCY_BUCKETS_S):
                if seconds <= bound:
                    self._buckets[i] += 1

    def render(self, queue: Iterable[QueueStat] | None, up: bool = True, routed_types: Iterable[str] = ()) -> str:
        lines = [
            "# HELP supabase_sync_up 1 when the last database query for these metrics worked.",
            "# TYPE supabase_sync_up gauge",
            f"supabase_sync_up {1 if up else 0}",
            "# HELP supabase_sync_queue_depth Unfinished tasks by task type and status (waiting, queued, in_progress).",
            "# TYPE supabase_sync_queue_depth gauge",
        ]
        in_flight: dict[str, int] = defaultdict(int)
        for (task_type, status), tasks in sorted(_bounded(queue or [], set(routed_types)).items()):
            lines.append(f"supabase_sync_queue_depth{_labels(task_type=task_type, status=status)} {tasks}")
            if status == "in_progress":
                in_flight[task_type] += tasks
        lines += ["# HELP supabase_sync_in_flight Tasks claimed or running on RunPod, by task type.",
                  "# TYPE supabase_sync_in_flight gauge"]
        lines += [f"supabase_sync_in_flight{_labels(task_type=t)} {n}" for t, n in sorted(in_flight.items())]
        with self._lock:
            lines += ["# HELP supabase_sync_outcomes_total Task events handled by this dispatcher.",
                      "# TYPE supabase_sync_outcomes_total counter"]
            lines += [f"supabase_sync_outcomes_total{_labels(outcome=k)} {v}" for k, v in sorted(self.outcomes.items())]
            lines += ["# HELP supabase_sync_runpod_errors_total RunPod API calls that failed, by kind.",
                      "# TYPE supabase_sync_runpod_errors_total counter"]
            lines += [f"supabase_sync_runpod_errors_total{_labels(kind=k)} {v}" for k, v in sorted(self.runpod_errors.items())]
            lines += ["# HELP supabase_sync_dispatch_latency_seconds From the task's created_at to RunPod accepting /run.",
                      "# TYPE supabase_sync_dispatch_latency_seconds histogram"]
            for bound, count in zip(LATENCY_BUCKETS_S, self._buckets):
                lines.append(f'supabase_sync_dispatch_latency_seconds_bucket{{le="{bound}"}} {count}')
            lines.append(f'supabase_sync_dispatch_latency_seconds_bucket{{le="+Inf"}} {self._latency_count}')
            lines.append(f"supabase_sync_dispatch_latency_seconds_sum {self._latency_sum:.6f}")
            lines.append(f"supabase_sync_dispatch_latency_seconds_count {self._latency_count}")
        return "\n".join(lines) + "\n"


def _bounded(queue: Iterable[QueueStat], routed: set[str]) -> dict[tuple[str, str], int]:
    """Depth per (task type, status): routed types and the largest unrouted ones by name,
    every other type summed into OTHER_TYPES."""
    stats = list(queue)
    unrouted: dict[str, int] = defaultdict(int)
    for stat in stats:
        if stat.task_type not in routed:
            unrouted[stat.task_type] += stat.tasks
    named = routed | set(sorted(unrouted, key=lambda t: (-unrouted[t], t))[:MAX_UNROUTED_TYPE_SERIES])
    depth: dict[tuple[str, str], int] = defaultdict(int)
    for stat in stats:
        depth[(stat.task_type if stat.task_type in named else OTHER_TYPES, stat.status)] += stat.tasks
    return depth
