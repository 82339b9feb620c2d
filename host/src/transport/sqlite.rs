//! SQLite: the embedded default. Fetch and settle run in `BEGIN IMMEDIATE` transactions so
//! two consumers (or a PHP one) never take the same row; timestamps compare as text, so they
//! are written in exactly Symfony's `YYYY-MM-DD HH:MM:SS` form.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, Transaction};

use crate::codec::{self, Needles};

use super::managers::Dialect;
use super::schema::{LEDGER_COLUMNS, Names};
use super::{
    Claim, Delivery, Error, ForeignRows, LedgerEntry, Queue, Settle, TransportOptions, ago_text,
    classify_row, entry_from_row, instance_token, managers, now_text, records, schema, storable,
    utc_now_rfc3339,
};

/// How often an idle consumer looks at the table (SQLite has no notifications).
const POLL: Duration = Duration::from_millis(100);

/// The SQLite transport.
pub struct SqliteTransport(Arc<Inner>);

/// What a transaction needs, shared with the task that runs it.
pub struct Inner {
    pool: SqlitePool,
    options: TransportOptions,
    needles: Needles,
    names: Names,
    foreign: ForeignRows,
    /// This process, among the processes that ran under this manager id.
    instance: String,
    registered: std::sync::atomic::AtomicBool,
    /// One writer of this process at a time: SQLite has one write lock, and a writer that
    /// meets another's gets SQLITE_BUSY and sleeps in SQLite's busy handler (1 ms, 2 ms, 5 ms
    /// …), so the fetch, the start records and the answers would wait on each other by
    /// milliseconds. Other processes still meet the busy handler.
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl std::ops::Deref for SqliteTransport {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Runs a transaction to its end (commit or rollback) even when the caller stops waiting: a
/// `BEGIN IMMEDIATE` dropped part-way would keep the database's write lock on a pooled
/// connection, and every other write (answers, keepalives, other consumers) would wait out
/// the busy timeout. sqlx's own cancellation handling leaves a window for custom `BEGIN`s.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(work)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

impl SqliteTransport {
    /// Opens (creating the file when missing) the database at `url` (`sqlite://path`).
    pub async fn connect(url: &str, options: TransportOptions) -> Result<Self, Error> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Settings(format!("invalid SQLite DSN: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        // Opening can meet SQLITE_BUSY without the busy handler being asked (switching a new
        // file to WAL while other processes create it too): tried again for as long as the
        // busy timeout would have waited.
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_millis(20);
        let pool = loop {
            let opened = SqlitePoolOptions::new()
                .max_connections(4)
                // A connection that comes back still counted in a transaction is closed, not
                // reused: when SQLite rolls a transaction back by itself (a full disk,
                // SQLITE_FULL), the ROLLBACK that follows fails and sqlx keeps counting it, so
                // every later BEGIN on that connection would fail ("non-zero transaction
                // depth"), for ever.
                .after_release(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
                .connect_with(connect.clone())
                .await;
            match opened {
                Err(sqlx::Error::Database(e))
                    if e.code()
                        .and_then(|c| c.parse::<i32>().ok())
                        .is_some_and(|c| c & 0xff == 5)
                        && std::time::Instant::now() + pause < give_up =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => break other?,
            }
        };
        let names = Names::for_table(&options.table_name);
        Ok(Self(Arc::new(Inner {
            pool,
            options,
            needles: Needles::new(),
            names,
            foreign: ForeignRows::default(),
            instance: instance_token(),
            registered: std::sync::atomic::AtomicBool::new(false),
            writer: Arc::default(),
        })))
    }
}

impl Inner {
    /// Where this queue parks rows.
    fn failure_queue(&self) -> records::FailureQueue<'_> {
        records::FailureQueue {
            table: &self.options.table_name,
            names: &self.names,
            queue: &self.options.failure_queue_name,
            timestamp: "{}",
        }
    }

    /// The pool, for tests and tools.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Whether every table, index and added column of the queue exists.
    async fn tables_ready(
        &self,
        executor: &mut SqliteConnection,
        relations: &[String],
    ) -> Result<bool, Error> {
        let names = serde_json::to_string(relations).unwrap_or_else(|_| "[]".into());
        let found: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type IN ('table', 'index') \
             AND name IN (SELECT value FROM json_each(?1))",
        )
        .bind(names)
        .fetch_one(&mut *executor)
        .await?;
        if usize::try_from(found).is_ok_and(|n| n != relations.len()) {
            return Ok(false);
        }
        Ok(self.missing_columns(executor).await?.is_empty())
    }

    /// The columns added since a table was first created that it lacks.
    async fn missing_columns(
        &self,
        executor: &mut SqliteConnection,
    ) -> Result<Vec<(String, &'static str, &'static str)>, Error> {
        let mut missing = Vec::new();
        for (table, column, kind) in schema::added_columns(&self.names) {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2")
                    .bind(&table)
                    .bind(column)
                    .fetch_one(&mut *executor)
                    .await?;
            if n == 0 {
                missing.push((table, column, kind));
            }
        }
        Ok(missing)
    }

    fn table(&self) -> &str {
        &self.options.table_name
    }

    /// A write transaction, taken at once (`BEGIN IMMEDIATE`). Through sqlx's `Transaction`, so a
    /// caller that stops waiting (a dropped future) rolls it back: a hand-sent `BEGIN` would stay
    /// open on the pooled connection and hold the database's write lock.
    async fn begin_immediate(&self) -> Result<Transaction<'static, Sqlite>, Error> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn finish<T>(tx: Transaction<'static, Sqlite>, r: Result<T, Error>) -> Result<T, Error> {
        match r {
            Ok(v) => {
                tx.commit().await?;
                Ok(v)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn fetch_in(
        &self,
        conn: &mut SqliteConnection,
        max: usize,
    ) -> Result<Vec<Delivery>, Error> {
        let t = self.table();
        let Names {
            claims, managers, ..
        } = &self.names;
        // Rows a dead manager held (its process was replaced, or it stopped heart-beating)
        // are taken back at once; each taken row is claimed for this process in this
        // transaction (no start time: `started` records that), keeping the start of a claim
        // taken over, so a request that comes back is known to have been started or not.
        let rows = sqlx::query(&format!(
            "SELECT m.id, m.body, m.headers, m.delivered_at IS NOT NULL AS redelivered, \
               MAX(CAST(strftime('%s', ?3) AS INTEGER) - CAST(strftime('%s', m.created_at) AS INTEGER), 0) AS age_secs, \
               c.manager AS claimed_by, c.started_at AS claimed_at \
             FROM {t} m LEFT JOIN {claims} c ON c.row_id = m.id AND c.started_at IS NOT NULL \
             WHERE m.queue_name = ?1 AND (m.delivered_at IS NULL OR m.delivered_at < ?2 OR m.id IN ( \
               SELECT d.row_id FROM {claims} d LEFT JOIN {managers} g ON g.instance = d.instance \
               WHERE g.instance IS NULL OR g.beat_at < CAST(strftime('%s', 'now') AS INTEGER) - ?7)) \
             AND m.available_at <= ?3 \
             AND m.id NOT IN (SELECT value FROM json_each(?6)) \
             AND ({}) \
             ORDER BY m.available_at ASC, m.id ASC LIMIT ?5",
            super::candidate_filter(
                |h, n| format!("instr({h}, {n})"),
                |c| format!("substr({c}, -1)"),
                ["?4", "?8", "?9", "?10"],
                "m.body",
                "m.headers",
            )
        ))
        .bind(&self.options.queue_name)
        .bind(ago_text(&self.options, self.options.redeliver_timeout_secs))
        .bind(now_text(&self.options))
        .bind(&self.needles.exact)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .bind(serde_json::to_string(&self.foreign.ids()).unwrap_or_else(|_| "[]".into()))
        .bind(i64::try_from(self.options.takeover_secs).unwrap_or(i64::MAX))
        .bind(&self.needles.lower)
        .bind(&self.needles.lower_plain)
        .bind(self.needles.message_marker)
        .fetch_all(&mut *conn)
        .await?;
        let mut taken = Vec::with_capacity(rows.len());
        for row in rows {
            // As bytes: a BLOB, or text that is not UTF-8, is a bad row, not a failed fetch.
            let body: Vec<u8> = row.try_get("body")?;
            let headers: Vec<u8> = row.try_get("headers")?;
            let id: i64 = row.try_get("id")?;
            match classify_row(&body, &headers) {
                Some(decoded) => {
                    let by: Option<String> = row.try_get("claimed_by")?;
                    let at: Option<String> = row.try_get("claimed_at")?;
                    let age: Option<i64> = row.try_get("age_secs")?;
                    taken.push(Delivery {
                        id,
                        decoded,
                        redelivered: row.try_get("redelivered")?,
                        claimed: by.zip(at).map(|(manager, started_at)| Claim {
                            manager,
                            started_at,
                        }),
                        age: Duration::from_secs(age.unwrap_or(0).unsigned_abs()),
                        elsewhere: None,
                        looked_up: None,
                    });
                }
                None => self.foreign.add([id]),
            }
        }
        if !taken.is_empty() {
            let mut q = QueryBuilder::<Sqlite>::new(format!("UPDATE {t} SET delivered_at = "));
            q.push_bind(now_text(&self.options)).push(" WHERE id IN (");
            let mut sep = q.separated(", ");
            for d in &taken {
                sep.push_bind(d.id);
            }
            q.push(")");
            q.build().execute(&mut *conn).await?;
            let mut q = QueryBuilder::<Sqlite>::new(format!(
                "INSERT INTO {claims} (row_id, manager, instance, started_at) "
            ));
            q.push_values(&taken, |mut row, d| {
                row.push_bind(d.id)
                    .push_bind(&self.options.manager_id)
                    .push_bind(&self.instance)
                    .push("NULL");
            });
            q.push(format!(
                " ON CONFLICT (row_id) DO UPDATE SET instance = excluded.instance, \
                 manager = CASE WHEN {claims}.started_at IS NULL THEN excluded.manager ELSE {claims}.manager END"
            ));
            q.build().execute(&mut *conn).await?;
        }
        Ok(taken)
    }

    async fn complete_in(
        &self,
        conn: &mut SqliteConnection,
        batch: Vec<Settle>,
    ) -> Result<(), Error> {
        let Names {
            ledger: ledger_table,
            failures: failures_table,
            claims,
            ..
        } = &self.names;
        let t = self.table();
        let now = now_text(&self.options);
        let finished = utc_now_rfc3339();
        for s in batch {
            match s {
                Settle::Reply {
                    request_id,
                    response,
                    ledger,
                } => {
                    // A response goes in only with the deletion of its request: a request
                    // another manager answered meanwhile gets no second answer.
                    let deleted = sqlx::query(&format!("DELETE FROM {t} WHERE id = ?1"))
                        .bind(request_id)
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query(&format!("DELETE FROM {claims} WHERE row_id = ?1"))
                        .bind(request_id)
                        .execute(&mut *conn)
                        .await?;
                    if deleted.rows_affected() == 1 {
                        sqlx::query(&format!(
                            "INSERT INTO {t} (body, headers, queue_name, created_at, available_at) VALUES (?1, ?2, ?3, ?4, ?4)"
                        ))
                        .bind(response.body)
                        .bind(response.headers)
                        .bind(&self.options.response_queue_name)
                        .bind(&now)
                        .execute(&mut *conn)
                        .await?;
                    }
                    if let Some(e) = ledger {
                        sqlx::query(&format!(
                            "INSERT INTO {ledger_table} ({LEDGER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                             ON CONFLICT (correlation_id) DO NOTHING"
                        ))
                        .bind(e.correlation_id)
                        .bind(e.entity_id)
                        .bind(e.action)
                        .bind(e.plugin)
                        .bind(e.success)
                        .bind(e.error)
                        .bind(e.response.text())
                        .bind(e.received_at)
                        .bind(&finished)
                        .bind(e.duration_ms)
                        .bind(&self.options.manager_id)
                        .execute(&mut *conn)
                        .await?;
                    }
                }
                Settle::Fail { request_id, reason } => {
                    sqlx::query(&format!("DELETE FROM {claims} WHERE row_id = ?1"))
                        .bind(request_id)
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query(&format!(
                        "INSERT INTO {failures_table} (row_id, original_queue, reason, failed_at) VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT (row_id) DO UPDATE SET reason = excluded.reason, failed_at = excluded.failed_at"
                    ))
                    .bind(request_id)
                    .bind(&self.options.queue_name)
                    .bind(reason)
                    .bind(&finished)
                    .execute(&mut *conn)
                    .await?;
                    sqlx::query(&format!(
                        "UPDATE {t} SET queue_name = ?1, delivered_at = NULL, available_at = ?2 WHERE id = ?3"
                    ))
                    .bind(&self.options.failure_queue_name)
                    .bind(&now)
                    .bind(request_id)
                    .execute(&mut *conn)
                    .await?;
                }
            }
        }
        Ok(())
    }
}

/// The SQL of the manager registry on SQLite.
const DIALECT: Dialect = Dialect {
    now: "CAST(strftime('%s', 'now') AS INTEGER)",
    param: |n| format!("?{n}"),
    json_values: "SELECT value FROM json_each({})",
};

impl Queue for SqliteTransport {
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
        let inner = self.0.clone();
        detached(async move {
            let statements = schema::sqlite(inner.table(), inner.options.composite_index);
            let relations = schema::relations(&statements, inner.table());
            // Ready: no DDL, no write lock taken.
            if inner
                .tables_ready(&mut *inner.pool.acquire().await?, &relations)
                .await?
            {
                return Ok(());
            }
            // One setup at a time (the write lock); the one that waited finds the work done.
            let mut tx = inner.begin_immediate().await?;
            let r = async {
                if !inner.tables_ready(&mut tx, &relations).await? {
                    for stmt in statements {
                        sqlx::query(&stmt).execute(&mut *tx).await?;
                    }
                    // Tables an older version created lack these.
                    for (table, column, kind) in inner.missing_columns(&mut tx).await? {
                        sqlx::query(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                Ok(())
            }
            .await;
            Inner::finish(tx, r).await
        })
        .await
    }

    async fn fetch(&self, max: usize) -> Result<Vec<Delivery>, Error> {
        // Whoever claims rows is registered, so its claims are not taken for a dead one's.
        if !self.registered.load(std::sync::atomic::Ordering::Relaxed) {
            self.heartbeat().await?;
        }
        let inner = self.0.clone();
        detached(async move {
            let _writer = inner.writer.clone().lock_owned().await;
            let mut tx = inner.begin_immediate().await?;
            let r = inner.fetch_in(&mut tx, max).await;
            Inner::finish(tx, r).await
        })
        .await
    }

    async fn complete(&self, batch: Vec<Settle>) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = storable(batch);
        let inner = self.0.clone();
        detached(async move {
            let _writer = inner.writer.clone().lock_owned().await;
            let mut tx = inner.begin_immediate().await?;
            let r = inner.complete_in(&mut tx, batch).await;
            Inner::finish(tx, r).await
        })
        .await
    }

    async fn started(&self, ids: Vec<i64>) -> Result<Vec<i64>, Error> {
        if ids.is_empty() {
            return Ok(ids);
        }
        // A start recorded before (a request re-run because it is idempotent) keeps its
        // first time.
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "UPDATE {} SET started_at = COALESCE(started_at, ",
            self.names.claims
        ));
        q.push_bind(utc_now_rfc3339())
            .push(") WHERE instance = ")
            .push_bind(&self.instance)
            .push(" AND row_id IN (");
        let mut sep = q.separated(", ");
        for id in ids {
            sep.push_bind(id);
        }
        q.push(") RETURNING row_id");
        let _writer = self.writer.lock().await;
        Ok(q.build_query_scalar().fetch_all(&self.pool).await?)
    }

    /// Recorded for `managers` and `entities`; SQLite's fetch does not route by entity
    /// (several managers on one queue need PostgreSQL).
    async fn publish(&self, entities: Vec<String>) -> Result<(), Error> {
        if !self.registered.load(std::sync::atomic::Ordering::Relaxed) {
            self.heartbeat().await?;
        }
        managers::publish(&self.pool, &self.names, &DIALECT, &self.instance, &entities).await
    }

    async fn deregister(&self) -> Result<(), Error> {
        managers::deregister(&self.pool, &self.names, &DIALECT, &self.instance).await
    }

    async fn heartbeat(&self) -> Result<(), Error> {
        managers::heartbeat(
            &self.pool,
            &self.names,
            &DIALECT,
            &self.instance,
            &self.options.manager_id,
            &self.registered,
        )
        .await
    }

    async fn keepalive(&self, ids: Vec<i64>) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("UPDATE {} SET delivered_at = ", self.table()));
        q.push_bind(now_text(&self.options))
            .push(" WHERE delivered_at IS NOT NULL AND id IN (");
        let mut sep = q.separated(", ");
        for id in ids {
            sep.push_bind(id);
        }
        q.push(")");
        let _writer = self.writer.lock().await;
        q.build().execute(&self.pool).await?;
        Ok(())
    }

    async fn wait(&self, timeout: Duration) {
        tokio::time::sleep(timeout.min(POLL)).await;
    }

    async fn send(&self, queue: &str, row: codec::Encoded) -> Result<i64, Error> {
        let now = now_text(&self.options);
        let r = sqlx::query(&format!(
            "INSERT INTO {} (body, headers, queue_name, created_at, available_at) VALUES (?1, ?2, ?3, ?4, ?4)",
            self.table()
        ))
        .bind(row.body)
        .bind(row.headers)
        .bind(queue)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.last_insert_rowid())
    }

    async fn answered(
        &self,
        correlation_ids: Vec<String>,
    ) -> Result<HashMap<String, LedgerEntry>, Error> {
        let ledger_table = &self.names.ledger;
        if correlation_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {LEDGER_COLUMNS} FROM {ledger_table} WHERE correlation_id IN ("
        ));
        let mut sep = q.separated(", ");
        for c in correlation_ids {
            sep.push_bind(c);
        }
        q.push(")");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| entry_from_row(r).map(|e| (e.correlation_id.clone(), e)))
            .collect::<Result<_, _>>()
            .map_err(Error::from)
    }

    fn options(&self) -> &TransportOptions {
        &self.options
    }
}

records::impl_records!(SqliteTransport);
