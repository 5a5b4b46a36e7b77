-- The ledger's identity: one id per database and schema, made when the schema is, kept by a dump
-- and restore. A Parquet root records the id of the ledger that writes it (`_ccc_etl/root.json`),
-- so a run whose ledger is another refuses the root instead of mixing two pipelines' rows.
CREATE TABLE ledger_identity (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    one        boolean     NOT NULL DEFAULT true UNIQUE CHECK (one)
);
INSERT INTO ledger_identity DEFAULT VALUES;
