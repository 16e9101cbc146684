-- supabase_sync 0081: workflow templates kept in the database.
--
-- A task may name a template instead of carrying a whole workflow:
--   params = {"template": "invert_image@1", "args": {"image_url": "https://..."}}
-- The dispatcher looks the template up (template folders first, then this table; see
-- docs/dispatcher.md "Templates"), checks args against its parameters, renders the
-- workflow and submits that. Rows here are one version each and never change once
-- written (only the description may), so a task that names name@version always runs the
-- same workflow; publish a new version instead. The dispatcher validates the parameter
-- spec when it loads a row (python -m supabase_sync templates publish checks it before
-- inserting); these constraints only keep the row's shape sane.
--
-- Additive: a new table, a new nullable column, new functions. Apply as the database owner
-- after 0080:  psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f 0081_workflow_templates.sql

set lock_timeout = '10s';

create table if not exists public.workflow_templates (
    name        text not null
                constraint workflow_templates_name_check check (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$'),
    version     integer not null
                constraint workflow_templates_version_check check (version between 1 and 1000000),
    description text not null default '',
    workflow    jsonb not null
                constraint workflow_templates_workflow_check check (jsonb_typeof(workflow) = 'object'),
    parameters  jsonb not null default '{}'::jsonb
                constraint workflow_templates_parameters_check check (jsonb_typeof(parameters) = 'object'),
    created_at  timestamptz not null default now(),
    primary key (name, version)
);

comment on table public.workflow_templates is
    'Workflow templates (API-format workflow + parameter spec), one immutable row per name@version; see 0081_workflow_templates.sql.';

alter table public.workflow_templates enable row level security;
revoke all on table public.workflow_templates from public;

-- name@version rows are immutable: a queued task that names one must run what it named.
create or replace function public._workflow_templates_immutable()
returns trigger
language plpgsql
as $$
begin
    if (new.name, new.version, new.workflow, new.parameters) is distinct from
       (old.name, old.version, old.workflow, old.parameters) then
        raise exception 'workflow template %@% cannot change (only its description can): publish version % instead',
            old.name, old.version, (select max(version) + 1 from workflow_templates where name = old.name)
            using errcode = '55000';
    end if;
    return new;
end
$$;

drop trigger if exists workflow_templates_immutable on public.workflow_templates;
create trigger workflow_templates_immutable
    before update on public.workflow_templates
    for each row execute function public._workflow_templates_immutable();

-- The template version the dispatcher rendered for the task's latest attempt (name@version).
alter table public.tasks add column if not exists resolved_template text;
comment on column public.tasks.resolved_template is
    'name@version of the workflow template rendered for the latest attempt (null for raw workflows).';

-- Templates by reference: 'name@version' gives that version, 'name' the newest. One row
-- per reference found (unknown ones are simply absent), with the reference it answers.
create or replace function public.get_workflow_templates(p_refs text[])
returns table (ref text, name text, version integer, description text, workflow jsonb, parameters jsonb,
               created_at timestamptz)
language sql
stable
set search_path = public
as $$
    select r.ref, w.name, w.version, w.description, w.workflow, w.parameters, w.created_at
    from unnest(p_refs) as r(ref)
    cross join lateral (
        select t.*
        from workflow_templates t
        where t.name = split_part(r.ref, '@', 1)
          and (position('@' in r.ref) = 0
               or (split_part(r.ref, '@', 2) ~ '^[0-9]{1,7}$' and t.version = split_part(r.ref, '@', 2)::integer))
        order by t.version desc
        limit 1
    ) w
$$;

-- Every template version, without the workflows (for `templates list`).
create or replace function public.list_workflow_templates()
returns table (name text, version integer, description text, created_at timestamptz)
language sql
stable
set search_path = public
as $$
    select t.name, t.version, t.description, t.created_at from workflow_templates t order by t.name, t.version
$$;

-- Publish one template version. Returns 'published', or 'unchanged' when exactly this
-- version is already there (publishing is repeatable, e.g. from CI); a different template
-- under an existing name@version is refused.
create or replace function public.publish_workflow_template(
    p_name text, p_version integer, p_workflow jsonb, p_parameters jsonb, p_description text default ''
)
returns text
language plpgsql
set search_path = public
as $$
declare
    v workflow_templates%rowtype;
begin
    select * into v from workflow_templates where name = p_name and version = p_version;
    if found then
        if v.workflow = p_workflow and v.parameters = coalesce(p_parameters, '{}'::jsonb) then
            if v.description is distinct from coalesce(p_description, '') then
                update workflow_templates set description = coalesce(p_description, '')
                where name = p_name and version = p_version;
            end if;
            return 'unchanged';
        end if;
        raise exception 'workflow template %@% already exists with a different workflow or parameters; versions never change: publish %@%',
            p_name, p_version, p_name, (select max(version) + 1 from workflow_templates where name = p_name)
            using errcode = '23505';
    end if;
    insert into workflow_templates (name, version, description, workflow, parameters)
    values (p_name, p_version, coalesce(p_description, ''), p_workflow, coalesce(p_parameters, '{}'::jsonb));
    return 'published';
end
$$;

-- Record which template version was rendered for claimed tasks (before /run), under the
-- claim's lease: p_items [{"task_id", "lease_token", "template": "name@version"}, ...].
-- Returns how many rows were updated (a task whose claim was lost is skipped).
create or replace function public.record_resolved_templates(p_items jsonb)
returns integer
language plpgsql
set search_path = public
as $$
declare
    v_count integer;
begin
    update tasks t
    set resolved_template = i ->> 'template', updated_at = now()
    from jsonb_array_elements(case when jsonb_typeof(p_items) = 'array' then p_items else '[]'::jsonb end) i
    where t.task_id = (i ->> 'task_id')::uuid
      and t.status = 'in_progress'
      and t.lease_token = (i ->> 'lease_token')::uuid;
    get diagnostics v_count = row_count;
    return v_count;
end
$$;

-- service_role only (0002's note on Supabase's default privileges).
do $$
declare
    f regprocedure;
    r text;
begin
    for f in
        select p.oid::regprocedure
        from pg_proc p
        where p.pronamespace = 'public'::regnamespace
          and p.proname in ('_workflow_templates_immutable', 'get_workflow_templates', 'list_workflow_templates',
                            'publish_workflow_template', 'record_resolved_templates')
    loop
        execute format('revoke all on function %s from public', f);
        foreach r in array array['anon', 'authenticated'] loop
            if exists (select 1 from pg_roles where rolname = r) then
                execute format('revoke all on function %s from %I', f, r);
            end if;
        end loop;
    end loop;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant execute on function public.get_workflow_templates(text[]), public.list_workflow_templates(),
                                  public.publish_workflow_template(text, integer, jsonb, jsonb, text),
                                  public.record_resolved_templates(jsonb) to service_role;
    end if;
    foreach r in array array['anon', 'authenticated'] loop
        if exists (select 1 from pg_roles where rolname = r) then
            execute format('revoke all on table public.workflow_templates from %I', r);
        end if;
    end loop;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        grant select, insert, update, delete on table public.workflow_templates to service_role;
    end if;
end
$$;
reset lock_timeout;
