//! An in-memory queue with the Doctrine transport's semantics (own queue, oldest first,
//! redelivery after `redeliver_timeout`, keep-alive, settle in one step, only request rows
//! taken), so the scheduler, ledger dedup, redelivery and shutdown get fast unit tests. Its
//! clock is tokio's, so `tokio::time::pause` drives redelivery. Faults can be injected: the
//! next commits or fetches fail.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::codec;

use super::{
    Claim, Delivery, Error, FailedRow, HistoryFilter, LedgerEntry, Queue, Records, Settle,
    TransportOptions, classify_row, gone, storable, utc_now_rfc3339,
};

/// One row of the table.
#[derive(Debug, Clone)]
pub struct MemoryRow {
    /// The row id.
    pub id: i64,
    /// The queue it is on.
    pub queue: String,
    /// body and headers.
    pub row: codec::Encoded,
    /// When a consumer took it, if one did.
    pub delivered_at: Option<Instant>,
    /// When it was inserted.
    pub created_at: Instant,
}

#[derive(Debug, Default)]
struct State {
    next_id: i64,
    rows: BTreeMap<i64, MemoryRow>,
    ledger: HashMap<String, LedgerEntry>,
    failures: BTreeMap<i64, FailedRow>,
    failing_commits: usize,
    failing_fetches: usize,
    failing_starts: usize,
    commits: usize,
    starts: usize,
    /// Requests recorded as started, over all start records.
    started_total: usize,
    /// How long a start record takes.
    start_delay: std::time::Duration,
    refused: Option<String>,
    /// row id -> (manager, instance, started_at).
    claims: BTreeMap<i64, (String, String, Option<String>)>,
    /// instance -> (manager, last beat).
    managers: HashMap<String, (String, Instant)>,
    registered: bool,
}

/// The in-memory queue.
#[derive(Debug)]
pub struct MemoryQueue {
    options: TransportOptions,
    instance: String,
    state: Mutex<State>,
    notify: Notify,
}

