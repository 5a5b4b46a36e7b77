"""ccc-etl under Apache Airflow (3.x): the nightly job as a DAG, and a variant that back-fills
each of the DAG's daily intervals.

Copy this file into the DAGs folder. The tasks run the ccc-etl binary on the worker with
`--format json` and read its one JSON document (docs/running.md), which becomes the task's
XCom. They need on the worker: the binary (CCC_ETL_BIN, default /usr/local/bin/ccc-etl), its
configuration (CCC_ETL_CONFIG, default /etc/ccc-etl/pipeline.toml), and the credentials and
DATABASE_URL in the worker's environment (or an RRSA / ECS role), as for cron.
CCC_ETL_RETRIES (3) and CCC_ETL_RETRY_DELAY_SECONDS (600) set the retries of the exits below.

ccc-etl's exit codes decide what Airflow does (docs/running.md, "Exit codes"):
  0  success;
  3  some windows failed: retried (the retry fetches what is missing, nothing twice);
  1, 2  a fatal error or bad input: failed at once, no retry (a person must fix it);
  4  a check found a problem: failed at once, so that the failure callbacks alert;
  5  another run holds the Parquet root: retried after retry_delay.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import timedelta

import pendulum
from airflow.exceptions import AirflowException, AirflowFailException
from airflow.sdk import DAG, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

# The pipeline's zone: the schedule fires at 02:30 there, as cron, systemd and the CronJob do
# (deploy/), and a daily interval is one local day of it.
ZONE = "Asia/Shanghai"
CCC_ETL = os.environ.get("CCC_ETL_BIN", "/usr/local/bin/ccc-etl")
CONFIG = os.environ.get("CCC_ETL_CONFIG", "/etc/ccc-etl/pipeline.toml")
RETRIED = {3: "some windows failed", 5: "another run holds the Parquet root"}
NOT_RETRIED = {1: "a fatal error", 2: "bad input", 4: "a check found a problem"}

# How often and after how long a retried exit is tried again (the worker's environment may
# change the defaults).
default_args = {
    "retries": int(os.environ.get("CCC_ETL_RETRIES", "3")),
    "retry_delay": timedelta(seconds=float(os.environ.get("CCC_ETL_RETRY_DELAY_SECONDS", "600"))),
    "execution_timeout": timedelta(hours=6),
}


def run_ccc_etl(args: list[str]) -> dict:
    """Runs ccc-etl with `args` and `--format json`; returns its summary, or raises as its exit
    code says (see the module's docstring)."""
    command = [CCC_ETL, "--config", CONFIG, "--log-format", "json", *args, "--format", "json"]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in proc.stderr.splitlines():
        print(line)  # ccc-etl's JSON log lines, into the task's log
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines else {}
    code = proc.returncode
    if code == 0:
        return summary
    detail = summary.get("error") or ", ".join(
        f"{w['instance_id']} {w['error']}" for w in summary.get("windows_failed", [])
    )
    if code in RETRIED:
        raise AirflowException(f"ccc-etl exited {code} ({RETRIED[code]}): {detail}")
    reason = NOT_RETRIED.get(code, "an unexpected exit")
    raise AirflowFailException(f"ccc-etl exited {code} ({reason}): {detail}")


with DAG(
    dag_id="ccc_etl_nightly",
    description="ccc-etl nightly: CCC trending reports into PostgreSQL and Parquet",
    schedule="30 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz=ZONE),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["ccc-etl"],
):

    @task
    def nightly() -> dict:
        """Everything missing inside the 180-day horizon, and the lookback."""
        return run_ccc_etl(["nightly"])

    nightly()


with DAG(
    dag_id="ccc_etl_daily",
    description="ccc-etl: each daily interval back-filled as one local day",
    # Intervals from local midnight to local midnight, each run after its day has ended.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone=ZONE),
    start_date=pendulum.datetime(2026, 12, 1, tz=ZONE),
    catchup=True,
    max_active_runs=4,
    default_args=default_args,
    tags=["ccc-etl"],
):

    @task
    def backfill_day() -> dict:
        """The interval's local day (`airflow backfill create` fills a range of them). Two
        intervals at once are two workers of one job: they share its windows through
        PostgreSQL. The nightly DAG's lookback later takes the API's revisions of the day."""
        start = get_current_context()["data_interval_start"]
        day = pendulum.instance(start).in_timezone(ZONE).to_date_string()
        return run_ccc_etl(["backfill", "--date", day])

    backfill_day()
