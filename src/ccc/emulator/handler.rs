//! The emulator's request handler, by concern: read the request, admit it (signature, nonce,
//! action, version), apply the rate limit and the drawn fault, then answer. Every answer that is
//! not a report goes through one place ([`Shared::answer`]) that counts, logs and words it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::json;

use super::auth::{IncomingRequest, Verified, verify};
use super::{MAX_CALL_LOG, Rejection, ServedCall, Shared, report};
use crate::ccc::client::{ACTION, API_VERSION};

/// A request as received: parameters from the query and a form body, and lower-cased headers.
struct Received {
    method: Method,
    query: Vec<(String, String)>,
    form: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Bytes,
    request_id: String,
    received_ms: i64,
}

impl Received {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .chain(self.form.iter())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The call as the stats log records it.
    fn call(&self, code: &str) -> ServedCall {
        let ms = |name: &str| self.param(name).and_then(|s| s.parse().ok()).unwrap_or(-1);
        ServedCall {
            instance_id: self.param("InstanceId").unwrap_or_default().to_string(),
            media_type: self.param("MediaType").unwrap_or("Audio").to_string(),
            start_ms: ms("StartTime"),
            end_ms: ms("EndTime"),
            code: code.to_string(),
            received_ms: self.received_ms,
        }
    }
}

/// Decodes `application/x-www-form-urlencoded` pairs (query strings too: `+` is a space).
fn decode_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

fn receive(method: Method, query: Option<String>, headers: HeaderMap, body: Bytes) -> Received {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    Received {
        method,
        query: decode_pairs(query.as_deref().unwrap_or("").as_bytes()),
        form: if is_form { decode_pairs(&body) } else { vec![] },
        headers: headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().ok()?.to_string(),
                ))
            })
            .collect(),
        body,
        request_id: uuid::Uuid::new_v4().to_string().to_uppercase(),
        received_ms: crate::clock::now_ms(),
    }
}

/// An error body as Alibaba Cloud words it.
pub(super) fn error_response(status: u16, code: &str, message: &str, request_id: &str) -> Response {
    let body = json!({
        "RequestId": request_id,
        "HostId": "ccc.cn-shanghai.aliyuncs.com",
        "Code": code,
        "Message": message,
        "Recommend": format!("https://api.aliyun.com/troubleshoot?q={code}&product=CCC"),
    });
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn json_body(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body,
    )
        .into_response()
}

/// What one draw of the fault generator decided for a request.
#[derive(Debug, Default)]
struct Fault {
    refuse: Option<Rejection>,
    slow: bool,
    truncated: bool,
    non_json: bool,
}

impl Shared {
    /// Counts an answer by action and code and logs the call (when it names a window).
    fn note(&self, action: &str, code: &str, call: Option<ServedCall>) {
        self.count(action, code);
        if let Some(c) = call {
            let mut s = self.stats.lock().expect("stats lock");
            if s.calls.len() >= MAX_CALL_LOG {
                s.calls.remove(0);
            }
            s.calls.push(c);
        }
    }

    /// The one way a request is refused: counted, logged, worded.
    fn answer(&self, action: &str, req: &Received, r: Rejection, logged: bool) -> Response {
        self.note(action, r.code, logged.then(|| req.call(r.code)));
        error_response(r.status, r.code, &r.message, &req.request_id)
    }

