-- supabase_sync compat (optional): the tasks as the production Headless-Wan2GP / Reigh
-- schema names them, for readers written against that schema (dashboards, the Reigh UI).
--
-- Read-only: state changes still go through the functions of 0002. security_invoker makes
-- the caller's grants and row-level security apply (anon / authenticated see nothing).
-- A waiting task (unfinished dependencies, 0080) is 'Queued' there, as production keeps tasks
-- whose dependant_on is not complete yet; depends_on is shown as dependant_on.
-- Apply after the migrations (0080 included):  psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f headless_wan2gp_view.sql

create or replace view public.tasks_wan2gp
with (security_invoker = true)
as
select
    t.task_id                                  as id,
    t.task_type,
    t.params,
    case t.status
        when 'waiting' then 'Queued'
        when 'queued' then 'Queued'
        when 'in_progress' then 'In Progress'
        when 'complete' then 'Complete'
        when 'failed' then 'Failed'
        when 'cancelled' then 'Cancelled'
    end                                        as status,
    -- production keeps the public URL on success and the error text on failure here
    case when t.status = 'failed' then t.error_message else t.output_url end as output_location,
    t.claimed_by                               as worker_id,
    t.attempts,
    t.error_message,
    t.result                                   as result_data,
    t.started_at                               as generation_started_at,
    t.completed_at                             as generation_processed_at,
    t.created_at,
    t.updated_at,
    t.depends_on                               as dependant_on
from public.tasks t;

comment on view public.tasks_wan2gp is
    'tasks in the production Headless-Wan2GP column names and capitalised statuses (read-only)';

revoke all on public.tasks_wan2gp from public;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        revoke all on public.tasks_wan2gp from anon;
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        revoke all on public.tasks_wan2gp from authenticated;
    end if;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant select on public.tasks_wan2gp to service_role;
    end if;
end
$$;
