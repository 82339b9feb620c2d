//! The operator's reads ([`super::Records`]), written once for both databases: the same SQL,
//! generic over sqlx's database. The consume path stays per database (its SQL differs:
//! `SKIP LOCKED`, arrays on PostgreSQL, `BEGIN IMMEDIATE` on SQLite).

use sqlx::{Arguments, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use super::dsn::Zone;
use super::schema::{LEDGER_COLUMNS, Names};
use super::{
    Error, FailedMessage, FailedRow, HistoryFilter, LedgerEntry, Pruned, QueueDepth, QueueStats,
    entry_from_row,
};

/// `impl Records for $t` over the generic functions of this module: `$t` has `pool`, `names`,
/// `options` and `failure_queue()` (both databases' transports do).
macro_rules! impl_records {
    ($t:ty) => {
        impl $crate::transport::Records for $t {
            async fn history(
                &self,
                f: $crate::transport::HistoryFilter,
            ) -> Result<Vec<$crate::transport::LedgerEntry>, $crate::transport::Error> {
                records::history(&self.pool, &self.names, f).await
            }

            async fn failed_rows(
                &self,
            ) -> Result<Vec<$crate::transport::FailedRow>, $crate::transport::Error> {
                records::failed_rows(&self.pool, &self.names).await
            }

            async fn queue_stats(
                &self,
            ) -> Result<$crate::transport::QueueStats, $crate::transport::Error> {
                let o = &self.options;
                records::queue_stats(&self.pool, &o.table_name, &self.names, o.timezone).await
            }

            async fn failed_messages(
                &self,
                id: Option<i64>,
                limit: i64,
            ) -> Result<Vec<$crate::transport::FailedMessage>, $crate::transport::Error> {
                records::failed_messages(&self.pool, self.failure_queue(), id, limit).await
            }

            async fn retry_failed(
                &self,
                ids: Vec<i64>,
            ) -> Result<Vec<i64>, $crate::transport::Error> {
                let now = self.options.timezone.format_now(0);
                records::retry_failed(&self.pool, self.failure_queue(), ids, now).await
            }

            async fn remove_failed(
                &self,
                ids: Vec<i64>,
            ) -> Result<Vec<i64>, $crate::transport::Error> {
                records::remove_failed(&self.pool, self.failure_queue(), ids).await
            }

            async fn prune(
                &self,
                before: String,
            ) -> Result<$crate::transport::Pruned, $crate::transport::Error> {
                records::prune(&self.pool, self.failure_queue(), before).await
            }

            async fn managers(
                &self,
            ) -> Result<Vec<$crate::transport::ManagerInfo>, $crate::transport::Error> {
                managers::list(
                    &self.pool,
                    &self.names,
                    &DIALECT,
                    self.options.takeover_secs,
                )
                .await
            }
        }
    };
}
pub(crate) use impl_records;

/// Ledger history, newest first.
pub(crate) async fn history<DB>(
    pool: &Pool<DB>,
    names: &Names,
    f: HistoryFilter,
) -> Result<Vec<LedgerEntry>, Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB>,
    for<'r> Option<String>: Decode<'r, DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    Option<String>: Type<DB>,
    &'static str: sqlx::ColumnIndex<DB::Row>,
{
    // `QueryBuilder` ties its arguments' lifetime to itself, which generic code cannot name:
    // the SQL is written first (placeholders numbered by a scratch list), then the values
    // bound to arguments that borrow it.
    let mut values = Vec::new();
    let mut clauses = String::new();
    if let Some(e) = f.entity_id {
        clauses.push_str(" AND entity_id = {}");
        values.push(Value::Text(e));
    }
    if f.failed_only {
        clauses.push_str(" AND NOT success");
    }
    if let Some(s) = f.since {
        clauses.push_str(" AND received_at >= {}");
        values.push(Value::Text(s));
    }
    clauses.push_str(" ORDER BY received_at DESC LIMIT {}");
    values.push(Value::Int(f.limit.max(1)));
    let mut sql = format!("SELECT {LEDGER_COLUMNS} FROM {} WHERE 1 = 1", names.ledger);
    let mut scratch = <DB::Arguments<'static>>::default();
    let mut parts = clauses.split("{}");
    sql.push_str(parts.next().unwrap_or_default());
    for (part, value) in parts.zip(&values) {
        value.add_to::<DB>(&mut scratch)?;
        scratch
            .format_placeholder(&mut sql)
            .map_err(|e| Error::Db(sqlx::Error::Protocol(e.to_string())))?;
        sql.push_str(part);
    }
    let mut args = DB::Arguments::default();
    for value in &values {
        value.add_to::<DB>(&mut args)?;
    }
    let rows = sqlx::query_with::<DB, _>(&sql, args)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(entry_from_row)
        .collect::<Result<_, _>>()
        .map_err(Error::from)
}

/// A value bound in a generic query.
enum Value {
    Text(String),
    Int(i64),
}

impl Value {
    fn add_to<'q, DB>(&self, args: &mut DB::Arguments<'q>) -> Result<(), Error>
    where
        DB: Database,
        String: Encode<'q, DB> + Type<DB>,
        i64: Encode<'q, DB> + Type<DB>,
    {
        match self {
            Self::Text(t) => args.add(t.clone()),
            Self::Int(i) => args.add(*i),
        }
        .map_err(|e| Error::Db(sqlx::Error::Encode(e)))
    }
}

