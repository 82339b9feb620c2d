//! `serve`: consume the queue until stopped, like `messenger:consume`, as a service manager's
//! citizen: waits (with backoff) for the queue, tells systemd when it is ready, stopping or
//! reloading, pings its watchdog, reloads `manager.toml` on SIGHUP, serves metrics and health.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::sync::watch;

use crate::service::{ConsumeOptions, Health, Manager, Reloadable, consume};
use crate::transport::dsn::{Dsn, redact};
use crate::transport::{Queue, Records};

use super::http::{self, Probe, StatsSource};
use super::queue::{Opened, open};
use super::{GlobalArgs, Settings};

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Stop after this many messages.
    #[arg(long)]
    limit: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    time_limit: Option<u64>,
    /// Stop once this many requests failed (answers that say the action failed, and rows
    /// moved to the failure queue).
    #[arg(long)]
    failure_limit: Option<u64>,
    /// Stop once the process uses more memory than this (resident), e.g. 128M, 1G.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_limit: Option<u64>,
    /// Seconds to wait before looking at an empty queue again (PostgreSQL's NOTIFY wakes it
    /// sooner) [default: 1].
    #[arg(long, value_name = "SECONDS")]
    sleep: Option<f64>,
    /// Requests carried out at once [default: `[transport] concurrency`, else 128].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Writes each request's host calls, request and response to DIR/<correlation id>.json,
    /// a trace `plugin test --replay` runs again.
    #[arg(long, value_name = "DIR")]
    record: Option<std::path::PathBuf>,
}

/// `128M`, `1G`, `512K`, `1048576`: bytes, as Symfony's `--memory-limit` reads them.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("'{s}' is not a size (e.g. 128M, 1G, 512K, or bytes)"))
}

/// The resident memory of this process, in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Tells systemd (when it started us with `NOTIFY_SOCKET`) where the service is.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(false, state);
}

/// Requests carried out at once: asked for, or configured, never more than the plugin
/// instance pool allows (a few instances stay free for loading plugins).
fn concurrency(settings: &Settings, asked: Option<usize>) -> usize {
    let concurrency = asked
        .or(settings.config.transport.concurrency)
        .unwrap_or(128);
    let instances = settings
        .config
        .runtime
        .max_instances
        .map_or(256, |n| n as usize);
    if concurrency + 8 > instances {
        let clamped = instances.saturating_sub(8).max(1);
        tracing::warn!(
            concurrency,
            max_instances = instances,
            clamped,
            "concurrency above the plugin instance pool; lowered"
        );
        clamped
    } else {
        concurrency
    }
}

