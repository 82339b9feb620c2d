//! `marvin-manager managers`: the managers sharing the queue — live, dead, stopped — with
//! the entities each serves and the requests each holds.

use std::process::ExitCode;

use clap::Args;

use crate::transport::{ManagerInfo, ManagerState, Records};

use super::GlobalArgs;
use super::queue::open;

#[derive(Debug, Args)]
pub(super) struct ManagersArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The managers registered on the queue of `global`'s settings.
pub(super) async fn list(global: &GlobalArgs) -> anyhow::Result<Vec<ManagerInfo>> {
    let settings = global.settings()?;
    let opened = open(&settings.dsn, 2, &settings.config.manager).await?;
    Ok(with_transport!(opened, t => t.managers().await?))
}

/// How long ago, for people: `42 s`, `3 min`, `5 h`.
fn ago(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

pub(super) async fn run(global: &GlobalArgs, args: ManagersArgs) -> anyhow::Result<ExitCode> {
    let managers = list(global).await?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "managers": managers }))?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if managers.is_empty() {
        outln!("no manager has registered on this queue")?;
        return Ok(ExitCode::SUCCESS);
    }
    for m in &managers {
        let state = match m.state {
            ManagerState::Live => "live".to_owned(),
            ManagerState::Dead => format!("DEAD (silent for {})", ago(m.silent_secs)),
            ManagerState::Stopped => "stopped".to_owned(),
        };
        let started = m
            .started_secs_ago
            .map_or_else(String::new, |s| format!(", started {} ago", ago(s)));
        outln!(
            "{}  {state}  version {}{started}  process {}  in flight {}",
            m.name,
            m.version,
            m.instance,
            m.in_flight
        )?;
        if m.entities.is_empty() {
            outln!("    serves nothing")?;
        } else {
            outln!("    serves {}", m.entities.join(", "))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
