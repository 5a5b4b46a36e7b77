-- When each worker last finished a window: a worker that heartbeats with nothing in flight and has
-- finished nothing for longer than a lease is waiting on nothing, and `status` says it is stalled.
ALTER TABLE workers ADD COLUMN progress_at timestamptz NOT NULL DEFAULT now();
