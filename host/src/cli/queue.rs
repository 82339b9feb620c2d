//! The queue subcommands: `setup`, `serve`, `dispatch`, `actions`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::codec::{self, Format};
use crate::config::ManagerConfig;
use crate::transport::dsn::{Dsn, Kind, TransportOptions, redact};
use crate::transport::postgres::PgTransport;
use crate::transport::sqlite::SqliteTransport;
use crate::transport::{HistoryFilter, Queue, Records};

use super::{GlobalArgs, RequestArgs};

/// The queue of the embedded default: an SQLite file in the working directory, on the queue
/// name of Marvin's seed configuration.
pub const DEFAULT_DSN: &str = "sqlite://marvin.db?queue_name=manager_messages";

/// Either transport, chosen by the DSN.
pub(super) enum Opened {
    Pg(Arc<PgTransport>),
    Sqlite(Arc<SqliteTransport>),
}

impl GlobalArgs {
    pub(super) fn dsn(&self, configured: Option<&str>) -> String {
        self.dsn
            .clone()
            .or_else(|| configured.map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_DSN.to_owned())
    }
}

/// This manager's name among those sharing the queue: `[manager] id`; else the DSN's
/// `manager_id`; else the host name.
pub(super) fn manager_name(options: &TransportOptions, manager: &ManagerConfig) -> String {
    if let Some(id) = &manager.id {
        id.clone()
    } else if options.manager_id == TransportOptions::default().manager_id {
        host_name()
    } else {
        options.manager_id.clone()
    }
}

pub(super) async fn open(
    dsn: &str,
    connections: u32,
    manager: &ManagerConfig,
) -> anyhow::Result<Opened> {
    let mut parsed = Dsn::parse(dsn)?;
    parsed.options.manager_id = manager_name(&parsed.options, manager);
    if let Some(secs) = manager.unserved_grace_secs {
        parsed.options.unserved_grace_secs = secs;
    }
    if let Some(secs) = manager.takeover_secs {
        parsed.options.takeover_secs = secs;
    }
    let shown = redact(dsn);
    Ok(match parsed.kind {
        Kind::Postgres => Opened::Pg(Arc::new(
            PgTransport::connect(&parsed.url, parsed.options, connections)
                .await
                .with_context(|| format!("cannot connect to {shown}"))?,
        )),
        Kind::Sqlite => Opened::Sqlite(Arc::new(
            SqliteTransport::connect(&parsed.url, parsed.options)
                .await
                .with_context(|| format!("cannot open {shown}"))?,
        )),
    })
}

/// The default manager id: the host name (one manager per Docker host), from the kernel.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "marvin-manager".into())
}

#[derive(Debug, Args)]
pub(super) struct SetupArgs {}

