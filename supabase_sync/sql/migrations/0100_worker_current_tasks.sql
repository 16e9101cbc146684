-- Workers that pipeline jobs (JOB_CONCURRENCY 2-3) hold several tasks at once: one preparing,
-- one executing, one delivering. Their `workers` row lists every one in current_task_ids (in
-- the order the worker took them); current_task_id stays the first of them, so the seed's
-- monitoring query and anything else written for one task per worker keep working.
-- Additive: a worker or dispatcher of the previous version still calls heartbeat() with its
-- four arguments and gets current_task_ids = {current_task_id}.

alter table public.workers add column if not exists current_task_ids uuid[] not null default '{}';

comment on column public.workers.current_task_ids is
    'Every task the worker holds now, in the order it took them (current_task_id is the first).';

drop function if exists public.heartbeat(text, text, uuid, jsonb);

create or replace function public.heartbeat(
    p_worker_id text,
    p_status text default 'active',
    p_current_task_id uuid default null,
    p_metadata jsonb default null,
    p_current_task_ids uuid[] default null
)
returns timestamptz
language plpgsql
set search_path = public
as $$
declare
    v_now timestamptz := now();
    v_ids uuid[] := coalesce(p_current_task_ids,
                             case when p_current_task_id is null then '{}'::uuid[] else array[p_current_task_id] end);
begin
    if p_worker_id is null or p_worker_id = '' then
        raise exception 'heartbeat: p_worker_id is required' using errcode = '22023';
    end if;
    insert into workers as w (id, status, current_task_id, current_task_ids, last_heartbeat, metadata)
    values (p_worker_id, p_status, coalesce(p_current_task_id, v_ids[1]), v_ids, v_now,
            coalesce(p_metadata, '{}'::jsonb))
    on conflict (id) do update
    set status = excluded.status,
        current_task_id = excluded.current_task_id,
        current_task_ids = excluded.current_task_ids,
        last_heartbeat = v_now,
        metadata = case when p_metadata is null then w.metadata else excluded.metadata end;
    return v_now;
end
$$;

-- As 0002 does for every function: not PUBLIC's, nor anon's or authenticated's; service_role's.
do $$
declare
    r text;
begin
    revoke all on function public.heartbeat(text, text, uuid, jsonb, uuid[]) from public;
    foreach r in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = r) then
            execute format('revoke all on function public.heartbeat(text, text, uuid, jsonb, uuid[]) from %I', r);
        end if;
    end loop;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant execute on function public.heartbeat(text, text, uuid, jsonb, uuid[]) to service_role;
    end if;
end
$$;
