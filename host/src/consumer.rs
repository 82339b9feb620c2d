//! The consume loop, like `messenger:consume`: fetch a batch, dedupe against the ledger,
//! route and run each request (per-entity order, bounded concurrency), and settle answers in
//! batched transactions (response INSERT + request DELETE + ledger row, one commit).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};

use crate::codec::{self, Decoded};
use crate::message::{ManagerRequest, ManagerResponse};
use crate::service::Manager;
use crate::transport::{
    Delivery, LedgerEntry, Settle, Transport, TransportOptions, response_format, utc_now_rfc3339,
};

/// How long a busy loop waits for more free slots before fetching fewer rows.
const BATCH_WAIT: Duration = Duration::from_millis(2);

/// How long a stop waits for a fetch under way: the rows it takes are marked delivered, so they
/// are run rather than left for the redeliver timeout, unless the database does not answer.
const FETCH_GRACE: Duration = Duration::from_secs(5);

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Stop after this many messages (`--limit`).
    pub limit: Option<u64>,
    /// Stop after this long (`--time-limit`).
    pub time_limit: Option<Duration>,
    /// Requests carried out at once.
    pub concurrency: usize,
    /// Rows taken per fetch, at most.
    pub batch: usize,
    /// The longest wait between looks at an idle queue.
    pub poll: Duration,
    /// How often `delivered_at` of running requests is moved forward.
    pub keepalive: Duration,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        Self {
            limit: None,
            time_limit: None,
            concurrency: 128,
            batch: 256,
            poll: Duration::from_secs(1),
            keepalive: Duration::from_secs(60),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumeStats {
    /// Requests answered (executed or from the ledger).
    pub answered: u64,
    /// Answered from the ledger without running again.
    pub from_ledger: u64,
    /// Rows moved to the failure queue.
    pub failed_rows: u64,
}

/// Keeps requests for one entity in arrival order: each waits for the previous one.
#[derive(Default)]
struct EntityOrder {
    last: std::sync::Mutex<HashMap<String, oneshot::Receiver<()>>>,
}

impl EntityOrder {
    /// Returns the previous request's completion to wait for, and this one's to signal.
    fn enter(&self, entity: &str) -> (Option<oneshot::Receiver<()>>, oneshot::Sender<()>) {
        let (tx, rx) = oneshot::channel();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let prev = last.insert(entity.to_owned(), rx);
        (prev, tx)
    }
}

/// Responses already given in this process, by correlation id, for duplicates in flight.
#[derive(Default)]
struct Recent {
    map: std::sync::Mutex<HashMap<String, ManagerResponse>>,
}

impl Recent {
    const CAP: usize = 10_000;

    fn get(&self, id: &str) -> Option<ManagerResponse> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn put(&self, r: &ManagerResponse) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= Self::CAP {
            m.clear();
        }
        m.insert(r.correlation_id.clone(), r.clone());
    }
}

