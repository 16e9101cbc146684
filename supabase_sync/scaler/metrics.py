"""The scaler's decisions in Prometheus' text format, for the dispatcher's /metrics.

The scaler records its latest decision per endpoint in `scaler_decisions` (SQL, 0050);
any dispatcher renders them at scrape time, like the queue depth, so the metrics show
what the scaler decided even though it runs as its own process.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from pydantic import BaseModel, TypeAdapter

from supabase_sync.metrics import _labels

class RecordedDecision(BaseModel):
    """One row of `scaler_decisions`."""

    endpoint_id: str
    decided_at: datetime
    outcome: str
    reason: str | None = None
    error: str | None = None
    queued: int | None = None
    queued_in_backoff: int | None = None
    in_progress: int | None = None
    runpod_in_queue: int | None = None
    runpod_in_progress: int | None = None
    workers_idle: int | None = None
    workers_running: int | None = None
    workload: int | None = None
    busy: int | None = None
    backlog_queued: int | None = None
    backlog_in_progress: int | None = None
    desired_min: int | None = None
    desired_max: int | None = None
    target_min: int | None = None
    target_max: int | None = None
    applied_min: int | None = None
    applied_max: int | None = None
    scale_down_pending: bool = False
    changes_total: int = 0
    failures_total: int = 0


async def fetch_decisions(client: Any) -> list[RecordedDecision]:
    """Every endpoint's latest decision, through the `scaler_decisions` RPC."""
    response = await client.rpc("scaler_decisions", {}).execute()
    return TypeAdapter(list[RecordedDecision]).validate_python(response.data or [])


# (metric name, help, type, value of a row, extra labels)
_GAUGES: list[tuple[str, str, str, str, dict[str, str]]] = [
    ("supabase_sync_scaler_workers", "Worker limits per endpoint: the rule's wish (desired), this pass's target, "
     "and the last setting known to be on RunPod (applied).", "gauge", "desired_min", {"setting": "desired", "limit": "min"}),
    ("supabase_sync_scaler_workers", "", "gauge", "desired_max", {"setting": "desired", "limit": "max"}),
    ("supabase_sync_scaler_workers", "", "gauge", "target_min", {"setting": "target", "limit": "min"}),
    ("supabase_sync_scaler_workers", "", "gauge", "target_max", {"setting": "target", "limit": "max"}),
    ("supabase_sync_scaler_workers", "", "gauge", "applied_min", {"setting": "applied", "limit": "min"}),
    ("supabase_sync_scaler_workers", "", "gauge", "applied_max", {"setting": "applied", "limit": "max"}),
    ("supabase_sync_scaler_input", "The scaler's inputs at its last pass (Supabase queue and RunPod /health).",
     "gauge", "queued", {"input": "queued"}),
    ("supabase_sync_scaler_input", "", "gauge", "queued_in_backoff", {"input": "queued_in_backoff"}),
    ("supabase_sync_scaler_input", "", "gauge", "in_progress", {"input": "in_progress"}),
    ("supabase_sync_scaler_input", "", "gauge", "runpod_in_queue", {"input": "runpod_in_queue"}),
    ("supabase_sync_scaler_input", "", "gauge", "runpod_in_progress", {"input": "runpod_in_progress"}),
    ("supabase_sync_scaler_input", "", "gauge", "workers_idle", {"input": "workers_idle"}),
    ("supabase_sync_scaler_input", "", "gauge", "workers_running", {"input": "workers_running"}),
    ("supabase_sync_scaler_input", "", "gauge", "workload", {"input": "workload"}),
    ("supabase_sync_scaler_input", "", "gauge", "busy", {"input": "busy"}),
    ("supabase_sync_scaler_input", "", "gauge", "backlog_queued", {"input": "backlog_queued"}),
    ("supabase_sync_scaler_input", "", "gauge", "backlog_in_progress", {"input": "backlog_in_progress"}),
    ("supabase_sync_scaler_scale_down_pending", "1 while a scale-down waits out its grace period.",
     "gauge", "scale_down_pending", {}),
    ("supabase_sync_scaler_changes_total", "Worker settings changed on RunPod.", "counter", "changes_total", {}),
    ("supabase_sync_scaler_failures_total", "Passes that could not observe or change the endpoint.",
     "counter", "failures_total", {}),
]


def render_decisions(rows: Iterable[RecordedDecision]) -> str:
    """Prometheus text lines for the recorded decisions (empty when there are none)."""
    rows = list(rows)
    if not rows:
        return ""
    lines: list[str] = []
    for name, help_text, kind, column, labels in _GAUGES:
        if help_text:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for row in rows:
            value = getattr(row, column)
            if value is None:
                continue
            lines.append(f"{name}{_labels(endpoint_id=row.endpoint_id, **labels)} {int(value)}")
    lines += ["# HELP supabase_sync_scaler_last_decision_timestamp_seconds When the scaler last decided, "
              "by endpoint and outcome of that pass.",
              "# TYPE supabase_sync_scaler_last_decision_timestamp_seconds gauge"]
    for row in rows:
        labels = _labels(endpoint_id=row.endpoint_id, outcome=row.outcome)
        lines.append(f"supabase_sync_scaler_last_decision_timestamp_seconds{labels} {row.decided_at.timestamp():.3f}")
    return "\n".join(lines) + "\n"


async def scaler_metrics_text(client: Any) -> str:
    """Fetch and render; what the dispatcher's /metrics appends."""
    return render_decisions(await fetch_decisions(client))
