//! `ccc-etl check`: what a first run needs, verified without writing anything: the credentials
//! (one API call), PostgreSQL (reachable, privileges), the Parquet root (writable). One line per
//! check; exit 1 when any fails.

use crate::ccc::client::TrendingRequest;
use crate::config::Config;
use crate::error::{EXIT_FATAL, EXIT_OK};
use crate::pipeline::NowFn;

/// One check's outcome.
struct Outcome {
    what: String,
    result: Result<String, String>,
}

/// `ccc-etl check`.
pub(crate) async fn run_check(
    config: &Config,
    send_test_alert: bool,
    now: NowFn,
) -> anyhow::Result<u8> {
    let mut outcomes = check_api(config, now()).await;
    outcomes.extend([
        Outcome {
            what: "postgres".into(),
            result: check_postgres(config).await,
        },
        Outcome {
            what: "parquet".into(),
            result: check_parquet(config).await,
        },
    ]);
    if send_test_alert {
        outcomes.extend(test_alerts(config).await);
    }
    let mut failed = false;
    for o in outcomes {
        match o.result {
            Ok(detail) => crate::outln!("ok    {:<12} {detail}", o.what)?,
            Err(detail) => {
                failed = true;
                crate::outln!("FAIL  {:<12} {detail}", o.what)?;
            }
        }
    }
    Ok(if failed { EXIT_FATAL } else { EXIT_OK })
}

/// A test message to every `[alerts]` target (none configured is a failure: it was asked for).
async fn test_alerts(config: &Config) -> Vec<Outcome> {
    if config.alerts.targets.is_empty() {
        return vec![Outcome {
            what: "alerts".into(),
            result: Err("no [[alerts.targets]] in the configuration".into()),
        }];
    }
    let alert = crate::alerts::Alert {
        event: crate::config::AlertEvent::Test,
        title: "ccc-etl: a test message".into(),
        text: "Sent by `ccc-etl check --send-test-alert`: alerts reach this chat.".into(),
    };
    let now = chrono::Utc::now().timestamp_millis();
    crate::alerts::send(&config.alerts, &[alert], &crate::config::process_env, now)
        .await
        .into_iter()
        .map(|(target, _, result)| Outcome {
            what: format!("alert {target}"),
            result: result.map(|()| "test message sent".into()),
        })
        .collect()
}

/// Credentials from the chain, then one request for every configured instance's last hour:
/// a line for the credentials, and one per instance (an id the service does not know is that
/// instance's failure, with the hint `backfill` gives, not the credentials').
async fn check_api(config: &Config, now: i64) -> Vec<Outcome> {
    let failed = |detail: String| {
        vec![Outcome {
            what: "credentials".into(),
            result: Err(detail),
        }]
    };
    let credentials = match crate::credentials::process_source(config.source.credentials).await {
        Ok(c) => c,
        Err(e) => return failed(format!("{e:#}")),
    };
    if let Err(e) = super::job::preflight_regions(config).await {
        return failed(e.to_string());
    }
    let client = match super::job::build_client(config, credentials.clone()) {
        Ok((client, _)) => client,
        Err(e) => return failed(e.to_string()),
    };
    let mut instances = vec![];
    for instance in &config.pipeline.instances {
        let req = TrendingRequest {
            instance_id: instance.id().to_string(),
            media_type: config.pipeline.media_types[0],
            start_ms: now - 3_600_000,
            end_ms: now,
        };
        let result = match client.get_trending_report(&req).await {
            Ok(_) => Ok(format!(
                "{} answered at {}",
                instance.id(),
                config.source.endpoint_for(config.region_of(instance.id()))
            )),
            Err(f) if f.error.is_unknown_instance() => Err(format!(
                "{}: the service has no CCC instance {}: fix its id in [pipeline] instances, or \
                 point [source] endpoint at its region",
                instance.id(),
                instance.id()
            )),
            // Signing, the key, the endpoint: the same for every instance.
            Err(f) => {
                let hint = f.error.hint().map(|h| format!(": {h}")).unwrap_or_default();
                return failed(format!("{}{hint}", f.error));
            }
        };
        instances.push(Outcome {
            what: "instance".into(),
            result,
        });
    }
    let mut out = vec![Outcome {
        what: "credentials".into(),
        result: Ok(format!(
            "{}, AccessKeyId {}",
            credentials.label(),
            credentials.masked_key_id()
        )),
    }];
    out.extend(instances);
    out
}

async fn check_postgres(config: &Config) -> Result<String, String> {
    let Some(pg) = &config.postgres else {
        return Ok("not configured".into());
    };
    let url = pg.resolve_url().map_err(|e| e.to_string())?;
    crate::db::check_privileges(&url, &pg.schema)
        .await
        .map_err(|e| e.to_string())
}

/// The root, or the nearest existing directory above it, takes a new file.
async fn check_parquet(config: &Config) -> Result<String, String> {
    let Some(pq) = &config.parquet else {
        return Ok("not configured".into());
    };
    let root = match &pq.root {
        crate::config::RootUrl::Local(root) => root,
        crate::config::RootUrl::Object(url) => {
            let root = crate::sink::parquet::ObjectRoot::open(pq, url, config.source.credentials)
                .map_err(|e| e.to_string())?;
            root.probe().await.map_err(|e| e.to_string())?;
            return Ok(format!("{url} is writable"));
        }
    };
    let mut dir = root.as_path();
    while !dir.exists() {
        dir = dir.parent().ok_or("no existing directory above the root")?;
    }
    super::may_create_in(dir).map_err(|e| {
        format!(
            "{} is not writable (the root {} is created there): {e}",
            dir.display(),
            root.display()
        )
    })?;
    Ok(format!("{} is writable", root.display()))
}
