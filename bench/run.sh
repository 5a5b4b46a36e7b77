#!/usr/bin/env bash
# Runs every benchmark and writes docs/benchmarks.md: bench/benchmarks.md.in with each
# `@@include FILE@@` line replaced by what this run measured. Figures are ratios to references
# measured in the same run (the machine is shared and noisy), over several rounds, min / median /
# max. Needs PostgreSQL (CCC_ETL_TEST_PG, as for the tests); the object-storage part needs the S3
# test server the tests install (target/s3-venv). Takes about 35 minutes.
#
#   bench/run.sh            everything, then docs/benchmarks.md
#   bench/run.sh --no-doc   everything, the report under target/bench-report only
#   bench/run.sh --doc      docs/benchmarks.md again from the last report (after editing the
#                           template), measuring nothing
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench-report

write_doc() {
  awk -v dir="$out" '/^@@include .*@@$/ {
      f = $2; sub(/@@$/, "", f)
      while ((getline line < (dir "/" f)) > 0) print line
      close(dir "/" f); next
    } { print }' bench/benchmarks.md.in > docs/benchmarks.md
  echo "== wrote docs/benchmarks.md"
}

if [[ "${1:-}" == "--doc" ]]; then
  write_doc
  exit 0
fi
rm -rf "$out"
mkdir -p "$out"
cargo bench --no-run --quiet

echo "== end to end: ccc-etl backfill (process and engine) against COPY, 40 and 200 instances x 180 days"
# Six rounds at 40 instances (each phase order twice): a phase there takes two or three seconds.
CCC_ETL_BENCH_REPORT="$out/e2e.md" CCC_ETL_BENCH_SCALES=40 CCC_ETL_BENCH_DAYS=180 \
  CCC_ETL_BENCH_ROUNDS=6 cargo bench --quiet --bench e2e -- e2e | tee "$out/e2e.log"
CCC_ETL_BENCH_REPORT="$out/e2e.md" CCC_ETL_BENCH_SCALES=200 CCC_ETL_BENCH_DAYS=180 \
  CCC_ETL_BENCH_ROUNDS=3 cargo bench --quiet --bench e2e -- e2e | tee -a "$out/e2e.log"

echo "== memory against days: 200 instances x 30 days, both sinks"
CCC_ETL_BENCH_REPORT="$out/e2e-30.md" CCC_ETL_BENCH_SCALES=200 CCC_ETL_BENCH_DAYS=30 \
  CCC_ETL_BENCH_SINKS=both cargo bench --quiet --bench e2e -- e2e | tee "$out/e2e-30.log"

echo "== the key columns' collation: COPY into the tables as migrated against \"C\""
CCC_ETL_BENCH_REPORT="$out/collation.md" CCC_ETL_BENCH_INSTANCES=200 \
  cargo bench --quiet --bench e2e -- collation | tee "$out/collation.log"

echo "== one worker claiming its windows against the same run unclaimed"
CCC_ETL_BENCH_INSTANCES=200 cargo bench --quiet --bench e2e -- coordination \
  | tee "$out/coordination.log"
grep '^coordination' "$out/coordination.log" > "$out/coordination.txt"

echo "== rate adaptation against a 20 QPS limit"
cargo bench --quiet --bench e2e -- rate | tee "$out/rate.log"
grep '^rate limit' "$out/rate.log" > "$out/rate.txt"

echo "== the pace at the API's latency: 50, 150, 400, 1000 ms at max_qps 20"
cargo bench --quiet --bench e2e -- latency | tee "$out/latency.log"
grep '^|' "$out/latency.log" > "$out/latency.md"

echo "== the HTML report of a 200 x 180 job against status on it"
CCC_ETL_BENCH_REPORT="$out/report.md" CCC_ETL_BENCH_INSTANCES=200 CCC_ETL_BENCH_DAYS=180 \
  CCC_ETL_BENCH_ROUNDS=3 cargo bench --quiet --bench e2e -- report | tee "$out/report.log"

echo "== Parquet on object storage: local, in memory, S3 (moto), S3 through a 15 ms proxy"
CCC_ETL_BENCH_REPORT="$out/object_store.md" CCC_ETL_BENCH_SCALES=40,200 CCC_ETL_BENCH_ROUNDS=3 \
  cargo bench --quiet --bench object_store | tee "$out/object_store.log"

echo "== microbenchmarks (criterion)"
cargo bench --quiet --bench micro | tee "$out/micro.log"
# criterion prints a long name on a line of its own, its times on the next.
awk '/time:/ { if ($1 == "time:") print name, $0; else print; next } { name = $1 }' \
  "$out/micro.log" | sed 's/ \+/ /g' > "$out/micro.txt"

{
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -m);" \
    "$(psql --version | head -1), server on the same machine; release build (bench profile)."
  echo "Run: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')."
} > "$out/machine.txt"

if [[ "${1:-}" != "--no-doc" ]]; then
  write_doc
fi
