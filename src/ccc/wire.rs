//! The JSON the API sends, as sent: numbers as numbers or strings, either ring-abandon name,
//! any array missing. `parse_body` turns it into a typed [`Report`] or says what is wrong.

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::record::{Drift, InboundRow, OutboundRow, OverallRow, Report};

/// Top-level fields of a response that ccc-etl knows (read or deliberately ignored).
const KNOWN_TOP: &[&str] = &[
    "RequestId",
    "Code",
    "Message",
    "Data",
    "HttpStatusCode",
    "Success",
    "Params",
];

/// Error and success bodies share these fields. Fields it does not know are named in `unknown`.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// Present on every response Alibaba Cloud sends.
    pub request_id: Option<String>,
    /// `OK` on success; the error code otherwise.
    pub code: Option<String>,
    /// Human-readable text.
    pub message: Option<String>,
    /// The report itself on success.
    pub data: Option<WireData>,
    /// Top-level fields ccc-etl does not know.
    pub unknown: Vec<String>,
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Envelope;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a GetInstanceTrendingReport response object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
                let mut env = Envelope::default();
                while let Some(key) = map.next_key_seed(KeySeed(KNOWN_TOP))? {
                    match key {
                        Key::Known(0) => {
                            env.request_id = map.next_value::<Option<Text>>()?.map(|t| t.0)
                        }
                        Key::Known(1) => env.code = map.next_value::<Option<Text>>()?.map(|t| t.0),
                        Key::Known(2) => {
                            env.message = map.next_value::<Option<Text>>()?.map(|t| t.0)
                        }
                        Key::Known(3) => env.data = map.next_value()?,
                        Key::Known(_) => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                        Key::Unknown(name) => {
                            map.next_value::<de::IgnoredAny>()?;
                            env.unknown.push(name);
                        }
                    }
                }
                Ok(env)
            }
        }
        d.deserialize_map(V)
    }
}

/// A text field, also when sent as a number (`"Code": 200` has been seen on gateways).
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(serde_json::Number),
            B(bool),
        }
        Ok(Text(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::N(n) => n.to_string(),
            Raw::B(b) => b.to_string(),
        }))
    }
}

/// A key of an object: one of the names given (by index), or another.
enum Key {
    Known(usize),
    Unknown(String),
}

/// Matches keys against known names without allocating for them.
struct KeySeed(&'static [&'static str]);

impl<'de> de::DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl de::Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match self.0.iter().position(|k| *k == v) {
            Some(i) => Key::Known(i),
            None => Key::Unknown(v.to_string()),
        })
    }
}

/// `Data` of a success body. Arrays it does not know are named, with their length, in
/// `unknown`.
#[derive(Debug, Clone, Default)]
pub struct WireData {
    /// Inbound buckets; missing or null means none.
    pub inbound: Vec<WireInbound>,
    /// Outbound buckets.
    pub outbound: Vec<WireOutbound>,
    /// Overall buckets (current API only).
    pub overall: Vec<WireOverall>,
    /// Other members of `Data`: name and item count (1 for a value that is not an array).
    pub unknown: Vec<(String, u64)>,
}

impl<'de> Deserialize<'de> for WireData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = WireData;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the Data object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<WireData, A::Error> {
                let mut data = WireData::default();
                while let Some(key) =
                    map.next_key_seed(KeySeed(&["Inbound", "Outbound", "Overall"]))?
                {
                    match key {
                        Key::Known(0) => {
                            data.inbound = map.next_value::<Option<_>>()?.unwrap_or_default()
                        }
                        Key::Known(1) => {
                            data.outbound = map.next_value::<Option<_>>()?.unwrap_or_default()
                        }
                        Key::Known(_) => {
                            data.overall = map.next_value::<Option<_>>()?.unwrap_or_default()
                        }
                        Key::Unknown(name) => {
                            let items = match map.next_value::<serde_json::Value>()? {
                                serde_json::Value::Array(a) => a.len() as u64,
                                _ => 1,
                            };
                            data.unknown.push((name, items));
                        }
                    }
                }
                Ok(data)
            }
        }
        d.deserialize_map(V)
    }
}

