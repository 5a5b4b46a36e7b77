-- Several workers, one job: who is working, and which windows each one holds.
--
-- A worker registers itself and heartbeats while it runs. Every worker enqueues the windows of its
-- plan (a window already queued is left alone, one done before this plan is queued again), then
-- claims them in fetch order with `FOR UPDATE SKIP LOCKED` into a lease with an expiry that its
-- heartbeat extends. `attempt` is the fencing token: a claim increments it, and a commit counts
-- only if the lease is still the committer's with the attempt it claimed.
CREATE TABLE workers (
    worker_id         uuid        PRIMARY KEY,
    host              text        NOT NULL,
    pid               integer     NOT NULL,
    command           text        NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    heartbeat_at      timestamptz NOT NULL DEFAULT now(),
    stopped_at        timestamptz,
    windows_in_flight integer     NOT NULL DEFAULT 0,
    windows_done      bigint      NOT NULL DEFAULT 0,
    fenced            bigint      NOT NULL DEFAULT 0
);

CREATE TABLE leases (
    instance_id text        NOT NULL,
    media_type  text        NOT NULL,
    start_ms    bigint      NOT NULL,
    end_ms      bigint      NOT NULL,
    state       text        NOT NULL CHECK (state IN ('pending', 'leased', 'done')),
    worker_id   uuid,
    lease_until timestamptz,
    attempt     integer     NOT NULL DEFAULT 0,
    planned_at  timestamptz NOT NULL,
    done_at     timestamptz,
    PRIMARY KEY (instance_id, media_type, start_ms)
);
CREATE INDEX leases_held ON leases (worker_id) WHERE state = 'leased';

-- One row: the last time any worker was throttled, so every worker slows down.
CREATE TABLE shared_rate (
    id           integer     PRIMARY KEY CHECK (id = 1),
    throttled_at timestamptz
);
INSERT INTO shared_rate (id) VALUES (1);