pub(super) async fn serve(global: &GlobalArgs, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let dsn = settings.dsn.clone();
    // A DSN that cannot work fails now; a database that is away is waited for below.
    Dsn::parse(&dsn)?;
    let concurrency = concurrency(&settings, args.concurrency);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(signals(stop_tx.clone(), reload_tx));
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some(limit) = args.memory_limit {
        tokio::spawn(watch_memory(limit, stop_tx.clone()));
    }

    // Fed from the start: waiting for the queue is not hanging.
    let watchdog = watchdog();
    let health = Arc::new(Health::default());
    let probe = Probe::new(health.clone());
    let listener = match &settings.config.http.listen {
        Some(listen) => {
            crate::metrics::install(env!("CARGO_PKG_VERSION"));
            Some(http::start(listen, probe.clone()).await?)
        }
        None => None,
    };

    let manager = Arc::new(settings.manager(args.record.clone()).await?);
    let _ = probe.plugins_loaded.set(());
    let current = Arc::new(Reloadable::new(manager.clone()));
    let mut watcher = tokio::spawn(manager.clone().watch_plugins(stopped(stop_rx.clone())));

    let Some(opened) = connect(&dsn, &settings, &probe, stop_rx.clone()).await? else {
        abort(listener);
        abort(watchdog);
        return Ok(ExitCode::SUCCESS);
    };
    let routing = manager.routing();
    tracing::info!(
        queue = %redact(&dsn),
        plugins_dir = %manager.plugins().dir().display(),
        plugins = routing.router().serving().len(),
        skipped = routing.set().failures().len() + routing.router().refused().len(),
        concurrency,
        "serving"
    );
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);

    // SIGHUP: read manager.toml again; a bad file is reported and the old settings kept.
    let reloader = {
        let (current, global_reload) = (current.clone(), global.clone());
        let record = args.record.clone();
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            while reload_rx.recv().await.is_some() {
                notify(&[sd_notify::NotifyState::Reloading]);
                match reload(&global_reload, &dsn, record.clone()).await {
                    Ok(manager) => {
                        watcher.abort();
                        watcher =
                            tokio::spawn(manager.clone().watch_plugins(stopped(stop_rx.clone())));
                        current.replace(manager);
                        tracing::info!("configuration reloaded");
                    }
                    Err(e) => tracing::error!(
                        cause = %super::describe(&e),
                        "configuration not reloaded: keeping the one in force"
                    ),
                }
                notify(&[sd_notify::NotifyState::Ready]);
            }
            watcher.abort();
        })
    };

    let stats = with_transport!(opened, t => {
        let keepalive = Duration::from_secs((t.options().redeliver_timeout_secs / 3).clamp(1, 60));
        let own = &settings.config.manager;
        let options = ConsumeOptions {
            limit: args.limit,
            time_limit: args.time_limit.map(Duration::from_secs),
            failure_limit: args.failure_limit,
            concurrency,
            keepalive,
            poll: args
                .sleep
                .filter(|s| s.is_finite() && *s > 0.0)
                .map_or(Duration::from_secs(1), Duration::from_secs_f64),
            expire_grace: own
                .expire_stale
                .unwrap_or(true)
                .then(|| Duration::from_secs(own.stale_grace_secs.unwrap_or(30))),
            health: health.clone(),
            hold: match settings.config.transport.hold_ms {
                Some(0) => None,
                Some(ms) => Some(Duration::from_millis(ms)),
                None => Some(crate::service::DEFAULT_HOLD),
            },
            ..ConsumeOptions::default()
        };
        let pruner = settings.config.ledger.keep_secs().map(|keep| tokio::spawn(prune_hourly(t.clone(), keep)));
        // What this manager serves, said before the first fetch, then kept up to date.
        let every = Duration::from_secs((t.options().takeover_secs / 3).clamp(1, 5));
        let mut last = None;
        publish_served(&*t, &current, &mut last).await;
        let publisher = {
            let (t, current) = (t.clone(), current.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    publish_served(&*t, &current, &mut last).await;
                }
            })
        };
        let mut stop_seen = stop_rx.clone();
        let draining = async move {
            let _ = stop_seen.wait_for(|s| *s).await;
            notify(&[
                sd_notify::NotifyState::Stopping,
                sd_notify::NotifyState::Status("finishing what is in flight"),
            ]);
        };
        // On the runtime's workers, beside the actions it starts and the I/O driver, not on
        // the thread that waits for `serve` to end: there every statement's answer was received
        // by a worker and handed over with a thread wake-up. Drains of 20,000 no-op actions,
        // alternating, 2 cores: 42.7 µs of manager CPU per action (median of 3 drains, mean of
        // 5 processes) against 46.7 µs.
        let stats = tokio::spawn(consume(t.clone(), current.clone(), options, draining))
            .await
            .context("the consumer stopped abnormally")?;
        abort(pruner);
        publisher.abort();
        if let Err(e) = t.deregister().await {
            tracing::warn!(cause = %e, "cannot tell the other managers that this one stops");
        }
        stats
    });
    notify(&[sd_notify::NotifyState::Stopping]);
    reloader.abort();
    abort(watchdog);
    abort(listener);
    tracing::info!(
        answered = stats.answered,
        from_ledger = stats.from_ledger,
        failed_rows = stats.failed_rows,
        "stopped"
    );
    Ok(ExitCode::SUCCESS)
}

/// Publishes the entity ids this manager serves when they changed since `last` (containers
/// come and go, a reload). While the engine cannot be reached, the last list stands.
async fn publish_served<T: Queue>(t: &T, current: &Reloadable, last: &mut Option<Vec<String>>) {
    let (ids, failed) = current.current().served().await;
    if let Some(cause) = failed {
        tracing::warn!(cause = %cause, "cannot discover labelled containers for the list of entities this manager serves");
        if last.is_some() {
            return;
        }
    }
    if last.as_ref() == Some(&ids) {
        return;
    }
    match t.publish(ids.clone()).await {
        Ok(()) => {
            tracing::info!(entities = %ids.join(", "), "serving these entities");
            *last = Some(ids);
        }
        Err(e) => tracing::warn!(cause = %e, "cannot publish the entities this manager serves"),
    }
}