/// Declares one item type of a `Data` array: its known count fields (with older aliases),
/// read in one pass; which of them each item carried; the names of the fields it did not know.
macro_rules! wire_item {
    ($(#[$doc:meta])* $name:ident, $section:literal, {
        $($(#[$fdoc:meta])* $field:ident : $key:literal $(| $alias:literal)?),* $(,)?
    }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default)]
        pub struct $name {
            /// Bucket start, epoch ms.
            pub stats_time: i64,
            $($(#[$fdoc])* pub $field: i64,)*
            /// Known fields the item carried: bit `i` for the `i`-th of [`Self::FIELDS`].
            pub present: u32,
            /// Fields the item carried under both their current and their former name, with
            /// different values (the current name's is kept): bit `i` as in `present`.
            pub renamed_conflicts: u32,
            /// Fields ccc-etl does not know, with their values as sent.
            pub extra: serde_json::Map<String, serde_json::Value>,
        }

        impl $name {
            /// The section, as the API names it.
            pub const SECTION: &'static str = $section;
            /// The known count fields, as the API names them.
            pub const FIELDS: &'static [&'static str] = &[$($key),*];
            /// Every accepted key: `StatsTime`, the fields, then older aliases.
            const KEYS: &'static [&'static str] = &["StatsTime", $($key,)* $($($alias,)?)*];
            const ALIASES: &'static [usize] = &[$(wire_item!(@alias_of $key $(| $alias)?),)*];

            /// What `items` carried beyond, or short of, the known fields (into `drift`), and
            /// the fields they sent under two names with different values (into `conflicts`).
            fn drift_of(
                items: &[Self],
                drift: &mut Drift,
                conflicts: &mut std::collections::BTreeMap<String, u64>,
            ) {
                section_drift(
                    drift,
                    Self::SECTION,
                    Self::FIELDS,
                    items.iter().map(|r| (r.present, &r.extra)),
                );
                renamed_conflicts(
                    conflicts,
                    Self::SECTION,
                    Self::FIELDS,
                    Self::former_name,
                    items.iter().map(|r| r.renamed_conflicts),
                );
            }

            /// The former name of the `i`-th field, if it had one.
            pub fn former_name(i: usize) -> Option<&'static str> {
                if Self::ALIASES.get(i) != Some(&1) {
                    return None;
                }
                let nth = Self::ALIASES[..i].iter().filter(|a| **a == 1).count();
                Self::KEYS.get(1 + Self::FIELDS.len() + nth).copied()
            }

            fn get(&self, i: usize) -> i64 {
                let mut j = 0;
                $(
                    if j == i { return self.$field; }
                    j += 1;
                )*
                let _ = j;
                0
            }

            fn set(&mut self, i: usize, v: i64) {
                let mut j = 0;
                $(
                    if j == i { self.$field = v; }
                    j += 1;
                )*
                let _ = j;
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> de::Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        write!(f, "an item of Data.{}", $section)
                    }
                    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<$name, A::Error> {
                        let mut item = $name::default();
                        let mut stats_time = None;
                        let n = $name::FIELDS.len();
                        // Fields read under their current name, and values read under a former
                        // one: when an item carries both, the current name wins.
                        let mut current = 0u32;
                        let mut former: Vec<(usize, i64)> = Vec::new();
                        while let Some(key) = map.next_key_seed(KeySeed($name::KEYS))? {
                            match key {
                                Key::Known(0) => {
                                    stats_time = Some(map.next_value_seed(CountSeed($section, "StatsTime"))?)
                                }
                                Key::Known(k) => {
                                    // An alias stands for the field it renamed.
                                    let i = if k <= n { k - 1 } else {
                                        let mut seen = 0;
                                        (0..n).find(|f| {
                                            if $name::ALIASES[*f] == 1 { seen += 1; seen == k - n } else { false }
                                        }).expect("alias index")
                                    };
                                    let v = map.next_value_seed(CountSeed($section, $name::FIELDS[i]))?;
                                    item.present |= 1 << i;
                                    if k <= n {
                                        if former.iter().any(|(f, old)| *f == i && *old != v) {
                                            item.renamed_conflicts |= 1 << i;
                                        }
                                        current |= 1 << i;
                                        item.set(i, v);
                                    } else if current & (1 << i) != 0 {
                                        if item.get(i) != v {
                                            item.renamed_conflicts |= 1 << i;
                                        }
                                    } else {
                                        former.push((i, v));
                                        item.set(i, v);
                                    }
                                }
                                Key::Unknown(name) => {
                                    let v = map.next_value::<serde_json::Value>()?;
                                    item.extra.insert(name, v);
                                }
                            }
                        }
                        item.stats_time = stats_time.ok_or_else(|| de::Error::missing_field("StatsTime"))?;
                        Ok(item)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
    (@alias_of $key:literal) => { 0 };
    (@alias_of $key:literal | $alias:literal) => { 1 };
}

wire_item!(
    /// One inbound bucket as sent.
    WireInbound, "Inbound", {
        /// Calls offered.
        total_calls: "TotalCalls",
        /// Calls answered by an agent.
        calls_handled: "CallsHandled",
        /// Calls that entered a queue.
        calls_queued: "CallsQueued",
        /// Abandoned in the IVR.
        calls_abandoned_in_ivr: "CallsAbandonedInIVR",
        /// Abandoned in queue.
        calls_abandoned_in_queue: "CallsAbandonedInQueue",
        /// Abandoned while ringing; older documents call it `CallsAbandonedInRinging`.
        calls_abandoned_in_ring: "CallsAbandonedInRing" | "CallsAbandonedInRinging",
    }
);

wire_item!(
    /// One outbound bucket as sent.
    WireOutbound, "Outbound", {
        /// Outbound calls placed.
        total_calls: "TotalCalls",
        /// Outbound calls connected.
        calls_answered: "CallsAnswered",
    }
);

wire_item!(
    /// One overall bucket as sent.
    WireOverall, "Overall", {
        /// Most agents logged in at once.
        max_logged_in_agents: "MaxLoggedInAgents",
    }
);

/// A count, named in its error: a known field whose type changed fails the window with
/// `Inbound.TotalCalls: expected an integer, got ...`, never writes garbage.
struct CountSeed(&'static str, &'static str);

impl<'de> de::DeserializeSeed<'de> for CountSeed {
    type Value = i64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        count(d).map_err(|e| de::Error::custom(format!("Data.{}.{}: {e}", self.0, self.1)))
    }
}

/// An integer sent as a JSON number or as a decimal string (older documents print `"0"`).
fn count<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer (a number or a decimal string)")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("expected an integer, got {v}")))
        }
        fn visit_f64<E: de::Error>(self, f: f64) -> Result<i64, E> {
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                Ok(f as i64)
            } else {
                Err(E::custom(format!("expected an integer, got {f}")))
            }
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<i64, E> {
            s.trim()
                .parse::<i64>()
                .map_err(|_| E::custom(format!("expected an integer, got {s:?}")))
        }
    }
    d.deserialize_any(V)
}

