-- supabase_sync 0002: every state change of a task is one of these functions.
--
-- Life cycle: queued -> in_progress -> complete | failed | cancelled; a retryable failure
-- goes back to queued with a backoff (run_after) until max_attempts.
--
-- A claim hands out a fresh lease_token. Every write-back (attach the RunPod job, progress,
-- complete, fail, release) names the task AND the token, and applies only while the task is
-- still in_progress under that token: a late result from an expired or cancelled claim
-- comes back as 'stale' and changes nothing, and nothing completes twice.
-- Write-backs return what happened: 'applied' (or the new status), 'stale', 'not_found'.
--
-- Executable by service_role only (see the grants at the end).

-- Claim up to p_limit queued tasks of p_task_types for one RunPod endpoint.
-- Claims for one endpoint are serialised by a transaction-scoped advisory lock so that
-- p_max_in_flight (the endpoint's concurrency limit) holds across several dispatchers;
-- SKIP LOCKED keeps claimers of other endpoints (and manual updates) from blocking it.
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
        select t.task_id
        from tasks t
        where t.status = 'queued' and t.task_type = any(p_task_types) and t.run_after <= now()
        order by t.created_at
        limit v_room
        for update skip locked
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
        progress = null,
        started_at = now(),
        updated_at = now()
    from picked
    where t.task_id = picked.task_id
    returning t.task_id, t.task_type, t.params, t.attempts, t.max_attempts, t.lease_token, t.created_at;
end
$$;

-- Record the RunPod job ids of claimed tasks, as soon as /run answered, so that a
-- restarted dispatcher resumes polling instead of submitting again.
-- p_jobs: [{"task_id": ..., "lease_token": ..., "runpod_job_id": ...}, ...].
-- The lease then becomes the time of the next status check (p_recheck_s from now).
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
    updated as (
        update tasks t
        set runpod_job_id = w.runpod_job_id,
            lease_expires_at = now() + make_interval(secs => p_recheck_s),
            updated_at = now()
        from wanted w
        where t.task_id = w.task_id
          and t.status = 'in_progress'
          and t.lease_token = w.lease_token
          and (t.runpod_job_id is null or t.runpod_job_id = w.runpod_job_id)
        returning t.task_id
    )
    select w.task_id,
           case when u.task_id is not null then 'applied'
                when exists (select 1 from tasks x where x.task_id = w.task_id) then 'stale'
                else 'not_found' end
    from wanted w left join updated u on u.task_id = w.task_id;
end
$$;

-- The row of a task locked for a write-back, or why there is none ('not_found'/'stale').
-- A RunPod job id, when given, must be the task's own (or adopt it: the webhook of a job
-- whose /run answer was lost in a crash before attach_runpod_jobs).
create or replace function public._held_task(p_task_id uuid, p_lease_token uuid, p_runpod_job_id text)
returns text
language plpgsql
set search_path = public
as $$
declare
    v tasks%rowtype;
begin
    select * into v from tasks where task_id = p_task_id for update;
    if not found then
        return 'not_found';
    end if;
    if v.status <> 'in_progress' or v.lease_token is distinct from p_lease_token then
        return 'stale';
    end if;
    if p_runpod_job_id is not null and v.runpod_job_id is not null and v.runpod_job_id <> p_runpod_job_id then
        return 'stale';
    end if;
    return 'held';
end
$$;

-- Mirror the worker's progress report into the task.
create or replace function public.record_progress(p_task_id uuid, p_lease_token uuid, p_progress jsonb)
returns text
language plpgsql
set search_path = public
as $$
declare
    v_hold text := _held_task(p_task_id, p_lease_token, null);
begin
    if v_hold <> 'held' then
        return v_hold;
    end if;
    update tasks set progress = p_progress, updated_at = now() where task_id = p_task_id;
    return 'applied';
end
$$;

-- The job finished: complete, with the primary output's URL and the whole result.
create or replace function public.complete_task(
    p_task_id uuid, p_lease_token uuid, p_runpod_job_id text, p_output_url text, p_result jsonb
)
returns text
language plpgsql
set search_path = public
as $$
declare
    v_hold text := _held_task(p_task_id, p_lease_token, p_runpod_job_id);
