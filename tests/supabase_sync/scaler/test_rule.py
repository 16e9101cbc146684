"""The scaling rule on its own: desired limits, grace period, floors and caps."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from supabase_sync.scaler.rule import EndpointLoad, ScalingRule, WorkerLimits, decide, desired_limits


def load(queued=0, in_progress=0, rp_queue=0, rp_progress=0, idle=0, running=0) -> EndpointLoad:
    return EndpointLoad(
        queued=queued,
        in_progress=in_progress,
        runpod_in_queue=rp_queue,
        runpod_in_progress=rp_progress,
        workers_idle=idle,
        workers_running=running,
    )


RULE = ScalingRule(min_workers=0, max_workers=10, scale_up_multiplier=1.0, keep_idle=0, scale_down_grace_s=60)


def test_idle_endpoint_wants_no_warm_workers():
    assert desired_limits(RULE, load()) == WorkerLimits(min=0, max=10)


def test_workload_counts_queued_and_in_progress_times_the_multiplier_rounded_up():
    rule = RULE.model_copy(update={"scale_up_multiplier": 0.5})
    assert desired_limits(rule, load(queued=3, in_progress=2)).min == 3  # ceil(5 * 0.5)


def test_runpod_jobs_from_other_clients_count_but_ours_are_not_counted_twice():
    # 4 of ours in progress, RunPod sees 4 too: 4, not 8.
    assert desired_limits(RULE, load(in_progress=4, rp_queue=3, rp_progress=1)).min == 4
    # RunPod has 6 jobs, only 2 of them ours: the endpoint still needs 6 workers' worth.
    assert desired_limits(RULE, load(queued=1, in_progress=2, rp_queue=4, rp_progress=2)).min == 7


def test_backlog_jobs_in_runpods_counts_are_not_workload():
    # RunPod has 5 jobs: 2 of ours that scale, 3 low-priority backlog ones.
    busy_backlog = EndpointLoad(queued=0, in_progress=2, runpod_in_queue=4, runpod_in_progress=1,
                                workers_idle=0, workers_running=1, backlog_in_progress=3)
    assert busy_backlog.workload == 2
    assert desired_limits(RULE, busy_backlog).min == 2


def test_max_workers_caps_the_minimum():
    assert desired_limits(RULE, load(queued=50)).min == 10


def test_min_workers_is_a_floor_when_idle():
    rule = RULE.model_copy(update={"min_workers": 2})
    assert desired_limits(rule, load()).min == 2


def test_keep_idle_adds_warm_workers_beside_the_busy_ones():
    rule = RULE.model_copy(update={"keep_idle": 2, "scale_up_multiplier": 0.1})
    assert desired_limits(rule, load(in_progress=3, rp_progress=3, running=3)).min == 5


def test_max_is_never_set_below_the_busy_workers():
    rule = RULE.model_copy(update={"max_workers": 2})
    limits = desired_limits(rule, load(in_progress=5, rp_progress=5, running=5))
    assert limits == WorkerLimits(min=2, max=5)


def test_scale_up_applies_at_once():
    decision = decide("ep", RULE, load(queued=4), WorkerLimits(0, 10), None, now=0.0)
    assert decision.apply and decision.target == WorkerLimits(4, 10)
    assert decision.reason == "scale up"


def test_unchanged_target_is_not_applied():
    decision = decide("ep", RULE, load(queued=4), WorkerLimits(4, 10), None, now=0.0)
    assert not decision.apply and decision.target == WorkerLimits(4, 10)


def test_unknown_current_setting_is_applied():
    decision = decide("ep", RULE, load(), None, None, now=0.0)
    assert decision.apply and decision.target == WorkerLimits(0, 10)


def test_scale_down_waits_for_the_grace_period_then_applies():
    current = WorkerLimits(6, 10)
    first = decide("ep", RULE, load(queued=1), current, None, now=100.0)
    assert not first.apply and first.target == current and first.lowering_since == 100.0
    held = decide("ep", RULE, load(queued=1), current, first.lowering_since, now=159.0)
    assert not held.apply and held.lowering_since == 100.0
    lowered = decide("ep", RULE, load(queued=1), current, held.lowering_since, now=160.0)
    assert lowered.apply and lowered.target == WorkerLimits(1, 10) and lowered.lowering_since is None


def test_a_new_burst_during_the_grace_period_restarts_it():
    current = WorkerLimits(6, 10)
    first = decide("ep", RULE, load(), current, None, now=0.0)
    burst = decide("ep", RULE, load(queued=6), current, first.lowering_since, now=50.0)
    assert burst.lowering_since is None and not burst.apply
    after = decide("ep", RULE, load(), current, burst.lowering_since, now=70.0)
    assert not after.apply and after.lowering_since == 70.0


def test_raises_apply_during_a_pending_scale_down():
    # min wants to drop (held by the grace), max must rise now for the busy workers.
    rule = RULE.model_copy(update={"max_workers": 2})
    current = WorkerLimits(2, 2)
    decision = decide("ep", rule, load(rp_progress=3, running=3), current, None, now=0.0)
    assert decision.apply and decision.target == WorkerLimits(2, 3)


def test_zero_grace_scales_down_immediately():
    rule = RULE.model_copy(update={"scale_down_grace_s": 0})
    decision = decide("ep", rule, load(), WorkerLimits(5, 10), None, now=0.0)
    assert decision.apply and decision.target == WorkerLimits(0, 10)


def test_idle_timeout_is_managed_only_when_configured():
    unmanaged = decide("ep", RULE, load(), WorkerLimits(0, 10, idle_timeout_s=30), None, now=0.0)
    assert not unmanaged.apply
    rule = RULE.model_copy(update={"idle_timeout_s": 60})
    managed = decide("ep", rule, load(), WorkerLimits(0, 10, idle_timeout_s=30), None, now=0.0)
    assert managed.apply and managed.target.idle_timeout_s == 60


def test_rule_refuses_min_above_max_naming_both():
    with pytest.raises(ValidationError, match=r"min_workers \(4\) is above max_workers \(2\)"):
        ScalingRule(min_workers=4, max_workers=2)


def test_rule_refuses_unknown_keys():
    with pytest.raises(ValidationError, match="max_worker"):
        ScalingRule.model_validate({"max_worker": 3})
