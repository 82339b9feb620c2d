//! The operator's reads ([`super::Records`]), written once for both databases: the same SQL,
//! generic over sqlx's database. The consume path stays per database (its SQL differs:
//! `SKIP LOCKED`, arrays on PostgreSQL, `BEGIN IMMEDIATE` on SQLite).

use sqlx::{Arguments, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use super::dsn::Zone;
use super::schema::{LEDGER_COLUMNS, Names};
use super::{Error, FailedRow, HistoryFilter, LedgerEntry, QueueDepth, QueueStats, entry_from_row};

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
