//! The queue: Symfony Messenger's Doctrine transport table, on PostgreSQL or SQLite, plus the
//! manager's own ledger and failure tables in the same database; and an in-memory queue with
//! the same semantics for unit tests of the stages above.
//!
//! Two traits: [`Queue`] is the consume path (fetch, settle, keep-alive, wait, the ledger
//! lookup that dedup needs, and a sender for tools and tests); [`Records`] is the operator's
//! reads (history, the failure queue), written once for both databases in `records.rs`.
//!
//! Fetch semantics follow Symfony (own queue, `available_at <= now`, redelivery after
//! `redeliver_timeout`, oldest first), with `FOR UPDATE SKIP LOCKED` on PostgreSQL and
//! `BEGIN IMMEDIATE` on SQLite. Only `ManagerRequestCommand` rows are taken: a row of any
//! other class is never marked, deleted or delayed. [`Queue::complete`] writes responses,
//! deletes requests and writes ledger rows for a whole batch in one transaction.

pub mod dsn;
mod managers;
pub mod memory;
pub mod postgres;
mod records;
pub mod sqlite;

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec::{self, Decoded, Format};
pub use dsn::{Dsn, TransportOptions};

/// A transport failure (the database, not a message).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database said no. The cause is in the text, not in `source()`, so a chain prints
    /// it once.
    #[error("database error: {0}")]
    Db(sqlx::Error),
    /// The DSN or an option is wrong.
    #[error("invalid transport settings: {0}")]
    Settings(String),
    /// The task running a transaction ended abnormally (a panic in it, or the runtime
    /// shutting down).
    #[error("the database task did not finish: {0}")]
    Task(String),
    /// A value of the batch cannot be stored (in-memory queue's injected fault).
    #[error("the database cannot store a value of this batch: {0}")]
    Unstorable(String),
}

impl Error {
    /// Whether the statement lost a deadlock or a serialization conflict: trying it again
    /// may work.
    pub fn is_conflict(&self) -> bool {
        match self {
            Self::Db(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("40P01" | "40001"))
            }
            _ => false,
        }
    }

    /// Whether the statement failed because the queue's table does not exist (yet).
    pub fn is_missing_table(&self) -> bool {
        match self {
            Self::Db(sqlx::Error::Database(e)) => {
                e.code().as_deref() == Some("42P01") || e.message().contains("no such table")
            }
            _ => false,
        }
    }

    /// Whether the database refused a value of the batch (too long, a NUL byte, a
    /// constraint), as opposed to being away: retrying the same batch cannot help, splitting
    /// it finds the row.
    pub fn is_row_problem(&self) -> bool {
        match self {
            Self::Unstorable(_) | Self::Db(sqlx::Error::Encode(_)) => true,
            Self::Db(sqlx::Error::Database(e)) => {
                let code = e.code().unwrap_or_default();
                // PostgreSQL: SQLSTATE classes 22 (data exception) and 23 (integrity).
                // SQLite: the primary result codes TOOBIG, CONSTRAINT, MISMATCH, RANGE.
                code.starts_with("22")
                    || code.starts_with("23")
                    || code
                        .parse::<i64>()
                        .is_ok_and(|c| matches!(c & 0xff, 18 | 19 | 20 | 25))
            }
            _ => false,
        }
    }
}

/// The longest correlation id the ledger keys (`VARCHAR(190)`, as Symfony's `queue_name`).
pub const MAX_CORRELATION_ID_BYTES: usize = 190;
/// The largest row body decoded; a larger row is parked with the reason, undecoded.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// Why a correlation id cannot key the ledger (so its request must not run: its answer could
/// not be recorded), if it cannot.
pub fn unstorable_id(id: &str) -> Option<String> {
    if id.len() > MAX_CORRELATION_ID_BYTES {
        Some(format!(
            "correlation id of {} bytes is longer than the ledger's {MAX_CORRELATION_ID_BYTES}; not run",
            id.len()
        ))
    } else if id.contains('\0') {
        Some("correlation id holds a NUL byte, which the database cannot store; not run".into())
    } else {
        None
    }
}

