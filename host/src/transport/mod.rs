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
    pub response: serde_json::Value,
    /// When the request was taken, RFC 3339 UTC.
    pub received_at: String,
    /// When the answer was committed, RFC 3339 UTC.
    pub finished_at: String,
    /// How long it took.
    pub duration_ms: i64,
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
    /// Takes up to `max` request rows and marks them delivered.
    fn fetch(&self, max: usize) -> impl Future<Output = Result<Vec<Delivery>, Error>> + Send;
    /// Settles a batch in one transaction.
    fn complete(&self, batch: Vec<Settle>) -> impl Future<Output = Result<(), Error>> + Send;
    /// Moves `delivered_at` of rows still being worked on to now.
    fn keepalive(&self, ids: Vec<i64>) -> impl Future<Output = Result<(), Error>> + Send;
    /// Waits until a new row may be there (a notification) or `timeout` passes.
    fn wait(&self, timeout: Duration) -> impl Future<Output = ()> + Send;
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
        response: serde_json::from_str(&response).unwrap_or(serde_json::Value::Null),
        received_at: r.try_get("received_at")?,
        finished_at: r.try_get("finished_at")?,
        duration_ms: r.try_get("duration_ms")?,
    })
}

/// Decodes a candidate row; `None` when it is another class's row, to be left alone.
pub(crate) fn classify_row(body: &str, headers: &str) -> Option<Result<Decoded, String>> {
    match codec::decode(body.as_bytes(), headers) {
        Ok(d) if d.request.is_none() => None,
        other => Some(other),
    }
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
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}
pub(crate) mod schema;
