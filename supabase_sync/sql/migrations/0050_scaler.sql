-- supabase_sync 0050: what the scaler (`python -m supabase_sync scale`) reads from the queue.
--
-- Read-only. Apply after 0001/0002, as the database owner, like the other migrations:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f 0050_scaler.sql
-- Executable by service_role only (see the grants at the end).

-- The queue of one RunPod endpoint: tasks of the types routed to it that are still queued
-- (ready now, or waiting out a retry backoff) and the tasks in progress on it. In-progress
-- tasks are counted by the endpoint they were sent to, so a routing change does not
-- forget work that is still running there.
create or replace function public.scaler_queue_counts(p_endpoint_id text, p_task_types text[])
returns table (queued_ready bigint, queued_waiting bigint, in_progress bigint)
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
          where t.status = 'in_progress' and t.endpoint_id = p_endpoint_id)
$$;

comment on function public.scaler_queue_counts(text, text[]) is
    'Queued (ready / in backoff) and in-progress task counts of one RunPod endpoint, for the scaler.';

-- Functions are executable by PUBLIC by default, and Supabase's default privileges grant
-- new functions to anon and authenticated too: take all of that back.
revoke all on function public.scaler_queue_counts(text, text[]) from public;
do $$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = r) then
            execute format('revoke all on function public.scaler_queue_counts(text, text[]) from %I', r);
        end if;
    end loop;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant execute on function public.scaler_queue_counts(text, text[]) to service_role;
    end if;
end
$$;