fn ledger_entry(r: &ManagerResponse, received_at: String, started: Instant) -> LedgerEntry {
    LedgerEntry {
        correlation_id: r.correlation_id.clone(),
        entity_id: r.entity_id.clone(),
        action: r.action.clone(),
        plugin: r
            .metadata
            .get("plugin")
            .and_then(|p| p.as_str())
            .map(str::to_owned),
        success: r.success,
        error: r.error.clone(),
        response: serde_json::to_value(r).unwrap_or(serde_json::Value::Null),
        received_at,
        finished_at: String::new(),
        duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Runs until `shutdown` resolves, the limit or the time limit is reached. In-flight requests
/// finish and their answers are committed before it returns.
pub async fn consume<T: Transport>(
    transport: Arc<T>,
    manager: Arc<Manager>,
    options: ConsumeOptions,
    shutdown: impl Future<Output = ()>,
) -> ConsumeStats {
    let started = Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    let (settle_tx, settle_rx) = mpsc::unbounded_channel::<Settle>();
    let writer = tokio::spawn(write_settlements(transport.clone(), settle_rx));
    let in_flight: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let keepalive = tokio::spawn(keep_alive(
        transport.clone(),
        in_flight.clone(),
        options.keepalive,
    ));
    let concurrency = options.concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let order = Arc::new(EntityOrder::default());
    let recent = Arc::new(Recent::default());
    let stats = Arc::new(Stats::default());
    let mut taken: u64 = 0;
    let mut backoff = Duration::from_millis(50);
    // Set when the stop came during a fetch: `shutdown` has completed and is not polled again.
    let mut stopping = false;

    loop {
        if stopping || options.limit.is_some_and(|l| taken >= l) {
            break;
        }
        let time_left = options
            .time_limit
            .map(|t| t.saturating_sub(started.elapsed()));
        if time_left == Some(Duration::ZERO) {
            break;
        }
        // Take rows only for free slots, so nothing waits marked-but-idle. When work is in
        // flight, give it a moment to free more slots, so a busy queue is fetched in batches
        // rather than one row per returning slot.
        let mut held = tokio::select! {
            () = &mut shutdown => break,
            p = permits.clone().acquire_many_owned(1) => match p { Ok(p) => p, Err(_) => break },
        };
        let cap = options.batch.max(1).min(concurrency);
        if let Ok(more) = permits.clone().try_acquire_many_owned(
            u32::try_from(permits.available_permits().min(cap - 1)).unwrap_or(0),
        ) {
            held.merge(more);
        }
        let busy = concurrency.saturating_sub(permits.available_permits() + held.num_permits());
        let target = (cap / 2).max(1);
        if busy > 0 && held.num_permits() < target {
            let missing = u32::try_from(target - held.num_permits()).unwrap_or(0);
            if let Ok(Ok(more)) =
                tokio::time::timeout(BATCH_WAIT, permits.clone().acquire_many_owned(missing)).await
            {
                held.merge(more);
            }
        }
        let want = held
            .num_permits()
            .min(options.limit.map_or(usize::MAX, |l| {
                usize::try_from(l - taken).unwrap_or(usize::MAX)
            }));
        let fetch = transport.fetch(want);
        tokio::pin!(fetch);
        let fetched = tokio::select! {
            r = &mut fetch => r,
            () = &mut shutdown => match tokio::time::timeout(FETCH_GRACE, fetch).await {
                Ok(r) => {
                    stopping = true;
                    r
                }
                Err(_) => break,
            },
        };
        let rows = match fetched {
            Ok(rows) => {
                tracing::debug!(asked = want, got = rows.len(), "fetched");
                backoff = Duration::from_millis(50);
                rows
            }
            Err(e) => {
                tracing::error!(cause = %e, "cannot fetch from the queue");
                drop(held);
                if stopping {
                    break;
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if rows.is_empty() {
            drop(held);
            if stopping {
                break;
            }
            let wait = time_left.map_or(options.poll, |t| t.min(options.poll));
            tokio::select! {
                () = &mut shutdown => break,
                () = transport.wait(wait) => {}
            }
            continue;
        }
        taken += rows.len() as u64;
        let known = ledger_for(&*transport, &rows).await;
        for row in rows {
            // One slot per row; `held` has at least as many as rows were fetched.
            let Some(permit) = held.split(1) else {
                break;
            };
            in_flight.lock().await.insert(row.id);
            let ctx = Task {
                manager: manager.clone(),
                settle: settle_tx.clone(),
                in_flight: in_flight.clone(),
                recent: recent.clone(),
                stats: stats.clone(),
                options: transport.options().clone(),
            };
            match prepare(row, &known, transport.options()) {
                Prepared::Settle(id, s) => {
                    ctx.finish(id, s).await;
                    drop(permit);
                }
                Prepared::Run {
                    id,
                    request,
                    decoded,
                    received_at,
                } => {
                    let (prev, done) = order.enter(&request.container_id);
                    tokio::spawn(async move {
                        if let Some(prev) = prev {
                            let _ = prev.await;
                        }
                        ctx.run(id, request, decoded, received_at).await;
                        let _ = done.send(());
                        drop(permit);
                    });
                }
            }
        }
    }
    // Finish what is in flight, then flush the answers.
    let _ = permits
        .acquire_many(u32::try_from(concurrency).unwrap_or(u32::MAX))
        .await;
    drop(settle_tx);
    let _ = writer.await;
    keepalive.abort();
    ConsumeStats {
        answered: stats.answered.load(Ordering::Relaxed),
        from_ledger: stats.from_ledger.load(Ordering::Relaxed),
        failed_rows: stats.failed.load(Ordering::Relaxed),
    }
}

#[derive(Default)]
struct Stats {
    answered: AtomicU64,
    from_ledger: AtomicU64,
    failed: AtomicU64,
}

async fn ledger_for<T: Transport>(
    transport: &T,
    rows: &[Delivery],
) -> HashMap<String, LedgerEntry> {
    let ids: Vec<String> = rows
        .iter()
        .filter_map(|r| match &r.decoded {
            Ok(Decoded {
                request: Some(Ok(req)),
                ..
            }) => Some(req.correlation_id.clone()),
            _ => None,
        })
        .collect();
    match transport.ledger(ids).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(cause = %e, "cannot read the ledger; requests run without dedup");
            HashMap::new()
        }
    }
}

enum Prepared {
    Settle(i64, Settle),
    Run {
        id: i64,
        request: ManagerRequest,
        decoded: Box<Decoded>,
        received_at: String,
    },
}

/// Decides what to do with a taken row without running anything.
fn prepare(
    row: Delivery,
    known: &HashMap<String, LedgerEntry>,
    options: &TransportOptions,
) -> Prepared {
    let id = row.id;
    let decoded = match row.decoded {
        Ok(d) => d,
        Err(reason) => {
            tracing::error!(row_id = id, reason = %reason, "undecodable row moved to the failure queue");
            return Prepared::Settle(
                id,
                Settle::Fail {
                    request_id: id,
                    reason,
                },
            );
        }
    };
    let (format, bus) = (
        response_format(options, decoded.format),
        decoded.bus_name.clone(),
    );
    match decoded.request.clone() {
        Some(Ok(request)) => {
            if let Some(entry) = known.get(&request.correlation_id)
                && let Ok(response) =
                    serde_json::from_value::<ManagerResponse>(entry.response.clone())
            {
                tracing::info!(row_id = id, correlation_id = %request.correlation_id, redelivered = row.redelivered, "already answered, replying from the ledger");
                let response = codec::encode_response(&response, format, bus.as_deref());
                return Prepared::Settle(
                    id,
                    Settle::Reply {
                        request_id: id,
                        response,
                        ledger: None,
                    },
                );
            }
            Prepared::Run {
                id,
                request,
                decoded: Box::new(decoded),
                received_at: utc_now_rfc3339(),
            }
        }
        Some(Err(m)) => match m.correlation_id {
            Some(correlation_id) => {
                tracing::warn!(row_id = id, correlation_id = %correlation_id, reason = %m.reason, "malformed request answered with an error");
                let action = m.action.unwrap_or_default();
                let response = ManagerResponse {
                    correlation_id,
                    entity_type: crate::service::guess_kind(&action),
                    entity_id: m.entity_id.unwrap_or_default(),
                    action,
                    success: false,
                    output: None,
                    error: Some(m.reason),
                    metadata: serde_json::Map::new(),
                };
                let entry = ledger_entry(&response, utc_now_rfc3339(), Instant::now());
                let encoded = codec::encode_response(&response, format, bus.as_deref());
                Prepared::Settle(
                    id,
                    Settle::Reply {
                        request_id: id,
                        response: encoded,
                        ledger: Some(Box::new(entry)),
                    },
                )
            }
            None => {
                tracing::error!(row_id = id, reason = %m.reason, "request without a correlation id moved to the failure queue");
                Prepared::Settle(
                    id,
                    Settle::Fail {
                        request_id: id,
                        reason: m.reason,
                    },
                )
            }
        },
        // classify_row only hands over request rows.
        None => Prepared::Settle(
            id,
            Settle::Fail {
                request_id: id,
                reason: format!("not a request: {}", decoded.class),
            },
        ),
    }
}

struct Task {
    manager: Arc<Manager>,
    settle: mpsc::UnboundedSender<Settle>,
    in_flight: Arc<Mutex<HashSet<i64>>>,
    recent: Arc<Recent>,
    stats: Arc<Stats>,
    options: TransportOptions,
}

impl Task {
    async fn finish(&self, id: i64, s: Settle) {
        match &s {
            Settle::Reply { ledger: None, .. } => {
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
                self.stats.from_ledger.fetch_add(1, Ordering::Relaxed);
            }
            Settle::Reply { .. } => {
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
            }
            Settle::Fail { .. } => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let _ = self.settle.send(s);
        self.in_flight.lock().await.remove(&id);
    }

    async fn run(
        &self,
        id: i64,
        request: ManagerRequest,
        decoded: Box<Decoded>,
        received_at: String,
    ) {
        let started = Instant::now();
        let format = response_format(&self.options, decoded.format);
        let bus = decoded.bus_name.as_deref();
        if let Some(response) = self.recent.get(&request.correlation_id) {
            let encoded = codec::encode_response(&response, format, bus);
            self.finish(
                id,
                Settle::Reply {
                    request_id: id,
                    response: encoded,
                    ledger: None,
                },
            )
            .await;
            return;
        }
        let response = self.manager.execute(&request).await;
        self.recent.put(&response);
        let entry = ledger_entry(&response, received_at, started);
        let encoded = codec::encode_response(&response, format, bus);
        self.finish(
            id,
            Settle::Reply {
                request_id: id,
                response: encoded,
                ledger: Some(Box::new(entry)),
            },
        )
        .await;
    }
}

/// Commits answers in batches: everything queued when the previous commit ends goes into the
/// next transaction, so a busy queue pays one commit (one fsync) per batch.
async fn write_settlements<T: Transport>(
    transport: Arc<T>,
    mut rx: mpsc::UnboundedReceiver<Settle>,
) {
    let mut buf = Vec::with_capacity(512);
    while rx.recv_many(&mut buf, 512).await > 0 {
        let batch = std::mem::take(&mut buf);
        let mut delay = Duration::from_millis(100);
        for attempt in 1.. {
            let t = Instant::now();
            match transport.complete(batch.clone()).await {
                Ok(()) => {
                    tracing::debug!(
                        rows = batch.len(),
                        elapsed_us = t.elapsed().as_micros() as u64,
                        "answers committed"
                    );
                    break;
                }
                Err(e) if attempt < 10 => {
                    tracing::error!(cause = %e, attempt, "cannot commit answers, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    // The requests stay marked delivered and come back after the redeliver
                    // timeout; nothing is lost, but they will run again.
                    tracing::error!(cause = %e, rows = batch.len(), "giving up committing answers");
                    break;
                }
            }
        }
    }
}

/// Moves `delivered_at` of running requests forward so no consumer takes them again.
async fn keep_alive<T: Transport>(
    transport: Arc<T>,
    in_flight: Arc<Mutex<HashSet<i64>>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let ids: Vec<i64> = in_flight.lock().await.iter().copied().collect();
        if let Err(e) = transport.keepalive(ids).await {
            tracing::warn!(cause = %e, "cannot refresh delivered_at of running requests");
        }
    }
}
