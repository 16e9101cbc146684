-- The queries of python -m supabase_sync migrate (supabase_sync/migrations/runner.py), by name.

-- name: records_exist
select to_regclass('supabase_sync.schema_migrations') is not null as present;

-- name: applied
select version, name, checksum, phase, applied_at
from supabase_sync.schema_migrations
order by version;

-- name: record
insert into supabase_sync.schema_migrations (version, name, checksum, phase, duration_ms)
values (%(version)s, %(name)s, %(checksum)s, %(phase)s, %(duration_ms)s);

-- name: try_lock
-- One session-level lock for the whole run: a second `migrate` (another replica starting with
-- MIGRATE_ON_START) waits for it, then finds nothing left to do.
select pg_try_advisory_lock(hashtextextended('supabase_sync.migrate', 0)) as locked;

-- name: unlock
select pg_advisory_unlock(hashtextextended('supabase_sync.migrate', 0));

-- name: lock_holder
select l.pid, a.application_name, a.client_addr::text as client_addr, a.backend_start
from pg_locks l
left join pg_stat_activity a on a.pid = l.pid
where l.locktype = 'advisory' and l.granted and l.objsubid = 1
  and ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended('supabase_sync.migrate', 0)
limit 1;

-- name: older_dispatchers
-- Dispatchers alive now (a heartbeat within 4 of their intervals, at least 60 s, and not
-- stopped) that do not ship migration %(version)s: a post migration must wait for them.
-- A dispatcher from before numbered migrations reports no newest_migration.
select w.id, coalesce(w.metadata ->> 'newest_migration', 'none') as newest_migration, w.last_heartbeat
from public.workers w
where w.metadata ->> 'kind' = 'dispatcher'
  and w.status <> 'stopped'
  and w.id <> coalesce(%(own_id)s, '')
  and w.last_heartbeat > now() - make_interval(secs => greatest(60, 4 * coalesce(
        case when jsonb_typeof(w.metadata -> 'heartbeat_s') = 'number' then (w.metadata ->> 'heartbeat_s')::double precision end,
        15)))
  and coalesce(w.metadata ->> 'newest_migration', '') < %(version)s
order by w.id;
