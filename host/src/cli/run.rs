//! `marvin-manager run`: one request, no queue.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::message::{DEFAULT_TIMEOUT_SECS, ManagerRequest};

use super::{GlobalArgs, new_correlation_id};

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
    /// Writes the host calls, request and response to DIR/<correlation id>.json, a trace
    /// `plugin test --replay` runs again.
    #[arg(long, value_name = "DIR")]
    record: Option<std::path::PathBuf>,
}

pub(super) async fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let manager = settings.manager().await?;
    manager.runtime().set_record_dir(args.record.clone());
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
