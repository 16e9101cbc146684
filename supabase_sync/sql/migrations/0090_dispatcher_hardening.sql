-- supabase_sync 0090 (pre): dispatcher hardening (issue 11). After 0060/0061 (LISTEN) and
-- 0080/0081 (pipelines and templates): the functions and triggers they define and this file
-- redefines keep what they added ('waiting', the cancel NOTIFY).
--
-- * Bad rows never stall the queue: rows a dispatcher cannot handle are quarantined
--   (failed, error_message naming what is wrong) instead of breaking a whole answer;
--   in_progress rows without lease_expires_at are recovered; queued rows at or over
--   max_attempts never run.
-- * Exactly-once execution: start_task(), the fence a worker calls before it runs a job,
--   lets only the job that holds the task's current claim run; extend_leases() keeps a
--   claim alive while its /run is still being retried.
-- * Dispatcher deaths do not spend attempts: a lost claim gives its attempt back and counts
--   in lost_claims instead, capped by max_lost_claims.
-- * A plain UPDATE ... set status = 'cancelled' gets cancel_task's bookkeeping in 0060's
--   cancel trigger, which also NOTIFYs listening dispatchers (and 0092's pg_net trigger
--   wakes one without LISTEN), so the RunPod job is cancelled at once.
-- * The claim reads one ordered index range per task type (0091's index: its cost does
--   not grow with the backlog); queue_stats() reads the partial indexes only.
--
-- Safe on a live database with dispatchers of the previous release still running (a pre
-- migration): columns are only added, with defaults; every function keeps its name,
-- arguments and result columns (requeue_expired_leases, whose answer gains a column, keeps
-- its own and calls the new requeue_lost_claims), so PostgREST never sees two overloads
-- (PGRST203) and every earlier file can be run again after this one.
-- One transaction (migrate wraps it); every statement may be run again.

-- Constant defaults: no rewrite, only the catalog changes (PostgreSQL 11+).
alter table public.tasks
    add column if not exists lost_claims integer not null default 0,
    add column if not exists max_lost_claims integer not null default 10,
    add column if not exists worker_started_at timestamptz;

comment on column public.tasks.lost_claims is
    'Claims that expired before a RunPod job was recorded (the dispatcher stopped); they do not count as attempts.';
comment on column public.tasks.max_lost_claims is
    'After this many lost claims the task fails: it may be what keeps stopping its dispatchers.';
comment on column public.tasks.worker_started_at is
    'When a worker passed start_task() for this claim''s RunPod job (the workflow began).';

-- NOT VALID here (no scan under this transaction's lock); 0091 validates it outside a
-- transaction, where VALIDATE lets reads and writes go on.
do $$
begin
    if not exists (select 1 from pg_constraint where conname = 'tasks_lost_claims_check'
                   and conrelid = 'public.tasks'::regclass) then
        alter table public.tasks add constraint tasks_lost_claims_check
            check (lost_claims >= 0 and max_lost_claims >= 1) not valid;
    end if;
end
$$;

-- Claim up to p_limit queued tasks of p_task_types for one RunPod endpoint (same contract
-- as 0002): oldest eligible first across the types, each type read as one ordered index
-- range of at most p_limit rows, the ranges merged. Rows at or over max_attempts are left
-- for quarantine_malformed_tasks().
create or replace function public.claim_tasks(
    p_dispatcher    text,
    p_endpoint_id   text,
    p_task_types    text[],
    p_limit         integer,
    p_max_in_flight integer default null,
    p_lease_s       double precision default 60
)
returns table (
    task_id uuid, task_type text, params jsonb, attempts integer, max_attempts integer,
    lease_token uuid, created_at timestamptz
)
language plpgsql
set search_path = public
as $$
#variable_conflict use_column
declare
    v_room integer := p_limit;
begin
    if p_limit is null or p_limit < 1 then
        raise exception 'claim_tasks: p_limit must be at least 1, got %', p_limit using errcode = '22023';
    end if;
    if p_endpoint_id is null or p_endpoint_id = '' then
        raise exception 'claim_tasks: p_endpoint_id is required' using errcode = '22023';
    end if;
    perform pg_advisory_xact_lock(hashtext('supabase_sync.claim:' || p_endpoint_id));
    if p_max_in_flight is not null then
        select greatest(0, least(p_limit, p_max_in_flight - count(*)))::integer into v_room
        from tasks t
        where t.status = 'in_progress' and t.endpoint_id = p_endpoint_id;
        if v_room = 0 then
            return;
        end if;
    end if;
    return query
    with picked as (
        select c.task_id
        from (select distinct wanted_type from unnest(p_task_types) as u(wanted_type)) types
        cross join lateral (
            select t.task_id, t.run_after
            from tasks t
            where t.status = 'queued' and t.task_type = types.wanted_type and t.run_after <= now()
              and t.attempts < t.max_attempts
            order by t.run_after
            limit v_room
            for update skip locked
        ) c
        order by c.run_after
        limit v_room
    )
    update tasks t
    set status = 'in_progress',
        attempts = t.attempts + 1,
        endpoint_id = p_endpoint_id,
        claimed_by = p_dispatcher,
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => p_lease_s),
        runpod_job_id = null,
        runpod_cancelled_at = null,
        worker_started_at = null,
        progress = null,
        started_at = now(),
        updated_at = now()
    from picked
    where t.task_id = picked.task_id
    returning t.task_id, t.task_type, t.params, t.attempts, t.max_attempts, t.lease_token, t.created_at;
