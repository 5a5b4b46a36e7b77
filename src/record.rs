//! Typed rows of the trending report and the batch of rows one window delivers.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The media a report covers; the API's `MediaType` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MediaType {
    /// Voice calls (the API's default).
    Audio,
    /// Chat sessions.
    Chat,
    /// Video calls.
    Video,
}

impl MediaType {
    /// Every media type, in the API's order.
    pub const ALL: [MediaType; 3] = [MediaType::Audio, MediaType::Chat, MediaType::Video];

    /// The value the API expects.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::Audio => "Audio",
            MediaType::Chat => "Chat",
            MediaType::Video => "Video",
        }
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MediaType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Audio" => Ok(MediaType::Audio),
            "Chat" => Ok(MediaType::Chat),
            "Video" => Ok(MediaType::Video),
            other => Err(format!(
                "unknown media type {other:?}: expected one of Audio, Chat, Video"
            )),
        }
    }
}

impl TryFrom<String> for MediaType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MediaType> for String {
    fn from(m: MediaType) -> String {
        m.as_str().to_string()
    }
}

/// The three arrays of the report, named as their tables in both sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Table {
    /// `Data.Inbound`.
    Inbound,
    /// `Data.Outbound`.
    Outbound,
    /// `Data.Overall`.
    Overall,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 3] = [Table::Inbound, Table::Outbound, Table::Overall];

    /// The table named `name` ([`Table::name`]).
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Position in [`Table::ALL`].
    pub fn index(self) -> usize {
        match self {
            Table::Inbound => 0,
            Table::Outbound => 1,
            Table::Overall => 2,
        }
    }

    /// The table name in PostgreSQL and the Parquet directory name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Inbound => "inbound_trend",
            Table::Outbound => "outbound_trend",
            Table::Overall => "overall_trend",
        }
    }

    /// The count columns, in order, as named in both sinks.
    pub fn count_columns(self) -> &'static [&'static str] {
        match self {
            Table::Inbound => &[
                "total_calls",
                "calls_handled",
                "calls_queued",
                "calls_abandoned_in_ivr",
                "calls_abandoned_in_queue",
                "calls_abandoned_in_ring",
            ],
            Table::Outbound => &["total_calls", "calls_answered"],
            Table::Overall => &["max_logged_in_agents"],
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One bucket of inbound traffic. `stats_time` is the bucket start in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InboundRow {
    /// Bucket start, epoch ms.
    pub stats_time: i64,
    /// Calls offered.
    pub total_calls: i64,
    /// Calls answered by an agent.
    pub calls_handled: i64,
    /// Calls that entered a queue.
    pub calls_queued: i64,
    /// Calls abandoned in the IVR.
    pub calls_abandoned_in_ivr: i64,
    /// Calls abandoned while queued.
    pub calls_abandoned_in_queue: i64,
    /// Calls abandoned while ringing at an agent.
    pub calls_abandoned_in_ring: i64,
}

/// One bucket of outbound traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OutboundRow {
    /// Bucket start, epoch ms.
    pub stats_time: i64,
    /// Outbound calls placed.
    pub total_calls: i64,
    /// Outbound calls connected.
    pub calls_answered: i64,
}

/// One bucket of the overall agent count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OverallRow {
    /// Bucket start, epoch ms.
    pub stats_time: i64,
    /// Most agents logged in at once during the bucket.
    pub max_logged_in_agents: i64,
}

/// A row of any table: what the de-duplication and the sinks need to know of it.
pub trait TrendRow: Copy + Ord + fmt::Debug + Send + Sync + 'static {
    /// The table the row belongs to.
    const TABLE: Table;
    /// Bucket start, epoch ms.
    fn stats_time(&self) -> i64;
    /// The counts in column order, in a fixed-size array (slots past the table's columns are 0).
    fn count_array(&self) -> Counts;
    /// The counts in column order.
    fn counts(&self) -> Vec<i64> {
        self.count_array()[..Self::TABLE.count_columns().len()].to_vec()
    }
    /// The row whose counts, in column order, are `counts`; `None` unless there is one count
    /// per column of the table.
    fn from_counts(stats_time: i64, counts: &[i64]) -> Option<Self>;
}

