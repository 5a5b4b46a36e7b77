-- A worker's held leases by key: a commit checks its windows' leases one lookup each, and the
-- heartbeat reads a worker's leases in key order (its lock order). With the worker id alone, each
-- lookup scanned every lease the worker held: for a run's last windows, all of them.
DROP INDEX leases_held;
CREATE INDEX leases_held ON leases (worker_id, instance_id, media_type, start_ms) WHERE state = 'leased';
