-- supabase_sync 0050: what the scaler (`python -m supabase_sync scale`) reads from the queue,
-- and where it records its decisions for the dispatcher's /metrics.
--
-- Apply after 0001/0002, as the database owner, like the other migrations:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f 0050_scaler.sql
-- Functions executable and the table readable by service_role only (grants at the end).

-- The queue of one RunPod endpoint: tasks of the types routed to it that are still queued
-- (ready now, or waiting out a retry backoff) and the tasks in progress on it. In-progress
-- tasks are counted by the endpoint they were sent to, so a routing change does not
-- forget work that is still running there. Backlog types (routes submitted with RunPod's
-- lowPriority) are counted apart: they must not make the endpoint scale.
create or replace function public.scaler_queue_counts(
    p_endpoint_id   text,
    p_task_types    text[],
    p_backlog_types text[] default '{}'
)
returns table (
    queued_ready bigint, queued_waiting bigint, in_progress bigint,
    backlog_queued bigint, backlog_in_progress bigint
)
language sql
stable
set search_path = public
as $$
    select
        (select count(*) from tasks t
          where t.status = 'queued' and t.task_type = any(p_task_types) and t.run_after <= now()),
        (select count(*) from tasks t
          where t.status = 'queued' and t.task_type = any(p_task_types) and t.run_after > now()),
        (select count(*) from tasks t
          where t.status = 'in_progress' and t.endpoint_id = p_endpoint_id
            and not (t.task_type = any(coalesce(p_backlog_types, '{}')))),
        (select count(*) from tasks t
          where t.status = 'queued' and t.task_type = any(coalesce(p_backlog_types, '{}'))),
        (select count(*) from tasks t
          where t.status = 'in_progress' and t.endpoint_id = p_endpoint_id
            and t.task_type = any(coalesce(p_backlog_types, '{}')))
$$;

comment on function public.scaler_queue_counts(text, text[], text[]) is
    'Queued (ready / in backoff) and in-progress task counts of one RunPod endpoint, backlog apart, for the scaler.';

-- The scaler's latest decision per endpoint, written by the scaler every pass (not in a dry
-- run) and read by the dispatcher's /metrics, so a scrape of any dispatcher shows what the
-- scaler decided and what is set on RunPod. One row per endpoint, overwritten.
create table if not exists public.scaler_decisions (
    endpoint_id        text primary key,
    decided_at         timestamptz not null default now(),
    outcome            text not null,   -- applied | unchanged | apply_failed | observe_failed
    reason             text,
    error              text,
    queued             integer,         -- inputs: Supabase queue and RunPod /health
    queued_in_backoff  integer,
    in_progress        integer,
    runpod_in_queue    integer,
    runpod_in_progress integer,
    workers_idle       integer,
    workers_running    integer,
    workload           integer,
    busy               integer,
    backlog_queued      integer,        -- low-priority (backlog) tasks: never a reason to scale
    backlog_in_progress integer,
    desired_min        integer,         -- what the rule wants, before the grace period
    desired_max        integer,
    target_min         integer,         -- what was (to be) set this pass
    target_max         integer,
    applied_min        integer,         -- the last setting known to be on RunPod
    applied_max        integer,
    scale_down_pending boolean not null default false,
    changes_total      bigint not null default 0,  -- successful PATCHes since the row was created
    failures_total     bigint not null default 0   -- failed PATCHes or observations
);

comment on table public.scaler_decisions is
    'The scaler''s latest decision per RunPod endpoint (python -m supabase_sync scale), for metrics.';

alter table public.scaler_decisions enable row level security;
revoke all on table public.scaler_decisions from public;