/// Text the database can store: PostgreSQL's `text` refuses NUL bytes, written `\0` instead.
pub(crate) fn storable_text(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\\0")
    } else {
        s
    }
}

/// A batch every value of which the database can store: an answer whose correlation id
/// cannot key the ledger is parked instead (the service never runs such a request; this
/// guards the rest of the batch all the same), NULs in texts are escaped.
pub(crate) fn storable(batch: Vec<Settle>) -> Vec<Settle> {
    batch
        .into_iter()
        .map(|s| match s {
            Settle::Reply {
                request_id,
                ledger: Some(e),
                ..
            } if unstorable_id(&e.correlation_id).is_some() => Settle::Fail {
                request_id,
                reason: unstorable_id(&e.correlation_id).unwrap_or_default(),
            },
            Settle::Reply {
                request_id,
                response,
                ledger,
            } => Settle::Reply {
                request_id,
                response,
                ledger: ledger.map(|e| {
                    Box::new(LedgerEntry {
                        entity_id: storable_text(e.entity_id),
                        action: storable_text(e.action),
                        plugin: e.plugin.map(storable_text),
                        error: e.error.map(storable_text),
                        ..*e
                    })
                }),
            },
            Settle::Fail { request_id, reason } => Settle::Fail {
                request_id,
                reason: storable_text(reason),
            },
        })
        .collect()
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

/// A row taken from the queue.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The row id.
    pub id: i64,
    /// The decoded envelope, or why it is undecodable.
    pub decoded: Result<Decoded, String>,
    /// `delivered_at` was set: a consumer took it before and did not finish.
    pub redelivered: bool,
    /// A manager started its action before and did not answer (it stopped, or stopped
    /// heart-beating): the action may have run.
    pub claimed: Option<Claim>,
    /// How long ago it was created (`created_at`, on the table's clock).
    pub age: Duration,
    /// Not this manager's to run (several managers share the queue): answer with an error.
    pub elsewhere: Option<Elsewhere>,
    /// The ledger as the fetch statement read it: the correlation id it found in the body,
    /// and the entry of that id if there is one. `None`, or an id other than the decoded
    /// request's: the ledger still has to be asked.
    pub looked_up: Option<(String, Option<LedgerEntry>)>,
}

/// Who started a request before, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The manager's id.
    pub manager: String,
    /// When it recorded that the action starts, RFC 3339 UTC.
    pub started_at: String,
}

/// Where a taken request belongs when this manager is not the one to run it: it is answered
/// with an error instead (several managers share the queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elsewhere {
    /// No live manager serves its entity, and it has waited the grace period: the live
    /// managers' names.
    Unserved {
        /// The entity id.
        entity: String,
        /// The managers alive now.
        live: Vec<String>,
    },
    /// `all` or `supervisor` while several managers serve one: the managers that do.
    Ambiguous {
        /// The entity id.
        entity: String,
        /// The managers serving it.
        managers: Vec<String>,
    },
}

/// Whether a manager process is beating, silent past the bound, or stopped cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagerState {
    /// Beating.
    Live,
    /// Silent for longer than the takeover bound: its requests are taken back, its entities
    /// served by no one.
    Dead,
    /// Stopped cleanly: it serves nothing.
    Stopped,
}

/// A manager process registered on the queue (`managers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManagerInfo {
    /// Its name (`manager_id`, default the host name).
    pub name: String,
    /// The process (`<pid>-<random>`).
    pub instance: String,
    /// Its version.
    pub version: String,
    /// Seconds since it started, on the database's clock.
    pub started_secs_ago: Option<i64>,
    /// Seconds since its last heartbeat.
    pub silent_secs: i64,
    /// Live, dead or stopped.
    pub state: ManagerState,
    /// Requests it holds now.
    pub in_flight: u64,
    /// The entity ids it serves.
    pub entities: Vec<String>,
}

/// A ledger entry's response as JSON text: written once when the answer is known and stored
/// as it is (every answer's path), parsed only by the readers that look inside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LedgerResponse(Box<serde_json::value::RawValue>);