pub(super) async fn setup(global: &GlobalArgs, _args: SetupArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let dsn = settings.dsn.clone();
    let opened = open(&dsn, 2, &settings.config.manager).await?;
    with_transport!(opened, t => t.setup().await.context("setup failed")?);
    outln!("tables ready at {}", redact(&dsn))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Serializer {
    Php,
    Json,
}

#[derive(Debug, Args)]
pub(super) struct DispatchArgs {
    #[command(flatten)]
    request: RequestArgs,
    /// How Core's transport serializes.
    #[arg(long, value_enum, default_value = "php")]
    serializer: Serializer,
    /// The bus name stamp.
    #[arg(long, default_value = "messenger.bus.default")]
    bus: String,
    /// Wait for the answer and print it.
    #[arg(long)]
    wait: bool,
}

pub(super) async fn dispatch(global: &GlobalArgs, args: DispatchArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let dsn = settings.dsn.clone();
    let opened = open(&dsn, 2, &settings.config.manager).await?;
    let request = args.request.into_request()?;
    let format = match args.serializer {
        Serializer::Php => Format::Php,
        Serializer::Json => Format::Json,
    };
    let row = codec::encode_request(&request, format, Some(&args.bus));
    with_transport!(opened, t => {
        let queue = t.options().queue_name.clone();
        // One INSERT; setup only when the table turns out to be missing.
        let id = match t.send(&queue, row.clone()).await {
            Err(e) if e.is_missing_table() && t.options().auto_setup => {
                t.setup().await?;
                t.send(&queue, row).await?
            }
            other => other?,
        };
        eprintln!("dispatched {} as row {id} on queue {queue}", request.correlation_id);
        if !args.wait {
            return Ok(ExitCode::SUCCESS);
        }
        let deadline = tokio::time::Instant::now() + request.timeout() + Duration::from_secs(30);
        // A dry run's answer is in the ledger under a key of its own.
        let key = if request.dry_run() { crate::ledger::dry_run_key(&request.correlation_id) } else { request.correlation_id.clone() };
        loop {
            if let Some(entry) = t.answered(vec![key.clone()]).await?.remove(&key) {
                outln!("{}", serde_json::to_string_pretty(&entry.response.value())?)?;
                return Ok(if entry.success { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("no answer for {} (is `marvin-manager serve` running on this queue?)", request.correlation_id);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[derive(Debug, Args)]
pub(super) struct ActionsArgs {
    /// Only this entity.
    #[arg(long)]
    entity: Option<String>,
    /// Only failures, and the rows parked in the failure queue.
    #[arg(long)]
    failed: bool,
    /// Only since this time: RFC 3339 (2026-11-29T10:00:00Z) or an age (30m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50)]
    limit: i64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `30m` / `2h` / `7d` / `45s` -> the RFC 3339 UTC time that long ago.
pub(super) fn ago(s: &str) -> anyhow::Result<String> {
    let secs = crate::config::age_secs(s)
        .with_context(|| format!("'{s}' is not an age such as 30m, 2h, 7d"))?;
    let t = chrono::Utc::now() - chrono::Duration::seconds(secs);
    Ok(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

/// An age (`ago`) or an RFC 3339 time, as RFC 3339 UTC.
fn since(s: &str) -> anyhow::Result<String> {
    if let Ok(t) = ago(s) {
        return Ok(t);
    }
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("--since {s}: use RFC 3339 or an age such as 30m, 2h, 7d"))?;
    Ok(t.with_timezone(&chrono::Utc)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string())
}

/// What an answer says it changed: ` changed`, ` unchanged`, ` dry run: <plan>`; nothing for
/// an answer from before `changed` existed.
fn effect(response: &serde_json::Value) -> String {
    let meta = &response["metadata"];
    if meta["dry_run"] == true {
        let plan: Vec<&str> = meta["plan"]
            .as_array()
            .map(|p| p.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        return if plan.is_empty() {
            " dry run: nothing to do".into()
        } else {
            format!(" dry run: {}", plan.join(", "))
        };
    }
    match meta["changed"].as_bool() {
        Some(true) => " changed".into(),
        Some(false) => " unchanged".into(),
        None => String::new(),
    }
}

pub(super) async fn actions(global: &GlobalArgs, args: ActionsArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let dsn = settings.dsn.clone();
    let opened = open(&dsn, 2, &settings.config.manager).await?;
    let filter = HistoryFilter {
        entity_id: args.entity,
        failed_only: args.failed,
        since: args.since.as_deref().map(since).transpose()?,
        limit: args.limit,
    };
    let (entries, parked) = with_transport!(opened, t => {
        let entries = t.history(filter).await?;
        let parked = if args.failed { t.failed_rows().await? } else { Vec::new() };
        (entries, parked)
    });
    if args.json {
        let parked: Vec<_> = parked
            .iter()
            .map(|f| serde_json::json!({"row_id": f.id, "queue": f.original_queue, "reason": f.reason}))
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"actions": entries, "failure_queue": parked})
            )?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        outln!("no actions")?;
    }
    for e in &entries {
        outln!(
            "{}  {}  {} {}  {}{}  {} ms  {}  by {}{}",
            e.received_at,
            e.correlation_id,
            e.entity_id,
            e.action,
            if e.success { "ok" } else { "FAILED" },
            effect(&e.response.value()),
            e.duration_ms,
            e.plugin.as_deref().unwrap_or("-"),
            e.manager.as_deref().unwrap_or("-"),
            e.error
                .as_deref()
                .map(|m| format!("  {m}"))
                .unwrap_or_default()
        )?;
    }
    if !parked.is_empty() {
        outln!("\nfailure queue:")?;
        for f in &parked {
            outln!("  row {} (from {}): {}", f.id, f.original_queue, f.reason)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
