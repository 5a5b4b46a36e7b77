//! What both sinks hold, as sorted text without fetch metadata, to compare runs.

use std::collections::BTreeSet;

use ccc_etl::record::Table;
use ccc_etl::sink::parquet::{Root, StoredRow};
use sqlx::Row;

/// Every Parquet row, without fetch metadata, sorted; every listed file must read.
pub async fn parquet_contents(root: &Root) -> Vec<String> {
    let mut rows = vec![];
    for f in root.list().await.unwrap() {
        let day = format!("dt={}", f.day.format("%Y-%m-%d"));
        let t = f.table;
        for r in root
            .read_rows(t, f.day)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", f.location))
        {
            let StoredRow {
                instance_id,
                media_type,
                stats_time,
                counts,
                ..
            } = r;
            rows.push(format!(
                "{t}|{day}|{instance_id}|{media_type}|{stats_time}|{counts:?}"
            ));
        }
    }
    rows.sort();
    rows
}

/// Every PostgreSQL row, without fetch metadata, sorted.
pub async fn pg_contents(pool: &sqlx::PgPool) -> Vec<String> {
    let mut out = vec![];
    for t in Table::ALL {
        let sql = format!(
            "SELECT concat_ws('|', instance_id, media_type, (extract(epoch from stats_time) * 1000)::bigint, {}) AS r FROM ccc.{} ORDER BY 1",
            t.count_columns().join(", "),
            t.name()
        );
        for row in sqlx::query(&sql).fetch_all(pool).await.unwrap() {
            out.push(format!("{t}|{}", row.get::<String, _>("r")));
        }
    }
    out
}

/// Windows both sinks have committed.
pub async fn committed(pool: &sqlx::PgPool) -> BTreeSet<(String, i64)> {
    sqlx::query(
        "SELECT instance_id, start_ms FROM ccc.windows WHERE status = 'committed' \
         GROUP BY instance_id, media_type, start_ms, end_ms HAVING count(DISTINCT sink) = 2",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default()
    .iter()
    .map(|r| (r.get("instance_id"), r.get("start_ms")))
    .collect()
}