/// What a body turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `Code` is `OK` (or absent with `Data` present, as some gateways send).
    Ok(Report),
    /// An error body: `Code` other than `OK`.
    Error {
        /// Error code.
        code: String,
        /// Error message.
        message: String,
        /// RequestId, if any.
        request_id: Option<String>,
    },
}

/// Why a body could not be read, and whether the same answer would be read the same way again:
/// well-formed JSON of another shape (a field whose type changed) is permanent; a body cut short
/// or not JSON at all (a proxy's page, a reset connection) may be right the next time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct MalformedBody {
    /// What is wrong, with the body's length.
    pub detail: String,
    /// Whether the same answer would fail the same way (not worth a retry).
    pub permanent: bool,
}

/// Parses a response body. Never panics, whatever the bytes.
pub fn parse_body(bytes: &[u8]) -> Result<Body, MalformedBody> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| {
        // A body cut short is retried wherever the cut landed: inside an item, the error carries
        // the field's path and is no longer classified as an end of input, so the text itself
        // is asked whether it ends early.
        let truncated = e.is_eof()
            || serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err_and(|e| e.is_eof());
        let kind = if truncated {
            "truncated JSON body"
        } else {
            "body is not the expected JSON"
        };
        let permanent = !truncated && e.classify() == serde_json::error::Category::Data;
        MalformedBody {
            detail: format!("{kind}: {e} ({} bytes)", bytes.len()),
            permanent,
        }
    })?;
    let code = env.code.clone().unwrap_or_default();
    if !code.is_empty() && code != "OK" {
        return Ok(Body::Error {
            code,
            message: env.message.unwrap_or_default(),
            request_id: env.request_id,
        });
    }
    let Some(data) = env.data else {
        if code.is_empty() {
            return Err(MalformedBody {
                detail: "response has neither Code nor Data".to_string(),
                permanent: true,
            });
        }
        // `Code: OK` with no `Data` at all: an empty report.
        return Ok(Body::Ok(Report {
            request_id: env.request_id.unwrap_or_default(),
            ..Report::default()
        }));
    };
    let (drift, conflicting_names) = drift_of(&env.unknown, &data);
    let extra = [
        extra_of(data.inbound.iter().map(|r| (r.stats_time, &r.extra))),
        extra_of(data.outbound.iter().map(|r| (r.stats_time, &r.extra))),
        extra_of(data.overall.iter().map(|r| (r.stats_time, &r.extra))),
    ];
    Ok(Body::Ok(Report {
        request_id: env.request_id.unwrap_or_default(),
        drift,
        extra,
        conflicting_names,
        inbound: data.inbound.into_iter().map(Into::into).collect(),
        outbound: data.outbound.into_iter().map(Into::into).collect(),
        overall: data.overall.into_iter().map(Into::into).collect(),
    }))
}

