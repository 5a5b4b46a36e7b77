-- Trend tables: one row per (instance_id, media_type, stats_time). Unqualified names: the
-- migrations run with search_path set to the configured schema.

CREATE TABLE inbound_trend (
    instance_id              text        NOT NULL,
    media_type               text        NOT NULL,
    stats_time               timestamptz NOT NULL,
    total_calls              bigint      NOT NULL,
    calls_handled            bigint      NOT NULL,
    calls_queued             bigint      NOT NULL,
    calls_abandoned_in_ivr   bigint      NOT NULL,
    calls_abandoned_in_queue bigint      NOT NULL,
    calls_abandoned_in_ring  bigint      NOT NULL,
    fetched_at               timestamptz NOT NULL,
    request_id               text        NOT NULL,
    PRIMARY KEY (instance_id, media_type, stats_time)
);

CREATE TABLE outbound_trend (
    instance_id    text        NOT NULL,
    media_type     text        NOT NULL,
    stats_time     timestamptz NOT NULL,
    total_calls    bigint      NOT NULL,
    calls_answered bigint      NOT NULL,
    fetched_at     timestamptz NOT NULL,
    request_id     text        NOT NULL,
    PRIMARY KEY (instance_id, media_type, stats_time)
);

CREATE TABLE overall_trend (
    instance_id          text        NOT NULL,
    media_type           text        NOT NULL,
    stats_time           timestamptz NOT NULL,
    max_logged_in_agents bigint      NOT NULL,
    fetched_at           timestamptz NOT NULL,
    request_id           text        NOT NULL,
    PRIMARY KEY (instance_id, media_type, stats_time)
);

-- The ledger: one row per window and sink. A window is done when every configured sink has a
-- 'committed' row for it. Rows of the postgres sink are written in the same transaction as the data.
CREATE TABLE runs (
    run_id      uuid        PRIMARY KEY,
    command     text        NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    status      text        NOT NULL CHECK (status IN ('running', 'ok', 'partial', 'failed')),
    summary     jsonb
);

CREATE TABLE windows (
    instance_id  text        NOT NULL,
    media_type   text        NOT NULL,
    start_ms     bigint      NOT NULL,
    end_ms       bigint      NOT NULL,
    sink         text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('committed', 'failed')),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text,
    rows         bigint      NOT NULL DEFAULT 0,
    request_ids  text[]      NOT NULL DEFAULT '{}',
    run_id       uuid        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    window_start timestamptz GENERATED ALWAYS AS (to_timestamp(start_ms / 1000.0)) STORED,
    window_end   timestamptz GENERATED ALWAYS AS (to_timestamp(end_ms / 1000.0)) STORED,
    PRIMARY KEY (instance_id, media_type, start_ms, end_ms, sink),
    CHECK (start_ms < end_ms)
);

CREATE INDEX windows_series ON windows (instance_id, media_type, sink, status);

-- Settings the views read, written by every run (the configured time zone).
CREATE TABLE settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO settings (key, value) VALUES ('timezone', 'Asia/Shanghai');