impl LedgerResponse {
    /// The response's JSON form (written as JSON, so not read back to check it).
    pub fn of(response: &crate::message::ManagerResponse) -> Self {
        Self(serde_json::value::to_raw_value(response).unwrap_or_default())
    }

    /// Stored text; `null` (the default) when it is not JSON.
    pub fn from_text(text: String) -> Self {
        Self(serde_json::value::RawValue::from_string(text).unwrap_or_default())
    }

    /// The JSON text.
    pub fn text(&self) -> &str {
        self.0.get()
    }

    /// The JSON value.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for LedgerResponse {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

/// One entry of the ledger: a request carried out, keyed by correlation id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The request's correlation id.
    pub correlation_id: String,
    /// The entity id.
    pub entity_id: String,
    /// The action.
    pub action: String,
    /// The plugin that ran it, if one did.
    pub plugin: Option<String>,
    /// Whether it worked.
    pub success: bool,
    /// Why not.
    pub error: Option<String>,
    /// The response, as JSON (ManagerResponseCommand's fields).
    pub response: LedgerResponse,
    /// When the request was taken, RFC 3339 UTC.
    pub received_at: String,
    /// When the answer was committed, RFC 3339 UTC.
    pub finished_at: String,
    /// How long it took.
    pub duration_ms: i64,
    /// The manager that answered (its `manager_id`); set by the transport when it commits.
    #[serde(default)]
    pub manager: Option<String>,
}

/// How a taken row is settled.
#[derive(Debug, Clone)]
pub enum Settle {
    /// Insert the response, delete the request, record the ledger entry (when new).
    Reply {
        /// The request row.
        request_id: i64,
        /// The response row.
        response: codec::Encoded,
        /// The ledger entry; none when answering from the ledger.
        ledger: Option<Box<LedgerEntry>>,
    },
    /// Move the row to the failure queue with the reason.
    Fail {
        /// The row.
        request_id: i64,
        /// Why.
        reason: String,
    },
}

impl Settle {
    /// The row it settles.
    pub fn request_id(&self) -> i64 {
        match self {
            Self::Reply { request_id, .. } | Self::Fail { request_id, .. } => *request_id,
        }
    }
}

/// A filter on the ledger history.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// Only this entity.
    pub entity_id: Option<String>,
    /// Only failures.
    pub failed_only: bool,
    /// Only entries received at or after this RFC 3339 UTC time.
    pub since: Option<String>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// A row parked in the failure queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRow {
    /// The row id.
    pub id: i64,
    /// The queue it came from.
    pub original_queue: String,
    /// Why it was parked.
    pub reason: String,
}

