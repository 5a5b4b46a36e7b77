//! `ccc-etl check`: what a first run needs, verified without writing anything: the credentials
//! (one API call), PostgreSQL (reachable, privileges), the Parquet root (writable). One line per
//! check; exit 1 when any fails.

use std::sync::Arc;

use super::job::preflight_endpoint;
use crate::ccc::client::{CccClient, TrendingRequest};
use crate::ccc::ratelimit::AdaptivePacer;
use crate::config::{Config, Credentials};
use crate::error::{EXIT_FATAL, EXIT_OK};

/// One check's outcome.
struct Outcome {
    what: &'static str,
    result: Result<String, String>,
}

/// `ccc-etl check`.
pub(crate) async fn run_check(config: &Config) -> anyhow::Result<u8> {
    let outcomes = vec![
        Outcome {
            what: "credentials",
            result: check_api(config).await,
        },
        Outcome {
            what: "postgres",
            result: check_postgres(config).await,
        },
        Outcome {
            what: "parquet",
            result: check_parquet(config).await,
        },
    ];
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

/// One request for the first instance's last hour.
async fn check_api(config: &Config) -> Result<String, String> {
    let credentials = Credentials::from_env().map_err(|e| e.to_string())?;
    preflight_endpoint(&config.source.endpoint)
        .await
        .map_err(|e| e.to_string())?;
    let instance = config
        .pipeline
        .instances
        .first()
        .ok_or("no instance is configured")?;
    let client = CccClient::new(
        &config.source,
        credentials,
        Arc::new(AdaptivePacer::new(config.source.max_qps)),
    )
    .map_err(|e| e.to_string())?;
    let now = chrono::Utc::now().timestamp_millis();
    let req = TrendingRequest {
        instance_id: instance.clone(),
        media_type: config.pipeline.media_types[0],
        start_ms: now - 3_600_000,
        end_ms: now,
    };
    match client.get_trending_report(&req).await {
        Ok(_) => Ok(format!(
            "GetInstanceTrendingReport for {instance} at {} answered",
            config.source.endpoint
        )),
        Err(failed) => {
            let hint = failed
                .error
                .hint()
                .map(|h| format!(": {h}"))
                .unwrap_or_default();
            Err(format!("{}{hint}", failed.error))
        }
    }
}

async fn check_postgres(config: &Config) -> Result<String, String> {
    let Some(pg) = &config.postgres else {
        return Ok("not configured".into());
    };
    let url = pg.resolve_url().map_err(|e| e.to_string())?;
    crate::sink::postgres::check_privileges(&url, &pg.schema)
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
            let root = crate::sink::parquet::ObjectRoot::open(pq, url)?;
            root.probe_write().await?;
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