begin
    if v_hold <> 'held' then
        return v_hold;
    end if;
    update tasks
    set status = 'complete',
        runpod_job_id = coalesce(runpod_job_id, p_runpod_job_id),
        output_url = p_output_url,
        result = p_result,
        error_message = null,
        lease_expires_at = null,
        completed_at = now(),
        updated_at = now()
    where task_id = p_task_id;
    return 'applied';
end
$$;

-- The attempt failed. Retryable and attempts left: back to queued after an exponential
-- backoff with jitter (so a burst of failures does not come back as one burst);
-- otherwise failed for good. Returns the new status, or 'stale' / 'not_found'.
create or replace function public.fail_task(
    p_task_id uuid,
    p_lease_token uuid,
    p_runpod_job_id text,
    p_error text,
    p_retryable boolean,
    p_backoff_base_s double precision default 10,
    p_backoff_max_s double precision default 600
)
returns text
language plpgsql
set search_path = public
as $$
declare
    v_hold text := _held_task(p_task_id, p_lease_token, p_runpod_job_id);
    v tasks%rowtype;
    v_delay double precision;
begin
    if v_hold <> 'held' then
        return v_hold;
    end if;
    select * into v from tasks where task_id = p_task_id;
    if p_retryable and v.attempts < v.max_attempts then
        v_delay := least(p_backoff_max_s, p_backoff_base_s * power(2, greatest(v.attempts - 1, 0)));
        v_delay := v_delay * (0.5 + random() / 2);
        update tasks
        set status = 'queued',
            run_after = now() + make_interval(secs => v_delay),
            error_message = p_error,
            runpod_job_id = null,
            lease_token = null,
            lease_expires_at = null,
            claimed_by = null,
            updated_at = now()
        where task_id = p_task_id;
        return 'queued';
    end if;
    update tasks
    set status = 'failed',
        runpod_job_id = coalesce(runpod_job_id, p_runpod_job_id),
        error_message = case when p_retryable
                             then format('%s (gave up after %s attempts)', p_error, v.attempts)
                             else p_error end,
        lease_expires_at = null,
        completed_at = now(),
        updated_at = now()
    where task_id = p_task_id;
    return 'failed';
end
$$;

-- Give a claimed task back before it reached RunPod (RunPod answered 429/5xx, or the
-- dispatcher is shutting down): queued again after p_delay_s, and the attempt not counted.
create or replace function public.release_task(
    p_task_id uuid, p_lease_token uuid, p_delay_s double precision, p_reason text
)
returns text
language plpgsql
set search_path = public
as $$
declare
    v_hold text := _held_task(p_task_id, p_lease_token, null);
begin
    if v_hold <> 'held' then
        return v_hold;
    end if;
    update tasks
    set status = 'queued',
        attempts = greatest(attempts - 1, 0),
        run_after = now() + make_interval(secs => greatest(p_delay_s, 0)),
        error_message = p_reason,
        lease_token = null,
        lease_expires_at = null,
        claimed_by = null,
        updated_at = now()
    where task_id = p_task_id and runpod_job_id is null;
    if not found then
        return 'stale';  -- it already has a RunPod job: that one must be followed, not resubmitted
    end if;
    return 'applied';
end
$$;

-- Claims whose dispatcher died before the task reached RunPod: queued again (the lost
-- attempt counts, so a task that keeps killing dispatchers ends failed, not looping).
-- Tasks with a RunPod job are never requeued here: they are polled (take_due_polls).
create or replace function public.requeue_expired_leases(p_limit integer default 1000)
returns table (task_id uuid, outcome text)
language plpgsql
set search_path = public
as $$
#variable_conflict use_column
begin
    return query
    with expired as (
        select t.task_id
        from tasks t
        where t.status = 'in_progress' and t.runpod_job_id is null and t.lease_expires_at < now()
        limit p_limit
        for update skip locked
    )
    update tasks t
    set status = case when t.attempts >= t.max_attempts then 'failed' else 'queued' end,
        error_message = format('the dispatcher %s stopped before submitting the task to RunPod (lease expired)', t.claimed_by)
                        || case when t.attempts >= t.max_attempts
                                then format('; gave up after %s attempts', t.attempts) else '' end,
        completed_at = case when t.attempts >= t.max_attempts then now() else t.completed_at end,
        run_after = now(),
        lease_token = null,
        lease_expires_at = null,
        claimed_by = null,
        updated_at = now()
    from expired
    where t.task_id = expired.task_id
    returning t.task_id, t.status;
