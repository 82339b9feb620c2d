//! The consume loop, like `messenger:consume`: admit (scheduler), fetch a batch (transport),
//! look it up in the ledger, run each new request on its entity's turn, and settle answers in
//! batched transactions (response INSERT + request DELETE + ledger row, one commit).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc, oneshot};

use super::Manager;
use crate::codec::{self, Decoded, Format};
use crate::ledger::{self, Known, Recent};
use crate::message::{EntityKind, ManagerRequest, ManagerResponse};
use crate::metrics::Outcome;
use crate::runtime::Aftercare;
use crate::scheduler::{Scheduler, Slot, Turn};
use crate::transport::{
    Claim, Delivery, Elsewhere, Error, Queue, Settle, TransportOptions, response_format,
    unstorable_id, utc_now_rfc3339,
};

/// How long a stop waits for a fetch under way: the rows it takes are marked delivered, so they
/// are run rather than left for the redeliver timeout, unless the database does not answer.
const FETCH_GRACE: Duration = Duration::from_secs(5);

/// At most this many requests of one entity have their start recorded ahead of their turn, so
/// after a crash at most this many per entity are answered "interrupted" without having run.
/// Reached only by actions far quicker than a start record (a record ~250 µs with its fsync,
/// a no-op action ~15 µs: two records' time covers ~30 of them); slower actions have fewer
/// ahead (see [`Pace::lookahead`]).
const MAX_LOOKAHEAD: u64 = 64;

/// A request waiting for its start to be recorded, and where to say whether it was.
type StartRequest = (i64, oneshot::Sender<bool>);

/// What carries out a request for the loop: the [`Manager`]; a fake in the loop's tests.
pub trait Execute: Send + Sync + 'static {
    /// Carries out one request; every problem is an error response. The loop drops the
    /// [`Aftercare`] once the answer is on its way.
    fn execute(
        &self,
        req: &ManagerRequest,
    ) -> impl Future<Output = (ManagerResponse, Aftercare)> + Send;
    /// Whether running the request again after a crash interrupted it is safe.
    fn idempotent(&self, req: &ManagerRequest) -> impl Future<Output = bool> + Send;
    /// Whether more requests wait than were taken (the last fetch took every row it asked
    /// for): the plugins' instances are then made at each request rather than ahead of it.
    fn backlog(&self, _waiting: bool) {}
}

impl Execute for Manager {
    fn execute(
        &self,
        req: &ManagerRequest,
    ) -> impl Future<Output = (ManagerResponse, Aftercare)> + Send {
        Manager::answer(self, req)
    }
    fn idempotent(&self, req: &ManagerRequest) -> impl Future<Output = bool> + Send {
        Manager::idempotent(self, req)
    }
    fn backlog(&self, waiting: bool) {
        self.runtime().backlog(waiting);
    }
}

impl Execute for super::Reloadable {
    async fn execute(&self, req: &ManagerRequest) -> (ManagerResponse, Aftercare) {
        self.current().answer(req).await
    }
    async fn idempotent(&self, req: &ManagerRequest) -> bool {
        self.current().idempotent(req).await
    }
    fn backlog(&self, waiting: bool) {
        self.current().runtime().backlog(waiting);
    }
}

/// Whether the loop reaches its queue: what readiness reports. Not ready until the first
/// fetch succeeds; not ready while fetches, start records or commits fail (the database is
/// away), ready again once each of them that failed has succeeded. Changes are logged once.
#[derive(Debug, Default)]
pub struct Health(std::sync::Mutex<HealthState>);

/// A moment of [`Health`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthState {
    /// The queue is reachable: a fetch succeeded and nothing fails now.
    pub ready: bool,
    /// Why not, when a call failed.
    pub last_error: Option<String>,
    fetched: bool,
    failing: [bool; 3],
}

/// The database calls of the loop.
#[derive(Debug, Clone, Copy)]
enum Call {
    Fetch = 0,
    Start = 1,
    Commit = 2,
}

impl Call {
    /// What the log says while the call is retried.
    fn retrying(self) -> &'static str {
        match self {
            Self::Fetch => "cannot fetch from the queue, retrying",
            Self::Start => "cannot record that requests start, retrying",
            Self::Commit => "cannot commit answers, keeping them and retrying",
        }
    }
}

impl Health {
    /// Whether the queue is reachable now.
    pub fn ready(&self) -> bool {
        self.state().ready
    }