/// The failure queue, oldest row first.
pub(crate) async fn failed_rows<DB>(pool: &Pool<DB>, names: &Names) -> Result<Vec<FailedRow>, Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    &'static str: sqlx::ColumnIndex<DB::Row>,
{
    let rows = sqlx::query::<DB>(&format!(
        "SELECT row_id, original_queue, reason FROM {} ORDER BY row_id",
        names.failures
    ))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(FailedRow {
                id: r.try_get("row_id")?,
                original_queue: r.try_get("original_queue")?,
                reason: r.try_get("reason")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Error::from)
}

/// What waits in `table`, per queue; the answers of the last minute from the ledger.
pub(crate) async fn queue_stats<DB>(
    pool: &Pool<DB>,
    table: &str,
    names: &Names,
    zone: Zone,
) -> Result<QueueStats, Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Option<String>: Decode<'r, DB>,
    Option<String>: Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    &'static str: sqlx::ColumnIndex<DB::Row>,
{
    let rows = sqlx::query::<DB>(&format!(
        "SELECT queue_name, CAST(SUM(CASE WHEN delivered_at IS NULL THEN 1 ELSE 0 END) AS BIGINT) AS waiting, \
         CAST(SUM(CASE WHEN delivered_at IS NULL THEN 0 ELSE 1 END) AS BIGINT) AS in_progress, \
         CAST(MIN(CASE WHEN delivered_at IS NULL THEN created_at END) AS TEXT) AS oldest \
         FROM {table} GROUP BY queue_name ORDER BY queue_name"
    ))
    .fetch_all(pool)
    .await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let queues = rows
        .iter()
        .map(|r| {
            let oldest: Option<String> = r.try_get("oldest")?;
            Ok(QueueDepth {
                queue: r.try_get("queue_name")?,
                waiting: count(r.try_get("waiting")?),
                in_progress: count(r.try_get("in_progress")?),
                oldest_waiting_secs: oldest
                    .as_deref()
                    .and_then(|t| zone.age_secs(t))
                    .unwrap_or(0.0),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let minute_ago = (chrono::Utc::now() - chrono::Duration::seconds(60))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let mut sql = format!(
        "SELECT COUNT(*) AS n FROM {} WHERE finished_at >= ",
        names.ledger
    );
    let mut scratch = <DB::Arguments<'static>>::default();
    scratch
        .add(minute_ago.clone())
        .map_err(|e| Error::Db(sqlx::Error::Encode(e)))?;
    scratch
        .format_placeholder(&mut sql)
        .map_err(|e| Error::Db(sqlx::Error::Protocol(e.to_string())))?;
    let mut args = DB::Arguments::default();
    args.add(minute_ago)
        .map_err(|e| Error::Db(sqlx::Error::Encode(e)))?;
    let answered: i64 = sqlx::query_with::<DB, _>(&sql, args)
        .fetch_one(pool)
        .await?
        .try_get("n")?;
    Ok(QueueStats {
        queues,
        answered_last_minute: count(answered),
    })
}

/// `template` with each `{}` replaced by the dialect's next placeholder (`$1`… on PostgreSQL,
/// `?` on SQLite).
fn numbered<DB>(template: &str) -> Result<String, Error>
where
    DB: Database,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    let mut scratch = <DB::Arguments<'static>>::default();
    let mut parts = template.split("{}");
    let mut sql = parts.next().unwrap_or_default().to_owned();
    for part in parts {
        scratch
            .add(0i64)
            .map_err(|e| Error::Db(sqlx::Error::Encode(e)))?;
        scratch
            .format_placeholder(&mut sql)
            .map_err(|e| Error::Db(sqlx::Error::Protocol(e.to_string())))?;
        sql.push_str(part);
    }
    Ok(sql)
}

/// The values, bound in order.
fn bound<'q, DB>(values: &[Value]) -> Result<DB::Arguments<'q>, Error>
where
    DB: Database,
    String: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    let mut args = DB::Arguments::default();
    for v in values {
        v.add_to::<DB>(&mut args)?;
    }
    Ok(args)
}

/// Where the failure queue is.
pub(crate) struct FailureQueue<'a> {
    pub(crate) table: &'a str,
    pub(crate) names: &'a Names,
    pub(crate) queue: &'a str,
    /// How a text parameter becomes a timestamp column's value (`{}` is the placeholder):
    /// a cast on PostgreSQL, the text itself on SQLite.
    pub(crate) timestamp: &'static str,
}

/// The rows this manager parked (joined with their records), oldest first.
pub(crate) async fn failed_messages<DB>(
    pool: &Pool<DB>,
    at: FailureQueue<'_>,
    id: Option<i64>,
    limit: i64,
) -> Result<Vec<FailedMessage>, Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    &'static str: sqlx::ColumnIndex<DB::Row>,
{
    let mut values = vec![Value::Text(at.queue.to_owned())];
    let mut template = format!(
        "SELECT m.id, f.original_queue, f.reason, f.failed_at, CAST(m.created_at AS TEXT) AS created_at, \
         m.headers, m.body FROM {} m JOIN {} f ON f.row_id = m.id WHERE m.queue_name = {{}}",
        at.table, at.names.failures
    );
    if let Some(id) = id {
        template.push_str(" AND m.id = {}");
        values.push(Value::Int(id));
    }
    template.push_str(" ORDER BY m.id LIMIT {}");
    values.push(Value::Int(limit.max(1)));
    let sql = numbered::<DB>(&template)?;
    let rows = sqlx::query_with::<DB, _>(&sql, bound::<DB>(&values)?)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(FailedMessage {
                id: r.try_get("id")?,
                original_queue: r.try_get("original_queue")?,
                reason: r.try_get("reason")?,
                failed_at: r.try_get("failed_at")?,
                created_at: r.try_get("created_at")?,
                headers: r.try_get("headers")?,
                body: r.try_get("body")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Error::from)
}

/// What to do to one parked row.
enum ParkedAction {
    /// Back to the queue it came from, available at this time (the DSN's zone).
    Retry(String),
    /// Deleted.
    Remove,
}

/// Retries or removes parked rows, each in its own transaction: the statement on the row
/// (only if it is parked: in the failure queue, with a record), then its record. The ids done.
async fn on_parked<DB>(
    pool: &Pool<DB>,
    at: FailureQueue<'_>,
    ids: Vec<i64>,
    action: ParkedAction,
) -> Result<Vec<i64>, Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    let (t, f) = (at.table, &at.names.failures);
    let parked =
        format!("id = {{}} AND queue_name = {{}} AND id IN (SELECT row_id FROM {f}) RETURNING id");
    let statement = numbered::<DB>(&match action {
        ParkedAction::Retry(_) => format!(
            "UPDATE {t} SET queue_name = (SELECT original_queue FROM {f} WHERE row_id = {{}}), \
             delivered_at = NULL, available_at = {ts} WHERE {parked}",
            ts = at.timestamp
        ),
        ParkedAction::Remove => format!("DELETE FROM {t} WHERE {parked}"),
    })?;
    let forget = numbered::<DB>(&format!("DELETE FROM {f} WHERE row_id = {{}}"))?;
    let mut done = Vec::new();
    for id in ids {
        let mut values = match &action {
            ParkedAction::Retry(now) => vec![Value::Int(id), Value::Text(now.clone())],
            ParkedAction::Remove => Vec::new(),
        };
        values.extend([Value::Int(id), Value::Text(at.queue.to_owned())]);
        let mut tx = pool.begin().await?;
        let hit = sqlx::query_with::<DB, _>(&statement, bound::<DB>(&values)?)
            .fetch_optional(&mut *tx)
            .await?;
        if hit.is_some() {
            sqlx::query_with::<DB, _>(&forget, bound::<DB>(&[Value::Int(id)])?)
                .execute(&mut *tx)
                .await?;
            done.push(id);
        }
        tx.commit().await?;
    }
    Ok(done)
}

/// Moves parked rows back to their queue, available at `now` (the DSN's zone), and drops
/// their records. The ids done.
pub(crate) async fn retry_failed<DB>(
    pool: &Pool<DB>,
    at: FailureQueue<'_>,
    ids: Vec<i64>,
    now: String,
) -> Result<Vec<i64>, Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    on_parked(pool, at, ids, ParkedAction::Retry(now)).await
}

/// Deletes parked rows and their records. The ids done.
pub(crate) async fn remove_failed<DB>(
    pool: &Pool<DB>,
    at: FailureQueue<'_>,
    ids: Vec<i64>,
) -> Result<Vec<i64>, Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    on_parked(pool, at, ids, ParkedAction::Remove).await
}

