//! `verify`: PostgreSQL and Parquet hold the same rows, per table and partition (the local day of
//! `stats_time`), compared by row count and an order-independent content checksum.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures::TryStreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::PgStore;
use crate::record::Table;
use crate::sink::parquet::{ReadError, Root};

/// Rows and checksum of one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Digest64 {
    /// Rows.
    pub rows: u64,
    /// Wrapping sum of each row's 64-bit content hash.
    pub checksum: u64,
}

/// Digests keyed by (table, `YYYY-MM-DD`, instance).
pub type Digests = BTreeMap<(String, String, String), Digest64>;

/// The content hash of one row: instance, media type, stats_time, counts and the unknown fields
/// (not fetch metadata).
pub fn row_hash(
    instance: &str,
    media: &str,
    stats_time: i64,
    counts: &[i64],
    extra: Option<&str>,
) -> u64 {
    let mut h = Sha256::new();
    h.update(format!("{instance}|{media}|{stats_time}|{counts:?}").as_bytes());
    if let Some(e) = extra {
        // PostgreSQL's jsonb prints JSON its own way: compare the values, not the text.
        let canonical = serde_json::from_str::<serde_json::Value>(e)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| e.to_string());
        h.update(b"|");
        h.update(canonical.as_bytes());
    }
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

fn add(d: &mut Digests, table: Table, day: String, instance: &str, hash: u64) {
    let e = d
        .entry((table.name().to_string(), day, instance.to_string()))
        .or_default();
    e.rows += 1;
    e.checksum = e.checksum.wrapping_add(hash);
}

/// What the Parquet root holds: digests of every readable partition, and the files that
/// cannot be read or break the layout's rules (findings, not errors).
#[derive(Debug, Default)]
pub struct ParquetScan {
    /// Per table and day.
    pub digests: Digests,
    /// Day files that could not be read.
    pub unreadable: Vec<(Table, chrono::NaiveDate, ReadError)>,
    /// Day files holding rows of other days or a key more than once, with what is wrong.
    pub malformed: Vec<(Table, chrono::NaiveDate, String)>,
    /// Files in day directories other than the day's file (engines read them too).
    pub strays: Vec<crate::sink::parquet::Stray>,
}

/// Digests of every Parquet partition of a root, one listing per table; each day file is
/// checked to hold only rows of its day (in `tz`), each key once.
pub async fn parquet_digests(root: &Root, tz: Tz) -> Result<ParquetScan, String> {
    let mut out = ParquetScan::default();
    let listing = root.list_all().await.map_err(|e| e.to_string())?;
    out.strays = listing.strays;
    for f in listing.files {
        match root.read_rows(f.table, f.day).await {
            Ok(rows) => {
                let dt = f.day.format("%Y-%m-%d").to_string();
                if let Some(why) = crate::sink::parquet::not_its_keys(&rows, tz, f.day) {
                    out.malformed
                        .push((f.table, f.day, format!("{}: {why}", f.location)));
                }
                for r in rows {
                    add(
                        &mut out.digests,
                        f.table,
                        dt.clone(),
                        &r.instance_id,
                        row_hash(
                            &r.instance_id,
                            &r.media_type,
                            r.stats_time,
                            &r.counts,
                            r.extra.as_deref(),
                        ),
                    );
                }
            }
            Err(e) => out.unreadable.push((f.table, f.day, e)),
        }
    }
    Ok(out)
}

