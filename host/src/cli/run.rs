//! `marvin-manager run`: one request, no queue.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::message::{DEFAULT_TIMEOUT_SECS, ManagerRequest};

use super::GlobalArgs;

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// The entity id (as Core's `containerId`), or `all` / `supervisor`.
    #[arg(long)]
    entity: String,
    /// The action, e.g. start.
    #[arg(long)]
    action: String,
    /// The command of exec_cmd.
    #[arg(long)]
    command: Option<String>,
    /// The timeout in seconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout: i64,
    /// Core's `args`, as a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
    /// The correlation id [default: a new UUID].
    #[arg(long)]
    correlation_id: Option<String>,
}

pub(super) async fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let manager = settings.manager().await?;
    let request = ManagerRequest {
        container_id: args.entity,
        correlation_id: args.correlation_id.unwrap_or_else(new_correlation_id),
        action: args.action,
        command: args.command,
        args: serde_json::from_str(&args.args).context("--args is not valid JSON")?,
        timeout: args.timeout,
    };
    let response = manager.execute(&request).await;
    println!("{}", serde_json::to_string_pretty(&response)?);
    Ok(if response.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A random (version 4) UUID.
fn new_correlation_id() -> String {
    let mut b: [u8; 16] = rand_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn rand_bytes() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    // Two independently seeded SipHash states: unpredictable enough for an id, no extra crate.
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}