impl TrendRow for InboundRow {
    const TABLE: Table = Table::Inbound;
    fn from_counts(stats_time: i64, counts: &[i64]) -> Option<Self> {
        let [total, handled, queued, ivr, queue, ring] = counts.try_into().ok()?;
        Some(Self {
            stats_time,
            total_calls: total,
            calls_handled: handled,
            calls_queued: queued,
            calls_abandoned_in_ivr: ivr,
            calls_abandoned_in_queue: queue,
            calls_abandoned_in_ring: ring,
        })
    }
    fn stats_time(&self) -> i64 {
        self.stats_time
    }
    fn count_array(&self) -> Counts {
        [
            self.total_calls,
            self.calls_handled,
            self.calls_queued,
            self.calls_abandoned_in_ivr,
            self.calls_abandoned_in_queue,
            self.calls_abandoned_in_ring,
        ]
    }
}

impl TrendRow for OutboundRow {
    const TABLE: Table = Table::Outbound;
    fn from_counts(stats_time: i64, counts: &[i64]) -> Option<Self> {
        let [total, answered] = counts.try_into().ok()?;
        Some(Self {
            stats_time,
            total_calls: total,
            calls_answered: answered,
        })
    }
    fn stats_time(&self) -> i64 {
        self.stats_time
    }
    fn count_array(&self) -> Counts {
        [self.total_calls, self.calls_answered, 0, 0, 0, 0]
    }
}

impl TrendRow for OverallRow {
    const TABLE: Table = Table::Overall;
    fn from_counts(stats_time: i64, counts: &[i64]) -> Option<Self> {
        let [agents] = counts.try_into().ok()?;
        Some(Self {
            stats_time,
            max_logged_in_agents: agents,
        })
    }
    fn stats_time(&self) -> i64 {
        self.stats_time
    }
    fn count_array(&self) -> Counts {
        [self.max_logged_in_agents, 0, 0, 0, 0, 0]
    }
}

/// The three arrays of one GetInstanceTrendingReport response, typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// `RequestId` of the response that delivered the rows.
    pub request_id: String,
    /// `Data.Inbound`.
    pub inbound: Vec<InboundRow>,
    /// `Data.Outbound`.
    pub outbound: Vec<OutboundRow>,
    /// `Data.Overall`.
    pub overall: Vec<OverallRow>,
    /// What the response carried beyond, or short of, the fields ccc-etl knows.
    pub drift: Drift,
    /// Per table (in [`Table::ALL`] order), the fields of an item ccc-etl does not know, as
    /// compact JSON, by StatsTime.
    pub extra: Extras,
    /// Fields sent under both their current and their former name with different values
    /// (`Inbound.CallsAbandonedInRing / Inbound.CallsAbandonedInRinging`), with the rows that
    /// did; the current name's values are kept.
    pub conflicting_names: std::collections::BTreeMap<String, u64>,
}

/// Per table (in [`Table::ALL`] order), unknown fields as compact JSON, by StatsTime.
pub type Extras = [std::collections::BTreeMap<i64, String>; 3];

/// Schema drift in one response (or a run): fields the API sent that ccc-etl does not know,
/// and known fields it stopped sending.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// Unknown names, with how many rows (or items) carried them: `Inbound.CallsOverflowed`
    /// inside an array's items, `Data.SkillGroups` for a member of `Data` (its item count), and a
    /// bare name for a top-level field.
    pub unknown: std::collections::BTreeMap<String, u64>,
    /// Known fields absent from every item of a non-empty array (`Inbound.CallsQueued`).
    pub missing: std::collections::BTreeSet<String>,
}

impl Drift {
    /// Whether rows keep an unknown field of this name in their `extra` column: a field inside
    /// the items of one of the three arrays (`Inbound.X`). A member of `Data` (an array the API
    /// added, `Data.SkillGroups`) or a top-level field is counted, not kept.
    pub fn is_kept(name: &str) -> bool {
        name.split_once('.')
            .is_some_and(|(section, _)| section != "Data")
    }

    /// Nothing unknown, nothing missing.
    pub fn is_empty(&self) -> bool {
        self.unknown.is_empty() && self.missing.is_empty()
    }

    /// Adds another response's (or window's) drift.
    pub fn merge(&mut self, other: &Drift) {
        for (k, v) in &other.unknown {
            *self.unknown.entry(k.clone()).or_default() += v;
        }
        self.missing.extend(other.missing.iter().cloned());
    }
}