/// Digests of every PostgreSQL table, partitioned by local day in `tz`, streamed.
pub async fn pg_digests(store: &PgStore, tz: Tz) -> Result<Digests, sqlx::Error> {
    let mut d = Digests::new();
    for table in Table::ALL {
        let cols = table.count_columns().join(", ");
        // Table and column names are constants of this program, not input.
        let sql = format!(
            "SELECT instance_id, media_type, stats_time, {cols}, extra::text AS extra FROM {}",
            table.name()
        );
        let mut rows = sqlx::query(&sql).fetch(store.pool());
        while let Some(row) = rows.try_next().await? {
            let t: DateTime<Utc> = row.get("stats_time");
            let counts: Vec<i64> = table
                .count_columns()
                .iter()
                .map(|c| row.get::<i64, _>(*c))
                .collect();
            let day = t
                .with_timezone(&tz)
                .date_naive()
                .format("%Y-%m-%d")
                .to_string();
            let instance: String = row.get("instance_id");
            let media: String = row.get("media_type");
            add(
                &mut d,
                table,
                day,
                &instance,
                row_hash(
                    &instance,
                    &media,
                    t.timestamp_millis(),
                    &counts,
                    row.get::<Option<String>, _>("extra").as_deref(),
                ),
            );
        }
    }
    Ok(d)
}

/// One partition that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// Table.
    pub table: String,
    /// Partition day.
    pub dt: String,
    /// What PostgreSQL holds.
    pub postgres: Digest64,
    /// What Parquet holds.
    pub parquet: Digest64,
    /// The instances whose rows differ in this partition.
    pub instances: Vec<String>,
}

/// Partitions whose digests differ (a partition missing on one side has zero rows there), with
/// the instances behind each difference.
pub fn compare(pg: &Digests, pq: &Digests) -> Vec<Difference> {
    let keys: std::collections::BTreeSet<&(String, String, String)> =
        pg.keys().chain(pq.keys()).collect();
    let mut out: BTreeMap<(String, String), Difference> = BTreeMap::new();
    for k in keys {
        let (a, b) = (
            pg.get(k).copied().unwrap_or_default(),
            pq.get(k).copied().unwrap_or_default(),
        );
        let d = out
            .entry((k.0.clone(), k.1.clone()))
            .or_insert_with(|| Difference {
                table: k.0.clone(),
                dt: k.1.clone(),
                postgres: Digest64::default(),
                parquet: Digest64::default(),
                instances: vec![],
            });
        d.postgres.rows += a.rows;
        d.postgres.checksum = d.postgres.checksum.wrapping_add(a.checksum);
        d.parquet.rows += b.rows;
        d.parquet.checksum = d.parquet.checksum.wrapping_add(b.checksum);
        if a != b {
            d.instances.push(k.2.clone());
        }
    }
    out.into_values()
        .filter(|d| !d.instances.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_ignores_order_and_sees_any_change() {
        let mut a = Digests::new();
        let mut b = Digests::new();
        add(
            &mut a,
            Table::Overall,
            "2026-01-01".into(),
            "i",
            row_hash("i", "Audio", 1, &[5], None),
        );
        add(
            &mut a,
            Table::Overall,
            "2026-01-01".into(),
            "i",
            row_hash("i", "Audio", 2, &[6], None),
        );
        add(
            &mut b,
            Table::Overall,
            "2026-01-01".into(),
            "i",
            row_hash("i", "Audio", 2, &[6], None),
        );
        add(
            &mut b,
            Table::Overall,
            "2026-01-01".into(),
            "i",
            row_hash("i", "Audio", 1, &[5], None),
        );
        assert!(compare(&a, &b).is_empty());
        add(
            &mut b,
            Table::Overall,
            "2026-01-02".into(),
            "i",
            row_hash("i", "Audio", 3, &[1], None),
        );
        let diff = compare(&a, &b);
        assert_eq!(diff.len(), 1);
        assert_eq!(diff[0].dt, "2026-01-02");
        assert_eq!(diff[0].postgres.rows, 0);
        assert_ne!(
            row_hash("i", "Audio", 1, &[5], None),
            row_hash("i", "Audio", 1, &[6], None)
        );
        // The unknown fields count, as values: jsonb's spacing does not.
        assert_ne!(
            row_hash("i", "Audio", 1, &[5], None),
            row_hash("i", "Audio", 1, &[5], Some(r#"{"X":1}"#))
        );
        assert_eq!(
            row_hash("i", "Audio", 1, &[5], Some(r#"{"X": 1, "Y": "a"}"#)),
            row_hash("i", "Audio", 1, &[5], Some(r#"{"X":1,"Y":"a"}"#))
        );
    }
}