impl MemoryQueue {
    /// An empty queue with these options.
    pub fn new(options: TransportOptions) -> Self {
        Self {
            options,
            instance: super::instance_token(),
            state: Mutex::default(),
            notify: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rows now on `queue`, oldest first.
    pub fn rows(&self, queue: &str) -> Vec<MemoryRow> {
        self.state()
            .rows
            .values()
            .filter(|r| r.queue == queue)
            .cloned()
            .collect()
    }

    /// The ledger, by correlation id.
    pub fn ledger(&self) -> HashMap<String, LedgerEntry> {
        self.state().ledger.clone()
    }

    /// The next `n` commits fail (the database went away).
    pub fn fail_commits(&self, n: usize) {
        self.state().failing_commits = n;
    }

    /// The next `n` fetches fail.
    pub fn fail_fetches(&self, n: usize) {
        self.state().failing_fetches = n;
    }

    /// From now on, a batch holding the ledger row of `correlation_id` is refused as a value
    /// the database cannot store (what PostgreSQL says of an over-long or NUL-holding text).
    pub fn refuse_rows_of(&self, correlation_id: &str) {
        self.state().refused = Some(correlation_id.to_owned());
    }

    /// The process `instance` of manager `manager` took row `id` and started its action (and
    /// has not answered).
    pub fn taken_by(&self, id: i64, manager: &str, instance: &str) {
        self.claim(
            id,
            manager,
            instance,
            Some("2026-01-01T00:00:00.000Z".into()),
        );
    }

    /// The process `instance` of manager `manager` took row `id`, which waits for its turn
    /// there (not started).
    pub fn waiting_at(&self, id: i64, manager: &str, instance: &str) {
        self.claim(id, manager, instance, None);
    }

    fn claim(&self, id: i64, manager: &str, instance: &str, started: Option<String>) {
        let mut st = self.state();
        if let Some(row) = st.rows.get_mut(&id) {
            row.delivered_at = Some(Instant::now());
        }
        st.claims
            .insert(id, (manager.to_owned(), instance.to_owned(), started));
    }

    /// A heartbeat of process `instance` of manager `manager`.
    pub fn beat_as(&self, manager: &str, instance: &str) {
        self.state()
            .managers
            .insert(instance.to_owned(), (manager.to_owned(), Instant::now()));
    }

    /// The next `n` start records fail.
    pub fn fail_starts(&self, n: usize) {
        self.state().failing_starts = n;
    }

    /// Start records written so far (statements, not rows).
    pub fn starts(&self) -> usize {
        self.state().starts
    }

    /// Requests recorded as started so far, over all start records.
    pub fn started_total(&self) -> usize {
        self.state().started_total
    }

    /// Every start record takes `d` from now on (a database committing it).
    pub fn slow_starts(&self, d: std::time::Duration) {
        self.state().start_delay = d;
    }

    /// The claimed rows whose action is recorded as started.
    pub fn started_rows(&self) -> Vec<i64> {
        self.state()
            .claims
            .iter()
            .filter(|c| c.1.2.is_some())
            .map(|c| *c.0)
            .collect()
    }

    /// Commits that succeeded so far.
    pub fn commits(&self) -> usize {
        self.state().commits
    }

    fn insert(st: &mut State, queue: &str, row: codec::Encoded) -> i64 {
        st.next_id += 1;
        let id = st.next_id;
        st.rows.insert(
            id,
            MemoryRow {
                id,
                queue: queue.to_owned(),
                row,
                delivered_at: None,
                created_at: Instant::now(),
            },
        );
        id
    }
}

fn down() -> Error {
    Error::Db(sqlx::Error::PoolTimedOut)
}

impl Queue for MemoryQueue {
    /// Rows are not held here: a hold is a fetch (rows marked and claimed at once), a release
    /// a completion.
    type Held = ();

    async fn hold(&self, max: usize) -> Result<(Vec<Delivery>, ()), Error> {
        Ok((self.fetch(max).await?, ()))
    }

    async fn release(&self, (): (), batch: &[Settle], _running: Vec<i64>) -> Result<(), Error> {
        self.complete(batch.to_vec()).await
    }

    async fn setup(&self) -> Result<(), Error> {
        Ok(())
    }

    async fn fetch(&self, max: usize) -> Result<Vec<Delivery>, Error> {
        if !self.state().registered {
            self.heartbeat().await?;
        }
        let mut st = self.state();
        if st.failing_fetches > 0 {
            st.failing_fetches -= 1;
            return Err(down());
        }
        let now = Instant::now();
        let redeliver = Duration::from_secs(self.options.redeliver_timeout_secs);
        let takeover = Duration::from_secs(self.options.takeover_secs);
        let State {
            rows,
            claims,
            managers,
            ..
        } = &mut *st;
        let dead = |id: i64| {
            claims.get(&id).is_some_and(|(_, instance, _)| {
                managers
                    .get(instance)
                    .is_none_or(|(_, beat)| now.saturating_duration_since(*beat) > takeover)
            })
        };
        let mut taken = Vec::new();
        for row in rows.values_mut() {
            if taken.len() >= max {
                break;
            }
            let free = row
                .delivered_at
                .is_none_or(|at| now.saturating_duration_since(at) > redeliver)
                || dead(row.id);
            if row.queue != self.options.queue_name || !free {
                continue;
            }
            if let Some(decoded) = classify_row(row.row.body.as_bytes(), row.row.headers.as_bytes())
            {
                taken.push(Delivery {
                    id: row.id,
                    decoded,
                    redelivered: row.delivered_at.is_some(),
                    claimed: claims.get(&row.id).and_then(|(manager, _, started_at)| {
                        Some(Claim {
                            manager: manager.clone(),
                            started_at: started_at.clone()?,
                        })
                    }),
                    age: now.saturating_duration_since(row.created_at),
                    elsewhere: None,
                    looked_up: None,
                });
                row.delivered_at = Some(now);
            }
        }
        for d in &taken {
            let claim = claims
                .entry(d.id)
                .or_insert_with(|| (self.options.manager_id.clone(), self.instance.clone(), None));
            if claim.2.is_none() {
                claim.0.clone_from(&self.options.manager_id);
            }
            claim.1.clone_from(&self.instance);
        }
        Ok(taken)
    }

    async fn started(&self, ids: Vec<i64>) -> Result<Vec<i64>, Error> {
        let delay = self.state().start_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut st = self.state();
        if st.failing_starts > 0 {
            st.failing_starts -= 1;
            return Err(down());
        }
        let now = utc_now_rfc3339();
        let mut marked = Vec::new();
        for id in ids {
            if let Some((_, instance, started)) = st.claims.get_mut(&id)
                && *instance == self.instance
            {
                started.get_or_insert_with(|| now.clone());
                marked.push(id);
            }
        }
        st.starts += 1;
        st.started_total += marked.len();
        Ok(marked)
    }

    async fn complete(&self, batch: Vec<Settle>) -> Result<(), Error> {
        let batch = storable(batch);
        let mut st = self.state();
        if st.failing_commits > 0 {
            st.failing_commits -= 1;
            return Err(down());
        }
        if let Some(refused) = &st.refused
            && batch.iter().any(|s| {
                matches!(s, Settle::Reply { ledger: Some(e), .. } if e.correlation_id == *refused)
            })
        {
            return Err(Error::Unstorable(format!("ledger row of {refused}")));
        }
        let finished = utc_now_rfc3339();
        for s in batch {
            match s {
                Settle::Reply {
                    request_id,
                    response,
                    ledger,
                } => {
                    st.claims.remove(&request_id);
                    // Only with the deletion of its request: no second answer.
                    if st.rows.remove(&request_id).is_some() {
                        Self::insert(&mut st, &self.options.response_queue_name, response);
                    }
                    if let Some(mut e) = ledger.map(|e| *e) {
                        e.finished_at.clone_from(&finished);
                        st.ledger.entry(e.correlation_id.clone()).or_insert(e);
                    }
                }
                Settle::Fail { request_id, reason } => {
                    st.claims.remove(&request_id);
                    st.failures.insert(
                        request_id,
                        FailedRow {
                            id: request_id,
                            original_queue: self.options.queue_name.clone(),
                            reason,
                        },
                    );
                    if let Some(row) = st.rows.get_mut(&request_id) {
                        row.queue.clone_from(&self.options.failure_queue_name);
                        row.delivered_at = None;
                    }
                }
            }
        }
        st.commits += 1;
        drop(st);
        self.notify.notify_waiters();
        Ok(())
    }

    async fn heartbeat(&self) -> Result<(), Error> {
        let mut st = self.state();
        st.managers.insert(
            self.instance.clone(),
            (self.options.manager_id.clone(), Instant::now()),
        );
        if !st.registered {
            st.registered = true;
            let (own, id) = (&self.instance, &self.options.manager_id);
            st.managers
                .retain(|instance, (manager, _)| manager != id || !gone(own, instance));
        }
        Ok(())
    }

    async fn keepalive(&self, ids: Vec<i64>) -> Result<(), Error> {
        let mut st = self.state();
        let now = Instant::now();
        for id in ids {
            if let Some(row) = st.rows.get_mut(&id)
                && row.delivered_at.is_some()
            {
                row.delivered_at = Some(now);
            }
        }
        Ok(())
    }

    async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
    }

    async fn answered(
        &self,
        correlation_ids: Vec<String>,
    ) -> Result<HashMap<String, LedgerEntry>, Error> {
        let st = self.state();
        Ok(correlation_ids
            .into_iter()
            .filter_map(|c| st.ledger.get(&c).map(|e| (c, e.clone())))
            .collect())
    }

    async fn send(&self, queue: &str, row: codec::Encoded) -> Result<i64, Error> {
        let id = Self::insert(&mut self.state(), queue, row);
        self.notify.notify_waiters();
        Ok(id)
    }

    fn options(&self) -> &TransportOptions {
        &self.options
    }
}

impl Records for MemoryQueue {
    async fn history(&self, f: HistoryFilter) -> Result<Vec<LedgerEntry>, Error> {
        let mut out: Vec<LedgerEntry> = self
            .state()
            .ledger
            .values()
            .filter(|e| f.entity_id.as_ref().is_none_or(|id| *id == e.entity_id))
            .filter(|e| !f.failed_only || !e.success)
            .filter(|e| f.since.as_ref().is_none_or(|s| e.received_at >= *s))
            .cloned()
            .collect();
        out.sort_by(|a, b| b.received_at.cmp(&a.received_at));
        out.truncate(usize::try_from(f.limit.max(1)).unwrap_or(usize::MAX));
        Ok(out)
    }

