-- supabase_sync 0080: task pipelines. A task may depend on other tasks (tasks.depends_on):
-- it runs once every one of them is complete, and fails when one of them fails, is
-- cancelled or is deleted.
--
-- Life cycle: a task inserted with unfinished dependencies is 'waiting' (set by a BEFORE
-- INSERT trigger, whatever status the INSERT names), not 'queued'. When its last
-- dependency completes, a trigger on that dependency makes it 'queued'; from there on it
-- is an ordinary task. claim_tasks is not changed: it only ever looks at 'queued' rows (its
-- partial index holds no waiting rows), so waiting work costs the claim nothing.
--
--   waiting ──(every dependency complete)──▶ queued ─▶ in_progress ─▶ complete | failed | cancelled
--      └──(a dependency failed / cancelled / deleted)──▶ failed, naming it and its reason
--
-- A dependency's output can be an input of its dependant: {"from_task": "<uuid>", "output": 0}
-- anywhere in params where a URL goes (resolved by the dispatcher when it submits the task,
-- through dependency_outputs() below). Such references count as dependencies: they are
-- added to depends_on at insert.
--
-- Refused at insert (a constraint trigger, so an INSERT from anywhere is checked):
-- dependencies on tasks that do not exist, and cycles. depends_on cannot change after insert.
--
-- Safe to apply while older dispatchers run: the new column has a default, a waiting task
-- is invisible to the old claim (it is not 'queued'), and no function an old dispatcher
-- calls changes its signature. Apply as the database owner, after 0001/0002/0050, with
-- psql WITHOUT --single-transaction (the index is built CONCURRENTLY, so writes go on):
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f 0080_pipelines.sql

-- Fail rather than queue behind a long transaction: a waiting ALTER TABLE blocks every
-- later query on tasks. Re-run the file if it times out (every step is idempotent).
set lock_timeout = '10s';

alter table public.tasks add column if not exists depends_on uuid[] not null default '{}';
comment on column public.tasks.depends_on is
    'Tasks that must be complete before this one runs (pipelines); fixed at insert. See 0080_pipelines.sql.';

-- The life cycle gains 'waiting'. NOT VALID + VALIDATE: the table is not locked while the
-- rows are checked.
alter table public.tasks
    drop constraint if exists tasks_status_check,
    add constraint tasks_status_check
        check (status in ('waiting', 'queued', 'in_progress', 'complete', 'failed', 'cancelled')) not valid;
alter table public.tasks validate constraint tasks_status_check;

-- Waiting tasks by the tasks they wait for: what a finishing task looks up. Only waiting
-- rows are in it, so it stays as small as the work that waits.
reset lock_timeout;
create index concurrently if not exists tasks_waiting_idx
    on public.tasks using gin (depends_on) where status = 'waiting';
do $$
begin
    if exists (select 1 from pg_index i join pg_class c on c.oid = i.indexrelid
               where c.relname = 'tasks_waiting_idx' and c.relnamespace = 'public'::regnamespace
                 and not i.indisvalid) then
        raise exception 'index tasks_waiting_idx is invalid (an earlier build was interrupted): '
                        'run  drop index concurrently public.tasks_waiting_idx;  and apply this file again';
    end if;
end
$$;
set lock_timeout = '10s';

