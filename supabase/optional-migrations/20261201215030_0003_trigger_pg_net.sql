-- supabase_sync 0003 (optional): wake the dispatcher when a queued task is inserted.
--
-- Needs the pg_net extension, enabled beforehand (Supabase: Database > Extensions > pg_net). pg_net requests
-- are asynchronous, at most once and never retried, so this only shortens the wait: the
-- dispatcher's poll (POLL_INTERVAL) still finds every queued row.
--
-- After applying, tell the trigger where the dispatcher listens and the shared secret
-- (the same value as the dispatcher's TRIGGER_SECRET):
--   insert into public.dispatcher_wakeup (url, secret)
--   values ('https://dispatcher.example.com/hooks/supabase', '<secret>')
--   on conflict (id) do update set url = excluded.url, secret = excluded.secret;

do $$
begin
    -- pg_net's schema is `net`; without it the trigger could never send anything.
    if not exists (select 1 from pg_namespace where nspname = 'net') then
        raise exception 'supabase_sync 0003 needs the pg_net extension: enable it first '
                        '(Supabase: Database > Extensions > pg_net, or: create extension pg_net)';
    end if;
end
$$;

-- One row: where to send the wake-up. Service-role only, like the tasks.
create table if not exists public.dispatcher_wakeup (
    id     boolean primary key default true check (id),
    url    text not null,
    secret text not null
);
alter table public.dispatcher_wakeup enable row level security;
revoke all on table public.dispatcher_wakeup from public;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        revoke all on table public.dispatcher_wakeup from anon;
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        revoke all on table public.dispatcher_wakeup from authenticated;
    end if;
end
$$;

-- SECURITY DEFINER: whoever inserts a task (even a role that cannot read the secret)
-- still sends the wake-up. Any error is swallowed: an insert must never fail because the
-- dispatcher could not be told.
create or replace function public.notify_dispatcher()
returns trigger
language plpgsql
security definer
set search_path = public
as $$
declare
    v_hook dispatcher_wakeup%rowtype;
begin
    select * into v_hook from dispatcher_wakeup where id;
    if not found then
        return null;
    end if;
    perform net.http_post(
        url := v_hook.url,
        body := jsonb_build_object('type', 'INSERT', 'table', 'tasks',
                                   'task_id', new.task_id, 'task_type', new.task_type),
        headers := jsonb_build_object('Content-Type', 'application/json',
                                      'X-Dispatcher-Secret', v_hook.secret),
        timeout_milliseconds := 2000
    );
    return null;
exception when others then
    raise warning 'notify_dispatcher: wake-up not sent: %', sqlerrm;
    return null;
end
$$;
revoke all on function public.notify_dispatcher() from public;

drop trigger if exists tasks_notify_dispatcher on public.tasks;
create trigger tasks_notify_dispatcher
    after insert on public.tasks
    for each row
    when (new.status = 'queued')
    execute function public.notify_dispatcher();