/// What a body sent beyond the known fields (top-level members, members of `Data`, items'
/// fields), and the items' fields named two ways at once.
fn drift_of(
    top_level: &[String],
    data: &WireData,
) -> (Drift, std::collections::BTreeMap<String, u64>) {
    let mut drift = Drift::default();
    for name in top_level {
        *drift.unknown.entry(name.clone()).or_default() += 1;
    }
    for (name, items) in &data.unknown {
        *drift.unknown.entry(format!("Data.{name}")).or_default() += items;
    }
    let mut conflicting_names = std::collections::BTreeMap::new();
    WireInbound::drift_of(&data.inbound, &mut drift, &mut conflicting_names);
    WireOutbound::drift_of(&data.outbound, &mut drift, &mut conflicting_names);
    WireOverall::drift_of(&data.overall, &mut drift, &mut conflicting_names);
    (drift, conflicting_names)
}

impl From<WireInbound> for InboundRow {
    fn from(r: WireInbound) -> Self {
        InboundRow {
            stats_time: r.stats_time,
            total_calls: r.total_calls,
            calls_handled: r.calls_handled,
            calls_queued: r.calls_queued,
            calls_abandoned_in_ivr: r.calls_abandoned_in_ivr,
            calls_abandoned_in_queue: r.calls_abandoned_in_queue,
            calls_abandoned_in_ring: r.calls_abandoned_in_ring,
        }
    }
}

impl From<WireOutbound> for OutboundRow {
    fn from(r: WireOutbound) -> Self {
        OutboundRow {
            stats_time: r.stats_time,
            total_calls: r.total_calls,
            calls_answered: r.calls_answered,
        }
    }
}

impl From<WireOverall> for OverallRow {
    fn from(r: WireOverall) -> Self {
        OverallRow {
            stats_time: r.stats_time,
            max_logged_in_agents: r.max_logged_in_agents,
        }
    }
}

/// The unknown fields of an array's items, as compact JSON (keys sorted), by StatsTime.
fn extra_of<'a>(
    items: impl Iterator<Item = (i64, &'a serde_json::Map<String, serde_json::Value>)>,
) -> std::collections::BTreeMap<i64, String> {
    items
        .filter(|(_, e)| !e.is_empty())
        .map(|(t, e)| (t, serde_json::to_string(e).expect("a JSON map serializes")))
        .collect()
}

