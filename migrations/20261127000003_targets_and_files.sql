-- Where each commit went, and the Parquet day files as they were written.
--
-- `target` names the destination within a sink kind: a Parquet root's id (from the root's
-- `_ccc_etl/root.json`), empty for PostgreSQL. Commits of a root that was wiped, replaced or
-- pointed elsewhere then no longer count, and its windows are fetched again. Rows recorded before
-- this migration have an empty target; the first run that finds their root (the one holding an
-- older `_ccc_etl/` directory) adopts them.
ALTER TABLE windows ADD COLUMN target text NOT NULL DEFAULT '';
ALTER TABLE windows DROP CONSTRAINT windows_pkey;
ALTER TABLE windows ADD PRIMARY KEY (instance_id, media_type, start_ms, end_ms, sink, target);
DROP INDEX windows_series;
CREATE INDEX windows_series ON windows (instance_id, media_type, sink, target, status);

-- One row per Parquet day file a run wrote: a listing that misses the file, or finds another
-- ETag, means the day's windows must be fetched again.
CREATE TABLE parquet_files (
    target     text        NOT NULL,
    table_name text        NOT NULL,
    day        date        NOT NULL,
    etag       text        NOT NULL,
    rows       bigint      NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, table_name, day)
);

-- The zone the views use is the one the first run configured, and changes only through
-- `ccc-etl migrate`: drop the placeholder of a database that has never been written.
DELETE FROM settings WHERE key = 'timezone' AND NOT EXISTS (SELECT 1 FROM windows);