end
$$;

-- Record RunPod job ids as /run answers (same contract as 0002). 'applied' also when the
-- task already carries this very job id: start_task() or the job's own result (a fast job
-- can finish before /run has answered) recorded it first; that is not a lost claim.
-- The rows are locked first and judged as they are then, not as the statement's snapshot
-- saw them: start_task() may have recorded the job a moment before.
create or replace function public.attach_runpod_jobs(p_jobs jsonb, p_recheck_s double precision default 30)
returns table (task_id uuid, outcome text)
language plpgsql
set search_path = public
as $$
#variable_conflict use_column
begin
    if jsonb_typeof(p_jobs) is distinct from 'array' then
        raise exception 'attach_runpod_jobs: p_jobs must be a JSON array' using errcode = '22023';
    end if;
    return query
    with wanted as (
        select (j ->> 'task_id')::uuid as task_id,
               (j ->> 'lease_token')::uuid as lease_token,
               j ->> 'runpod_job_id' as runpod_job_id
        from jsonb_array_elements(p_jobs) j
    ),
    locked as (
        select t.task_id, t.status, t.lease_token, t.runpod_job_id
        from tasks t
        where t.task_id in (select w.task_id from wanted w)
        for update
    ),
    updated as (
        update tasks t
        set runpod_job_id = w.runpod_job_id,
            lease_expires_at = now() + make_interval(secs => p_recheck_s),
            updated_at = now()
        from wanted w
        join locked l on l.task_id = w.task_id
        where t.task_id = w.task_id
          and l.status = 'in_progress'
          and l.lease_token = w.lease_token
          and (l.runpod_job_id is null or l.runpod_job_id = w.runpod_job_id)
        returning t.task_id
    )
    select w.task_id,
           case when u.task_id is not null then 'applied'
                when l.runpod_job_id = w.runpod_job_id then 'applied'
                when l.task_id is not null then 'stale'
                else 'not_found' end
    from wanted w
    left join updated u on u.task_id = w.task_id
    left join locked l on l.task_id = w.task_id;
end
$$;

-- The fence: a worker calls this before it runs a job whose input names a task and lease.
-- 'started': this job holds the task's current claim; its id is recorded now if /run's
-- answer has not been yet, so no dispatcher will requeue the task or submit it again.
-- 'superseded': the task finished, was cancelled, was claimed again, or another RunPod
-- job holds the claim: the worker must not run anything. 'not_found': no such task.
-- The same job starting again (RunPod re-delivering it) is 'started' again.
create or replace function public.start_task(
    p_task_id uuid, p_lease_token uuid, p_runpod_job_id text, p_recheck_s double precision default 30
)
returns table (outcome text, reason text)
language plpgsql
set search_path = public
as $$
declare
    v tasks%rowtype;
begin
    if p_runpod_job_id is null or p_runpod_job_id = '' then
        raise exception 'start_task: p_runpod_job_id is required' using errcode = '22023';
    end if;
    select * into v from tasks t where t.task_id = p_task_id for update;
    if not found then
        return query select 'not_found'::text, format('there is no task %s', p_task_id);
        return;
    end if;
    if v.status <> 'in_progress' then
        return query select 'superseded'::text, format('the task is %s', v.status);
        return;
    end if;
    if v.lease_token is distinct from p_lease_token then
        return query select 'superseded'::text, 'the task was claimed again; a newer claim holds it'::text;
        return;
    end if;
    if v.runpod_job_id is not null and v.runpod_job_id <> p_runpod_job_id then
        return query select 'superseded'::text, format('RunPod job %s holds the claim', v.runpod_job_id);
        return;
    end if;
    update tasks t
    set runpod_job_id = p_runpod_job_id,
        worker_started_at = coalesce(t.worker_started_at, now()),
        -- a task without a recorded job had a claim lease; from now on it is followed by job
        lease_expires_at = case when t.runpod_job_id is null
                                then now() + make_interval(secs => p_recheck_s)
                                else t.lease_expires_at end,
        updated_at = now()
    where t.task_id = p_task_id;
    return query select 'started'::text, null::text;