    /// The state now.
    pub fn snapshot(&self) -> HealthState {
        self.state().clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn up(&self, call: Call) {
        let mut st = self.state();
        st.failing[call as usize] = false;
        st.fetched |= matches!(call, Call::Fetch);
        let ready = st.fetched && !st.failing.contains(&true);
        if ready && !st.ready && st.last_error.is_some() {
            tracing::info!("the queue is reachable again");
        }
        st.ready = ready;
        if let Some(m) = crate::metrics::get() {
            m.ready(ready);
        }
    }

    fn down(&self, call: Call, e: &Error) {
        let mut st = self.state();
        if st.ready {
            tracing::warn!(cause = %e, "the queue is unreachable: not ready until it is back");
        }
        st.failing[call as usize] = true;
        st.ready = false;
        if let Some(m) = crate::metrics::get() {
            m.ready(false);
            match call {
                Call::Fetch => m.fetch_error(),
                Call::Commit => m.commit_error(),
                Call::Start => {}
            }
        }
        st.last_error = Some(e.to_string());
    }
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Stop after this many messages (`--limit`).
    pub limit: Option<u64>,
    /// Stop after this long (`--time-limit`).
    pub time_limit: Option<Duration>,
    /// Stop once this many answers said the action failed or rows were parked
    /// (`--failure-limit`).
    pub failure_limit: Option<u64>,
    /// Requests carried out at once.
    pub concurrency: usize,
    /// Rows taken per fetch, at most.
    pub batch: usize,
    /// The longest wait between looks at an idle queue.
    pub poll: Duration,
    /// How often `delivered_at` of running requests is moved forward, and this manager's
    /// heartbeat sent (at least three times per takeover period).
    pub keepalive: Duration,
    /// A request older than its timeout plus this is answered "expired" instead of run (Core
    /// has given up on it: it marks a request timed out after 30 s); `None`: always run.
    pub expire_grace: Option<Duration>,
    /// Where the loop says whether it reaches the queue (readiness).
    pub health: Arc<Health>,
    /// How long the rows of a fetch stay held in its transaction, unmarked, while their
    /// actions run (PostgreSQL): answers ready by then are committed with the fetch, one
    /// commit; rows still running are then marked delivered. `None`: every row is marked when
    /// taken and answered in a second commit.
    pub hold: Option<Duration>,
}

/// The default of [`ConsumeOptions::hold`]: longer than a no-op or an idempotent `start`
/// (about a millisecond), far shorter than anything a transaction should be held for.
pub const DEFAULT_HOLD: Duration = Duration::from_millis(50);

impl Default for ConsumeOptions {
    fn default() -> Self {
        Self {
            limit: None,
            time_limit: None,
            failure_limit: None,
            concurrency: 128,
            batch: 256,
            poll: Duration::from_secs(1),
            keepalive: Duration::from_secs(60),
            expire_grace: Some(Duration::from_secs(30)),
            health: Arc::default(),
            hold: Some(DEFAULT_HOLD),
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
    /// Answers that say the action failed, and rows moved to the failure queue (what
    /// `--failure-limit` counts).
    pub failures: u64,
}

#[derive(Default)]
struct Stats {
    answered: AtomicU64,
    from_ledger: AtomicU64,
    failed: AtomicU64,
    failures: AtomicU64,
}

/// Runs until `shutdown` resolves, the limit or the time limit is reached. In-flight requests
/// finish and their answers are committed before it returns.
pub async fn consume<Q: Queue, E: Execute>(
    queue: Arc<Q>,
    executor: Arc<E>,
    options: ConsumeOptions,
    shutdown: impl Future<Output = ()>,
) -> ConsumeStats {
    let started = Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    let (settle_tx, settle_rx) = mpsc::unbounded_channel::<Settle>();
    let in_flight: Arc<Mutex<HashSet<i64>>> = Arc::default();
    // Set once nothing runs any more: answers still waiting for the database then get a last
    // bounded try instead of being kept until it is back.
    let winding_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn(write_settlements(
        queue.clone(),
        settle_rx,
        in_flight.clone(),
        winding_down.clone(),
        options.health.clone(),
    ));
    // Set when no new request is taken: start records still failing then give up (the
    // requests are left, not run, to the next process).
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pace = Arc::new(Pace::default());
    let (starts_tx, starts_rx) = mpsc::unbounded_channel::<StartRequest>();
    let recorder = tokio::spawn(record_starts(
        queue.clone(),
        starts_rx,
        pace.clone(),
        draining.clone(),
        options.health.clone(),
    ));
    // Registered before the first fetch: what an earlier process of this manager held comes
    // back at once.
    if let Err(e) = queue.heartbeat().await {
        tracing::warn!(cause = %e, "cannot register this manager");
    }
    let keepalive = tokio::spawn(keep_alive(
        queue.clone(),
        in_flight.clone(),
        options.keepalive,
    ));
    let scheduler = Arc::new(Scheduler::new(options.concurrency, options.batch));
    let shared = Arc::new(Shared {
        settle: settle_tx,
        starts: starts_tx,
        pace,
        in_flight,
        recent: Recent::default(),
        stats: Stats::default(),
        options: queue.options().clone(),
    });
    let mut taken: u64 = 0;
    // Rows are held in their fetch's transaction while their actions run (one commit for a
    // short action) when the database can and the options ask for it.
    let holding = options.hold.is_some() && queue.holds();
    let mut holds = tokio::task::JoinSet::new();
    let mut backoff = Duration::from_millis(50);
    // Set when the stop came during a fetch: `shutdown` has completed and is not polled again.
    let mut stopping = false;
    // Set when the last fetch found nothing, or took every row there was and new rows are
    // announced: the loop waits for the next one before it asks again.
    let mut wait_first = false;

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
        // The queue is empty: wait for a new row to be announced (or the poll) rather than
        // ask it again at once.
        if std::mem::take(&mut wait_first) {
            let wait = time_left.map_or(options.poll, |t| t.min(options.poll));
            tokio::select! {
                () = &mut shutdown => break,
                () = queue.wait(wait) => {}
            }
        }
        // Take rows only for free slots, so nothing waits marked-but-idle.
        let left = options.limit.map_or(usize::MAX, |l| {
            usize::try_from(l - taken).unwrap_or(usize::MAX)
        });
        let mut slots = tokio::select! {
            () = &mut shutdown => break,
            s = scheduler.admit(left) => s,
        };
        if slots.is_empty() {
            break;
        }
        // Counted when the answer is queued, before its slot is free: a slot taken now sees
        // every failure before it.
        if let Some(limit) = options.failure_limit
            && shared.stats.failures.load(Ordering::Relaxed) >= limit
        {
            tracing::info!(limit, "failure limit reached: stopping");
            break;
        }
        let fetch = take(&*queue, slots.len(), holding);
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
        let (rows, held) = match fetched {
            Ok(rows) => {
                options.health.up(Call::Fetch);
                tracing::debug!(asked = slots.len(), got = rows.0.len(), "fetched");
                executor.backlog(!rows.0.is_empty() && rows.0.len() >= slots.len());
                backoff = Duration::from_millis(50);
                rows
            }
            Err(e) => {
                options.health.down(Call::Fetch, &e);
                executor.backlog(false);
                tracing::error!(cause = %e, "cannot fetch from the queue");
                drop(slots);
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
            drop(slots);
            drop(held);
            if stopping {
                break;
            }
            wait_first = true;
            continue;
        }
        wait_first = queue.drained();
        taken += rows.len() as u64;
        let (missing, read) = ledger_reads(&rows);
        let mut known = Known::lookup(&*queue, missing).await;
        known.add(read);
        // Held rows: their answers are gathered for the hold's one commit.
        let gather = held.as_ref().map(|_| Arc::new(Gathering::new(&rows)));
        for row in rows {
            // One slot per row; the fetch asked for no more rows than there are slots.
            let Some(slot) = slots.take() else {
                if let Some(g) = &gather {
                    g.forget(row.id);
                }
                continue;
            };
            // A row of ours whose answer is still being committed came back (the database
            // was away past the redeliver timeout): its answer is on the way, not another.
            if !shared.in_flight.lock().await.insert(row.id) {
                tracing::debug!(row_id = row.id, "taken again while its answer is pending");
                if let Some(g) = &gather {
                    g.forget(row.id);
                }
                continue;
            }
            match prepare(row, &known, &shared.options, options.expire_grace) {
                Prepared::Settle(s) => {
                    shared.finish(s, gather.as_deref());
                    drop(slot);
                }
                Prepared::Run(mut run) => {
                    run.gather.clone_from(&gather);
                    let turn = scheduler.turn(&run.request.entity_id);
                    let (shared, executor) = (shared.clone(), executor.clone());
                    tokio::spawn(async move {
                        shared.take_turn(&*executor, run, turn, slot).await;
                    });
                }
            }
        }
        if let (Some(held), Some(gather), Some(bound)) = (held, gather, options.hold) {
            holds.spawn(release_hold(
                queue.clone(),
                held,
                gather,
                bound,
                shared.clone(),
                options.health.clone(),
            ));
        }
        while holds.try_join_next().is_some() {}
    }
    // Finish what is in flight, then flush the answers.
    executor.backlog(false);
    draining.store(true, Ordering::Relaxed);
    scheduler.drain().await;
    while holds.join_next().await.is_some() {}
    let stats = ConsumeStats {
        answered: shared.stats.answered.load(Ordering::Relaxed),
        from_ledger: shared.stats.from_ledger.load(Ordering::Relaxed),
        failed_rows: shared.stats.failed.load(Ordering::Relaxed),
        failures: shared.stats.failures.load(Ordering::Relaxed),
    };
    drop(shared);
    winding_down.store(true, Ordering::Relaxed);
    let _ = recorder.await;
    let _ = writer.await;
    keepalive.abort();
    stats
}

/// Takes rows: held in an open transaction, or marked and claimed.
async fn take<Q: Queue>(
    queue: &Q,
    max: usize,
    holding: bool,
) -> Result<(Vec<Delivery>, Option<Q::Held>), Error> {
    if holding {
        let (rows, held) = queue.hold(max).await?;
        Ok((rows, Some(held)))
    } else {
        Ok((queue.fetch(max).await?, None))
    }
}

/// What the ledger must be asked for a fetched batch (the correlation ids of its decodable
/// requests), less what the fetch statement read already (rows whose correlation id it found
/// in the body), with what it read.
fn ledger_reads(rows: &[Delivery]) -> (Vec<String>, Vec<crate::transport::LedgerEntry>) {
    let mut missing = Vec::new();
    let mut read = Vec::new();
    for row in rows {
        let Ok(Decoded {
            request: Some(Ok(req)),
            ..
        }) = &row.decoded
        else {
            continue;
        };
        if unstorable_id(&req.correlation_id).is_some() {
            continue;
        }
        match &row.looked_up {
            Some((id, entry)) if *id == req.correlation_id => read.extend(entry.clone()),
            _ => missing.push(req.correlation_id.clone()),
        }
    }
    (missing, read)
}

/// A request to run, with what its answer needs.
struct Run {
    id: i64,
    request: ManagerRequest,
    /// A manager started it before and stopped without answering.
    claimed: Option<Claim>,
    format: Format,
    bus: Option<String>,
    received_at: String,
    /// The hold its row is in, if it is held.
    gather: Option<Arc<Gathering>>,
}

enum Prepared {
    Settle(Settle),
    Run(Box<Run>),
}

/// Decides what to do with a taken row without running anything: park it, answer it with an
/// error or from the ledger, or run it.
fn prepare(
    row: Delivery,
    known: &Known,
    options: &TransportOptions,
    expire_grace: Option<Duration>,
) -> Prepared {
    let id = row.id;
    let fail = |reason| {
        Prepared::Settle(Settle::Fail {
            request_id: id,
            reason,
        })
    };
    let decoded = match row.decoded {
        Ok(d) => d,
        Err(reason) => {
            tracing::error!(row_id = id, reason = %reason, "undecodable row moved to the failure queue");
            return fail(reason);
        }
    };
    let format = response_format(options, decoded.format);
    let bus = decoded.bus_name;
    let reply = |response: &ManagerResponse, ledger: Option<Box<crate::transport::LedgerEntry>>| {
        count_answer(response, ledger.is_none());
        Prepared::Settle(Settle::Reply {
            request_id: id,
            response: codec::encode_response(response, format, bus.as_deref()),
            ledger,
        })
    };
    match decoded.request {
        // Its answer could not be recorded, so it could run again on every redelivery.
        Some(Ok(request)) if let Some(reason) = unstorable_id(&request.correlation_id) => {
            tracing::error!(row_id = id, reason = %reason, "request moved to the failure queue");
            fail(reason)
        }
        Some(Ok(request)) => {
            if let Some(response) = (!request.dry_run())
                .then(|| known.answer(&request.correlation_id))
                .flatten()
            {
                tracing::info!(row_id = id, correlation_id = %request.correlation_id, redelivered = row.redelivered, "already answered, replying from the ledger");
                return reply(&response, None);
            }
            if let Some(elsewhere) = &row.elsewhere {
                tracing::warn!(row_id = id, correlation_id = %request.correlation_id, entity = %request.entity_id, "request for an entity this manager does not serve answered with an error");
                // A manager that served it started it and died: it may have run.
                let response = unrun(
                    &request,
                    match &row.claimed {
                        Some(claim) => interrupted(&request, claim),
                        None => not_here(&request, elsewhere),
                    },
                );
                let entry = ledger::entry(&response, utc_now_rfc3339(), Duration::ZERO);
                return reply(&response, Some(Box::new(entry)));
            }
            if let Some(grace) = expire_grace
                && row.age > request.timeout() + grace
            {
                tracing::warn!(row_id = id, correlation_id = %request.correlation_id, age_secs = row.age.as_secs(), "stale request answered without running it");
                let response = unrun(&request, expired(&request, row.age, grace));
                let entry = ledger::entry(&response, utc_now_rfc3339(), Duration::ZERO);
                return reply(&response, Some(Box::new(entry)));
            }
            Prepared::Run(Box::new(Run {
                id,
                request,
                claimed: row.claimed,
                format,
                bus,
                received_at: utc_now_rfc3339(),
                gather: None,
            }))
        }
        Some(Err(m)) => match m.correlation_id {
            Some(correlation_id) if let Some(reason) = unstorable_id(&correlation_id) => {
                tracing::error!(row_id = id, reason = %reason, "malformed request moved to the failure queue");
                fail(format!("{}; {reason}", m.reason))
            }
            Some(correlation_id) => {
                tracing::warn!(row_id = id, correlation_id = %correlation_id, reason = %m.reason, "malformed request answered with an error");
                let action = m.action.unwrap_or_default();
                let response = ManagerResponse {
                    correlation_id,
                    entity_type: EntityKind::guess(&action),
                    entity_id: m.entity_id.unwrap_or_default(),
                    action,
                    success: false,
                    output: None,
                    error: Some(m.reason),
                    metadata: serde_json::Map::from_iter([(
                        "changed".to_owned(),
                        serde_json::Value::Bool(false),
                    )]),
                };
                let entry = ledger::entry(&response, utc_now_rfc3339(), Duration::ZERO);
                reply(&response, Some(Box::new(entry)))
            }
            None => {
                tracing::error!(row_id = id, reason = %m.reason, "request without a correlation id moved to the failure queue");
                fail(m.reason)
            }
        },
        // The transport hands over request rows only.
        None => fail(format!("not a request: {}", decoded.class)),
    }
}

/// What the requests of one run share.
struct Shared {
    settle: mpsc::UnboundedSender<Settle>,
    starts: mpsc::UnboundedSender<StartRequest>,
    pace: Arc<Pace>,
    in_flight: Arc<Mutex<HashSet<i64>>>,
    recent: Recent,
    stats: Stats,
    options: TransportOptions,
}

impl Shared {
    /// Counts a settled row and hands it to its hold, while that is open, else to the
    /// writer; the row stays kept alive (in `in_flight`) until its answer is committed.
    fn finish(&self, s: Settle, gather: Option<&Gathering>) {
        match &s {
            Settle::Reply { ledger: None, .. } => {
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
                self.stats.from_ledger.fetch_add(1, Ordering::Relaxed);
            }
            Settle::Reply { ledger, .. } => {
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
                if ledger.as_ref().is_some_and(|e| !e.success) {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            Settle::Fail { .. } => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = crate::metrics::get() {
                    m.parked(1);
                }
            }
        }
        let s = match gather {
            Some(g) => match g.offer(s) {
                None => return,
                Some(s) => s,
            },
            None => s,
        };
        let _ = self.settle.send(s);
    }

    /// Waits for the request's turn on its entity and runs it. A request that is not
    /// idempotent has its start recorded first (committed), asked for when few requests of
    /// the entity are ahead of it, so the record overlaps them instead of delaying it; if the
    /// record cannot be made, or another manager has taken the row back, it is not run here.
    async fn take_turn<E: Execute>(&self, executor: &E, run: Box<Run>, mut turn: Turn, slot: Slot) {
        let idempotent = executor.idempotent(&run.request).await;
        // Interrupted and not idempotent: answered without running, nothing to record.
        let start = if idempotent || run.claimed.is_some() {
            None
        } else {
            // Right after the start nothing is timed yet: the requests behind the first wait
            // until its action and record are (or for their turn), rather than each record
            // its start alone at its turn.
            if !self.pace.known() && turn.ahead() > 0 {
                tokio::select! {
                    () = self.pace.learned() => {}
                    () = turn.near_in_groups(0) => {}
                }
            }
            // In groups of half the lookahead: one start record for a group, and still at
            // most the lookahead ahead of the head.
            turn.near_in_groups(self.pace.lookahead().div_ceil(2)).await;
            let (tx, rx) = oneshot::channel();
            let _ = self.starts.send((run.id, tx));
            Some(rx)
        };
        turn.wait().await;
        if let Some(recorded) = start
            && !recorded.await.unwrap_or(false)
        {
            tracing::warn!(row_id = run.id, correlation_id = %run.request.correlation_id, "not run here: its start could not be recorded, or another manager took it back");
            if let Some(g) = &run.gather {
                g.forget(run.id);
            }
            self.in_flight.lock().await.remove(&run.id);
            return;
        }
        self.run(executor, run, idempotent, slot, turn).await;
    }

    /// Runs a request (or answers a duplicate this process answered already) and queues its
    /// answer; the slot is free once the answer is queued. The entity's next request may start
    /// once this one's answer is known to the process (a duplicate behind it finds it), before
    /// the answer is encoded and queued: that work is off the entity's line.
    async fn run<E: Execute>(
        &self,
        executor: &E,
        run: Box<Run>,
        idempotent: bool,
        slot: Slot,
        turn: Turn,
    ) {
        let started = Instant::now();
        let Run {
            id,
            request,
            claimed,
            format,
            bus,
            received_at,
            gather,
        } = *run;
        let encode = |r: &ManagerResponse| codec::encode_response(r, format, bus.as_deref());
        // A dry run's answer is never another request's, nor is another's a dry run's.
        let dry_run = request.dry_run();
        let mut aftercare = Aftercare::none();
        let settle = match (!dry_run)
            .then(|| self.recent.get(&request.correlation_id))
            .flatten()
        {
            Some(response) => {
                drop(turn);
                count_answer(&response, true);
                Settle::Reply {
                    request_id: id,
                    response: encode(&response),
                    ledger: None,
                }
            }
            None => {
                let response = match claimed {
                    Some(claim) if !idempotent => {
                        tracing::warn!(row_id = id, correlation_id = %request.correlation_id, manager = %claim.manager, started_at = %claim.started_at, "interrupted request answered without running it again");
                        interrupted(&request, &claim)
                    }
                    _ => {
                        let metrics = crate::metrics::get();
                        if let Some(m) = metrics {
                            m.running(1);
                        }
                        let response;
                        (response, aftercare) = executor.execute(&request).await;
                        if let Some(m) = metrics {
                            m.running(-1);
                        }
                        self.pace.note_action(started.elapsed());
                        response
                    }
                };
                let response = Arc::new(response);
                if !dry_run {
                    self.recent.put(response.clone());
                }
                drop(turn);
                count_answer(&response, false);
                let entry = ledger::entry(&response, received_at, started.elapsed());
                Settle::Reply {
                    request_id: id,
                    response: encode(&response),
                    ledger: Some(Box::new(entry)),
                }
            }
        };
        self.finish(settle, gather.as_deref());
        // The used instance is given back once the answer is on its way.
        drop(aftercare);
        drop(slot);
    }
}

/// The rows of one hold: their answers gathered until every row has one or the bound passes,
/// then committed in the hold's transaction.
#[derive(Debug)]
struct Gathering {
    state: std::sync::Mutex<GatherState>,
    /// Every row has its answer (or will not get one here).
    all_in: tokio::sync::Notify,
}

#[derive(Debug)]
struct GatherState {
    /// Answers are still taken (the hold is not being released).
    open: bool,
    answers: Vec<Settle>,
    /// Rows without an answer yet.
    waiting: HashSet<i64>,
}

impl Gathering {
    fn new(rows: &[Delivery]) -> Self {
        Self {
            state: std::sync::Mutex::new(GatherState {
                open: true,
                answers: Vec::with_capacity(rows.len()),
                waiting: rows.iter().map(|r| r.id).collect(),
            }),
            all_in: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GatherState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes an answer while the hold is open; gives it back once it is released (it then
    /// goes to the writer).
    fn offer(&self, s: Settle) -> Option<Settle> {
        let mut st = self.state();
        if !st.open {
            return Some(s);
        }
        st.waiting.remove(&s.request_id());
        st.answers.push(s);
        if st.waiting.is_empty() {
            self.all_in.notify_one();
        }
        None
    }

    /// A row that gets no answer here (not run): released with the hold as it was.
    fn forget(&self, id: i64) {
        let mut st = self.state();
        if st.waiting.remove(&id) && st.waiting.is_empty() {
            self.all_in.notify_one();
        }
    }

    /// Closes it: the answers in, and the rows still running.
    fn close(&self) -> (Vec<Settle>, Vec<i64>) {
        let mut st = self.state();
        st.open = false;
        (
            std::mem::take(&mut st.answers),
            st.waiting.drain().collect(),
        )
    }
}

/// Ends a hold once every row has its answer or `bound` passes: the answers, and the marks of
/// the rows still running, committed in the hold's transaction. If that fails, nothing of it
/// happened (the rows are back on the queue unmarked): the answers go to the writer, which
/// commits them as any other (a request another consumer took meanwhile gets no second one).
async fn release_hold<Q: Queue>(
    queue: Arc<Q>,
    held: Q::Held,
    gather: Arc<Gathering>,
    bound: Duration,
    shared: Arc<Shared>,
    health: Arc<Health>,
) {
    let _ = tokio::time::timeout(bound, gather.all_in.notified()).await;
    let (answers, running) = gather.close();
    let ids: Vec<i64> = answers.iter().map(Settle::request_id).collect();
    let late = running.len();
    match queue.release(held, &answers, running).await {
        Ok(()) => {
            health.up(Call::Commit);
            let mut held = shared.in_flight.lock().await;
            for id in ids {
                held.remove(&id);
            }
        }
        Err(e) => {
            health.down(Call::Commit, &e);
            tracing::warn!(cause = %e, answers = answers.len(), running = late, "cannot end a hold; committing its answers apart");
            for s in answers {
                let _ = shared.settle.send(s);
            }
        }
    }
}

/// Counts an answer in the metrics: by the plugin that ran (`-` when none did), the action
/// and what the answer was.
fn count_answer(response: &ManagerResponse, from_ledger: bool) {
    let Some(m) = crate::metrics::get() else {
        return;
    };
    let flag = |k: &str| {
        response
            .metadata
            .get(k)
            .and_then(serde_json::Value::as_bool)
            == Some(true)
    };
    let outcome = if from_ledger {
        Outcome::Ledger
    } else if flag("expired") {
        Outcome::Expired
    } else if flag("interrupted") {
        Outcome::Interrupted
    } else if response.success {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    let plugin = response
        .metadata
        .get("plugin")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("-");
    m.answered(plugin, &response.action, outcome);
    if !from_ledger && response.metadata.contains_key("changed") {
        let effect = if flag("dry_run") {
            "dry_run"
        } else if flag("changed") {
            "changed"
        } else {
            "unchanged"
        };
        m.effect(plugin, &response.action, effect);
    }
}

/// How long actions and start records take (moving averages), so a request asks for its
/// start record early enough that it is written when its turn comes, and no earlier than
/// that needs.
#[derive(Debug)]
struct Pace {
    action_us: AtomicU64,
    record_us: AtomicU64,
    /// Told once both an action and a record have been timed.
    learned: tokio::sync::Notify,
}

impl Default for Pace {
    /// Nothing known yet (0): no lookahead until actions are seen to be quick.
    fn default() -> Self {
        Self {
            action_us: AtomicU64::new(0),
            record_us: AtomicU64::new(0),
            learned: tokio::sync::Notify::new(),
        }
    }
}

impl Pace {
    /// A moving average over about the last eight; the first value is taken as it is, and
    /// tells the waiters of [`Pace::learned`] once both are known.
    fn note(&self, cell: &AtomicU64, took: Duration) {
        let x = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = cell.load(Ordering::Relaxed);
        let new = if old == 0 { x } else { old - old / 8 + x / 8 };
        cell.store(new, Ordering::Relaxed);
        if old == 0 && self.known() {
            self.learned.notify_waiters();
        }
    }

    fn note_action(&self, took: Duration) {
        self.note(&self.action_us, took);
    }

    fn note_record(&self, took: Duration) {
        self.note(&self.record_us, took);
    }

    /// Whether both an action and a start record have been timed.
    fn known(&self) -> bool {
        self.action_us.load(Ordering::Relaxed) != 0 && self.record_us.load(Ordering::Relaxed) != 0
    }

    /// Returns once both an action and a start record have been timed.
    async fn learned(&self) {
        let told = self.learned.notified();
        tokio::pin!(told);
        told.as_mut().enable();
        if !self.known() {
            told.await;
        }
    }

    /// How many requests may be ahead of one that asks for its start record: none when a
    /// record costs under a tenth of an action (it is then written when the turn comes, and a
    /// crash interrupts only what runs); otherwise as many as two records' time covers (a
    /// request asked while a record is written goes into the next one).
    fn lookahead(&self) -> u64 {
        let action = self.action_us.load(Ordering::Relaxed);
        let record = self.record_us.load(Ordering::Relaxed);
        if action == 0 || record.saturating_mul(10) < action {
            0
        } else {
            (2 * record).div_ceil(action.max(1)).clamp(1, MAX_LOOKAHEAD)
        }
    }
}

/// Writes start records in batches: everything asked for while one is written goes into the
/// next statement. While the service runs a database that is away is retried (the requests
/// wait, as their answers would); once it stops taking work, a few tries, then the requests
/// are left unrun (claimed, not started: the next process runs them).
async fn record_starts<Q: Queue>(
    queue: Arc<Q>,
    mut rx: mpsc::UnboundedReceiver<StartRequest>,
    pace: Arc<Pace>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    health: Arc<Health>,
) {
    let mut buf = Vec::with_capacity(256);
    while rx.recv_many(&mut buf, 1024).await > 0 {
        // The requests woken together with the first (a group let through, a fetch's rows)
        // ask in the same few microseconds: once they have run, they go into this record
        // rather than each into the next.
        tokio::task::yield_now().await;
        while buf.len() < 1024
            && let Ok(start) = rx.try_recv()
        {
            buf.push(start);
        }
        let batch = std::mem::take(&mut buf);
        let ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
        let recorded: HashSet<i64> = match retrying(
            Call::Start,
            &health,
            &draining,
            Duration::from_millis(50),
            ids.len(),
            |_| false,
            || queue.started(ids.clone()),
        )
        .await
        {
            Ok((marked, took)) => {
                pace.note_record(took);
                marked.into_iter().collect()
            }
            Err(e) => {
                tracing::error!(cause = %e, rows = ids.len(), "cannot record that requests start; leaving them to the next process");
                HashSet::new()
            }
        };
        for (id, tx) in batch {
            let _ = tx.send(recorded.contains(&id));
        }
    }
}

/// An answer given without running the action: it changed nothing (an interrupted request
/// may have changed something before the crash: its answer does not say), and a dry run's
/// says it was one (its ledger entry is then a dry run's).
fn unrun(request: &ManagerRequest, mut r: ManagerResponse) -> ManagerResponse {
    if r.metadata.get("interrupted") != Some(&serde_json::Value::Bool(true)) {
        r.metadata
            .entry("changed")
            .or_insert(serde_json::Value::Bool(false));
    }
    if request.dry_run() {
        r.metadata
            .insert("dry_run".into(), serde_json::Value::Bool(true));
    }
    r
}

/// The answer to a request Core has given up on: carrying it out now (a restart minutes or
/// hours late) would surprise more than it helps.
fn expired(request: &ManagerRequest, age: Duration, grace: Duration) -> ManagerResponse {
    let mut r = ManagerResponse::failure(
        request,
        EntityKind::guess(&request.action),
        format!(
            "expired, not run: the request was sent {} s ago, past its timeout of {} s and {} s of grace, so Core no longer waits for it",
            age.as_secs(),
            request.timeout().as_secs(),
            grace.as_secs()
        ),
    );
    r.metadata.insert("expired".into(), true.into());
    r.metadata.insert("age_secs".into(), age.as_secs().into());
    r
}

/// The answer to a request no live manager serves, or whose `all` / `supervisor` several
/// managers serve: nothing is run.
fn not_here(request: &ManagerRequest, elsewhere: &Elsewhere) -> ManagerResponse {
    let names = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let text = match elsewhere {
        Elsewhere::Unserved { entity, live } => format!(
            "no live manager serves entity '{entity}' (live managers: {}); not run",
            names(live)
        ),
        Elsewhere::Ambiguous { entity, managers } => format!(
            "entity '{entity}' is served by several managers ({}): name the one you mean, e.g. '{entity}@{}'; not run",
            names(managers),
            managers.first().map_or("HOST", String::as_str)
        ),
    };
    let mut r = ManagerResponse::failure(request, EntityKind::guess(&request.action), text);
    let (key, list) = match elsewhere {
        Elsewhere::Unserved { live, .. } => ("live_managers", live),
        Elsewhere::Ambiguous { managers, .. } => ("managers", managers),
    };
    r.metadata.insert(key.into(), list.clone().into());
    r
}

/// The answer to a request whose action a manager started and which it did not answer (a
/// crash, a kill): the action may have run, so it is not run again; Core decides.
fn interrupted(request: &ManagerRequest, claim: &Claim) -> ManagerResponse {
    let mut r = ManagerResponse::failure(
        request,
        EntityKind::guess(&request.action),
        format!(
            "the manager that took this request (manager '{}', at {}) stopped before answering, possibly during the action; it was not run again, so that it does not run twice: check the state of '{}'",
            claim.manager, claim.started_at, request.entity_id
        ),
    );
    r.metadata.insert("interrupted".into(), true.into());
    r.metadata
        .insert("started_at".into(), claim.started_at.clone().into());
    r.metadata
        .insert("manager".into(), claim.manager.clone().into());
    r
}

/// Commits answers in batches: everything queued when the previous commit ends goes into the
/// next transaction, so a busy queue pays one commit (one fsync) per batch. A row is kept
/// alive until its answer is committed (or given up on).
async fn write_settlements<Q: Queue>(
    queue: Arc<Q>,
    mut rx: mpsc::UnboundedReceiver<Settle>,
    in_flight: Arc<Mutex<HashSet<i64>>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    health: Arc<Health>,
) {
    let mut buf = Vec::with_capacity(512);
    while rx.recv_many(&mut buf, 512).await > 0 {
        let batch = std::mem::take(&mut buf);
        let ids: Vec<i64> = batch.iter().map(Settle::request_id).collect();
        commit(&*queue, batch, &stopping, &health).await;
        // Given up on, a row comes back after the redeliver timeout: stop keeping it alive.
        let mut held = in_flight.lock().await;
        for id in ids {
            held.remove(&id);
        }
    }
}

/// Commits a batch. A batch the database refuses a value of (too long, a NUL byte) is split
/// until the row is alone, so the others are not held back by it; that row's answer is then
/// parked in the failure queue with the reason. A database that is away is retried.
async fn commit<Q: Queue>(
    queue: &Q,
    batch: Vec<Settle>,
    stopping: &std::sync::atomic::AtomicBool,
    health: &Health,
) {
    let mut pending = vec![batch];
    while let Some(mut batch) = pending.pop() {
        match commit_retrying(queue, &batch, stopping, health).await {
            Ok(()) => {}
            Err(e) if e.is_row_problem() && batch.len() > 1 => {
                let second = batch.split_off(batch.len() / 2);
                pending.push(second);
                pending.push(batch);
            }
            Err(e) if e.is_row_problem() => match batch.pop() {
                Some(Settle::Reply { request_id, .. }) => {
                    tracing::error!(row_id = request_id, cause = %e, "cannot store an answer; the request goes to the failure queue");
                    pending.push(vec![Settle::Fail {
                        request_id,
                        reason: format!("cannot store the answer: {e}"),
                    }]);
                }
                Some(Settle::Fail { request_id, .. }) => {
                    tracing::error!(row_id = request_id, cause = %e, "cannot park a row; it comes back after the redeliver timeout");
                }
                None => {}
            },
            Err(e) => {
                // The requests stay marked delivered and come back after the redeliver
                // timeout; nothing is lost, but they will run again.
                tracing::error!(cause = %e, rows = batch.len(), "giving up committing answers");
            }
        }
    }
}

/// Commits one batch, retrying with backoff while the database is away: for as long as it
/// takes while the service runs (the answers are kept: no new work is taken meanwhile, since
/// fetches fail too, so they are bounded by the concurrency), and a few more times once it
/// stops. A refused value is not retried (the same batch would be refused again).
async fn commit_retrying<Q: Queue>(
    queue: &Q,
    batch: &[Settle],
    stopping: &std::sync::atomic::AtomicBool,
    health: &Health,
) -> Result<(), Error> {
    let (_, took) = retrying(
        Call::Commit,
        health,
        stopping,
        Duration::from_millis(100),
        batch.len(),
        Error::is_row_problem,
        || queue.complete(batch.to_vec()),
    )
    .await?;
    tracing::debug!(
        rows = batch.len(),
        elapsed_us = took.as_micros() as u64,
        "answers committed"
    );
    Ok(())
}

/// Makes a database call until it succeeds, retrying with backoff (from `first_delay`,
/// doubling up to 5 s) for as long as the service runs, and a few more times once `stopping`
/// is set; an error `final_error` says retrying cannot help is returned at once (`rows`: how
/// many rows it carries, for the log). The loop's
/// health follows the call. Returns the result and how long the successful attempt took.
async fn retrying<T, F: Future<Output = Result<T, Error>>>(
    call: Call,
    health: &Health,
    stopping: &std::sync::atomic::AtomicBool,
    first_delay: Duration,
    rows: usize,
    final_error: impl Fn(&Error) -> bool,
    mut attempt: impl FnMut() -> F,
) -> Result<(T, Duration), Error> {
    const ATTEMPTS_WHEN_STOPPING: u32 = 5;
    let mut delay = first_delay;
    let (mut tries, mut last_tries) = (1, 0);
    loop {
        let t = Instant::now();
        match attempt().await {
            Ok(v) => {
                health.up(call);
                return Ok((v, t.elapsed()));
            }
            Err(e) if final_error(&e) => return Err(e),
            Err(e)
                if stopping.load(Ordering::Relaxed) && {
                    last_tries += 1;
                    last_tries > ATTEMPTS_WHEN_STOPPING
                } =>
            {
                return Err(e);
            }
            Err(e) => {
                health.down(call, &e);
                tracing::error!(cause = %e, attempt = tries, rows, "{}", call.retrying());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                tries += 1;
            }
        }
    }
}

/// Says this manager is alive (the first beat registers it, taking back what its previous
/// process held), and moves `delivered_at` of running requests forward so no consumer takes
/// them again.
async fn keep_alive<Q: Queue>(queue: Arc<Q>, in_flight: Arc<Mutex<HashSet<i64>>>, every: Duration) {
    let takeover = Duration::from_secs(queue.options().takeover_secs.max(1));
    let every = every.min(takeover / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(e) = queue.heartbeat().await {
            tracing::warn!(cause = %e, "cannot send this manager's heartbeat");
        }
        let ids: Vec<i64> = in_flight.lock().await.iter().copied().collect();
        if let Err(e) = queue.keepalive(ids).await {
            tracing::warn!(cause = %e, "cannot refresh delivered_at of running requests");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex as StdMutex;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::codec::{Encoded, encode_request};
    use crate::transport::Records;
    use crate::transport::memory::MemoryQueue;

    fn delivery(id: i64) -> Delivery {
        Delivery {
            id,
            decoded: Err("x".into()),
            redelivered: false,
            claimed: None,
            age: Duration::ZERO,
            elsewhere: None,
            looked_up: None,
        }
    }

    fn fail(id: i64) -> Settle {
        Settle::Fail {
            request_id: id,
            reason: "x".into(),
        }
    }

    /// A hold's answers are gathered until every row has one (or will get none here); once
    /// it is released, a late answer is given back (for the writer), and the rows without an
    /// answer are the ones still running.
    #[tokio::test]
    async fn a_hold_gathers_its_answers_until_released() {
        let g = Gathering::new(&[delivery(1), delivery(2), delivery(3)]);
        assert!(g.offer(fail(1)).is_none());
        g.forget(2);
        let waited = tokio::time::timeout(Duration::from_millis(20), g.all_in.notified()).await;
        assert!(waited.is_err(), "row 3 has no answer yet");
        assert!(g.offer(fail(3)).is_none());
        tokio::time::timeout(Duration::from_secs(5), g.all_in.notified())
            .await
            .unwrap();
        let (answers, running) = g.close();
        assert_eq!(
            answers.iter().map(Settle::request_id).collect::<Vec<_>>(),
            [1, 3]
        );
        assert!(running.is_empty());

        let g = Gathering::new(&[delivery(7), delivery(8)]);
        assert!(g.offer(fail(7)).is_none());
        let (answers, running) = g.close();
        assert_eq!((answers.len(), running), (1, vec![8]));
        assert_eq!(g.offer(fail(8)).map(|s| s.request_id()), Some(8));
    }

    /// Answers every request with success after `delay`, counting runs by correlation id.
    #[derive(Default)]
    struct Fake {
        delay: Duration,
        runs: StdMutex<HashMap<String, usize>>,
        log: StdMutex<Vec<String>>,
        /// What the loop said of the backlog, in order.
        backlog: StdMutex<Vec<bool>>,
    }

    impl Execute for Fake {
        /// `start` is, anything else is not.
        async fn idempotent(&self, req: &ManagerRequest) -> bool {
            req.action == "start"
        }

        async fn execute(&self, req: &ManagerRequest) -> (ManagerResponse, Aftercare) {
            self.log
                .lock()
                .unwrap()
                .push(format!("{} {}", req.entity_id, req.correlation_id));
            tokio::time::sleep(self.delay).await;
            *self
                .runs
                .lock()
                .unwrap()
                .entry(req.correlation_id.clone())
                .or_default() += 1;
            let mut r = ManagerResponse::failure(req, EntityKind::Container, "");
            r.success = true;
            r.error = None;
            (r, Aftercare::none())
        }

        fn backlog(&self, waiting: bool) {
            self.backlog.lock().unwrap().push(waiting);
        }
    }

    impl Fake {
        fn runs(&self, id: &str) -> usize {
            self.runs.lock().unwrap().get(id).copied().unwrap_or(0)
        }
    }

    fn options() -> TransportOptions {
        TransportOptions {
            redeliver_timeout_secs: 30,
            ..TransportOptions::default()
        }
    }

    async fn send(q: &MemoryQueue, id: &str, entity: &str) -> i64 {
        let req = ManagerRequest::new(id, entity, "start");
        q.send("default", encode_request(&req, Format::Php, None))
            .await
            .unwrap()
    }

    fn answers(q: &MemoryQueue) -> Vec<String> {
        q.rows("default")
            .into_iter()
            .filter_map(|r| codec::decode_response(r.row.body.as_bytes(), &r.row.headers).ok())
            .map(|r| r.correlation_id)
            .collect()
    }

    fn limit(n: u64) -> ConsumeOptions {
        ConsumeOptions {
            limit: Some(n),
            poll: Duration::from_millis(10),
            ..ConsumeOptions::default()
        }
    }

    #[test]
    fn lookahead_covers_one_start_record_of_quick_actions_and_none_of_slow_ones() {
        let ms = Duration::from_millis;
        let pace = Pace::default();
        assert_eq!(pace.lookahead(), 0, "nothing known");
        pace.note_record(ms(1));
        pace.note_action(ms(200));
        assert_eq!(pace.lookahead(), 0, "a record is cheap beside the action");
        let pace = Pace::default();
        pace.note_record(Duration::from_micros(500));
        pace.note_action(Duration::from_micros(100));
        // Twice the record over the action: a request asked while another record is being
        // written waits for it, then for its own.
        assert_eq!(pace.lookahead(), 10);
        pace.note_record(ms(50));
        assert_eq!(pace.lookahead(), MAX_LOOKAHEAD, "bounded");
    }

    /// Actions far quicker than a start record, a backlog from the start: the starts of the
    /// requests after the one that runs are recorded ahead of their turn, a group in one
    /// record (not one record per request as the head moves, nor, before the first action and
    /// record are timed, each at its turn), and never more than [`MAX_LOOKAHEAD`] of them
    /// ahead of what has run (what a crash would answer "interrupted" without having run it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quick_actions_record_their_starts_in_groups_at_most_the_lookahead_ahead() {
        struct Quick {
            q: Arc<MemoryQueue>,
            ran: AtomicUsize,
            most_ahead: AtomicUsize,
        }
        impl Execute for Quick {
            async fn idempotent(&self, _: &ManagerRequest) -> bool {
                false
            }
            async fn execute(&self, req: &ManagerRequest) -> (ManagerResponse, Aftercare) {
                let ran = self.ran.fetch_add(1, Ordering::SeqCst) + 1;
                let ahead = self.q.started_total().saturating_sub(ran);
                self.most_ahead.fetch_max(ahead, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(200));
                let mut r = ManagerResponse::failure(req, EntityKind::Container, "");
                r.success = true;
                r.error = None;
                (r, Aftercare::none())
            }
        }
        const N: usize = 300;
        let q = Arc::new(MemoryQueue::new(options()));
        q.slow_starts(Duration::from_millis(20));
        let quick = Arc::new(Quick {
            q: q.clone(),
            ran: AtomicUsize::new(0),
            most_ahead: AtomicUsize::new(0),
        });
        // A backlog from the start: the first request's action and record are timed before
        // the others ask for theirs.
        for i in 0..N {
            send(&q, &format!("c{i}"), "e").await;
        }
        let stats = consume(
            q.clone(),
            quick.clone(),
            limit(N as u64),
            std::future::pending(),
        )
        .await;
        assert_eq!(stats.answered, N as u64);
        let most = quick.most_ahead.load(Ordering::SeqCst);
        assert!(
            (2..=MAX_LOOKAHEAD as usize).contains(&most),
            "{most} requests recorded as started ahead of what ran"
        );
        let records = q.starts();
        assert!(
            records <= N / 10,
            "{records} start records for {N} requests on one entity"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_every_request_once_and_a_redelivery_from_the_ledger() {
        let q = Arc::new(MemoryQueue::new(options()));
        let fake = Arc::new(Fake::default());
        for i in 0..5 {
            send(&q, &format!("c{i}"), "e").await;
        }
        // The same correlation id again, as Core's retry would send it.
        send(&q, "c0", "e").await;
        let stats = consume(q.clone(), fake.clone(), limit(6), std::future::pending()).await;
        assert_eq!(stats.answered, 6);
        assert_eq!(
            fake.runs("c0"),
            1,
            "a duplicate in flight is answered without running"
        );
        let mut got = answers(&q);
        got.sort();
        assert_eq!(got, ["c0", "c0", "c1", "c2", "c3", "c4"]);
        // A request answered in an earlier run comes back (redelivered): from the ledger.
        send(&q, "c3", "e").await;
        let stats = consume(q.clone(), fake.clone(), limit(1), std::future::pending()).await;
        assert_eq!(stats.from_ledger, 1);
        assert_eq!(fake.runs("c3"), 1);
        assert_eq!(q.ledger().len(), 5);
    }

    /// A fetch that fills every free slot says a backlog waits; one that takes fewer rows
    /// than it asked for, an empty one, and the end of the run say none does.
    #[tokio::test(start_paused = true)]
    async fn a_fetch_that_fills_its_slots_says_a_backlog_waits() {
        let q = Arc::new(MemoryQueue::new(options()));
        for i in 0..5 {
            send(&q, &format!("c{i}"), &format!("e{i}")).await;
        }
        let fake = Arc::new(Fake::default());
        let opts = ConsumeOptions {
            concurrency: 2,
            batch: 2,
            time_limit: Some(Duration::from_millis(200)),
            poll: Duration::from_millis(20),
            ..ConsumeOptions::default()
        };
        let stats = consume(q.clone(), fake.clone(), opts, std::future::pending()).await;
        assert_eq!(stats.answered, 5);
        let said = fake.backlog.lock().unwrap().clone();
        // Two full fetches of two, the last row alone, empty fetches, the end of the run.
        assert_eq!(said[..3], [true, true, false], "{said:?}");
        assert!(said.len() > 3 && !said[3..].contains(&true), "{said:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_whose_manager_died_runs_after_the_redeliver_timeout() {
        let q = Arc::new(MemoryQueue::new(options()));
        send(&q, "lost", "e").await;
        // A manager took it and died before answering.
        assert_eq!(q.fetch(10).await.unwrap().len(), 1);
        let fake = Arc::new(Fake::default());
        let t0 = tokio::time::Instant::now();
        let stats = consume(q.clone(), fake.clone(), limit(1), std::future::pending()).await;
        assert_eq!(stats.answered, 1);
        assert!(t0.elapsed() >= Duration::from_secs(30));
        assert_eq!(answers(&q), ["lost"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_finishes_what_is_in_flight_and_commits_it() {
        let q = Arc::new(MemoryQueue::new(options()));
        for i in 0..3 {
            send(&q, &format!("c{i}"), &format!("e{i}")).await;
        }
        let fake = Arc::new(Fake {
            delay: Duration::from_secs(5),
            ..Fake::default()
        });
        let stop = tokio::time::sleep(Duration::from_secs(1));
        let stats = consume(q.clone(), fake.clone(), ConsumeOptions::default(), stop).await;
        assert_eq!(stats.answered, 3);
        assert_eq!(answers(&q).len(), 3, "committed before returning");
        // Nothing is taken after the stop.
        send(&q, "late", "e").await;
        assert_eq!(fake.runs("late"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_that_fails_is_retried_and_nothing_runs_twice() {
        let q = Arc::new(MemoryQueue::new(options()));
        send(&q, "c0", "e").await;
        q.fail_commits(3);
        let fake = Arc::new(Fake::default());
        let stats = consume(q.clone(), fake.clone(), limit(1), std::future::pending()).await;
        assert_eq!(stats.answered, 1);
        assert_eq!(answers(&q), ["c0"]);
        assert_eq!(fake.runs("c0"), 1);
        assert_eq!(q.commits(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn one_entity_in_order_and_bad_rows_parked() {
        let q = Arc::new(MemoryQueue::new(options()));
        for i in 0..4 {
            send(&q, &format!("c{i}"), "same").await;
        }
        q.send(
            "default",
            Encoded {
                body: "not a message".into(),
                headers: "[]".into(),
            },
        )
        .await
        .unwrap();
        q.fail_fetches(1);
        let fake = Arc::new(Fake {
            delay: Duration::from_millis(10),
            ..Fake::default()
        });
        let stats = consume(q.clone(), fake.clone(), limit(5), std::future::pending()).await;
        assert_eq!((stats.answered, stats.failed_rows), (4, 1));
        assert_eq!(
            *fake.log.lock().unwrap(),
            ["same c0", "same c1", "same c2", "same c3"]
        );
        assert_eq!(q.rows("failed").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_row_stays_kept_alive_until_its_answer_is_committed() {
        // The database refuses commits for longer than the redeliver timeout: the row must
        // not come back and be answered a second time meanwhile.
        let q = Arc::new(MemoryQueue::new(TransportOptions {
            redeliver_timeout_secs: 1,
            ..TransportOptions::default()
        }));
        send(&q, "slow-commit", "e").await;
        q.fail_commits(5);
        let fake = Arc::new(Fake::default());
        let opts = ConsumeOptions {
            keepalive: Duration::from_millis(200),
            poll: Duration::from_millis(50),
            ..ConsumeOptions::default()
        };
        let stop = tokio::time::sleep(Duration::from_secs(8));
        let stats = consume(q.clone(), fake.clone(), opts, stop).await;
        assert_eq!(answers(&q), ["slow-commit"], "answered once");
        assert_eq!(stats.answered, 1);
        assert_eq!(fake.runs("slow-commit"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_the_database_refuses_is_split_to_settle_the_culprit_alone() {
        let q = Arc::new(MemoryQueue::new(options()));
        for i in 0..6 {
            send(&q, &format!("c{i}"), &format!("e{i}")).await;
        }
        // The database refuses any batch holding c3's ledger row (a value it cannot store).
        q.refuse_rows_of("c3");
        let fake = Arc::new(Fake::default());
        let stats = consume(q.clone(), fake.clone(), limit(6), std::future::pending()).await;
        assert_eq!(stats.answered, 6);
        let mut got = answers(&q);
        got.sort();
        assert_eq!(got, ["c0", "c1", "c2", "c4", "c5"], "the others answered");
        let parked = q.failed_rows().await.unwrap();
        assert_eq!(parked.len(), 1);
        assert!(
            parked[0].reason.starts_with("cannot store the answer"),
            "{parked:?}"
        );
        assert_eq!(q.rows("default").len(), 5);
    }

    async fn send_action(q: &MemoryQueue, id: &str, action: &str) -> i64 {
        let req = ManagerRequest::new(id, id, action);
        q.send("default", encode_request(&req, Format::Php, None))
            .await
            .unwrap()
    }

    fn answer(q: &MemoryQueue, id: &str) -> ManagerResponse {
        q.rows("default")
            .into_iter()
            .filter_map(|r| codec::decode_response(r.row.body.as_bytes(), &r.row.headers).ok())
            .find(|r| r.correlation_id == id)
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_manager_takes_back_its_rows_at_once_and_runs_no_action_twice() {
        // The previous process of this manager (same id) took two requests and was killed.
        let q = Arc::new(MemoryQueue::new(options()));
        let restart = send_action(&q, "r1", "restart").await;
        let start = send_action(&q, "s1", "start").await;
        // Its token names its pid: ours now (a restarted container's process often gets it).
        let old = format!("{}-0ld", std::process::id());
        q.beat_as("marvin-manager", &old);
        q.taken_by(restart, "marvin-manager", &old);
        q.taken_by(start, "marvin-manager", &old);
        let fake = Arc::new(Fake::default());
        let t0 = tokio::time::Instant::now();
        let stats = consume(q.clone(), fake.clone(), limit(2), std::future::pending()).await;
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert_eq!(stats.answered, 2);
        // Not idempotent: answered without running it again, saying so.
        assert_eq!(fake.runs("r1"), 0);
        let r = answer(&q, "r1");
        assert!(!r.success);
        assert_eq!(r.metadata["interrupted"], true);
        assert_eq!(r.metadata["manager"], "marvin-manager");
        assert!(
            r.error.as_deref().unwrap().contains("it was not run again"),
            "{r:?}"
        );
        // Idempotent: run again.
        assert_eq!(fake.runs("s1"), 1);
        assert!(answer(&q, "s1").success);
    }

    #[tokio::test(start_paused = true)]
    async fn rows_of_a_manager_that_stopped_beating_come_back_after_the_takeover_time() {
        let q = Arc::new(MemoryQueue::new(TransportOptions {
            takeover_secs: 5,
            ..options()
        }));
        let id = send_action(&q, "b1", "restart").await;
        q.beat_as("host-b", "b-process");
        q.taken_by(id, "host-b", "b-process");
        let fake = Arc::new(Fake::default());
        let t0 = tokio::time::Instant::now();
        let stats = consume(q.clone(), fake.clone(), limit(1), std::future::pending()).await;
        let took = t0.elapsed();
        assert_eq!(stats.answered, 1);
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_secs(7),
            "taken back after {took:?}, not after the redeliver timeout"
        );
        assert_eq!(answer(&q, "b1").metadata["interrupted"], true);
        assert_eq!(fake.runs("b1"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_manager_keeps_its_rows() {
        let q = Arc::new(MemoryQueue::new(TransportOptions {
            takeover_secs: 2,
            ..options()
        }));
        let id = send_action(&q, "live1", "restart").await;
        q.beat_as("host-b", "b-process");
        q.taken_by(id, "host-b", "b-process");
        let beats = {
            let q = q.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    q.beat_as("host-b", "b-process");
                }
            })
        };
        let fake = Arc::new(Fake::default());
        let stop = tokio::time::sleep(Duration::from_secs(10));
        let stats = consume(q.clone(), fake.clone(), ConsumeOptions::default(), stop).await;
        beats.abort();
        assert_eq!(
            stats.answered, 0,
            "a row a live manager works on is never taken"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_waited_for_its_turn_when_its_manager_died_is_run() {
        let q = Arc::new(MemoryQueue::new(options()));
        let id = send_action(&q, "w1", "restart").await;
        let old = format!("{}-0ld", std::process::id());
        q.beat_as("marvin-manager", &old);
        q.waiting_at(id, "marvin-manager", &old);
        let fake = Arc::new(Fake::default());
        consume(q.clone(), fake.clone(), limit(1), std::future::pending()).await;
        assert_eq!(fake.runs("w1"), 1, "never started: run, not 'interrupted'");
        assert!(answer(&q, "w1").success);
    }

    async fn send_on(q: &MemoryQueue, id: &str, entity: &str, action: &str) -> i64 {
        let req = ManagerRequest::new(id, entity, action);
        q.send("default", encode_request(&req, Format::Php, None))
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn starts_are_recorded_just_ahead_of_the_turn_so_a_crash_interrupts_few() {
        let q = Arc::new(MemoryQueue::new(options()));
        let mut line = Vec::new();
        for i in 0..10 {
            line.push(send_on(&q, &format!("line-{i}"), "one", "restart").await);
        }
        // Idempotent (the fake says `start` is): no record needed.
        let idem = send_on(&q, "idem", "two", "start").await;
        let fake = Arc::new(Fake {
            delay: Duration::from_secs(5),
            ..Fake::default()
        });
        let running = tokio::spawn(consume(
            q.clone(),
            fake.clone(),
            ConsumeOptions::default(),
            tokio::time::sleep(Duration::from_secs(100)),
        ));
        // 12 s in: line-0 and line-1 answered, line-2 runs, line-3 is next.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let mut started = q.started_rows();
        started.sort_unstable();
        assert_eq!(
            started,
            [line[2]],
            "a slow action: recorded when its turn comes"
        );
        assert!(!started.contains(&idem));
        let mut got = answers(&q);
        got.sort();
        assert_eq!(got, ["idem", "line-0", "line-1"]);
        running.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_record_that_fails_is_retried_and_the_request_runs_once() {
        let q = Arc::new(MemoryQueue::new(options()));
        send_on(&q, "r", "e", "restart").await;
        q.fail_starts(3);
        let fake = Arc::new(Fake::default());
        let stats = consume(q.clone(), fake.clone(), limit(1), std::future::pending()).await;
        assert_eq!(stats.answered, 1);
        assert_eq!(fake.runs("r"), 1);
        assert_eq!(answers(&q), ["r"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_row_taken_back_by_another_manager_before_its_start_is_not_run_here() {
        let q = Arc::new(MemoryQueue::new(options()));
        send_on(&q, "first", "e", "restart").await;
        send_on(&q, "second", "e", "restart").await;
        let third = send_on(&q, "third", "e", "restart").await;
        let fake = Arc::new(Fake {
            delay: Duration::from_secs(5),
            ..Fake::default()
        });
        let q2 = q.clone();
        let thief = tokio::spawn(async move {
            // While `first` runs, `third` waits two places back, not yet recorded.
            tokio::time::sleep(Duration::from_secs(1)).await;
            q2.taken_by(third, "host-b", "b-process");
        });
        let stats = consume(q.clone(), fake.clone(), limit(3), std::future::pending()).await;
        thief.await.unwrap();
        assert_eq!(stats.answered, 2);
        assert_eq!(fake.runs("third"), 0, "host-b has it");
        let mut got = answers(&q);
        got.sort();
        assert_eq!(got, ["first", "second"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_core_gave_up_on_is_answered_expired_not_run() {
        let q = Arc::new(MemoryQueue::new(options()));
        send_action(&q, "late", "restart").await;
        tokio::time::advance(Duration::from_secs(41)).await;
        send_action(&q, "fresh", "restart").await;
        let fake = Arc::new(Fake::default());
        let stats = consume(q.clone(), fake.clone(), limit(2), std::future::pending()).await;
        assert_eq!(stats.answered, 2);
        assert_eq!(fake.runs("late"), 0, "10 s timeout + 30 s grace passed");
        let r = answer(&q, "late");
        assert!(!r.success);
        assert_eq!(r.metadata["expired"], true);
        assert!(
            r.error.as_deref().unwrap().starts_with("expired, not run"),
            "{r:?}"
        );
        assert_eq!(fake.runs("fresh"), 1);
        // Off: run however old.
        send_action(&q, "old", "restart").await;
        tokio::time::advance(Duration::from_secs(3600)).await;
        let opts = ConsumeOptions {
            expire_grace: None,
            ..limit(1)
        };
        consume(q.clone(), fake.clone(), opts, std::future::pending()).await;
        assert_eq!(fake.runs("old"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_follows_the_database() {
        let q = Arc::new(MemoryQueue::new(options()));
        let health = Arc::new(Health::default());
        assert!(!health.ready(), "not ready before the first fetch");
        q.fail_fetches(20);
        let opts = ConsumeOptions {
            health: health.clone(),
            poll: Duration::from_millis(100),
            ..ConsumeOptions::default()
        };
        let fake = Arc::new(Fake::default());
        let run = tokio::spawn(consume(
            q.clone(),
            fake,
            opts,
            tokio::time::sleep(Duration::from_secs(120)),
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let st = health.snapshot();
        assert!(!st.ready);
        assert!(st.last_error.is_some_and(|e| e.contains("database error")));
        // 20 failures with a backoff topping out at 5 s: back within ~90 s.
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert!(health.ready(), "{:?}", health.snapshot());
        // Commits failing make it not ready again until one succeeds.
        q.fail_commits(3);
        send(&q, "c1", "e").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!health.ready());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(health.ready());
        assert_eq!(answers(&q), ["c1"]);
        run.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn answers_computed_while_the_database_is_away_are_committed_when_it_is_back() {
        let q = Arc::new(MemoryQueue::new(TransportOptions {
            takeover_secs: 3600,
            ..options()
        }));
        send(&q, "outage-1", "e").await;
        // Away for ~4 minutes of retries (the backoff tops out at 5 s).
        q.fail_commits(50);
        let fake = Arc::new(Fake::default());
        let opts = ConsumeOptions {
            poll: Duration::from_secs(1),
            ..ConsumeOptions::default()
        };
        let stop = tokio::time::sleep(Duration::from_secs(400));
        let stats = consume(q.clone(), fake.clone(), opts, stop).await;
        assert_eq!(stats.answered, 1);
        assert_eq!(q.commits(), 1);
        assert_eq!(answers(&q), ["outage-1"], "kept, then committed once");
        assert_eq!(fake.runs("outage-1"), 1);
    }
}