/// Rows of one array that carried a field under both its current and its former name with
/// different values, per `{section}.{current} / {section}.{former}`.
fn renamed_conflicts(
    out: &mut std::collections::BTreeMap<String, u64>,
    section: &str,
    fields: &[&str],
    former_name: fn(usize) -> Option<&'static str>,
    items: impl Iterator<Item = u32>,
) {
    for bits in items.filter(|b| *b != 0) {
        for (i, f) in fields.iter().enumerate() {
            if bits & (1 << i) != 0 {
                let former = former_name(i).unwrap_or("?");
                *out.entry(format!("{section}.{f} / {section}.{former}"))
                    .or_default() += 1;
            }
        }
    }
}

/// One array's unknown fields (rows carrying each) and the known fields no item carried.
fn section_drift<'a>(
    drift: &mut Drift,
    section: &str,
    fields: &[&str],
    items: impl Iterator<Item = (u32, &'a serde_json::Map<String, serde_json::Value>)>,
) {
    let (mut any, mut seen) = (false, 0u32);
    for (present, unknown) in items {
        any = true;
        seen |= present;
        for name in unknown.keys() {
            *drift
                .unknown
                .entry(format!("{section}.{name}"))
                .or_default() += 1;
        }
    }
    if any {
        for (i, f) in fields.iter().enumerate() {
            if seen & (1 << i) == 0 {
                drift.missing.insert(format!("{section}.{f}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Report {
        match parse_body(body.as_bytes()).expect("parses") {
            Body::Ok(r) => r,
            other => panic!("expected a report, got {other:?}"),
        }
    }

    #[test]
    fn a_field_sent_under_its_current_and_its_former_name_keeps_the_current_value() {
        // Either order: the current name wins; a differing value is a conflict, an equal one is
        // not.
        let r = ok(r#"{"RequestId":"r","Code":"OK","Data":{"Inbound":[
            {"StatsTime":0,"TotalCalls":9,"CallsAbandonedInRing":3,"CallsAbandonedInRinging":5},
            {"StatsTime":3600000,"TotalCalls":9,"CallsAbandonedInRinging":5,"CallsAbandonedInRing":3},
            {"StatsTime":7200000,"TotalCalls":9,"CallsAbandonedInRing":3,"CallsAbandonedInRinging":3}]}}"#);
        assert!(
            r.inbound.iter().all(|i| i.calls_abandoned_in_ring == 3),
            "{r:?}"
        );
        assert_eq!(
            r.conflicting_names,
            [(
                "Inbound.CallsAbandonedInRing / Inbound.CallsAbandonedInRinging".to_string(),
                2
            )]
            .into()
        );
        let q = crate::quality::check_on(
            &crate::quality::Grid::of(&r),
            &crate::record::WindowKey {
                instance_id: "i".into(),
                media_type: crate::record::MediaType::Audio,
                start_ms: 0,
                end_ms: 3 * 3_600_000,
            },
            &r,
            0,
        );
        assert_eq!(q.conflicting_names, 2);
        assert!(q.describe().contains("its current and its former name"));
        // The former name alone is read as before, and is no conflict.
        let r = ok(r#"{"RequestId":"r","Code":"OK","Data":{"Inbound":[
            {"StatsTime":0,"TotalCalls":9,"CallsAbandonedInRinging":5}]}}"#);
        assert_eq!(r.inbound[0].calls_abandoned_in_ring, 5);
        assert!(r.conflicting_names.is_empty());
    }

    #[test]
    fn parses_numbers_sent_as_numbers() {
        let r = ok(
            r#"{"RequestId":"r1","Code":"OK","HttpStatusCode":200,"Data":{
            "Inbound":[{"StatsTime":1604639129000,"TotalCalls":10,"CallsHandled":7,"CallsQueued":8,
              "CallsAbandonedInIVR":1,"CallsAbandonedInQueue":1,"CallsAbandonedInRing":1}],
            "Outbound":[{"StatsTime":1604639129000,"TotalCalls":5,"CallsAnswered":3}],
            "Overall":[{"StatsTime":1604639129000,"MaxLoggedInAgents":4}]}}"#,
        );
        assert_eq!(r.request_id, "r1");
        assert_eq!(
            r.inbound,
            vec![InboundRow {
                stats_time: 1604639129000,
                total_calls: 10,
                calls_handled: 7,
                calls_queued: 8,
                calls_abandoned_in_ivr: 1,
                calls_abandoned_in_queue: 1,
                calls_abandoned_in_ring: 1
            }]
        );
        assert_eq!(r.outbound[0].calls_answered, 3);
        assert_eq!(r.overall[0].max_logged_in_agents, 4);
    }

    #[test]
    fn parses_numbers_sent_as_strings_and_the_older_ring_name() {
        let r = ok(
            r#"{"RequestId":"r2","Code":"OK","HttpStatusCode":"200","Data":{
            "Inbound":[{"StatsTime":"1604639129000","TotalCalls":"12","CallsHandled":"9","CallsQueued":"10",
              "CallsAbandonedInIVR":"0","CallsAbandonedInQueue":"2","CallsAbandonedInRinging":"1"}],
            "Outbound":[{"StatsTime":"1604639129000","TotalCalls":"3","CallsAnswered":"2"}]}}"#,
        );
        assert_eq!(r.inbound[0].total_calls, 12);
        assert_eq!(r.inbound[0].calls_abandoned_in_ring, 1);
        assert_eq!(r.outbound[0].total_calls, 3);
        assert!(r.overall.is_empty(), "a missing Overall array is empty");
    }

    #[test]
    fn missing_null_and_empty_arrays_are_empty_and_unknown_members_are_named() {
        let r = ok(
            r#"{"RequestId":"r3","Code":"OK","Extra":{"x":1},"Data":{"Inbound":null,"Outbound":[],"Future":[1,2,3]}}"#,
        );
        assert_eq!(r.row_count(), 0);
        assert_eq!(
            r.drift.unknown.into_iter().collect::<Vec<_>>(),
            vec![("Data.Future".to_string(), 3), ("Extra".to_string(), 1)]
        );
        assert!(r.drift.missing.is_empty(), "no item, nothing missing");
        let r = ok(r#"{"RequestId":"r4","Code":"OK"}"#);
        assert_eq!(r.row_count(), 0);
    }

    #[test]
    fn unknown_fields_are_counted_per_row_and_known_fields_missing_everywhere_are_named() {
        let r = ok(r#"{"Code":"OK","Data":{
            "Inbound":[{"StatsTime":1,"TotalCalls":3,"CallsOverflowed":1,"CallsHandled":1,
                        "CallsAbandonedInIVR":0,"CallsAbandonedInQueue":0,"CallsAbandonedInRing":0},
                       {"StatsTime":2,"TotalCalls":4,"CallsOverflowed":{"by":"queue"},"CallsHandled":2,
                        "CallsAbandonedInIVR":0,"CallsAbandonedInQueue":0,"CallsAbandonedInRinging":0}],
            "Overall":[{"StatsTime":1,"MaxLoggedInAgents":2,"Peak":3}]}}"#);
        assert_eq!(r.inbound[1].total_calls, 4);
        assert_eq!(r.inbound[1].calls_handled, 2);
        assert_eq!(
            r.drift.unknown.into_iter().collect::<Vec<_>>(),
            vec![
                ("Inbound.CallsOverflowed".to_string(), 2),
                ("Overall.Peak".to_string(), 1)
            ]
        );
        assert_eq!(
            r.drift.missing.into_iter().collect::<Vec<_>>(),
            vec!["Inbound.CallsQueued".to_string()],
            "the older ring name counts as the ring field"
        );
    }

    #[test]
    fn a_known_field_whose_type_changed_fails_naming_the_field() {
        let e = parse_body(
            br#"{"Code":"OK","Data":{"Outbound":[{"StatsTime":1,"TotalCalls":{"n":1},"CallsAnswered":1}]}}"#,
        )
        .unwrap_err();
        assert!(e.detail.contains("Data.Outbound.TotalCalls"), "{e}");
    }

    #[test]
    fn a_code_other_than_ok_is_an_error_even_in_a_200_body() {
        let b = parse_body(br#"{"RequestId":"r5","Code":"Throttling.User","Message":"slow down"}"#)
            .unwrap();
        assert_eq!(
            b,
            Body::Error {
                code: "Throttling.User".into(),
                message: "slow down".into(),
                request_id: Some("r5".into())
            }
        );
    }

    #[test]
    fn truncated_and_non_json_bodies_are_malformed() {
        let e = parse_body(br#"{"RequestId":"r6","Code":"OK","Data":{"Inb"#).unwrap_err();
        assert!(e.detail.starts_with("truncated JSON body"), "{e}");
        let e = parse_body(b"<html>502 Bad Gateway</html>").unwrap_err();
        assert!(e.detail.starts_with("body is not the expected JSON"), "{e}");
        let e = parse_body(br#"{"Data":{"Inbound":[{"StatsTime":"soon"}]}}"#).unwrap_err();
        assert!(e.detail.contains("expected an integer"), "{e}");
        let e = parse_body(br#"{"Code":"OK","Data":{"Inbound":[{"TotalCalls":1}]}}"#).unwrap_err();
        assert!(e.detail.contains("StatsTime"), "{e}");
    }

    #[test]
    fn fractional_counts_are_rejected_but_integral_floats_accepted() {
        let r =
            ok(r#"{"Code":"OK","Data":{"Overall":[{"StatsTime":1.0e3,"MaxLoggedInAgents":2.0}]}}"#);
        assert_eq!(r.overall[0].stats_time, 1000);
        assert!(
            parse_body(
                br#"{"Code":"OK","Data":{"Overall":[{"StatsTime":1,"MaxLoggedInAgents":2.5}]}}"#
            )
            .is_err()
        );
    }

    mod no_input_panics {
        use super::super::parse_body;
        use proptest::prelude::*;

        /// JSON-ish text built from the pieces a real body has, in any order and nesting.
        fn jsonish() -> impl Strategy<Value = String> {
            let atom = prop_oneof![
                Just("\"Code\"".to_string()),
                Just("\"OK\"".to_string()),
                Just("\"Data\"".to_string()),
                Just("\"Inbound\"".to_string()),
                Just("\"StatsTime\"".to_string()),
                Just("\"TotalCalls\"".to_string()),
                Just("\"CallsAbandonedInRinging\"".to_string()),
                Just("null".to_string()),
                Just("1e308".to_string()),
                Just("-9223372036854775809".to_string()),
                Just("\"12\"".to_string()),
                Just("1.5".to_string()),
                "[{}\\[\\]:,\"a-z0-9 ]{0,8}",
            ];
            proptest::collection::vec(atom, 0..40).prop_map(|v| v.join(""))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_body(&bytes);
            }

            #[test]
            fn jsonish_text_never_panics(text in jsonish()) {
                let _ = parse_body(text.as_bytes());
            }

            #[test]
            fn any_truncation_of_a_valid_body_is_an_error_not_a_panic(cut in 0usize..400) {
                let body = br#"{"RequestId":"r","Code":"OK","Data":{"Inbound":[{"StatsTime":1,"TotalCalls":"2","CallsHandled":1,"CallsQueued":1,"CallsAbandonedInIVR":0,"CallsAbandonedInQueue":0,"CallsAbandonedInRing":0}],"Outbound":[{"StatsTime":1,"TotalCalls":1,"CallsAnswered":1}],"Overall":[{"StatsTime":1,"MaxLoggedInAgents":3}]}}"#;
                let cut = cut.min(body.len());
                let r = parse_body(&body[..cut]);
                if cut < body.len() {
                    // Cut anywhere, a body is retried (it is not the API's answer).
                    let e = r.unwrap_err();
                    prop_assert!(!e.permanent && e.detail.starts_with("truncated JSON body"), "{}", e);
                } else {
                    prop_assert!(r.is_ok());
                }
            }
        }
    }
}