end
$$;

-- Keep claims alive while their /run is still being tried (429 with Retry-After can take
-- a minute). p_leases: [{"task_id", "lease_token"}]. Outcome 'extended'; 'has_job' when a
-- job id is already recorded (the claim is followed by its job now); 'stale' when the
-- claim is gone, with the task's status: 'cancelled', or 'queued' / 'in_progress' under
-- another claim, means its submission should stop; 'not_found'.
create or replace function public.extend_leases(p_leases jsonb, p_lease_s double precision)
returns table (task_id uuid, outcome text, status text)
language plpgsql
set search_path = public
as $$
#variable_conflict use_column
begin
    if jsonb_typeof(p_leases) is distinct from 'array' then
        raise exception 'extend_leases: p_leases must be a JSON array' using errcode = '22023';
    end if;
    return query
    with wanted as (
        select (j ->> 'task_id')::uuid as task_id, (j ->> 'lease_token')::uuid as lease_token
        from jsonb_array_elements(p_leases) j
    ),
    locked as (  -- judged as the rows are once locked (see attach_runpod_jobs)
        select t.task_id, t.status, t.lease_token, t.runpod_job_id
        from tasks t
        where t.task_id in (select w.task_id from wanted w)
        for update
    ),
    extended as (
        update tasks t
        set lease_expires_at = greatest(t.lease_expires_at, now() + make_interval(secs => p_lease_s))
        from wanted w
        join locked l on l.task_id = w.task_id
        where t.task_id = w.task_id and l.status = 'in_progress' and l.lease_token = w.lease_token
          and l.runpod_job_id is null
        returning t.task_id
    )
    select w.task_id,
           case when e.task_id is not null then 'extended'
                when l.status = 'in_progress' and l.lease_token = w.lease_token then 'has_job'
                when l.task_id is not null then 'stale'
                else 'not_found' end,
           l.status
    from wanted w
    left join extended e on e.task_id = w.task_id
    left join locked l on l.task_id = w.task_id;
end
$$;

-- Claims that expired before a RunPod job was recorded: their dispatcher stopped (or lost
-- Supabase) while it held them, since a live one keeps extending them (extend_leases).
-- Queued again with the attempt given back (the task did nothing wrong) and counted in
-- lost_claims; at max_lost_claims the task fails, so one that keeps killing its
-- dispatchers still ends. A row without lease_expires_at counts as expired. Tasks with a
-- RunPod job are never requeued here: they are followed (take_due_polls).
-- Returns the old claimer too, so the dispatcher's log can say whose claims were lost.
create or replace function public.requeue_lost_claims(p_limit integer default 1000)
returns table (task_id uuid, outcome text, claimed_by text)
language plpgsql
set search_path = public
as $$
#variable_conflict use_column
begin
    return query
    with expired as (
        select t.task_id, t.claimed_by as old_claimer
        from tasks t
        where t.status = 'in_progress' and t.runpod_job_id is null
          and (t.lease_expires_at is null or t.lease_expires_at < now())
        order by t.lease_expires_at nulls first
        limit p_limit
        for update skip locked
    )
    update tasks t
    set status = case when t.lost_claims + 1 >= t.max_lost_claims then 'failed' else 'queued' end,
        attempts = greatest(t.attempts - 1, 0),
        lost_claims = t.lost_claims + 1,
        error_message = case
            when t.lost_claims + 1 >= t.max_lost_claims then format(
                'gave up: the task''s claim was lost %s times (max_lost_claims): each dispatcher holding it '
                'stopped before a RunPod job was recorded, last %s', t.lost_claims + 1, coalesce(expired.old_claimer, 'unknown'))
            else format(
                'the claim of dispatcher %s expired before a RunPod job was recorded (it stopped, or lost Supabase); '
                'queued again, attempt not counted (lost claims: %s of %s)',
                coalesce(expired.old_claimer, 'unknown'), t.lost_claims + 1, t.max_lost_claims) end,
        completed_at = case when t.lost_claims + 1 >= t.max_lost_claims then now() else t.completed_at end,
        run_after = now(),
        lease_token = null,
        lease_expires_at = null,
        claimed_by = null,
        updated_at = now()
    from expired
    where t.task_id = expired.task_id
    returning t.task_id, t.status, expired.old_claimer;
