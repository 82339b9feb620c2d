//! `marvin-manager run`: one request, no queue.

use std::process::ExitCode;

use clap::Args;

use super::{GlobalArgs, RequestArgs};

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    #[command(flatten)]
    request: RequestArgs,
    /// Writes the host calls, request and response to DIR/<correlation id>.json, a trace
    /// `plugin test --replay` runs again.
    #[arg(long, value_name = "DIR")]
    record: Option<std::path::PathBuf>,
}

pub(super) async fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let manager = settings.manager(args.record).await?;
    let request = args.request.into_request()?;
    let response = manager.execute(&request).await;
    outln!("{}", serde_json::to_string_pretty(&response)?)?;
    Ok(if response.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
