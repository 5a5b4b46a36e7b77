#!/usr/bin/env bash
# Runs every benchmark. Figures are ratios measured in the same run (the machine is shared and
# noisy): the end-to-end run against one COPY per table, peak RSS at 30 and at 180 days, and the
# sustained rate against a 20 QPS limit. Needs PostgreSQL (CCC_ETL_TEST_PG, as for the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
instances="${CCC_ETL_BENCH_INSTANCES:-200}"

echo "== microbenchmarks (criterion)"
cargo bench --bench micro

echo "== end to end, ${instances} instances, 30 days (memory baseline)"
CCC_ETL_BENCH_INSTANCES="$instances" CCC_ETL_BENCH_DAYS=30 cargo bench --bench e2e -- e2e

echo "== end to end, ${instances} instances, 180 days, and rate adaptation"
CCC_ETL_BENCH_INSTANCES="$instances" CCC_ETL_BENCH_DAYS=180 cargo bench --bench e2e

echo "== one worker claiming its windows against the same run unclaimed"
CCC_ETL_BENCH_INSTANCES="$instances" CCC_ETL_BENCH_DAYS=180 cargo bench --bench e2e -- coordination

echo "== Parquet on object storage: S3 (moto on loopback) against a local root, same run"
CCC_ETL_BENCH_INSTANCES="$instances" CCC_ETL_BENCH_DAYS=180 cargo bench --bench object_store