end
$$;

-- 0002's name and result columns, for dispatchers of the previous release (same signature,
-- so it is replaced in place: a changed result would need a drop, and 0002 run again on
-- such a database would then fail). Same semantics as requeue_lost_claims(); a post
-- migration may drop it once no dispatcher older than this release runs.
create or replace function public.requeue_expired_leases(p_limit integer default 1000)
returns table (task_id uuid, outcome text)
language sql
set search_path = public
as $$
    select r.task_id, r.outcome from public.requeue_lost_claims(p_limit) r
$$;

-- In-flight tasks whose status check is due (same contract as 0002); a row without
-- lease_expires_at is due at once. Rows no poll could handle (no lease_token, no
-- endpoint_id) are left to quarantine_malformed_tasks() instead of being handed out.
create or replace function public.take_due_polls(
    p_dispatcher text, p_limit integer, p_recheck_s double precision default 30
)
returns table (
    task_id uuid, task_type text, lease_token uuid, endpoint_id text, runpod_job_id text,
    attempts integer, max_attempts integer
)
language plpgsql
set search_path = public
as $$
#variable_conflict use_column
begin
    return query
    with due as (
        select t.task_id
        from tasks t
        where t.status = 'in_progress' and t.runpod_job_id is not null
          and t.lease_token is not null and t.endpoint_id is not null
          and (t.lease_expires_at is null or t.lease_expires_at <= now())
        order by t.lease_expires_at nulls first
        limit p_limit
        for update skip locked
    )
    update tasks t
    set lease_expires_at = now() + make_interval(secs => p_recheck_s),
        claimed_by = p_dispatcher,
        updated_at = now()
    from due
    where t.task_id = due.task_id
    returning t.task_id, t.task_type, t.lease_token, t.endpoint_id, t.runpod_job_id, t.attempts, t.max_attempts;
end
$$;

-- Rows no dispatcher can handle, made by hand or by a broken client: failed, with an
-- error_message naming what is wrong, so they stop being skipped round after round.
--   in_progress with a RunPod job but no lease_token: no result could ever be written back;
--   in_progress with a RunPod job but no endpoint_id: its /status cannot be checked;
--   queued with attempts >= max_attempts: running it would pass its limit.
-- Returns each row's problem, and its endpoint and job so the dispatcher can cancel a job
-- that may still be running.
create or replace function public.quarantine_malformed_tasks(p_limit integer default 100)
returns table (task_id uuid, problem text, endpoint_id text, runpod_job_id text)
language plpgsql
set search_path = public
as $$
#variable_conflict use_column
begin
    return query
    with running as (
        select t.task_id,
               case when t.lease_token is null
                    then format('in_progress with RunPod job %s but no lease_token: no result could be written back', t.runpod_job_id)
                    else format('in_progress with RunPod job %s but no endpoint_id: its status cannot be checked', t.runpod_job_id)
               end as problem
        from tasks t
        where t.status = 'in_progress' and t.runpod_job_id is not null
          and (t.lease_token is null or t.endpoint_id is null)
        limit p_limit
        for update skip locked
    ),
    queued as (
        select t.task_id,
               format('queued with attempts %s, not below max_attempts %s: it would run past its limit '
                      '(set attempts lower to run it again)', t.attempts, t.max_attempts) as problem
        from tasks t
        where t.status = 'queued' and t.attempts >= t.max_attempts
        limit p_limit
        for update skip locked
    ),
    bad as (
        select * from running
        union all
        select * from queued
    )
    update tasks t
    set status = 'failed',
        error_message = 'quarantined, malformed row: ' || bad.problem,
        lease_expires_at = null,
        completed_at = now(),
        updated_at = now()
    from bad
    where t.task_id = bad.task_id
    returning t.task_id, bad.problem, t.endpoint_id, t.runpod_job_id;
end
$$;

-- A row the dispatcher received but could not read (its own row-by-row validation):
-- failed with the problem, if it has not finished. Returns 'applied', 'already_final' or
-- 'not_found'.
create or replace function public.quarantine_task(p_task_id uuid, p_problem text)
returns text
language plpgsql
set search_path = public
as $$
begin
    update tasks
    set status = 'failed',
        error_message = 'quarantined, malformed row: ' || coalesce(p_problem, 'unreadable'),
        lease_expires_at = null,
        completed_at = now(),
        updated_at = now()
    where task_id = p_task_id and status in ('waiting', 'queued', 'in_progress');
    if found then
        return 'applied';
    end if;
    return case when exists (select 1 from tasks where task_id = p_task_id) then 'already_final' else 'not_found' end;
