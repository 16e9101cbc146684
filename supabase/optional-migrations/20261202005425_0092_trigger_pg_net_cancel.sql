-- supabase_sync 0092 (optional, needs 0003): wake the dispatcher through pg_net when a task with a RunPod job is cancelled.
--
-- For dispatchers without DATABASE_URL (no LISTEN): by cancel_task() or by a plain UPDATE
-- ... set status = 'cancelled', its /cancel then goes out at once instead of on the next
-- poll round (0060's trigger, as 0090 made it, NOTIFYs the LISTENing ones and clears the
-- lease, so either wake-up finds the job due). Both may be set up: take_pending_cancels()
-- leases each job to one dispatcher, so it is cancelled once however many are woken.
--
-- Needs 0003 (pg_net and the dispatcher_wakeup row): `migrate --with 0003 --with 0092`.
-- Like 0003, only a wake-up: the dispatcher's round (POLL_INTERVAL) still cancels every
-- such job if the request is lost.

do $$
begin
    if to_regclass('public.dispatcher_wakeup') is null then
        raise exception 'supabase_sync 0092 needs 0003_trigger_pg_net.sql (the dispatcher_wakeup table): apply it first';
    end if;
end
$$;

-- 0003's function, now telling an insert from a cancel (body "type": INSERT or CANCEL);
-- the dispatcher's hook runs a round for an INSERT and sends the pending cancels for a CANCEL.
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
        body := jsonb_build_object('type', case when tg_op = 'INSERT' then 'INSERT' else 'CANCEL' end,
                                   'table', 'tasks', 'task_id', new.task_id, 'task_type', new.task_type),
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

drop trigger if exists tasks_notify_dispatcher_cancel on public.tasks;
create trigger tasks_notify_dispatcher_cancel
    after update of status on public.tasks
    for each row
    when (new.status = 'cancelled' and old.status in ('waiting', 'queued', 'in_progress') and new.runpod_job_id is not null)
    execute function public.notify_dispatcher();