-- What a task's dependencies say about it now:
--   'ready'   every one is complete (or there are none);
--   'waiting' some are not finished (or not inserted yet, in a deferred check's transaction);
--   'failed'  one failed or was cancelled; p_reason names it and says why.
-- The dependencies are read FOR SHARE: a dependency that is finishing in another
-- transaction is waited for, so the answer never misses a completion about to commit (and
-- that completion, in turn, waits for this insert and then sees the new dependant).
create or replace function public._dependencies_state(p_depends_on uuid[], out state text, out reason text)
language plpgsql
set search_path = public
as $$
declare
    v_done integer := 0;
    v record;
begin
    state := 'waiting';
    for v in
        select t.task_id, t.status, t.error_message
        from tasks t
        where t.task_id = any(p_depends_on)
        order by t.task_id
        for share
    loop
        if v.status in ('failed', 'cancelled') and reason is null then
            reason := _dependency_failure(v.task_id, v.status, v.error_message);
        elsif v.status = 'complete' then
            v_done := v_done + 1;
        end if;
    end loop;
    if reason is not null then
        state := 'failed';
    elsif v_done = cardinality(p_depends_on) then
        state := 'ready';
    end if;
end
$$;

-- The error_message of a task failed by its dependency. Deep chains nest one prefix per
-- step; past 4000 characters the middle is cut, keeping the first dependency and the root reason.
create or replace function public._dependency_failure(p_dependency uuid, p_status text, p_error text)
returns text
language sql
immutable
as $$
    select case when length(m) > 4000 then left(m, 1000) || ' [...] ' || right(m, 2900) else m end
    from (select format('dependency %s %s: %s', p_dependency,
                        case p_status when 'cancelled' then 'was cancelled' when 'deleted' then 'was deleted'
                                      else 'failed' end,
                        coalesce(nullif(p_error, ''), 'no reason given')) as m) x
$$;

-- BEFORE INSERT: normalise depends_on (from_task references added, duplicates dropped),
-- then set the status from the dependencies: queued, waiting, or failed with the reason.
-- SECURITY DEFINER, like a foreign key's check: whoever inserts, every task is visible to it.
create or replace function public._tasks_insert_dependencies()
returns trigger
language plpgsql
security definer
set search_path = public
as $$
declare
    v_params jsonb := new.params;
    v_deps uuid[];
    v_state record;
begin
    if v_params is not null and jsonb_typeof(v_params) = 'string' then
        begin  -- params stored as JSON text (some clients double-encode): read it as the dispatcher does
            v_params := (v_params #>> '{}')::jsonb;
        exception when others then
            v_params := null;
        end;
    end if;
    if new.depends_on is not null and array_position(new.depends_on, null) is not null then
        raise exception 'depends_on must not contain null' using errcode = '22004';
    end if;
    -- declared dependencies first, then from_task references, each once, in order
    select coalesce(array_agg(id order by first_seen), '{}') into v_deps
    from (
        select id, min(ord) as first_seen
        from (
            select d as id, o as ord from unnest(coalesce(new.depends_on, '{}')) with ordinality as x(d, o)
            union all
            select (r #>> '{}')::uuid, 1000000 + o
            from jsonb_path_query(coalesce(v_params, '{}'), 'lax $.**.from_task') with ordinality as y(r, o)
            where jsonb_typeof(r) = 'string'
              and r #>> '{}' ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
        ) refs
        group by id
    ) deps;
    if cardinality(v_deps) > 100 then
        raise exception 'depends_on lists % tasks; at most 100', cardinality(v_deps) using errcode = '22023';
    end if;
    if new.task_id = any(v_deps) then
        raise exception 'task % cannot depend on itself', new.task_id using errcode = '23514';
    end if;
    new.depends_on := v_deps;
    if new.status not in ('queued', 'waiting') then
        return new;  -- inserted already running or finished (imports, tests): left as given
    end if;
    if cardinality(v_deps) = 0 then
        new.status := 'queued';
        return new;
    end if;
    v_state := _dependencies_state(v_deps);
    if v_state.state = 'failed' then
        new.status := 'failed';
        new.error_message := v_state.reason;
        new.completed_at := now();
    else
        new.status := case v_state.state when 'ready' then 'queued' else 'waiting' end;
    end if;
    return new;
end
$$;

-- The constraint trigger (after each inserted row; DEFERRABLE, so a pipeline may be
-- inserted in any order inside one transaction after SET CONSTRAINTS ... DEFERRED): every
-- dependency exists, and the task does not depend on itself through them. Then a waiting
-- row whose dependencies all finished meanwhile (inserted later in the same statement or
-- transaction) is settled, so nothing waits for a completion that already happened.
create or replace function public._tasks_check_dependencies()
returns trigger
language plpgsql
security definer
set search_path = public
as $$
declare
    v_missing uuid[];
    v_cycle boolean;
    v_status text;
    v_state record;
begin
    select array_agg(d) into v_missing
    from unnest(new.depends_on) d
    where not exists (select 1 from tasks t where t.task_id = d);
    if v_missing is not null then
        raise exception 'task % depends on tasks that do not exist: %', new.task_id, array_to_string(v_missing, ', ')
            using errcode = '23503', hint = 'insert the dependencies first, or in the same transaction after SET CONSTRAINTS tasks_dependencies_check DEFERRED';
    end if;
    -- every task upstream of this one, each once (UNION), so the walk ends even on a cycle
    with recursive upstream(id) as (
        select d from unnest(new.depends_on) d
        union
        select d from upstream u join tasks t on t.task_id = u.id, unnest(t.depends_on) d
    )
    select exists (select 1 from upstream where id = new.task_id) into v_cycle;
    if v_cycle then
        raise exception 'task % would depend on itself through its dependencies (%): pipelines must not have cycles',
            new.task_id, array_to_string(new.depends_on, ', ') using errcode = '23514';
    end if;
    select t.status into v_status from tasks t where t.task_id = new.task_id;
    if v_status = 'waiting' then
        v_state := _dependencies_state(new.depends_on);
        if v_state.state = 'ready' then
            update tasks set status = 'queued', run_after = now(), updated_at = now()
            where task_id = new.task_id and status = 'waiting';
        elsif v_state.state = 'failed' then
            update tasks set status = 'failed', error_message = v_state.reason, completed_at = now(), updated_at = now()
            where task_id = new.task_id and status = 'waiting';
        end if;
    end if;
    return null;
end
$$;

-- depends_on is part of what a task is: changing it under a waiting (or running) task
-- would bypass the checks above. Cancel the task and insert a new one instead.
create or replace function public._tasks_depends_on_is_fixed()
returns trigger
language plpgsql
as $$
begin
    raise exception 'depends_on of task % cannot change after insert (cancel it and insert a new task)', old.task_id
        using errcode = '55000';
end
$$;

-- Fail every waiting task downstream of p_task_id, level by level in this one call (no
-- trigger recursion, so a long chain cannot exhaust the stack): its direct dependants with
-- p_status / p_error as the reason, each further level naming its own failed dependency.
-- Rows are locked in task_id order before each level's update, so two cascades over the
-- same tasks queue up instead of deadlocking.
create or replace function public._fail_downstream(p_task_id uuid, p_status text, p_error text)
returns void
language plpgsql
security definer
set search_path = public
-- a fan-out's estimated cost passes jit_above_cost: compiling then costs more than the work (~1 s)
set jit = off
as $$
declare
    v_frontier uuid[];
begin
    -- the status updates below fire the settle trigger again; this outermost call does every level
    perform set_config('supabase_sync.failing_downstream', 'on', true);
    perform 1 from tasks d
    where d.status = 'waiting' and d.depends_on @> array[p_task_id]
    order by d.task_id
    for update;
    with failed as (
        update tasks d
        set status = 'failed', error_message = _dependency_failure(p_task_id, p_status, p_error),
            completed_at = now(), updated_at = now()
        where d.status = 'waiting' and d.depends_on @> array[p_task_id]
        returning d.task_id
    )
    select array_agg(task_id) into v_frontier from failed;
    -- each further level: the waiting tasks that depend on one just failed, found through the
    -- waiting index one failed task at a time (an `&&` against the whole level would make the
    -- planner compare every row with every id)
    while v_frontier is not null loop
        perform 1 from tasks d
        where d.task_id in (select w.task_id from unnest(v_frontier) f(id)
                            join tasks w on w.status = 'waiting' and w.depends_on @> array[f.id])
        order by d.task_id
        for update;
        with hit as (
            select distinct on (d.task_id) d.task_id, c.task_id as cause, c.error_message as cause_error
            from unnest(v_frontier) f(id)
            join tasks d on d.status = 'waiting' and d.depends_on @> array[f.id]
            join tasks c on c.task_id = f.id
            order by d.task_id, c.task_id
        ),
        failed as (
            update tasks d
            set status = 'failed', error_message = _dependency_failure(hit.cause, 'failed', hit.cause_error),
                completed_at = now(), updated_at = now()
            from hit
            where d.task_id = hit.task_id and d.status = 'waiting'
            returning d.task_id
        )
        select array_agg(task_id) into v_frontier from failed;
    end loop;
    perform set_config('supabase_sync.failing_downstream', '', true);
end
$$;

-- AFTER a task finishes: complete -> release its waiting dependants whose dependencies are
-- now all complete (queued, run_after = now); failed / cancelled -> fail them all downstream.
create or replace function public._tasks_settle_dependants()
returns trigger
language plpgsql
security definer
set search_path = public
-- a fan-out's estimated cost passes jit_above_cost: compiling then costs more than the work (~1 s)
set jit = off
as $$
begin
    if current_setting('supabase_sync.failing_downstream', true) = 'on' then
        return null;  -- part of a cascade that _fail_downstream is already walking
    end if;
    if new.status = 'complete' then
        perform 1 from tasks d
        where d.status = 'waiting' and d.depends_on @> array[new.task_id]
        order by d.task_id
        for update;
        -- a new statement, so a new snapshot: a sibling dependency that completed in a
        -- transaction we just waited for (its lock on the dependant) is seen complete here
        update tasks d
        set status = 'queued', run_after = now(), updated_at = now()
        where d.status = 'waiting' and d.depends_on @> array[new.task_id]
          and (select count(*) from tasks t where t.task_id = any(d.depends_on) and t.status = 'complete')
              = cardinality(d.depends_on);
    else
        perform _fail_downstream(new.task_id, new.status, new.error_message);
    end if;
    return null;
end
$$;

-- AFTER a task is deleted: whatever waited for it can never run.
create or replace function public._tasks_dependency_deleted()
returns trigger
language plpgsql
security definer
set search_path = public
as $$
begin
    if current_setting('supabase_sync.failing_downstream', true) = 'on' then
        return null;
    end if;
    perform _fail_downstream(old.task_id, 'deleted', format('it was %s when it was deleted', old.status));
    return null;
end
$$;

drop trigger if exists tasks_insert_dependencies on public.tasks;
create trigger tasks_insert_dependencies
    before insert on public.tasks
    for each row execute function public._tasks_insert_dependencies();

drop trigger if exists tasks_dependencies_check on public.tasks;
create constraint trigger tasks_dependencies_check
    after insert on public.tasks
    deferrable initially immediate
    for each row when (cardinality(new.depends_on) > 0)
    execute function public._tasks_check_dependencies();

drop trigger if exists tasks_depends_on_fixed on public.tasks;
create trigger tasks_depends_on_fixed
    before update of depends_on on public.tasks
    for each row when (old.depends_on is distinct from new.depends_on)
    execute function public._tasks_depends_on_is_fixed();

drop trigger if exists tasks_settle_dependants on public.tasks;
-- The setting check is in WHEN as well: a cascade that fails 10 000 tasks then makes no
-- 10 000 trigger calls that would only return.
create trigger tasks_settle_dependants
    after update of status on public.tasks
    for each row when (old.status is distinct from new.status and new.status in ('complete', 'failed', 'cancelled')
                       and current_setting('supabase_sync.failing_downstream', true) is distinct from 'on')
    execute function public._tasks_settle_dependants();

drop trigger if exists tasks_dependency_deleted on public.tasks;
create trigger tasks_dependency_deleted
    after delete on public.tasks
    for each row when (current_setting('supabase_sync.failing_downstream', true) is distinct from 'on')
    execute function public._tasks_dependency_deleted();

-- cancel_task (0002) with 'waiting' among the states a task can be cancelled from.
-- Same signature, so dispatchers of any version keep calling it.
create or replace function public.cancel_task(p_task_id uuid, p_reason text default 'cancelled')
returns text
language plpgsql
set search_path = public
as $$
begin
    update tasks
    set status = 'cancelled', error_message = p_reason, lease_expires_at = null,
        completed_at = now(), updated_at = now()
    where task_id = p_task_id and status in ('waiting', 'queued', 'in_progress');
    if found then
        return 'cancelled';
    end if;
    if exists (select 1 from tasks where task_id = p_task_id) then
        return 'already_final';
    end if;
    return 'not_found';
end
$$;

-- queue_stats (0002) with waiting tasks as their own status: unfinished, but not runnable.
-- Same signature and columns; /metrics shows them as queue_depth{status="waiting"}.
create or replace function public.queue_stats()
returns table (task_type text, status text, tasks bigint, oldest_created_at timestamptz)
language sql
stable
set search_path = public
as $$
    select t.task_type, t.status, count(*), min(t.created_at)
    from tasks t
    where t.status in ('waiting', 'queued', 'in_progress')
    group by t.task_type, t.status
$$;

-- The outputs of dependencies, for the dispatcher to resolve {"from_task", "output"}
-- references when it submits a dependant. p_refs: [{"task_id": <dependant>, "from_task":
-- <dependency>}, ...]. Per pair: whether it is a declared dependency of the task, the
-- dependency's status, its output_url, and its outputs (result.output.outputs, in the
-- worker's order, without inline data): [{node_id, key, kind, filename, url}].
create or replace function public.dependency_outputs(p_refs jsonb)
returns table (task_id uuid, from_task uuid, declared boolean, status text, output_url text, outputs jsonb)
language sql
stable
set search_path = public
as $$
    with refs as (
        select distinct (r ->> 'task_id')::uuid as task_id, (r ->> 'from_task')::uuid as from_task
        from jsonb_array_elements(case when jsonb_typeof(p_refs) = 'array' then p_refs else '[]'::jsonb end) r
    )
    select refs.task_id, refs.from_task, coalesce(refs.from_task = any(d.depends_on), false),
           dep.status, dep.output_url,
           coalesce((
               select jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                          'node_id', o -> 'node_id', 'key', o -> 'key', 'kind', o -> 'kind',
                          'filename', o -> 'filename', 'url', o -> 'url')) order by n)
               from jsonb_array_elements(case when jsonb_typeof(dep.result #> '{output,outputs}') = 'array'
                                              then dep.result #> '{output,outputs}' else '[]'::jsonb end)
                    with ordinality as x(o, n)
               where jsonb_typeof(o) = 'object'
           ), '[]'::jsonb)
    from refs
    left join tasks d on d.task_id = refs.task_id
    left join tasks dep on dep.task_id = refs.from_task
$$;

-- The trigger functions are not callable through the API at all; dependency_outputs and
-- the replaced functions are service_role only, like the rest (0002's note on defaults).
do $$
declare
    f regprocedure;
    r text;
begin
    for f in
        select p.oid::regprocedure
        from pg_proc p
        where p.pronamespace = 'public'::regnamespace
          and p.proname in ('_dependencies_state', '_dependency_failure', '_tasks_insert_dependencies',
                            '_tasks_check_dependencies', '_tasks_depends_on_is_fixed', '_fail_downstream',
                            '_tasks_settle_dependants', '_tasks_dependency_deleted',
                            'cancel_task', 'queue_stats', 'dependency_outputs')
    loop
        execute format('revoke all on function %s from public', f);
        foreach r in array array['anon', 'authenticated'] loop
            if exists (select 1 from pg_roles where rolname = r) then
                execute format('revoke all on function %s from %I', f, r);
            end if;
        end loop;
    end loop;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant execute on function public.cancel_task(uuid, text), public.queue_stats(),
                                  public.dependency_outputs(jsonb) to service_role;
    end if;
end
$$;
reset lock_timeout;
