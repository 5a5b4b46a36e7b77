//! An in-memory sink for tests: a map from row key to row, with the same upsert semantics as
//! the real sinks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{CommitStats, RunContext, Sink, Written};
use crate::ledger::SinkKind;
use crate::record::{
    InboundRow, MediaType, OutboundRow, OverallRow, TrendRow, WindowBatch, WindowKey,
};

/// Key of a stored row.
pub type RowKey = (String, MediaType, i64);

/// Everything the sink holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryTables {
    /// `inbound_trend`.
    pub inbound: BTreeMap<RowKey, InboundRow>,
    /// `outbound_trend`.
    pub outbound: BTreeMap<RowKey, OutboundRow>,
    /// `overall_trend`.
    pub overall: BTreeMap<RowKey, OverallRow>,
    /// Windows committed, in commit order.
    pub commits: Vec<crate::record::WindowKey>,
}

/// The sink.
#[derive(Debug, Default)]
pub struct MemorySink {
    tables: Mutex<MemoryTables>,
}

fn upsert<R: TrendRow>(
    map: &mut BTreeMap<RowKey, R>,
    b: &WindowBatch,
    rows: &[R],
    s: &mut CommitStats,
) {
    for r in rows {
        let k = (b.key.instance_id.clone(), b.key.media_type, r.stats_time());
        match map.insert(k, *r) {
            None => s.inserted += 1,
            Some(old) if old == *r => s.unchanged += 1,
            Some(_) => s.revised += 1,
        }
    }
}

impl MemorySink {
    /// A snapshot of the tables.
    pub fn snapshot(&self) -> MemoryTables {
        self.tables.lock().expect("memory sink lock").clone()
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn kind(&self) -> SinkKind {
        SinkKind::Memory
    }

    async fn write(&self, _planned: &WindowKey, b: Arc<WindowBatch>, run: &RunContext) -> Written {
        let written = {
            let mut t = self.tables.lock().expect("memory sink lock");
            let mut s = CommitStats::default();
            upsert(&mut t.inbound, &b, &b.inbound, &mut s);
            upsert(&mut t.outbound, &b, &b.outbound, &mut s);
            upsert(&mut t.overall, &b, &b.overall, &mut s);
            t.commits.push(b.key.clone());
            Written::durable(&b, s)
        };
        run.record(&self.id(), written).await
    }
}
