-- For bench/bench_pipelines.py only: the design NOT chosen, kept to measure it side by side.
-- Tasks with unfinished dependencies stay 'queued' and the claim skips them itself, by
-- checking each candidate's depends_on. (The chosen design: such tasks are 'waiting', so
-- the claim never sees them; 0080_pipelines.sql.)
create or replace function public.bench_claim_checking_dependencies(
    p_dispatcher text, p_endpoint_id text, p_task_types text[], p_limit integer
)
returns setof uuid
language sql
as $$
    with picked as (
        select t.task_id
        from tasks t
        where t.status = 'queued' and t.task_type = any(p_task_types) and t.run_after <= now()
          and not exists (select 1 from tasks d where d.task_id = any(t.depends_on) and d.status <> 'complete')
        order by t.created_at
        limit p_limit
        for update skip locked
    )
    update tasks t
    set status = 'in_progress', attempts = t.attempts + 1, endpoint_id = p_endpoint_id, claimed_by = p_dispatcher,
        lease_token = gen_random_uuid(), lease_expires_at = now() + interval '60 seconds', started_at = now(),
        updated_at = now()
    from picked
    where t.task_id = picked.task_id
    returning t.task_id
$$;