impl Report {
    /// Rows across all three tables.
    pub fn row_count(&self) -> usize {
        self.inbound.len() + self.outbound.len() + self.overall.len()
    }
}

/// Identifies one request's worth of data: one instance, one media type, one half-open window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowKey {
    /// Call-center instance.
    pub instance_id: String,
    /// Media type.
    pub media_type: MediaType,
    /// Window start, inclusive, epoch ms.
    pub start_ms: i64,
    /// Window end, exclusive, epoch ms.
    pub end_ms: i64,
}

impl WindowKey {
    /// Whether a bucket starting at `stats_time` belongs to this window.
    pub fn owns(&self, stats_time: i64) -> bool {
        self.start_ms <= stats_time && stats_time < self.end_ms
    }
}

impl fmt::Display for WindowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} [{}, {})",
            self.instance_id,
            self.media_type,
            fmt_ms(self.start_ms),
            fmt_ms(self.end_ms)
        )
    }
}

/// Epoch ms as an RFC 3339 UTC string, for messages.
pub fn fmt_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| format!("{ms}ms"))
}

/// The counts of one row of any table, in [`Table::count_columns`] order; unused slots are 0.
pub type Counts = [i64; 6];

/// The de-duplicated rows one window committed to the sinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowBatch {
    /// The window.
    pub key: WindowKey,
    /// `RequestId` of the response the rows came from.
    pub request_id: String,
    /// When the response arrived.
    pub fetched_at: DateTime<Utc>,
    /// Requests the fetch took (1 without retries).
    pub attempts: u32,
    /// Inbound rows, sorted by `stats_time`, one per bucket.
    pub inbound: Vec<InboundRow>,
    /// Outbound rows, sorted by `stats_time`, one per bucket.
    pub outbound: Vec<OutboundRow>,
    /// Overall rows, sorted by `stats_time`, one per bucket.
    pub overall: Vec<OverallRow>,
    /// Fields of the rows ccc-etl does not know, as sent (compact JSON), by table and
    /// StatsTime; stored in each table's `extra` column.
    pub extra: Extras,
    /// Where the window's rows are final: the start of the bucket that was still in progress
    /// when they were fetched, if it lies inside the window. The ledger records coverage only up
    /// to here, so the next run starts at that bucket and completes it. `None`: the whole window.
    pub final_end_ms: Option<i64>,
}

impl WindowBatch {
    /// Rows across all three tables.
    pub fn row_count(&self) -> usize {
        self.inbound.len() + self.outbound.len() + self.overall.len()
    }

    /// One table's rows with `stats_time` in `[from, to)`, sorted, counts in
    /// [`Table::count_columns`] order (slots past the table's columns are 0).
    pub fn rows_between(&self, table: Table, from: i64, to: i64) -> Vec<(i64, Counts)> {
        fn slice<R: TrendRow>(rows: &[R], from: i64, to: i64) -> Vec<(i64, Counts)> {
            let a = rows.partition_point(|r| r.stats_time() < from);
            let z = rows.partition_point(|r| r.stats_time() < to).max(a);
            rows[a..z]
                .iter()
                .map(|r| (r.stats_time(), r.count_array()))
                .collect()
        }
        match table {
            Table::Inbound => slice(&self.inbound, from, to),
            Table::Outbound => slice(&self.outbound, from, to),
            Table::Overall => slice(&self.overall, from, to),
        }
    }

    /// One table's rows as columns: bucket starts, then one vector per count column.
    pub fn columns(&self, table: Table) -> (Vec<i64>, Vec<Vec<i64>>) {
        let rows = self.rows_between(table, i64::MIN, i64::MAX);
        let times = rows.iter().map(|(t, _)| *t).collect();
        let counts = (0..table.count_columns().len())
            .map(|i| rows.iter().map(|(_, c)| c[i]).collect())
            .collect();
        (times, counts)
    }

    /// The unknown fields of `table`'s row at `stats_time`, as compact JSON.
    pub fn extra(&self, table: Table, stats_time: i64) -> Option<&str> {
        self.extra[table.index()]
            .get(&stats_time)
            .map(String::as_str)
    }

    /// Rows in one table.
    pub fn rows_in(&self, table: Table) -> usize {
        match table {
            Table::Inbound => self.inbound.len(),
            Table::Outbound => self.outbound.len(),
            Table::Overall => self.overall.len(),
        }
    }
}