fn abort(task: Option<tokio::task::JoinHandle<()>>) {
    if let Some(t) = task {
        t.abort();
    }
}

/// A new manager from the settings read again, or why not.
async fn reload(
    global: &GlobalArgs,
    dsn: &str,
    record: Option<std::path::PathBuf>,
) -> anyhow::Result<Arc<Manager>> {
    let settings = global.settings()?;
    if settings.dsn != dsn {
        tracing::warn!("the queue's DSN changed: it takes effect when serve restarts");
    }
    Ok(Arc::new(settings.manager(record).await?))
}

/// Opens the queue (and sets it up, with `auto_setup`), retrying with backoff while the
/// database is away and saying so; `None` when stopped while waiting. Settings the database
/// refuses for good (an invalid DSN) fail at once.
async fn connect(
    dsn: &str,
    settings: &Settings,
    probe: &Arc<Probe>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<Opened>> {
    let mut delay = Duration::from_secs(1);
    loop {
        let attempt = async {
            let opened = open(dsn, 8, &settings.config.manager).await?;
            with_transport!(&opened, t => {
                if t.options().auto_setup {
                    t.setup()
                        .await
                        .context("cannot create the queue tables (set auto_setup=false to skip)")?;
                }
            });
            anyhow::Ok(opened)
        };
        let e = match attempt.await {
            Ok(opened) => {
                let source: StatsSource = with_transport!(&opened, t => {
                    let t = t.clone();
                    Arc::new(move || {
                        let t = t.clone();
                        Box::pin(async move { t.queue_stats().await.map_err(|e| e.to_string()) })
                    })
                });
                let _ = probe.stats.set(source);
                return Ok(Some(opened));
            }
            Err(e) => e,
        };
        if e.downcast_ref::<crate::transport::Error>()
            .is_some_and(|e| matches!(e, crate::transport::Error::Settings(_)))
        {
            return Err(e);
        }
        let cause = super::describe(&e);
        tracing::warn!(cause = %cause, retry_in_secs = delay.as_secs(), "the queue is unreachable: waiting for it");
        notify(&[sd_notify::NotifyState::Status(&format!(
            "waiting for the queue: {cause}"
        ))]);
        *probe.waiting.lock().unwrap_or_else(|e| e.into_inner()) = Some(cause);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return Ok(None),
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Pings systemd's watchdog at half its interval while the process runs, when `WatchdogSec`
/// is set.
fn watchdog() -> Option<tokio::task::JoinHandle<()>> {
    // As sd_watchdog_enabled(3): `WATCHDOG_USEC`, and `WATCHDOG_PID` (when set) naming us.
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    if usec == 0 {
        return None;
    }
    let every = Duration::from_micros(usec / 2);
    Some(tokio::spawn(async move {
        loop {
            notify(&[sd_notify::NotifyState::Watchdog]);
            tokio::time::sleep(every).await;
        }
    }))
}

/// Deletes ledger rows and parked rows older than `keep_secs`, now and every hour
/// (`[ledger] keep`).
async fn prune_hourly<T: Records>(t: Arc<T>, keep_secs: i64) {
    loop {
        let before = (chrono::Utc::now() - chrono::Duration::seconds(keep_secs))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        match t.prune(before).await {
            Ok(p) if p.ledger + p.failed > 0 => {
                tracing::info!(
                    ledger = p.ledger,
                    parked = p.failed,
                    "pruned what is older than [ledger] keep"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(cause = %e, "cannot prune the ledger; trying again in an hour")
            }
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Stops when the process's resident memory passes `limit` (`--memory-limit`).
async fn watch_memory(limit: u64, stop: watch::Sender<bool>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(rss) = resident_bytes()
            && rss > limit
        {
            tracing::warn!(
                resident_bytes = rss,
                limit,
                "memory limit reached: stopping"
            );
            let _ = stop.send(true);
            return;
        }
    }
}

/// SIGTERM / SIGINT: stop (finish what is in flight). SIGHUP: reload the configuration.
async fn signals(stop: watch::Sender<bool>, reload: tokio::sync::mpsc::UnboundedSender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = reload.send(());
            }
        }
    }
    tracing::info!("stop requested: finishing what is in flight");
    let _ = stop.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_symfony_reads_them() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
    }
}
