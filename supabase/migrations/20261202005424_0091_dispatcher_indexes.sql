-- supabase_sync 0091 (pre): the indexes of dispatcher hardening (0090), built CONCURRENTLY
-- so that inserts and claims go on meanwhile, and 0090's check on lost_claims validated.
--
-- This file runs statement by statement outside a transaction (`migrate` does so for a file
-- with CREATE INDEX CONCURRENTLY; with psql: no --single-transaction); `supabase db push`
-- cannot apply it (docs/dispatcher.md, "Supabase CLI"). Every statement may be run again.
-- Until it is applied the functions of 0090 work, only slower on a long queue.

-- The claim's order: per task type, queued rows by the time they became eligible
-- (run_after: created_at for a new task, the end of its backoff for a retry). The range
-- run_after <= now() ends the scan, so rows waiting out a backoff are never read.
create index concurrently if not exists tasks_claim_order_idx
    on public.tasks (task_type, run_after) where status = 'queued';
-- queue_stats() for in-flight and waiting rows (its queued half reads tasks_queued_idx;
-- 0080's index of waiting rows is a GIN index on depends_on, which cannot be read in full).
create index concurrently if not exists tasks_in_progress_type_idx
    on public.tasks (task_type, created_at) where status = 'in_progress';
create index concurrently if not exists tasks_waiting_type_idx
    on public.tasks (task_type, created_at) where status = 'waiting';
-- Queued rows that must never run (normally none): found without reading the queue.
create index concurrently if not exists tasks_queued_over_attempts_idx
    on public.tasks (task_id) where status = 'queued' and attempts >= max_attempts;

-- An interrupted CONCURRENTLY build leaves an invalid index that "if not exists" would keep.
do $$
declare
    v_name text;
begin
    select c.relname into v_name
    from pg_index i join pg_class c on c.oid = i.indexrelid
    where c.relnamespace = 'public'::regnamespace and not i.indisvalid
      and c.relname in ('tasks_claim_order_idx', 'tasks_in_progress_type_idx', 'tasks_waiting_type_idx',
                        'tasks_queued_over_attempts_idx')
    limit 1;
    if v_name is not null then
        raise exception 'index % is invalid (an earlier build was interrupted): run  drop index concurrently '
                        'public.%;  and apply this file again', v_name, v_name;
    end if;
end
$$;

-- Outside a transaction VALIDATE holds a lock that lets reads and writes go on while it
-- scans (the new columns' defaults always pass); validating a valid check again is a no-op.
alter table public.tasks validate constraint tasks_lost_claims_check;
