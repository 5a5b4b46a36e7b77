//! The JSON the API sends, as sent: numbers as numbers or strings, either ring-abandon name,
//! any array missing. `parse_body` turns it into a typed [`Report`] or says what is wrong.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::record::{InboundRow, OutboundRow, OverallRow, Report};

/// Error and success bodies share these fields.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Envelope {
    /// Present on every response Alibaba Cloud sends.
    pub request_id: Option<String>,
    /// `OK` on success; the error code otherwise.
    pub code: Option<String>,
    /// Human-readable text.
    pub message: Option<String>,
    /// The report itself on success.
    pub data: Option<WireData>,
}

/// `Data` of a success body.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireData {
    /// Inbound buckets; missing or null means none.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub inbound: Vec<WireInbound>,
    /// Outbound buckets.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub outbound: Vec<WireOutbound>,
    /// Overall buckets (current API only).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub overall: Vec<WireOverall>,
}

/// One inbound bucket as sent.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireInbound {
    /// Bucket start, epoch ms.
    #[serde(deserialize_with = "count")]
    pub stats_time: i64,
    /// Calls offered.
    #[serde(default, deserialize_with = "count")]
    pub total_calls: i64,
    /// Calls answered by an agent.
    #[serde(default, deserialize_with = "count")]
    pub calls_handled: i64,
    /// Calls that entered a queue.
    #[serde(default, deserialize_with = "count")]
    pub calls_queued: i64,
    /// Abandoned in the IVR.
    #[serde(default, rename = "CallsAbandonedInIVR", deserialize_with = "count")]
    pub calls_abandoned_in_ivr: i64,
    /// Abandoned in queue.
    #[serde(default, deserialize_with = "count")]
    pub calls_abandoned_in_queue: i64,
    /// Abandoned while ringing; older documents call it `CallsAbandonedInRinging`.
    #[serde(default, alias = "CallsAbandonedInRinging", deserialize_with = "count")]
    pub calls_abandoned_in_ring: i64,
}

/// One outbound bucket as sent.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireOutbound {
    /// Bucket start, epoch ms.
    #[serde(deserialize_with = "count")]
    pub stats_time: i64,
    /// Outbound calls placed.
    #[serde(default, deserialize_with = "count")]
    pub total_calls: i64,
    /// Outbound calls connected.
    #[serde(default, deserialize_with = "count")]
    pub calls_answered: i64,
}

/// One overall bucket as sent.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WireOverall {
    /// Bucket start, epoch ms.
    #[serde(deserialize_with = "count")]
    pub stats_time: i64,
    /// Most agents logged in at once.
    #[serde(default, deserialize_with = "count")]
    pub max_logged_in_agents: i64,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// An integer sent as a JSON number or as a decimal string (older documents print `"0"`).
fn count<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        Int(i64),
        Float(f64),
        Str(String),
    }
    match Num::deserialize(d)? {
        Num::Int(n) => Ok(n),
        Num::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        Num::Float(f) => Err(de::Error::custom(format!("expected an integer, got {f}"))),
        Num::Str(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| de::Error::custom(format!("expected an integer, got {s:?}"))),
    }
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

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedBody(pub String);

/// Parses a response body. Never panics, whatever the bytes.
pub fn parse_body(bytes: &[u8]) -> Result<Body, MalformedBody> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| {
        let kind = if e.is_eof() {
            "truncated JSON body"
        } else {
            "body is not the expected JSON"
        };
        MalformedBody(format!("{kind}: {e} ({} bytes)", bytes.len()))
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
            return Err(MalformedBody(
                "response has neither Code nor Data".to_string(),
            ));
        }
        // `Code: OK` with no `Data` at all: an empty report.
        return Ok(Body::Ok(Report {
            request_id: env.request_id.unwrap_or_default(),
            ..Report::default()
        }));
    };
    Ok(Body::Ok(Report {
        request_id: env.request_id.unwrap_or_default(),
        inbound: data
            .inbound
            .into_iter()
            .map(|r| InboundRow {
                stats_time: r.stats_time,
                total_calls: r.total_calls,
                calls_handled: r.calls_handled,
                calls_queued: r.calls_queued,
                calls_abandoned_in_ivr: r.calls_abandoned_in_ivr,
                calls_abandoned_in_queue: r.calls_abandoned_in_queue,
                calls_abandoned_in_ring: r.calls_abandoned_in_ring,
            })
            .collect(),
        outbound: data
            .outbound
            .into_iter()
            .map(|r| OutboundRow {
                stats_time: r.stats_time,
                total_calls: r.total_calls,
                calls_answered: r.calls_answered,
            })
            .collect(),
        overall: data
            .overall
            .into_iter()
            .map(|r| OverallRow {
                stats_time: r.stats_time,
                max_logged_in_agents: r.max_logged_in_agents,
            })
            .collect(),
    }))
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
    fn missing_null_and_empty_arrays_are_empty_and_unknown_fields_ignored() {
        let r = ok(
            r#"{"RequestId":"r3","Code":"OK","Extra":{"x":1},"Data":{"Inbound":null,"Outbound":[],"Future":[1]}}"#,
        );
        assert_eq!(r.row_count(), 0);
        let r = ok(r#"{"RequestId":"r4","Code":"OK"}"#);
        assert_eq!(r.row_count(), 0);
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
        assert!(e.0.starts_with("truncated JSON body"), "{e}");
        let e = parse_body(b"<html>502 Bad Gateway</html>").unwrap_err();
        assert!(e.0.starts_with("body is not the expected JSON"), "{e}");
        let e = parse_body(br#"{"Data":{"Inbound":[{"StatsTime":"soon"}]}}"#).unwrap_err();
        assert!(e.0.contains("expected an integer"), "{e}");
        let e = parse_body(br#"{"Code":"OK","Data":{"Inbound":[{"TotalCalls":1}]}}"#).unwrap_err();
        assert!(e.0.contains("StatsTime"), "{e}");
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
                    prop_assert!(r.is_err());
                } else {
                    prop_assert!(r.is_ok());
                }
            }
        }
    }
}
