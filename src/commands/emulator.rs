//! `ccc-etl emulator`: the built-in CCC emulator as a server.

use super::shutdown_signal;
use crate::ccc::emulator::{self, EmulatorOptions, Faults, KeyPair};
use crate::cli::EmulatorArgs;
use crate::config::validate_instances;
use crate::credentials::Credentials;
use crate::error::{EXIT_OK, InputError};

pub(crate) fn emulator_options(
    args: &EmulatorArgs,
    credentials: &Credentials,
) -> Result<EmulatorOptions, InputError> {
    validate_instances(&args.instances)
        .map_err(|e| InputError::new(format!("--instances: {e}")))?;
    for (name, p) in [
        ("--throttle-fraction", args.throttle_fraction),
        ("--fail-503", args.fail_503),
        ("--fail-500", args.fail_500),
        ("--slow", args.slow),
        ("--truncated", args.truncated),
        ("--non-json", args.non_json),
    ] {
        if !(0.0..=1.0).contains(&p) {
            return Err(InputError::new(format!(
                "{name} must be a fraction between 0 and 1, got {p}"
            )));
        }
    }
    let total = args.throttle_fraction
        + args.fail_503
        + args.fail_500
        + args.slow
        + args.truncated
        + args.non_json;
    if total > 1.0 {
        return Err(InputError::new(format!(
            "the fault fractions add up to {total}, more than 1"
        )));
    }
    if args
        .throttle_qps
        .is_some_and(|q| !(q > 0.0 && q.is_finite()))
    {
        return Err(InputError::new("--throttle-qps must be > 0"));
    }
    let mut opts = EmulatorOptions::new(
        args.instances.clone(),
        &credentials.access_key_id,
        credentials.secret(),
    );
    opts.keys.insert(
        credentials.access_key_id.clone(),
        KeyPair {
            secret: credentials.secret().to_string(),
            security_token: credentials.token().map(str::to_string),
            expires: None,
        },
    );
    opts.sts.lifetime = std::time::Duration::from_secs(args.sts_lifetime_secs);
    opts.drift = crate::ccc::emulator::DriftOptions {
        add_fields: args.add_field.clone(),
        add_arrays: args.add_array.clone(),
        drop_fields: args.drop_field.clone(),
        retype_fields: args.retype_field.clone(),
        value_offset: 0,
    };
    opts.bucket_ms = args.bucket_minutes as i64 * 60_000;
    opts.seed = args.seed;
    opts.revise_ms = args.revise_hours as i64 * 3_600_000;
    opts.numbers_as_strings = args.numbers_as_strings;
    opts.legacy_ring_name = args.legacy_ring_name;
    opts.floor_start = !args.no_floor_start;
    opts.faults = Faults {
        qps_limit: args.throttle_qps,
        throttled: args.throttle_fraction,
        unavailable: args.fail_503,
        internal_error: args.fail_500,
        slow: args.slow,
        slow_ms: args.slow_ms,
        truncated: args.truncated,
        non_json: args.non_json,
        seed: args.fault_seed,
        failing_instances: vec![],
        retry_after_ms: None,
    };
    Ok(opts)
}

pub(crate) async fn run_emulator(args: &EmulatorArgs) -> anyhow::Result<u8> {
    let credentials = emulator_key_pair()?;
    let opts = emulator_options(args, &credentials)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| InputError::new(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener.local_addr()?;
    // Handle SIGTERM from the moment the address is announced.
    let shutdown = shutdown_signal();
    crate::outln!("listening on http://{addr}")?;
    use std::io::Write as _;
    std::io::stdout().flush()?;
    tracing::info!(instances = ?args.instances, "emulator serving");
    emulator::serve(listener, opts, shutdown).await?;
    Ok(EXIT_OK)
}

/// The key pair the emulator accepts: `ALIBABA_CLOUD_ACCESS_KEY_ID`/`SECRET` (a fixed pair, as
/// a client configured from the environment signs with).
fn emulator_key_pair() -> Result<Credentials, InputError> {
    let env = |k: &str| std::env::var(k).ok();
    let found = crate::credentials::resolve(crate::config::Choice::Env, &env)?;
    match found.into_iter().next().map(|f| f.provider) {
        Some(crate::credentials::Provider::Static(c)) => Ok(c),
        _ => Err(InputError::new(
            "the emulator needs ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET: \
             the key pair it accepts",
        )),
    }
}
