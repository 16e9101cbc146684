-- supabase_sync 0060 (pre): tell LISTENing dispatchers about new and cancelled tasks.
--
-- A dispatcher with DATABASE_URL LISTENs on channel `supabase_sync` (supabase_sync/listener.py).
-- These triggers NOTIFY it inside the transaction that inserts or cancels: PostgreSQL sends a
-- notification when that transaction commits, and never for one that rolls back. No URL, no
-- secret, no extension. Notifications only wake a dispatcher early: its poll still finds
-- every row, so a dispatcher that was not listening at the time loses nothing.
--
-- Payloads (JSON): {"event": "insert", "task_type": ...} and {"event": "cancel", "task_id": ...}.
-- An insert names only the type, so the notifications of a many-row INSERT collapse into one
-- per type (PostgreSQL delivers identical notifications of a transaction once).
--
-- Additive: dispatchers of the previous release do not listen and are not affected.
-- The trigger functions live in the private schema `supabase_sync` (not exposed by PostgREST).

create schema if not exists supabase_sync;
revoke all on schema supabase_sync from public;

create or replace function supabase_sync.notify_task_queued()
returns trigger
language plpgsql
set search_path = pg_catalog
as $$
begin
    perform pg_notify('supabase_sync', json_build_object('event', 'insert', 'task_type', new.task_type)::text);
    return null;
end
$$;

drop trigger if exists tasks_notify_queued on public.tasks;
create trigger tasks_notify_queued
    after insert on public.tasks
    for each row
    when (new.status = 'queued')
    execute function supabase_sync.notify_task_queued();

-- A task becomes cancelled (cancel_task, or a plain UPDATE ... set status = 'cancelled'): its
-- RunPod job is due for /cancel at once, so the pending-cancel timer is cleared (cancel_task
-- does this already; a plain UPDATE left it at the next status check), and a dispatcher is
-- told when there is a RunPod job to cancel.
create or replace function supabase_sync.task_cancelled()
returns trigger
language plpgsql
set search_path = pg_catalog
as $$
begin
    new.lease_expires_at := null;
    if new.runpod_job_id is not null then
        perform pg_notify('supabase_sync', json_build_object('event', 'cancel', 'task_id', new.task_id)::text);
    end if;
    return new;
end
$$;

drop trigger if exists tasks_cancelled on public.tasks;
create trigger tasks_cancelled
    before update of status on public.tasks
    for each row
    when (new.status = 'cancelled' and old.status is distinct from 'cancelled')
    execute function supabase_sync.task_cancelled();

revoke all on function supabase_sync.notify_task_queued() from public;
revoke all on function supabase_sync.task_cancelled() from public;