/// The consume path of the queue. PostgreSQL, SQLite and in-memory implement it.
pub trait Queue: Send + Sync + 'static {
    /// Creates the messenger table (as Symfony does, with the NOTIFY trigger on PostgreSQL)
    /// and the manager's tables, when missing.
    fn setup(&self) -> impl Future<Output = Result<(), Error>> + Send;
    /// Takes up to `max` request rows, marks them delivered and claims them for this manager
    /// process (not started yet).
    fn fetch(&self, max: usize) -> impl Future<Output = Result<Vec<Delivery>, Error>> + Send;
    /// What [`Queue::hold`] keeps open: the transaction holding the taken rows.
    type Held: Send + 'static;
    /// Whether [`Queue::hold`] holds rows in an open transaction (PostgreSQL). Otherwise it
    /// is [`Queue::fetch`] and [`Queue::release`] is [`Queue::complete`].
    fn holds(&self) -> bool {
        false
    }
    /// Takes up to `max` request rows and keeps them locked in an open transaction, neither
    /// marked delivered nor claimed: another consumer skips them, a crash hands them back at
    /// once. The caller ends it with [`Queue::release`] soon (a short bound), or drops it
    /// (rolled back: the rows are as they were).
    fn hold(
        &self,
        max: usize,
    ) -> impl Future<Output = Result<(Vec<Delivery>, Self::Held), Error>> + Send;
    /// Ends a hold in its transaction, one commit: settles `batch` (answers, deletions,
    /// ledger rows, parked rows) and marks delivered and claims the `running` rows (actions
    /// that outlive the bound; their answers come later through [`Queue::complete`]). On an
    /// error nothing of it is done: the held rows are back on the queue as they were, and
    /// the caller still has the batch, to commit it otherwise.
    fn release(
        &self,
        held: Self::Held,
        batch: &[Settle],
        running: Vec<i64>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Records (committed) that the actions of these rows (claimed, or held) start now, so a
    /// request that comes back after a crash is known to have been started. Returns the rows
    /// it recorded: a row another process took back or recorded first is not among them, and
    /// must not run here.
    fn started(&self, ids: Vec<i64>) -> impl Future<Output = Result<Vec<i64>, Error>> + Send;
    /// Settles a batch in one transaction.
    fn complete(&self, batch: Vec<Settle>) -> impl Future<Output = Result<(), Error>> + Send;
    /// Moves `delivered_at` of rows still being worked on to now.
    fn keepalive(&self, ids: Vec<i64>) -> impl Future<Output = Result<(), Error>> + Send;
    /// Says this manager is alive. The first beat of a process registers it under its
    /// manager id, which hands the rows an earlier process of that id held back to the queue
    /// at once; later beats keep its own rows from being taken back.
    fn heartbeat(&self) -> impl Future<Output = Result<(), Error>> + Send;
    /// Says which entity ids this manager process serves (replacing what it said before):
    /// when several managers share the queue, it then takes only requests for these, and
    /// answers those no live manager serves after the grace period. A process that never
    /// publishes takes every request, as a single manager does.
    fn publish(&self, entities: Vec<String>) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = entities;
        async { Ok(()) }
    }
    /// This process stops: it serves nothing any more (others' requests for its entities
    /// wait for it up to the grace period).
    fn deregister(&self) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }
    /// Waits until a new row may be there (a notification) or `timeout` passes.
    fn wait(&self, timeout: Duration) -> impl Future<Output = ()> + Send;
    /// Whether the last fetch or hold took every row there was (fewer than it asked for) and
    /// [`Queue::wait`] announces new ones: the loop then waits before it asks again, instead
    /// of asking an empty queue once more beside the statements of the rows just taken.
    fn drained(&self) -> bool {
        false
    }
    /// The ledger entries of these correlation ids: the requests already answered.
    fn answered(
        &self,
        correlation_ids: Vec<String>,
    ) -> impl Future<Output = Result<HashMap<String, LedgerEntry>, Error>> + Send;
    /// Inserts a row into `queue` (as Symfony's sender does); returns its id.
    fn send(
        &self,
        queue: &str,
        row: codec::Encoded,
    ) -> impl Future<Output = Result<i64, Error>> + Send;
    /// The options it runs with.
    fn options(&self) -> &TransportOptions;
}

/// The operator's reads: what was answered, what was parked.
pub trait Records: Send + Sync + 'static {
    /// Ledger history, newest first.
    fn history(
        &self,
        filter: HistoryFilter,
    ) -> impl Future<Output = Result<Vec<LedgerEntry>, Error>> + Send;
    /// Rows in the failure queue with their reasons.
    fn failed_rows(&self) -> impl Future<Output = Result<Vec<FailedRow>, Error>> + Send;
    /// What waits in the table, per queue, and how many answers the last minute saw.
    fn queue_stats(&self) -> impl Future<Output = Result<QueueStats, Error>> + Send;
    /// The rows this manager parked in the failure queue (all, or the one `id`), oldest
    /// first, at most `limit`.
    fn failed_messages(
        &self,
        id: Option<i64>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<FailedMessage>, Error>> + Send;
    /// Puts parked rows back on the queue they came from (as new, available now); the ids
    /// retried. Rows that are not parked by this manager are left alone.
    fn retry_failed(&self, ids: Vec<i64>) -> impl Future<Output = Result<Vec<i64>, Error>> + Send;
    /// Deletes parked rows and their records; the ids removed.
    fn remove_failed(&self, ids: Vec<i64>) -> impl Future<Output = Result<Vec<i64>, Error>> + Send;
    /// Deletes ledger rows answered before `before` (RFC 3339 UTC), and parked rows (with
    /// their records) parked before it.
    fn prune(&self, before: String) -> impl Future<Output = Result<Pruned, Error>> + Send;
    /// The manager processes registered on the queue: live, dead and stopped.
    fn managers(&self) -> impl Future<Output = Result<Vec<ManagerInfo>, Error>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// A row of the failure queue, as `failed show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedMessage {
    /// The row id.
    pub id: i64,
    /// The queue it came from.
    pub original_queue: String,
    /// Why it was parked.
    pub reason: String,
    /// When (RFC 3339 UTC).
    pub failed_at: String,
    /// When it was first sent (`created_at`, in the DSN's time zone).
    pub created_at: String,
    /// Its headers, as stored.
    pub headers: String,
    /// Its body, as stored.
    pub body: String,
}