-- Record one decision (p_decision: the columns above but the counters, as a JSON object).
create or replace function public.record_scaler_decision(p_endpoint_id text, p_decision jsonb)
returns void
language sql
set search_path = public
as $$
    insert into scaler_decisions as d (
        endpoint_id, decided_at, outcome, reason, error, queued, queued_in_backoff, in_progress,
        runpod_in_queue, runpod_in_progress, workers_idle, workers_running, workload, busy,
        backlog_queued, backlog_in_progress, desired_min, desired_max, target_min, target_max, applied_min, applied_max,
        scale_down_pending, changes_total, failures_total)
    select p_endpoint_id, now(), r.outcome, r.reason, r.error, r.queued, r.queued_in_backoff, r.in_progress,
           r.runpod_in_queue, r.runpod_in_progress, r.workers_idle, r.workers_running, r.workload, r.busy,
           r.backlog_queued, r.backlog_in_progress, r.desired_min, r.desired_max, r.target_min, r.target_max, r.applied_min, r.applied_max,
           coalesce(r.scale_down_pending, false),
           (r.outcome = 'applied')::int,
           (r.outcome in ('apply_failed', 'observe_failed'))::int
    from jsonb_populate_record(null::scaler_decisions, p_decision) r
    on conflict (endpoint_id) do update set
        decided_at = excluded.decided_at, outcome = excluded.outcome, reason = excluded.reason,
        error = excluded.error,
        -- an endpoint that could not be observed keeps its last inputs and limits
        queued = coalesce(excluded.queued, d.queued),
        queued_in_backoff = coalesce(excluded.queued_in_backoff, d.queued_in_backoff),
        in_progress = coalesce(excluded.in_progress, d.in_progress),
        runpod_in_queue = coalesce(excluded.runpod_in_queue, d.runpod_in_queue),
        runpod_in_progress = coalesce(excluded.runpod_in_progress, d.runpod_in_progress),
        workers_idle = coalesce(excluded.workers_idle, d.workers_idle),
        workers_running = coalesce(excluded.workers_running, d.workers_running),
        workload = coalesce(excluded.workload, d.workload),
        busy = coalesce(excluded.busy, d.busy),
        backlog_queued = coalesce(excluded.backlog_queued, d.backlog_queued),
        backlog_in_progress = coalesce(excluded.backlog_in_progress, d.backlog_in_progress),
        desired_min = coalesce(excluded.desired_min, d.desired_min),
        desired_max = coalesce(excluded.desired_max, d.desired_max),
        target_min = coalesce(excluded.target_min, d.target_min),
        target_max = coalesce(excluded.target_max, d.target_max),
        applied_min = coalesce(excluded.applied_min, d.applied_min),
        applied_max = coalesce(excluded.applied_max, d.applied_max),
        scale_down_pending = excluded.scale_down_pending,
        changes_total = d.changes_total + excluded.changes_total,
        failures_total = d.failures_total + excluded.failures_total
$$;

-- Every endpoint's latest decision, for the dispatcher's /metrics.
create or replace function public.scaler_decisions()
returns setof public.scaler_decisions
language sql
stable
set search_path = public
as $$
    select * from scaler_decisions order by endpoint_id
$$;

-- Functions are executable by PUBLIC by default, and Supabase's default privileges grant
-- new functions to anon and authenticated too: take all of that back.
do $$
declare
    f regprocedure;
    r text;
begin
    for f in
        select p.oid::regprocedure
        from pg_proc p
        where p.pronamespace = 'public'::regnamespace
          and p.proname in ('scaler_queue_counts', 'record_scaler_decision', 'scaler_decisions')
    loop
        execute format('revoke all on function %s from public', f);
        foreach r in array array['anon', 'authenticated'] loop
            if exists (select 1 from pg_roles where rolname = r) then
                execute format('revoke all on function %s from %I', f, r);
            end if;
        end loop;
        if exists (select 1 from pg_roles where rolname = 'service_role') then
            execute format('grant execute on function %s to service_role', f);
        end if;
    end loop;
    foreach r in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = r) then
            execute format('revoke all on table public.scaler_decisions from %I', r);
        end if;
    end loop;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant select, insert, update, delete on table public.scaler_decisions to service_role;
    end if;
end
$$;