/// Rows deleted per statement by a prune: each batch is its own short transaction, so a prune
/// of a large ledger never holds the database's writer (SQLite) or a long transaction
/// (PostgreSQL) while requests are answered, nor reads every deleted row back.
pub(crate) const PRUNE_BATCH: i64 = 2_000;

/// Deletes ledger rows answered before `before`, and rows parked before it with their
/// records, [`PRUNE_BATCH`] at a time.
pub(crate) async fn prune<DB>(
    pool: &Pool<DB>,
    at: FailureQueue<'_>,
    before: String,
) -> Result<Pruned, Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    &'static str: sqlx::ColumnIndex<DB::Row>,
{
    let (t, f, l) = (at.table, &at.names.failures, &at.names.ledger);
    // A row is answered after it was received: the index on received_at finds the candidates.
    let ledger = numbered::<DB>(&format!(
        "DELETE FROM {l} WHERE correlation_id IN (SELECT correlation_id FROM {l} \
         WHERE received_at < {{}} AND finished_at < {{}} LIMIT {{}}) RETURNING 1"
    ))?;
    let mut pruned = Pruned::default();
    loop {
        let values = [
            Value::Text(before.clone()),
            Value::Text(before.clone()),
            Value::Int(PRUNE_BATCH),
        ];
        let n = sqlx::query_with::<DB, _>(&ledger, bound::<DB>(&values)?)
            .fetch_all(pool)
            .await?
            .len();
        pruned.ledger += n as u64;
        if i64::try_from(n).unwrap_or(i64::MAX) < PRUNE_BATCH {
            break;
        }
    }
    let records = numbered::<DB>(&format!(
        "SELECT row_id FROM {f} WHERE failed_at < {{}} ORDER BY row_id LIMIT {{}}"
    ))?;
    loop {
        let mut tx = pool.begin().await?;
        let ids = sqlx::query_with::<DB, _>(
            &records,
            bound::<DB>(&[Value::Text(before.clone()), Value::Int(PRUNE_BATCH)])?,
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>("row_id"))
        .collect::<Result<Vec<i64>, _>>()?;
        if ids.is_empty() {
            break;
        }
        let list = vec!["{}"; ids.len()].join(", ");
        let ints = || ids.iter().map(|&id| Value::Int(id));
        let rows = numbered::<DB>(&format!(
            "DELETE FROM {t} WHERE queue_name = {{}} AND id IN ({list}) RETURNING 1"
        ))?;
        let values: Vec<Value> = std::iter::once(Value::Text(at.queue.to_owned()))
            .chain(ints())
            .collect();
        pruned.failed += sqlx::query_with::<DB, _>(&rows, bound::<DB>(&values)?)
            .fetch_all(&mut *tx)
            .await?
            .len() as u64;
        let forget = numbered::<DB>(&format!("DELETE FROM {f} WHERE row_id IN ({list})"))?;
        let values: Vec<Value> = ints().collect();
        sqlx::query_with::<DB, _>(&forget, bound::<DB>(&values)?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if i64::try_from(ids.len()).unwrap_or(i64::MAX) < PRUNE_BATCH {
            break;
        }
    }
    Ok(pruned)
}