/// What a prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// Ledger rows.
    pub ledger: u64,
    /// Parked rows (and their records).
    pub failed: u64,
}

/// The table now (`stats`, the queue metrics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    /// Every queue of the table that holds rows, by name.
    pub queues: Vec<QueueDepth>,
    /// Answers this queue's managers committed in the last 60 s (from the ledger).
    pub answered_last_minute: u64,
}

/// One queue of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDepth {
    /// `queue_name`.
    pub queue: String,
    /// Rows nobody has taken (delayed ones included).
    pub waiting: u64,
    /// Rows taken and not finished.
    pub in_progress: u64,
    /// Age of the oldest waiting row, from its `created_at` (0 when none waits).
    pub oldest_waiting_secs: f64,
}

/// Reads a ledger row (same columns on both databases).
pub(crate) fn entry_from_row<'r, R>(r: &'r R) -> Result<LedgerEntry, sqlx::Error>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let response: String = r.try_get("response")?;
    Ok(LedgerEntry {
        correlation_id: r.try_get("correlation_id")?,
        entity_id: r.try_get("entity_id")?,
        action: r.try_get("action")?,
        plugin: r.try_get("plugin")?,
        success: r.try_get("success")?,
        error: r.try_get("error")?,
        response: LedgerResponse::from_text(response),
        received_at: r.try_get("received_at")?,
        finished_at: r.try_get("finished_at")?,
        duration_ms: r.try_get("duration_ms")?,
        manager: r.try_get("manager")?,
    })
}

/// The SQL condition on the rows a fetch decodes, in one dialect: `find(haystack, needle)`
/// its substring position (0: absent), `last(column)` its last character, `params` its
/// placeholders for [`codec::Needles`]' `exact`, `lower`, `lower_plain` and `message_marker`,
/// `body` / `headers` the columns. The rows: those naming the request class (the first test
/// is the fast path of a busy queue; the lower-case ones catch other letter cases and bodies
/// never addslashed), base64 bodies, PHP envelopes without their message (truncated), and
/// JSON-looking rows of a request without a `type` header. Symfony decodes the first as
/// requests and rejects the others; a row of another class is left unread. (No regular
/// expression: PostgreSQL compiles one while planning every fetch, ~1 ms.)
pub(crate) fn candidate_filter(
    find: fn(&str, &str) -> String,
    last: fn(&str) -> String,
    params: [&str; 4],
    body: &str,
    headers: &str,
) -> String {
    let [exact, lower, plain, marker] = params;
    let lower_body = format!("lower({body})");
    let lower_headers = format!("lower({headers})");
    [
        format!("{} > 0", find(body, exact)),
        format!("{} > 0", find(headers, exact)),
        format!("({headers} = '[]' AND {} <> '}}')", last(body)),
        format!("{} > 0", find(&lower_body, lower)),
        format!("{} > 0", find(&lower_headers, lower)),
        format!("{} > 0", find(&lower_body, plain)),
        format!(
            "({headers} = '[]' AND {} > 0 AND {} = 0)",
            find(body, "'Envelope'"),
            find(body, marker)
        ),
        format!(
            "({headers} <> '[]' AND {} = 0 AND {} > 0)",
            find(headers, "'\"type\"'"),
            find(body, "'\"containerId\"'")
        ),
    ]
    .join(" OR ")
}