    async fn failed_rows(&self) -> Result<Vec<FailedRow>, Error> {
        Ok(self.state().failures.values().cloned().collect())
    }

    async fn failed_messages(
        &self,
        id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<super::FailedMessage>, Error> {
        let st = self.state();
        Ok(st
            .failures
            .values()
            .filter(|f| id.is_none_or(|id| f.id == id))
            .filter_map(|f| {
                let row = st.rows.get(&f.id)?;
                Some(super::FailedMessage {
                    id: f.id,
                    original_queue: f.original_queue.clone(),
                    reason: f.reason.clone(),
                    failed_at: String::new(),
                    created_at: String::new(),
                    headers: row.row.headers.clone(),
                    body: row.row.body.clone(),
                })
            })
            .take(usize::try_from(limit.max(1)).unwrap_or(usize::MAX))
            .collect())
    }

    async fn retry_failed(&self, ids: Vec<i64>) -> Result<Vec<i64>, Error> {
        let mut st = self.state();
        let mut done = Vec::new();
        for id in ids {
            let Some(f) = st.failures.remove(&id) else {
                continue;
            };
            if let Some(row) = st.rows.get_mut(&id) {
                row.queue = f.original_queue;
                row.delivered_at = None;
                done.push(id);
            }
        }
        Ok(done)
    }

    async fn remove_failed(&self, ids: Vec<i64>) -> Result<Vec<i64>, Error> {
        let mut st = self.state();
        let mut done = Vec::new();
        for id in ids {
            if st.failures.remove(&id).is_some() {
                st.rows.remove(&id);
                done.push(id);
            }
        }
        Ok(done)
    }

    async fn prune(&self, before: String) -> Result<super::Pruned, Error> {
        let mut st = self.state();
        let n = st.ledger.len();
        st.ledger.retain(|_, e| e.finished_at >= before);
        Ok(super::Pruned {
            ledger: (n - st.ledger.len()) as u64,
            failed: 0,
        })
    }

    async fn queue_stats(&self) -> Result<super::QueueStats, Error> {
        let minute_ago = (chrono::Utc::now() - chrono::Duration::seconds(60))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        let st = self.state();
        let mut queues: BTreeMap<&str, super::QueueDepth> = BTreeMap::new();
        for row in st.rows.values() {
            let q = queues
                .entry(&row.queue)
                .or_insert_with(|| super::QueueDepth {
                    queue: row.queue.clone(),
                    waiting: 0,
                    in_progress: 0,
                    oldest_waiting_secs: 0.0,
                });
            if row.delivered_at.is_some() {
                q.in_progress += 1;
            } else {
                q.waiting += 1;
                let age = row.created_at.elapsed().as_secs_f64();
                q.oldest_waiting_secs = q.oldest_waiting_secs.max(age);
            }
        }
        Ok(super::QueueStats {
            queues: queues.into_values().collect(),
            answered_last_minute: u64::try_from(
                st.ledger
                    .values()
                    .filter(|e| e.finished_at >= minute_ago)
                    .count(),
            )
            .unwrap_or(u64::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Format, encode_request};
    use crate::message::ManagerRequest;

    fn options() -> TransportOptions {
        TransportOptions {
            redeliver_timeout_secs: 60,
            // Redelivery alone here: no heartbeats are sent.
            takeover_secs: 3600,
            ..TransportOptions::default()
        }
    }

    fn request(id: &str) -> codec::Encoded {
        encode_request(&ManagerRequest::new(id, "e", "start"), Format::Php, None)
    }

    #[tokio::test(start_paused = true)]
    async fn taken_rows_come_back_after_the_redeliver_timeout_unless_kept_alive() {
        let q = MemoryQueue::new(options());
        let a = q.send("default", request("a")).await.unwrap();
        let b = q.send("default", request("b")).await.unwrap();
        q.send("other", request("c")).await.unwrap();
        let taken = q.fetch(10).await.unwrap();
        assert_eq!(taken.iter().map(|d| d.id).collect::<Vec<_>>(), [a, b]);
        assert!(taken.iter().all(|d| !d.redelivered));
        assert!(q.fetch(10).await.unwrap().is_empty(), "marked delivered");
        tokio::time::advance(Duration::from_secs(40)).await;
        q.keepalive(vec![a]).await.unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        let again = q.fetch(10).await.unwrap();
        assert_eq!(again.iter().map(|d| d.id).collect::<Vec<_>>(), [b]);
        assert!(again[0].redelivered);
    }

    #[tokio::test]
    async fn settling_answers_deletes_and_records_once_or_parks() {
        let q = MemoryQueue::new(options());
        let a = q.send("default", request("a")).await.unwrap();
        let b = q.send("default", request("b")).await.unwrap();
        q.fetch(10).await.unwrap();
        let entry = |id: &str| LedgerEntry {
            correlation_id: id.into(),
            entity_id: "e".into(),
            action: "start".into(),
            plugin: None,
            success: true,
            error: None,
            response: crate::transport::LedgerResponse::from_text("null".into()),
            received_at: "2026-01-01T00:00:00.000Z".into(),
            finished_at: String::new(),
            duration_ms: 1,
            manager: None,
        };
        let reply = |id, body: &str| Settle::Reply {
            request_id: id,
            response: codec::Encoded {
                body: body.into(),
                headers: "[]".into(),
            },
            ledger: Some(Box::new(entry("a"))),
        };
        q.fail_commits(1);
        assert!(q.complete(vec![reply(a, "r1")]).await.is_err());
        assert_eq!(
            q.rows("default").len(),
            2,
            "a failed commit changes nothing"
        );
        q.complete(vec![
            reply(a, "r1"),
            Settle::Fail {
                request_id: b,
                reason: "bad".into(),
            },
        ])
        .await
        .unwrap();
        let left: Vec<String> = q.rows("default").into_iter().map(|r| r.row.body).collect();
        assert_eq!(left, ["r1"]);
        assert_eq!(q.rows("failed").len(), 1);
        assert_eq!(q.failed_rows().await.unwrap()[0].reason, "bad");
        let known = q.answered(vec!["a".into(), "zz".into()]).await.unwrap();
        assert_eq!(known.len(), 1);
        assert!(!known["a"].finished_at.is_empty());
        assert_eq!(
            q.history(HistoryFilter {
                limit: 10,
                ..HistoryFilter::default()
            })
            .await
            .unwrap()
            .len(),
            1
        );
    }
}