    /// Signature, nonce, action and version, as the gateway checks them.
    fn admit(&self, req: &Received) -> Result<Verified, (String, Rejection)> {
        let auth_now = (self.opts.auth_clock)();
        let incoming = IncomingRequest {
            method: req.method.as_str(),
            query: &req.query,
            form: &req.form,
            headers: &req.headers,
            body: &req.body,
        };
        let verified = verify(&incoming, &|id| self.key(id), auth_now).map_err(|r| {
            let action = req.param("Action").or(req.header("x-acs-action"));
            (action.unwrap_or("").to_string(), r)
        })?;
        let action = verified.action.clone();
        let refuse = |r: Rejection| Err((action.clone(), r));
        if !self.fresh_nonce(&verified.nonce, auth_now) {
            return refuse(Rejection::new(
                400,
                "SignatureNonceUsed",
                "Specified signature nonce was used already.",
            ));
        }
        if action == "AssumeRole" && verified.api_version == super::sts::STS_VERSION {
            return Ok(verified);
        }
        if action != ACTION {
            return refuse(Rejection::new(
                404,
                "InvalidAction.NotFound",
                format!(
                    "Specified api is not found, please check your url and method. Action: {action}"
                ),
            ));
        }
        if verified.api_version != API_VERSION {
            return refuse(Rejection::new(
                400,
                "InvalidVersion",
                format!(
                    "Specified parameter Version is not valid: {}",
                    verified.api_version
                ),
            ));
        }
        Ok(verified)
    }

    /// One draw per request decides its fault, so the sequence replays from the seed.
    fn draw_fault(&self, instance: Option<&str>) -> Fault {
        let draw: f64 = self.rng.lock().expect("rng lock").random();
        let f = &self.opts.faults;
        let mut edge = 0.0;
        let mut hit = |p: f64| {
            let h = draw >= edge && draw < edge + p;
            edge += p;
            h
        };
        let failing = instance.is_some_and(|i| f.failing_instances.iter().any(|x| x == i));
        let refuse = if hit(f.throttled) {
            Some(throttled())
        } else if hit(f.unavailable) {
            Some(Rejection::new(
                503,
                "ServiceUnavailable",
                "The request has failed due to a temporary failure of the server.",
            ))
        } else if hit(f.internal_error) | failing {
            Some(Rejection::new(
                500,
                "InternalError",
                "The request processing has failed due to some unknown error.",
            ))
        } else {
            None
        };
        Fault {
            refuse,
            slow: hit(f.slow),
            truncated: hit(f.truncated),
            non_json: hit(f.non_json),
        }
    }
}

fn throttled() -> Rejection {
    Rejection::new(
        400,
        "Throttling.User",
        "Request was denied due to user flow control.",
    )
}

/// Handles one API request.
pub(super) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.stats.lock().expect("stats lock").requests += 1;
    let req = receive(method, query, headers, body);
    let param = |name: &str| req.param(name).map(str::to_string);
    if req.param("Action") == Some("AssumeRoleWithOIDC") {
        return super::sts::assume_role_with_oidc(&shared, &param, &req.request_id);
    }
    let action = match shared.admit(&req) {
        Ok(v) => v.action,
        Err((action, r)) => return shared.answer(&action, &req, r, false),
    };
    if action == "AssumeRole" {
        return super::sts::assume_role(&shared, &param, &req.request_id);
    }
    if shared.over_limit() {
        let mut resp = shared.answer(&action, &req, throttled(), true);
        if let Some(ms) = shared.opts.faults.retry_after_ms {
            resp.headers_mut().insert("x-acs-retry-after", ms.into());
        }
        return resp;
    }
    let fault = shared.draw_fault(req.param("InstanceId"));
    if let Some(r) = fault.refuse {
        return shared.answer(&action, &req, r, true);
    }
    if fault.slow {
        tokio::time::sleep(Duration::from_millis(shared.opts.faults.slow_ms)).await;
    }
    let now = (shared.opts.clock)();
    let body = match report(&shared.opts, &param, now, &req.request_id) {
        Ok((body, rows)) => {
            shared.stats.lock().expect("stats lock").rows_served += rows;
            body
        }
        Err(r) => return shared.answer(&action, &req, r, true),
    };
    if fault.non_json {
        shared.note(&action, "NonJsonBody", Some(req.call("NonJsonBody")));
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        )
            .into_response();
    }
    if fault.truncated {
        shared.note(&action, "TruncatedBody", Some(req.call("TruncatedBody")));
        let cut = body.len() / 2;
        return json_body(body[..cut].to_string());
    }
    shared.note(&action, "OK", Some(req.call("OK")));
    json_body(body)
}
