//! `[pipeline]`: which instances and media, the calendar, the leases of several workers.

use chrono_tz::Tz;
use serde::{Deserialize, Deserializer};

use super::{HORIZON_DAYS, validate_region};
use crate::record::MediaType;

/// `[pipeline]`: instances, media, calendar.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Call-center instances: ids, or `{ id = "...", region = "..." }`.
    #[serde(deserialize_with = "instance_list")]
    pub instances: Vec<InstanceSpec>,
    /// Media types to fetch for every instance.
    #[serde(default = "default_media", deserialize_with = "media_list")]
    pub media_types: Vec<MediaType>,
    /// IANA zone for calendar dates and day partitions.
    #[serde(default = "default_tz", deserialize_with = "timezone")]
    pub timezone: Tz,
    /// Days of recent history a nightly run fetches again.
    #[serde(default = "default_lookback", deserialize_with = "lookback")]
    pub lookback_days: u32,
    /// Minutes added to the 180-day horizon when planning, because time passes before sending.
    #[serde(default = "default_margin", deserialize_with = "margin")]
    pub horizon_margin_minutes: u32,
    /// `status` raises the aging-out alert for uncovered time that leaves the horizon within
    /// this many days.
    #[serde(default = "default_alert_days", deserialize_with = "alert_days")]
    pub aging_alert_days: u32,
    /// Several workers: how long a claimed window stays a worker's without a heartbeat (a dead
    /// worker's windows are taken over after this).
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Several workers: how often a worker extends its leases and re-reads the shared rate.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
}

pub(super) fn default_lease() -> u64 {
    60
}

pub(super) fn default_heartbeat() -> u64 {
    10
}

/// One configured instance and, if not `[source] region`, its region.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum InstanceSpec {
    /// Just the id.
    Id(String),
    /// The id and its region.
    WithRegion {
        /// Instance id.
        id: String,
        /// Region id.
        region: String,
    },
}

impl InstanceSpec {
    /// The instance id.
    pub fn id(&self) -> &str {
        match self {
            InstanceSpec::Id(id) | InstanceSpec::WithRegion { id, .. } => id,
        }
    }

    /// Its region, if it names one.
    pub fn region(&self) -> Option<&str> {
        match self {
            InstanceSpec::Id(_) => None,
            InstanceSpec::WithRegion { region, .. } => Some(region),
        }
    }
}

impl From<String> for InstanceSpec {
    fn from(id: String) -> Self {
        InstanceSpec::Id(id)
    }
}

impl PipelineConfig {
    /// The instance ids, in the configured order.
    pub fn instance_ids(&self) -> Vec<String> {
        self.instances.iter().map(|i| i.id().to_string()).collect()
    }

    /// `horizon_margin_minutes` in milliseconds.
    pub fn horizon_margin_ms(&self) -> i64 {
        self.horizon_margin_minutes as i64 * 60_000
    }
}

pub(super) fn default_alert_days() -> u32 {
    7
}

fn alert_days<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    if (1..HORIZON_DAYS).contains(&v) {
        Ok(v as u32)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be between 1 and {}, got {v}",
            HORIZON_DAYS - 1
        )))
    }
}

pub(super) fn default_media() -> Vec<MediaType> {
    vec![MediaType::Audio]
}
pub(super) fn default_tz() -> Tz {
    chrono_tz::Asia::Shanghai
}
pub(super) fn default_lookback() -> u32 {
    2
}
pub(super) fn default_margin() -> u32 {
    60
}

fn lookback<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    if (0..HORIZON_DAYS).contains(&v) {
        Ok(v as u32)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be between 0 and {}, got {v}",
            HORIZON_DAYS - 1
        )))
    }
}

fn margin<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    if (0..=24 * 60).contains(&v) {
        Ok(v as u32)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be between 0 and 1440 minutes, got {v}"
        )))
    }
}

fn timezone<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<Tz>().map_err(|_| {
        serde::de::Error::custom(format!(
            "unknown time zone {s:?}: use an IANA name such as \"Asia/Shanghai\" or \"UTC\""
        ))
    })
}

/// Instances: non-empty list, no duplicates, each id a plain token, each region valid.
fn instance_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<InstanceSpec>, D::Error> {
    let v = Vec::<InstanceSpec>::deserialize(d).map_err(|e| {
        serde::de::Error::custom(format!(
            "{e}: list instance ids, or tables such as {{ id = \"ccc-sg\", region = \"ap-southeast-1\" }}"
        ))
    })?;
    let ids: Vec<String> = v.iter().map(|i| i.id().to_string()).collect();
    validate_instances(&ids).map_err(serde::de::Error::custom)?;
    for r in v.iter().filter_map(InstanceSpec::region) {
        validate_region(r).map_err(serde::de::Error::custom)?;
    }
    Ok(v)
}

/// Checks a list of instance ids; also used for `--instance`.
pub fn validate_instances(v: &[String]) -> Result<(), String> {
    if v.is_empty() {
        return Err("the instance list is empty: name at least one instance".into());
    }
    for (i, id) in v.iter().enumerate() {
        if id.is_empty()
            || id.len() > 128
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(format!(
                "invalid instance id {id:?}: use letters, digits, '-', '_' or '.'"
            ));
        }
        if v[..i].contains(id) {
            return Err(format!("instance {id:?} is listed twice"));
        }
    }
    Ok(())
}

fn media_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<MediaType>, D::Error> {
    let v = Vec::<MediaType>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom(
            "the media type list is empty: use e.g. [\"Audio\"]",
        ));
    }
    let mut seen = Vec::new();
    for m in v {
        if seen.contains(&m) {
            return Err(serde::de::Error::custom(format!(
                "media type {m} is listed twice"
            )));
        }
        seen.push(m);
    }
    Ok(seen)
}