end
$$;

-- In-flight tasks whose status check is due (their webhook has not arrived in time):
-- hand them to this dispatcher for a RunPod /status poll and push the next check out.
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
        where t.status = 'in_progress' and t.runpod_job_id is not null and t.lease_expires_at <= now()
        order by t.lease_expires_at
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

-- Cancel a task that has not finished. Its RunPod job, if any, is then cancelled by a
-- dispatcher (take_pending_cancels). Returns 'cancelled', 'already_final' or 'not_found'.
create or replace function public.cancel_task(p_task_id uuid, p_reason text default 'cancelled')
returns text
language plpgsql
set search_path = public
as $$
begin
    update tasks
    set status = 'cancelled', error_message = p_reason, lease_expires_at = null,
        completed_at = now(), updated_at = now()
    where task_id = p_task_id and status in ('queued', 'in_progress');
    if found then
        return 'cancelled';
    end if;
    if exists (select 1 from tasks where task_id = p_task_id) then
        return 'already_final';
    end if;
    return 'not_found';
end
$$;

-- Cancelled tasks (by cancel_task or a plain UPDATE ... set status = 'cancelled') whose
-- RunPod job has not been cancelled yet. Each is handed out again after p_retry_s until
-- mark_runpod_cancelled, so a failed /cancel call is retried.
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

create or replace function public.mark_runpod_cancelled(p_task_id uuid)
returns text
language plpgsql
set search_path = public
as $$
begin
    update tasks
    set runpod_cancelled_at = now(), lease_expires_at = null, updated_at = now()
    where task_id = p_task_id and status = 'cancelled' and runpod_cancelled_at is null;
    return case when found then 'applied' else 'stale' end;
end
$$;

-- Queued tasks no route knows (when the dispatcher is told to fail them rather than leave
-- them queued for another dispatcher): failed with an error naming the type.
create or replace function public.fail_unroutable(p_known_types text[], p_limit integer default 100)
returns table (task_id uuid, task_type text)
language plpgsql
set search_path = public
as $$
#variable_conflict use_column
begin
    return query
    with unknown as (
        select t.task_id
        from tasks t
        where t.status = 'queued' and not (t.task_type = any(p_known_types))
        limit p_limit
        for update skip locked
    )
    update tasks t
    set status = 'failed',
        error_message = format('no RunPod endpoint is configured for task_type %L (known: %s)',
                               t.task_type, array_to_string(p_known_types, ', ')),
        completed_at = now(),
        updated_at = now()
    from unknown
    where t.task_id = unknown.task_id
    returning t.task_id, t.task_type;
end
$$;

-- A dispatcher or worker says it is alive (and what it is working on).
create or replace function public.heartbeat(
    p_worker_id text,
    p_status text default 'active',
    p_current_task_id uuid default null,
    p_metadata jsonb default null
)
returns timestamptz
language plpgsql
set search_path = public
as $$
declare
    v_now timestamptz := now();
begin
    if p_worker_id is null or p_worker_id = '' then
        raise exception 'heartbeat: p_worker_id is required' using errcode = '22023';
    end if;
    insert into workers as w (id, status, current_task_id, last_heartbeat, metadata)
    values (p_worker_id, p_status, p_current_task_id, v_now, coalesce(p_metadata, '{}'::jsonb))
    on conflict (id) do update
    set status = excluded.status,
        current_task_id = excluded.current_task_id,
        last_heartbeat = v_now,
        metadata = case when p_metadata is null then w.metadata else excluded.metadata end;
    return v_now;
end
$$;

-- Queue depth for metrics: unfinished tasks per type and status (uses the partial indexes).
create or replace function public.queue_stats()
returns table (task_type text, status text, tasks bigint, oldest_created_at timestamptz)
language sql
stable
set search_path = public
as $$
    select t.task_type, t.status, count(*), min(t.created_at)
    from tasks t
    where t.status in ('queued', 'in_progress')
    group by t.task_type, t.status
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
          and p.proname in ('claim_tasks', 'attach_runpod_jobs', '_held_task', 'record_progress',
                            'complete_task', 'fail_task', 'release_task', 'requeue_expired_leases',
                            'take_due_polls', 'cancel_task', 'take_pending_cancels',
                            'mark_runpod_cancelled', 'fail_unroutable', 'heartbeat', 'queue_stats')
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
