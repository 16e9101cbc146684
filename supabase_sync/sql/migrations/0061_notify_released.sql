-- supabase_sync 0061 (pre): tell LISTENing dispatchers when a waiting task becomes queued.
--
-- A task of a pipeline (0080_pipelines.sql) is inserted 'waiting' and becomes 'queued' when
-- its last dependency completes, in that completion's transaction. The dispatcher that wrote
-- the completion claims at once; any other one (another route's, for the dependant's type)
-- learns of it here, like an insert (0060): {"event": "queued", "task_type": ...}, one per
-- type however many dependants one completion releases. The trigger only compares statuses,
-- so it may come before 0080 (until then no row is ever 'waiting').
--
-- Additive: dispatchers of the previous release do not listen.

create or replace function supabase_sync.notify_task_released()
returns trigger
language plpgsql
set search_path = pg_catalog
as $$
begin
    perform pg_notify('supabase_sync', json_build_object('event', 'queued', 'task_type', new.task_type)::text);
    return null;
end
$$;

drop trigger if exists tasks_notify_released on public.tasks;
create trigger tasks_notify_released
    after update of status on public.tasks
    for each row
    when (old.status = 'waiting' and new.status = 'queued')
    execute function supabase_sync.notify_task_released();

revoke all on function supabase_sync.notify_task_released() from public;