end
$$;

-- Cancelled tasks whose RunPod job is still to be cancelled (same contract as 0002); rows
-- without endpoint_id are skipped: there is no endpoint to send /cancel to.
create or replace function public.take_pending_cancels(p_limit integer, p_retry_s double precision default 30)
returns table (task_id uuid, endpoint_id text, runpod_job_id text)
language plpgsql
set search_path = public
as $$
#variable_conflict use_column
begin
    return query
    with pending as (
        select t.task_id
        from tasks t
        where t.status = 'cancelled' and t.runpod_job_id is not null and t.runpod_cancelled_at is null
          and t.endpoint_id is not null
          and (t.lease_expires_at is null or t.lease_expires_at <= now())
        limit p_limit
        for update skip locked
    )
    update tasks t
    set lease_expires_at = now() + make_interval(secs => p_retry_s), updated_at = now()
    from pending
    where t.task_id = pending.task_id
    returning t.task_id, t.endpoint_id, t.runpod_job_id;
end
$$;

-- Queue depth for metrics (same contract as 0002, with 0080's 'waiting'), each status from
-- its partial index, so finished rows are never read.
create or replace function public.queue_stats()
returns table (task_type text, status text, tasks bigint, oldest_created_at timestamptz)
language sql
stable
set search_path = public
as $$
    select t.task_type, 'waiting'::text, count(*), min(t.created_at)
    from tasks t
    where t.status = 'waiting'
    group by t.task_type
    union all
    select t.task_type, 'queued'::text, count(*), min(t.created_at)
    from tasks t
    where t.status = 'queued'
    group by t.task_type
    union all
    select t.task_type, 'in_progress'::text, count(*), min(t.created_at)
    from tasks t
    where t.status = 'in_progress'
    group by t.task_type
$$;

-- The cancel trigger of 0060, now with cancel_task()'s bookkeeping, so that a plain
-- UPDATE tasks SET status = 'cancelled' is a cancel like any other:
--   * the lease (which may be the next status check, minutes away) is cleared, so
--     take_pending_cancels() hands the RunPod job out at once;
--   * completed_at and a reason are set (cancel_task's own reason is kept);
--   * a task with a RunPod job NOTIFYs listening dispatchers, which send /cancel at once
--     (take_pending_cancels leases the row, so one of them sends it, once);
--   * a task whose /run has not answered yet has no job to name: its submitting
--     dispatcher finds the claim cancelled (extend_leases, attach_runpod_jobs) and
--     cancels the job itself, and the worker's start_task() fence refuses it meanwhile.
-- Only for a task that was unfinished: a finished one has no job to cancel.
-- Same name and signature as 0060's, so the function is replaced in place.
create or replace function supabase_sync.task_cancelled()
returns trigger
language plpgsql
set search_path = pg_catalog
as $$
begin
    new.lease_expires_at := null;
    new.completed_at := coalesce(new.completed_at, now());
    if new.error_message is not distinct from old.error_message then
        new.error_message := 'cancelled';
    end if;
    new.updated_at := now();
    if new.runpod_job_id is not null then
        perform pg_notify('supabase_sync', json_build_object('event', 'cancel', 'task_id', new.task_id)::text);
    end if;
    return new;
end
$$;
revoke all on function supabase_sync.task_cancelled() from public;

drop trigger if exists tasks_cancelled on public.tasks;
create trigger tasks_cancelled
    before update of status on public.tasks
    for each row
    when (new.status = 'cancelled' and old.status in ('waiting', 'queued', 'in_progress'))
    execute function supabase_sync.task_cancelled();

-- Grants, as in 0002: service_role only.
do $$
declare
    f regprocedure;
    r text;
begin
    for f in
        select p.oid::regprocedure
        from pg_proc p
        where p.pronamespace = 'public'::regnamespace
          and p.proname in ('claim_tasks', 'attach_runpod_jobs', 'start_task', 'extend_leases',
                            'take_due_polls', 'quarantine_malformed_tasks', 'quarantine_task',
                            'take_pending_cancels', 'queue_stats', 'requeue_expired_leases',
                            'requeue_lost_claims')
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
end
$$;

-- PostgREST caches function signatures: tell it to reload (Supabase also does on DDL).
notify pgrst, 'reload schema';
