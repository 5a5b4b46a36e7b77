-- The `application_name` every session of a worker's process carries (`ccc-etl/PID-RANDOM`): a
-- worker is alive while PostgreSQL shows a session of it (`pg_stat_activity`), on any host and any
-- OS, and a take-over ends the sessions of exactly the workers whose leases it takes.
ALTER TABLE workers ADD COLUMN session_tag text;
