//! The operator's commands PHP operators know from Symfony Messenger: `failed show|retry|
//! remove` (`messenger:failed:*`) on the rows the manager parked, `stats`
//! (`messenger:stats`), and `prune` (the ledger and failure records by age).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::transport::{QueueStats, Records};

use super::GlobalArgs;
use super::queue::{ago, open};

#[derive(Debug, Args)]
pub(super) struct FailedArgs {
    #[command(subcommand)]
    command: FailedCommand,
}

#[derive(Debug, Subcommand)]
enum FailedCommand {
    /// Lists the rows parked in the failure queue, or shows one (`messenger:failed:show`).
    Show {
        /// The row id; without it, every parked row.
        id: Option<i64>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        max: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Puts parked rows back on the queue they came from (`messenger:failed:retry`): they
    /// are taken again like new requests.
    Retry(Selection),
    /// Deletes parked rows (`messenger:failed:remove`).
    Remove(Selection),
}

#[derive(Debug, Args)]
struct Selection {
    /// The row ids.
    #[arg(required_unless_present = "all")]
    ids: Vec<i64>,
    /// Every parked row.
    #[arg(long, conflicts_with = "ids")]
    all: bool,
}

pub(super) async fn failed(global: &GlobalArgs, args: FailedArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let opened = open(&settings.dsn, 2, &settings.config.manager).await?;
    with_transport!(opened, t => match args.command {
        FailedCommand::Show { id, max, json } => {
            let rows = t.failed_messages(id, max).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&rows)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(id) = id {
                let Some(r) = rows.first() else {
                    anyhow::bail!("row {id} is not in the failure queue (or was not parked by the manager)");
                };
                outln!("row:            {}", r.id)?;
                outln!("from queue:     {}", r.original_queue)?;
                outln!("parked at:      {}", r.failed_at)?;
                outln!("sent at:        {}", r.created_at)?;
                outln!("reason:         {}", r.reason)?;
                outln!("headers:        {}", r.headers)?;
                outln!("body:           {}", r.body)?;
                return Ok(ExitCode::SUCCESS);
            }
            if rows.is_empty() {
                outln!("no parked rows")?;
            }
            for r in &rows {
                outln!("{}  {}  from {}  {}", r.id, r.failed_at, r.original_queue, r.reason)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        FailedCommand::Retry(sel) => {
            let ids = selected(&*t, sel).await?;
            let wanted = ids.len();
            let done = t.retry_failed(ids).await?;
            outln!("{} of {wanted} row(s) put back on their queue: {done:?}", done.len())?;
            Ok(if done.len() == wanted { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        FailedCommand::Remove(sel) => {
            let ids = selected(&*t, sel).await?;
            let wanted = ids.len();
            let done = t.remove_failed(ids).await?;
            outln!("{} of {wanted} row(s) removed: {done:?}", done.len())?;
            Ok(if done.len() == wanted { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    })
}

/// The ids asked for, or every parked row's.
async fn selected<T: Records>(t: &T, sel: Selection) -> anyhow::Result<Vec<i64>> {
    if !sel.all {
        return Ok(sel.ids);
    }
    Ok(t.failed_messages(None, i64::MAX)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect())
}

#[derive(Debug, Args)]
pub(super) struct StatsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `messenger:stats`, with the oldest waiting row's age and the answers of the last minute.
pub(super) async fn stats(global: &GlobalArgs, args: StatsArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let opened = open(&settings.dsn, 2, &settings.config.manager).await?;
    let s: QueueStats = with_transport!(opened, t => t.queue_stats().await?);
    if args.json {
        let queues: Vec<_> = s
            .queues
            .iter()
            .map(|q| {
                serde_json::json!({
                    "queue": q.queue,
                    "waiting": q.waiting,
                    "in_progress": q.in_progress,
                    "oldest_waiting_secs": q.oldest_waiting_secs,
                })
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "queues": queues,
                "answered_last_minute": s.answered_last_minute,
            }))?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<30} {:>10} {:>12} {:>14}",
        "queue",
        "waiting",
        "in progress",
        "oldest waiting"
    )?;
    for q in &s.queues {
        outln!(
            "{:<30} {:>10} {:>12} {:>13.0}s",
            q.queue,
            q.waiting,
            q.in_progress,
            q.oldest_waiting_secs
        )?;
    }
    outln!("answers in the last minute: {}", s.answered_last_minute)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(super) struct PruneArgs {
    /// Keep what is younger than this (30m, 12h, 30d) [default: `[ledger] keep`, else 30d].
    #[arg(long)]
    keep: Option<String>,
}

/// Deletes ledger rows and parked rows older than the age kept.
pub(super) async fn prune(global: &GlobalArgs, args: PruneArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let keep = args
        .keep
        .or_else(|| settings.config.ledger.keep.clone())
        .unwrap_or_else(|| crate::config::DEFAULT_LEDGER_KEEP.to_owned());
    let before = ago(&keep).with_context(|| format!("--keep {keep}"))?;
    let opened = open(&settings.dsn, 2, &settings.config.manager).await?;
    let pruned = with_transport!(opened, t => t.prune(before.clone()).await?);
    outln!(
        "pruned {} ledger row(s) and {} parked row(s) older than {keep} (before {before})",
        pruned.ledger,
        pruned.failed
    )?;
    Ok(ExitCode::SUCCESS)
}