/// Decodes a candidate row (its columns as the database gave them: SQLite may hold a BLOB
/// or bytes that are not UTF-8); `None` when it is another class's row, to be left alone.
pub(crate) fn classify_row(body: &[u8], headers: &[u8]) -> Option<Result<Decoded, String>> {
    if body.len() > MAX_BODY_BYTES {
        return Some(Err(format!(
            "body of {} bytes is over the {} MiB limit; not decoded",
            body.len(),
            MAX_BODY_BYTES >> 20
        )));
    }
    let Ok(headers) = std::str::from_utf8(headers) else {
        return Some(Err("headers are not valid UTF-8 text".into()));
    };
    if std::str::from_utf8(body).is_err() {
        return Some(Err("body is not valid UTF-8 text".into()));
    }
    match codec::decode(body, headers) {
        Ok(d) if d.request.is_none() => None,
        other => Some(other),
    }
}

/// Rows found to be of another class (their text names the request class, so the SQL filter
/// lets them through): left out of later fetches, so they are not read, put back (a write,
/// and a NOTIFY that wakes the consumer again) or allowed to fill a batch ahead of real
/// requests, again and again. Bounded: forgotten all at once when full.
#[derive(Debug, Default)]
pub(crate) struct ForeignRows(std::sync::Mutex<std::collections::BTreeSet<i64>>);

impl ForeignRows {
    const CAP: usize = 100_000;

    pub(crate) fn ids(&self) -> Vec<i64> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    pub(crate) fn add(&self, ids: impl IntoIterator<Item = i64>) {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() >= Self::CAP {
            set.clear();
        }
        set.extend(ids);
    }
}

/// Whether the manager process `other` (an instance token of this manager's id, so of this
/// host) is gone: its pid is ours (a restarted container's process often has the pid of the
/// process it replaces) or names no live process. Then the rows it held come back at once
/// instead of after the takeover time. A token that names no pid: not known to be gone.
pub(crate) fn gone(own: &str, other: &str) -> bool {
    let pid = |token: &str| token.split('-').next().and_then(|p| p.parse::<i32>().ok());
    match (pid(own), pid(other)) {
        (Some(mine), Some(theirs)) if mine == theirs => own != other,
        (_, Some(theirs)) => rustix::process::Pid::from_raw(theirs).is_some_and(|p| {
            matches!(
                rustix::process::test_kill_process(p),
                Err(rustix::io::Errno::SRCH)
            )
        }),
        _ => false,
    }
}

/// The token of this process (`<pid>-<random>`), so a restarted manager of the same id is
/// told from the one it replaces. One per process: every transport of a process is the same
/// manager instance.
pub(crate) fn instance_token() -> String {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()))
        .clone()
}

/// The response format for a request: the configured one, else the request's.
pub fn response_format(options: &TransportOptions, request: Format) -> Format {
    options.serializer.unwrap_or(request)
}

/// "now" in the timestamp format and zone Symfony uses for this table.
pub(crate) fn now_text(options: &TransportOptions) -> String {
    options.timezone.format_now(0)
}

/// "now - secs" in the same format.
pub(crate) fn ago_text(options: &TransportOptions, secs: u64) -> String {
    options
        .timezone
        .format_now(-i64::try_from(secs).unwrap_or(i64::MAX))
}

/// RFC 3339 UTC with milliseconds, for the ledger.
pub fn utc_now_rfc3339() -> String {
    // Written directly (no format string parsed at each call: it is on every answer's path),
    // as `%Y-%m-%dT%H:%M:%S%.3fZ`.
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
pub(crate) mod schema;

#[cfg(test)]
mod tests {
    #[test]
    fn the_ledger_time_is_rfc3339_utc_with_milliseconds() {
        let t = super::utc_now_rfc3339();
        assert_eq!(t.len(), "2026-12-04T10:00:00.123Z".len(), "{t}");
        let parsed = chrono::NaiveDateTime::parse_from_str(&t, "%Y-%m-%dT%H:%M:%S%.3fZ").unwrap();
        assert_eq!(parsed.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(), t);
    }
}
