"""The scaling rule: how many workers a RunPod endpoint should have, from its queue.

Pure: no I/O, no clock of its own. `decide` takes what was observed (the endpoint's load
and its current worker limits), the rule and the time, and returns the decision with the
state to carry to the next pass. The loop that observes and applies lives in
`supabase_sync.scaler.service`.

The rule is the old orchestrator's (Headless-Wan2GP-Orchestrator), mapped onto a
serverless endpoint's `workers.min` (always-on workers: no cold start) and `workers.max`:

    workload    = queued + in progress
    task_based  = ceil(workload x scale_up_multiplier), 0 when there is no workload
    desired_min = min(max_workers, max(min_workers, task_based, busy + keep_idle))
    desired_max = max(max_workers, busy)

Raising applies at once; lowering applies only once the desired limits have stayed
below the current ones for `scale_down_grace_s`. `workers.max` is never set below the
workers busy with a job, and `workers.min` never below them either (up to max_workers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ScalingRule(BaseModel):
    """One endpoint's scaling parameters (the old orchestrator's names in brackets)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_workers: int = Field(0, ge=0, description="workers.min never goes below this [MIN_ACTIVE_GPUS]")
    max_workers: int = Field(3, ge=0, description="workers.max, and the cap on workers.min [MAX_ACTIVE_GPUS]")
    scale_up_multiplier: float = Field(
        1.0, gt=0, description="warm workers per task queued or in progress [SCALE_UP_MULTIPLIER]"
    )
    keep_idle: int = Field(0, ge=0, description="idle workers kept warm beside the busy ones [MACHINES_TO_KEEP_IDLE]")
    scale_down_grace_s: float = Field(
        120.0, ge=0, description="seconds the desired limits must stay lower before they are lowered"
    )
    idle_timeout_s: int | None = Field(
        None, ge=0, description="workers.idleTimeout to set with the limits; None leaves RunPod's value alone"
    )

    @model_validator(mode="after")
    def _min_within_max(self) -> "ScalingRule":
        if self.min_workers > self.max_workers:
            raise ValueError(f"min_workers ({self.min_workers}) is above max_workers ({self.max_workers})")
        return self


@dataclass(frozen=True)
class EndpointLoad:
    """What one pass observed of an endpoint: the Supabase queue and RunPod's /health."""

    queued: int  # Supabase: queued tasks of the endpoint's types, ready to run now
    in_progress: int  # Supabase: tasks in progress on the endpoint (sent to RunPod)
    runpod_in_queue: int  # /health jobs.inQueue
    runpod_in_progress: int  # /health jobs.inProgress
    workers_idle: int  # /health workers.idle
    workers_running: int  # /health workers.running
    backlog_in_progress: int = 0  # Supabase: low-priority (backlog) tasks in progress, in RunPod's counts too

    @property
    def workload(self) -> int:
        """Tasks needing a worker. RunPod's own counts cover jobs submitted by other
        clients; the larger of the two views of in-flight work is taken, never both.
        Backlog (low-priority) tasks are no workload: they run on the workers there are."""
        runpod_jobs = max(0, self.runpod_in_queue + self.runpod_in_progress - self.backlog_in_progress)
        return self.queued + max(self.in_progress, runpod_jobs)

    @property
    def busy(self) -> int:
        """Workers executing a job right now: what must never be scaled away."""
        return max(self.workers_running, self.runpod_in_progress)


@dataclass(frozen=True)
class WorkerLimits:
    """An endpoint's `workers.min` and `workers.max` (and `idleTimeout` when managed)."""

    min: int
    max: int
    idle_timeout_s: int | None = None

    def at_least(self, other: "WorkerLimits") -> "WorkerLimits":
        """Component-wise maximum: raises from `self`, nothing lowered below `other`."""
        return WorkerLimits(
            min=max(self.min, other.min), max=max(self.max, other.max), idle_timeout_s=self.idle_timeout_s
        )

    def lowers(self, current: "WorkerLimits") -> bool:
        return self.min < current.min or self.max < current.max


@dataclass(frozen=True)
class ScalingDecision:
    """One endpoint, one pass: the inputs, what the rule wants, and what to set.

    `target` is what the endpoint should be set to now (the desired limits, held up by a
    pending grace period); `apply` is False when it equals what is already set.
    `lowering_since` is the state for the next pass (when lowering started to be wanted).
    """

    endpoint_id: str
    load: EndpointLoad
    current: WorkerLimits | None
    desired: WorkerLimits
    target: WorkerLimits
    apply: bool
    reason: str
    lowering_since: float | None


def desired_limits(rule: ScalingRule, load: EndpointLoad) -> WorkerLimits:
    """The limits the rule wants for this load, before any grace period."""
    workload = load.workload
    task_based = math.ceil(workload * rule.scale_up_multiplier) if workload > 0 else 0
    desired_min = min(rule.max_workers, max(rule.min_workers, task_based, load.busy + rule.keep_idle))
    return WorkerLimits(min=desired_min, max=max(rule.max_workers, load.busy), idle_timeout_s=rule.idle_timeout_s)


def _same_setting(target: WorkerLimits, current: WorkerLimits) -> bool:
    if target.min != current.min or target.max != current.max:
        return False
    # An unmanaged idle timeout (None) never counts as a difference.
    return target.idle_timeout_s is None or target.idle_timeout_s == current.idle_timeout_s


def decide(
    endpoint_id: str,
    rule: ScalingRule,
    load: EndpointLoad,
    current: WorkerLimits | None,
    lowering_since: float | None,
    now: float,
) -> ScalingDecision:
    """Decide one endpoint's limits for this pass.

    `current` is what the endpoint is set to (None when unknown: the desired limits are
    applied); `lowering_since` is the previous decision's value; `now` is a monotonic
    clock in seconds.
    """
    desired = desired_limits(rule, load)
    if current is None:
        target, since, reason = desired, None, "current setting unknown"
    elif not desired.lowers(current):
        target, since = desired, None
        reason = "scale up" if (desired.min > current.min or desired.max > current.max) else "steady"
    else:
        since = now if lowering_since is None else lowering_since
        waited = now - since
        if waited >= rule.scale_down_grace_s:
            target, since, reason = desired, None, f"scale down after {waited:.0f}s grace"
        else:
            # Raise what must rise now; hold what would drop until the grace has passed.
            target = desired.at_least(current)
            reason = f"scale down pending ({waited:.0f}s of {rule.scale_down_grace_s:.0f}s grace)"
    apply = current is None or not _same_setting(target, current)
    if apply and reason == "steady":
        reason = "idle timeout differs"
    return ScalingDecision(
        endpoint_id=endpoint_id,
        load=load,
        current=current,
        desired=desired,
        target=target,
        apply=apply,
        reason=reason,
        lowering_since=since,
    )
