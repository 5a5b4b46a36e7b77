"""ccc-etl under Dagster: one asset, the CCC trending tables, partitioned by local day, each
partition materialized by `ccc-etl backfill --date DAY` through Dagster Pipes.

    dagster dev -f ccc_etl_dagster.py                     # the UI
    dagster asset materialize -f ccc_etl_dagster.py --select ccc_etl_trends --partition 2026-12-01

ccc-etl reports the partition's rows per table, windows and requests as the materialization's
metadata (src/pipes.rs). It needs on the machine that runs the step: the binary (CCC_ETL_BIN,
default /usr/local/bin/ccc-etl), its configuration (CCC_ETL_CONFIG, default
/etc/ccc-etl/pipeline.toml), and the credentials and DATABASE_URL in the environment (or an
RRSA / ECS role). Partitions materialized at once are workers of one job: they share its
windows and its QPS budget through PostgreSQL.

ccc-etl's exit codes decide what Dagster does (docs/running.md, "Exit codes"): 3 (some windows
failed) and 5 (another run holds the Parquet root) ask for a retry, CCC_ETL_RETRIES times (3)
after CCC_ETL_RETRY_DELAY_SECONDS (600); 1, 2 and 4 fail the step at once.
"""

import os
import subprocess

import dagster as dg

ZONE = "Asia/Shanghai"
CCC_ETL = os.environ.get("CCC_ETL_BIN", "/usr/local/bin/ccc-etl")
CONFIG = os.environ.get("CCC_ETL_CONFIG", "/etc/ccc-etl/pipeline.toml")
RETRIES = int(os.environ.get("CCC_ETL_RETRIES", "3"))
RETRY_DELAY = float(os.environ.get("CCC_ETL_RETRY_DELAY_SECONDS", "600"))
RETRIED = {3: "some windows failed", 5: "another run holds the Parquet root"}
NOT_RETRIED = {1: "a fatal error", 2: "bad input", 4: "a check found a problem"}

# Local days in the pipeline's zone. The API keeps 180 days: older partitions cannot be filled.
daily = dg.DailyPartitionsDefinition(start_date="2026-06-01", timezone=ZONE)


@dg.asset(
    partitions_def=daily,
    kinds={"postgres", "parquet"},
    description="CCC trending reports (inbound, outbound, agents) of one local day, in PostgreSQL and Parquet",
)
def ccc_etl_trends(context: dg.AssetExecutionContext):
    day = context.partition_key
    command = [CCC_ETL, "--config", CONFIG, "--log-format", "json", "backfill", "--date", day]
    with dg.open_pipes_session(
        context=context,
        context_injector=dg.PipesTempFileContextInjector(),
        message_reader=dg.PipesTempFileMessageReader(),
    ) as session:
        env = {**os.environ, **session.get_bootstrap_env_vars()}
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        for line in proc.stderr.splitlines():
            context.log.info(line)
    code = proc.returncode
    if code in RETRIED:
        raise dg.RetryRequested(max_retries=RETRIES, seconds_to_wait=RETRY_DELAY) from Exception(
            f"ccc-etl exited {code} ({RETRIED[code]}) for {day}"
        )
    if code != 0:
        reason = NOT_RETRIED.get(code, "an unexpected exit")
        raise dg.Failure(description=f"ccc-etl exited {code} ({reason}) for {day}")
    yield from session.get_results()


daily_job = dg.define_asset_job("ccc_etl_daily", selection=[ccc_etl_trends], partitions_def=daily)

defs = dg.Definitions(
    assets=[ccc_etl_trends],
    jobs=[daily_job],
    # Each day's partition at 02:30 the next morning, in the pipeline's zone.
    schedules=[dg.build_schedule_from_partitioned_job(daily_job, hour_of_day=2, minute_of_hour=30)],
)
