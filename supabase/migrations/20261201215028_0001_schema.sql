-- supabase_sync 0001: the task queue tables.
--
-- The seed's SQL (seed/COMFY_WORKER.md) runs unchanged against these tables: its INSERT
-- (task_type, params, status 'queued') and its monitoring queries on workers and tasks.
-- Apply as the database owner (`postgres` on Supabase), in order, once:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f 0001_schema.sql -f 0002_functions.sql

create extension if not exists pgcrypto;  -- gen_random_uuid() on PostgreSQL < 13

create table if not exists public.tasks (
    task_id          uuid primary key default gen_random_uuid(),
    task_type        text not null,
    params           jsonb not null default '{}'::jsonb,
    status           text not null default 'queued'
                     constraint tasks_status_check
                     check (status in ('queued', 'in_progress', 'complete', 'failed', 'cancelled')),
    -- retries: every claim counts one attempt; a retryable failure waits until run_after
    attempts         integer not null default 0 check (attempts >= 0),
    max_attempts     integer not null default 3 check (max_attempts >= 1),
    run_after        timestamptz not null default now(),
    -- where and by whom it runs
    endpoint_id      text,
    runpod_job_id    text,
    claimed_by       text,
    -- a new token per claim: every write-back must present it, so a late result from an
    -- earlier claim can never overwrite a newer state
    lease_token      uuid,
    lease_expires_at timestamptz,
    runpod_cancelled_at timestamptz,
    -- what came out
    progress         jsonb,
    result           jsonb,
    output_url       text,
    error_message    text,
    created_at       timestamptz not null default now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    updated_at       timestamptz not null default now()
);

comment on table public.tasks is
    'Task queue fed to RunPod endpoints by the supabase_sync dispatcher; change state only through its functions.';

-- The claim's scan: queued rows of a type whose backoff has passed, oldest first.
create index if not exists tasks_queued_idx
    on public.tasks (task_type, created_at) where status = 'queued';
-- In-flight work per endpoint (concurrency limit) and due status polls.
create index if not exists tasks_in_progress_idx
    on public.tasks (endpoint_id, lease_expires_at) where status = 'in_progress';
-- Cancelled rows whose RunPod job still has to be cancelled.
create index if not exists tasks_cancel_pending_idx
    on public.tasks (task_id) where status = 'cancelled' and runpod_job_id is not null and runpod_cancelled_at is null;
create index if not exists tasks_type_created_idx on public.tasks (task_type, created_at desc);

create table if not exists public.workers (
    id              text primary key,
    status          text not null default 'active',
    current_task_id uuid,
    last_heartbeat  timestamptz not null default now(),
    metadata        jsonb not null default '{}'::jsonb,
    created_at      timestamptz not null default now()
);

comment on table public.workers is
    'Dispatchers (dispatcher-*) and ComfyUI workers (comfy-worker-<pod id>) and their heartbeats.';

-- Nobody reads or writes these tables through the Data API except service_role (which
-- bypasses row-level security); with RLS on and no policies, anon and authenticated see
-- nothing, and the revokes make a direct query fail loudly instead of returning no rows.
alter table public.tasks enable row level security;
alter table public.workers enable row level security;
revoke all on table public.tasks, public.workers from public;
do $$
begin
    -- Supabase has these roles; a plain PostgreSQL may not (then there is nothing to revoke).
    if exists (select 1 from pg_roles where rolname = 'anon') then
        revoke all on table public.tasks, public.workers from anon;
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        revoke all on table public.tasks, public.workers from authenticated;
    end if;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant select, insert, update, delete on table public.tasks, public.workers to service_role;
    end if;
end
$$;
