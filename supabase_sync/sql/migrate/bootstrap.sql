-- supabase_sync's record of the migrations it applied (python -m supabase_sync migrate).
--
-- Not a numbered migration: `migrate` needs this table before it can know which migrations
-- ran. It lives in a schema of its own, which PostgREST does not expose and which only the
-- database owner can read.
create schema if not exists supabase_sync;
revoke all on schema supabase_sync from public;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        revoke all on schema supabase_sync from anon;
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        revoke all on schema supabase_sync from authenticated;
    end if;
end
$$;

create table if not exists supabase_sync.schema_migrations (
    version     text primary key,            -- the file's four digits
    name        text not null,               -- the file name, e.g. 0060_notify_listeners.sql
    checksum    text not null,               -- sha256 of the file (CRLF read as LF)
    phase       text not null check (phase in ('pre', 'post')),
    applied_at  timestamptz not null default now(),
    applied_by  text not null default current_user,
    duration_ms integer
);

comment on table supabase_sync.schema_migrations is
    'Migrations applied by python -m supabase_sync migrate: append-only, a changed file is refused by its checksum.';
