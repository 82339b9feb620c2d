//! PostgreSQL: the primary transport. `FOR UPDATE SKIP LOCKED` lets many consumers share a
//! queue; LISTEN/NOTIFY on Symfony's trigger wakes an idle consumer at once, with a fallback
//! poll because notifications are lost while disconnected and the trigger may be missing.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use tokio::sync::Mutex;

use crate::codec::{self, Needles};

use super::managers::Dialect;
use super::schema::{LEDGER_COLUMNS, Names};
use crate::message::{ALL, SUPERVISOR};

use super::{
    Claim, Delivery, Elsewhere, Error, ForeignRows, LedgerEntry, MAX_CORRELATION_ID_BYTES, Queue,
    Settle, TransportOptions, ago_text, classify_row, entry_from_row, instance_token, managers,
    now_text, records, schema, unstorable_id, utc_now_rfc3339,
};

/// The PostgreSQL transport.
pub struct PgTransport {
    pool: PgPool,
    /// The connections that take rows, with `synchronous_commit = off` (a fetch does not wait
    /// for the disk: a manager killed after it still leaves its marks and claims committed;
    /// only a crash of PostgreSQL itself in that instant could lose them). Their own NOTIFYs
    /// are not news to this consumer.
    fetch_pool: PgPool,
    /// The connections of holds: their transactions commit answers, so synchronously; their
    /// NOTIFYs (rows still running marked) are not news either.
    holds: Kept,
    /// The connection of start records, committed like the claims (see `fetch_pool`).
    starts: Kept,
    /// The consume path's statements.
    sql: Sql,
    /// The hold statement with the widest take asked so far as its literal LIMIT, planned
    /// once per connection (see [`Sql::hold_planned_once`]).
    wide_hold: std::sync::Mutex<Option<(usize, Arc<str>)>>,
    own_pids: Arc<std::sync::Mutex<HashSet<u32>>>,
    /// Rows deleted since the last vacuum (see `after_delete`).
    deleted: Arc<std::sync::atomic::AtomicU64>,
    /// Vacuums started so far (see `after_delete`).
    vacuums: Arc<std::sync::atomic::AtomicU64>,
    vacuum: Arc<tokio::sync::Mutex<VacuumState>>,
    options: TransportOptions,
    listener: Mutex<Option<PgListener>>,
    /// The last fetch or hold returned fewer rows than it asked for.
    short: std::sync::atomic::AtomicBool,
    needles: Needles,
    names: Names,
    foreign: ForeignRows,
    /// This process, among the processes that ran under this manager id.
    instance: String,
    registered: std::sync::atomic::AtomicBool,
    /// The entity ids this process published (`None`: it takes every request).
    served: std::sync::RwLock<Option<Arc<HashSet<String>>>>,
    /// Where a fetch starts its walk of the `available_at` index (see `floor`), and when it
    /// was read.
    floor: Mutex<Option<(chrono::NaiveDateTime, std::time::Instant)>>,
}

/// Rows answered between two vacuums of the queue table; the first comes sooner, because
/// statistics taken on an empty table are the worst.
const VACUUM_EVERY: u64 = 10_000;
/// How often the fetch's floor is read again.
const FLOOR_EVERY: Duration = Duration::from_secs(2);
/// How far below the oldest row (or now) the floor lies: clocks of hosts kept by NTP differ by
/// far less. Every row in it is walked by each fetch (answers Core has not consumed yet).
const FLOOR_MARGIN: Duration = Duration::from_secs(5);
const FIRST_VACUUM: u64 = 200;
/// One vacuum in this many also analyzes the table (the first one always does).
const ANALYZE_EVERY: u64 = 10;

#[derive(Debug, Default)]
enum VacuumState {
    #[default]
    Idle,
    Running,
    /// Not allowed (not the table's owner): autovacuum has to do.
    Disabled,
}

impl PgTransport {
    /// Where this queue parks rows.
    fn failure_queue(&self) -> records::FailureQueue<'_> {
        records::FailureQueue {
            table: &self.options.table_name,
            names: &self.names,
            queue: &self.options.failure_queue_name,
            timestamp: "CAST({} AS TIMESTAMP)",
        }
    }

    /// Whether every table, index and added column of the queue exists, and the NOTIFY
    /// trigger when used.
    async fn tables_ready<'e, E>(&self, executor: E, relations: &[String]) -> Result<bool, Error>
    where
        E: sqlx::PgExecutor<'e>,
    {
        let columns = schema::added_columns(&self.names);
        let tables: Vec<&str> = columns.iter().map(|c| c.0.as_str()).collect();
        let names: Vec<&str> = columns.iter().map(|c| c.1).collect();
        Ok(sqlx::query_scalar(
            "SELECT (SELECT bool_and(to_regclass(r) IS NOT NULL) FROM unnest($1::text[]) AS r) \
               AND (NOT $2 OR EXISTS (SELECT 1 FROM pg_trigger \
                 WHERE tgname = 'notify_trigger' AND tgrelid = to_regclass($3))) \
               AND (SELECT bool_and(EXISTS (SELECT 1 FROM pg_attribute a \
                 WHERE a.attrelid = to_regclass(x.t) AND a.attname = x.c AND NOT a.attisdropped)) \
                 FROM unnest($4::text[], $5::text[]) AS x(t, c))",
        )
        .bind(relations)
        .bind(self.options.use_notify)
        .bind(self.table())
        .bind(tables)
        .bind(names)
        .fetch_one(executor)
        .await?)
    }

    /// A queue that fills and drains by thousands of rows a second outruns autovacuum: with
    /// statistics from when the table was empty, PostgreSQL plans the fetch as a bitmap scan
    /// of the whole backlog plus a sort (31 ms per call on a 20,000-row backlog instead of
    /// 0.6 ms), and dead rows pile up at the head of the `available_at` index. Symfony's own
    /// consumer suffers the same. Vacuum the table every few thousand answers, in the
    /// background, one at a time; stop trying if the role may not. The first vacuum (after
    /// [`FIRST_VACUUM`] answers) analyzes too, then one in [`ANALYZE_EVERY`]: a vacuum keeps the
    /// row and page counts the planner scales its statistics by, and the analyze, which reads
    /// a sample of 30,000 rows, cost a drain of 20,000 no-op requests a seventh of its rate
    /// when it ran every 10,000 answers (11,300-11,700 against 12,800-13,400 actions/s, and
    /// 2-4 µs more manager CPU per action: the manager waited on a busier database more often).
    fn after_delete(&self, rows: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let total = self.deleted.fetch_add(rows, Relaxed) + rows;
        let done = self.vacuums.load(Relaxed);
        let threshold = if done == 0 {
            FIRST_VACUUM
        } else {
            VACUUM_EVERY
        };
        if total < threshold {
            return;
        }
        let Ok(mut state) = self.vacuum.clone().try_lock_owned() else {
            return;
        };
        if !matches!(*state, VacuumState::Idle) {
            return;
        }
        *state = VacuumState::Running;
        self.deleted.store(0, Relaxed);
        self.vacuums.store(done + 1, Relaxed);
        let pool = self.pool.clone();
        // The claims churn as fast as the queue (a row in, an update, a row out per request).
        let analyze = if done.is_multiple_of(ANALYZE_EVERY) {
            " (ANALYZE)"
        } else {
            ""
        };
        let sql = format!("VACUUM{analyze} {}, {}", self.table(), self.names.claims);
        tokio::spawn(async move {
            *state = match sqlx::query(&sql).persistent(false).execute(&pool).await {
                Ok(_) => VacuumState::Idle,
                Err(e) => {
                    tracing::debug!(cause = %e, "cannot vacuum the queue table; leaving it to autovacuum");
                    VacuumState::Disabled
                }
            };
        });
    }

    /// Fills in who the taken rows that are not this manager's could be for: the live
    /// managers (a request no live manager serves), or those serving `all` / `supervisor`.
    async fn name_elsewhere(
        &self,
        taken: &mut [(chrono::NaiveDateTime, Delivery)],
    ) -> Result<(), Error> {
        if taken.iter().all(|(_, d)| d.elsewhere.is_none()) {
            return Ok(());
        }
        let Names {
            managers, served, ..
        } = &self.names;
        let live = live_manager("$1");
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(&format!(
            "SELECT DISTINCT g.manager, s.entity_id FROM {managers} g \
             LEFT JOIN {served} s ON s.instance = g.instance AND s.entity_id = ANY($2) \
             WHERE {live} ORDER BY g.manager"
        ))
        .bind(i64::try_from(self.options.takeover_secs).unwrap_or(i64::MAX))
        .bind(vec![ALL.to_owned(), SUPERVISOR.to_owned()])
        .fetch_all(&self.pool)
        .await?;
        let mut names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        names.dedup();
        for (_, d) in taken.iter_mut() {
            match &mut d.elsewhere {
                Some(Elsewhere::Unserved { live, .. }) => live.clone_from(&names),
                Some(Elsewhere::Ambiguous { entity, managers }) => {
                    *managers = rows
                        .iter()
                        .filter(|r| r.1.as_deref() == Some(entity.as_str()))
                        .map(|r| r.0.clone())
                        .collect();
                    managers.dedup();
                    // Served by this manager alone after all (another stopped meanwhile).
                    if managers.len() < 2 {
                        d.elsewhere = None;
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Whoever claims rows or publishes is registered, so its claims are not taken for a
    /// dead one's.
    async fn register_once(&self) -> Result<(), Error> {
        if !self.registered.load(std::sync::atomic::Ordering::Relaxed) {
            self.heartbeat().await?;
        }
        Ok(())
    }

    /// The lowest `available_at` a fetch looks at: the oldest of this queue's rows (waiting,
    /// taken or delayed; now if none is older) less [`FLOOR_MARGIN`], read every
    /// [`FLOOR_EVERY`]. Symfony's indexes give
    /// the fetch no way to skip the rows of other queues (parked rows, answers) that became
    /// available before the oldest request: without a floor every fetch walks them all (10 ms
    /// a fetch beside 100,000 parked rows). A row that comes back with an old `available_at`
    /// (redelivered, handed back, routed) was on the queue when the floor was read, so it is
    /// above it; a new row is above it unless its sender's clock is more than the margin
    /// behind, and then it is seen at the next reading.
    async fn floor(&self) -> Result<chrono::NaiveDateTime, Error> {
        let mut floor = self.floor.lock().await;
        if let Some((at, read)) = *floor
            && read.elapsed() < FLOOR_EVERY
        {
            return Ok(at);
        }
        let at: chrono::NaiveDateTime = sqlx::query_scalar(&format!(
            "SELECT LEAST(min(available_at), $2::timestamp) - $3 * interval '1 second' FROM {} WHERE queue_name = $1",
            self.table()
        ))
        .bind(&self.options.queue_name)
        .bind(now_text(&self.options))
        .bind(FLOOR_MARGIN.as_secs_f64())
        .fetch_one(&self.fetch_pool)
        .await?;
        *floor = Some((at, std::time::Instant::now()));
        Ok(at)
    }

    /// Notes whether a fetch that asked for `max` rows got fewer: every row there was.
    fn note_short(&self, got: usize, max: usize) {
        self.short
            .store(got < max, std::sync::atomic::Ordering::Relaxed);
    }

    /// The hold statement planned once for `max` when `max` is the widest take asked so far
    /// (a consumer asks for all its slots whenever it is idle, so every request at low load
    /// takes this path); `None` for a narrower take, planned for its values as the fetch is.
    fn wide_hold(&self, max: usize) -> Option<Arc<str>> {
        let mut wide = self.wide_hold.lock().unwrap_or_else(|e| e.into_inner());
        match &*wide {
            Some((widest, sql)) if *widest == max => Some(sql.clone()),
            Some((widest, _)) if *widest > max => None,
            _ => {
                let sql: Arc<str> = self.sql.hold_planned_once(max).into();
                *wide = Some((max, sql.clone()));
                Some(sql)
            }
        }
    }

    /// Binds the fetch statement's parameters (both forms take the same).
    fn bind_fetch<'q>(
        &'q self,
        sql: &'q str,
        max: usize,
        floor: chrono::NaiveDateTime,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(sql)
            .bind(&self.options.queue_name)
            .bind(ago_text(&self.options, self.options.redeliver_timeout_secs))
            .bind(now_text(&self.options))
            .bind(&self.needles.exact)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .bind(self.foreign.ids())
            .bind(i64::try_from(self.options.takeover_secs).unwrap_or(i64::MAX))
            .bind(&self.options.manager_id)
            .bind(&self.instance)
            .bind(&self.needles.lower)
            .bind(&self.needles.lower_plain)
            .bind(self.needles.message_marker)
            .bind(self.served.read().is_ok_and(|s| s.is_some()))
            .bind(ago_text(&self.options, self.options.unserved_grace_secs))
            // The correlation id in the body, found without parsing it: PHP's serialize() as
            // stored (after addslashes), or Symfony's JSON. An id these cut wrong (one holding
            // a quote) is simply not found, and looked up apart.
            .bind(r#"correlationId\";s:"#)
            .bind(r#":\""#)
            .bind(r#"\";"#)
            .bind(r#""correlationId":""#)
            .bind(floor)
    }

    /// Sorts the fetched rows out: requests this process takes, rows of another class, rows
    /// of entities another manager serves (to route there).
    fn read_rows(&self, rows: Vec<sqlx::postgres::PgRow>) -> Result<Read, Error> {
        let mine = self.served.read().map(|s| s.clone()).unwrap_or_default();
        let mut read = Read {
            taken: Vec::with_capacity(rows.len()),
            foreign: Vec::new(),
            others: Vec::new(),
        };
        for row in rows {
            let id: i64 = row.try_get("id")?;
            let body: String = row.try_get("body")?;
            let headers: String = row.try_get("headers")?;
            let previous: Option<chrono::NaiveDateTime> = row.try_get("previous")?;
            let Some(decoded) = classify_row(body.as_bytes(), headers.as_bytes()) else {
                read.foreign.push((id, previous));
                continue;
            };
            let routed_to: Option<String> = row.try_get("routed_to")?;
            let shared: Option<bool> = row.try_get("shared")?;
            let owner = match &mine {
                Some(mine) => owner(&decoded, mine, routed_to, shared.unwrap_or(false)),
                None => Owner::Me,
            };
            let elsewhere = match owner {
                Owner::Me => None,
                Owner::Other(entity) => {
                    read.others.push((id, entity));
                    continue;
                }
                Owner::Nobody(entity) => Some(Elsewhere::Unserved {
                    entity,
                    live: Vec::new(),
                }),
                Owner::Plain(entity) => Some(Elsewhere::Ambiguous {
                    entity,
                    managers: Vec::new(),
                }),
            };
            let claimed_by: Option<String> = row.try_get("claimed_by")?;
            let claimed_at: Option<String> = row.try_get("claimed_at")?;
            let age: i64 = row.try_get("age_secs")?;
            let looked_up: Option<String> = row.try_get("looked_up")?;
            let found: Option<String> = row.try_get("correlation_id")?;
            let entry = match found {
                Some(_) => Some(entry_from_row(&row)?),
                None => None,
            };
            read.taken.push((
                row.try_get("available_at")?,
                Delivery {
                    id,
                    decoded,
                    redelivered: previous.is_some(),
                    claimed: claimed_by
                        .zip(claimed_at)
                        .map(|(manager, started_at)| Claim {
                            manager,
                            started_at,
                        }),
                    age: Duration::from_secs(age.unsigned_abs()),
                    elsewhere,
                    looked_up: looked_up.map(|id| (id, entry)),
                },
            ));
        }
        Ok(read)
    }

    /// Routes rows of entities this process does not serve, seen first here, to their
    /// entity (its managers take them from now on) and makes them available at once (a row
    /// taken back from a dead manager too); the NOTIFY of the update wakes those managers. A
    /// claim whose action started stays, so the next taker answers "interrupted" instead of
    /// running it again.
    async fn route<'e, E>(&self, executor: E, others: Vec<(i64, String)>) -> Result<(), Error>
    where
        E: sqlx::PgExecutor<'e>,
    {
        if others.is_empty() {
            return Ok(());
        }
        let Names { claims, routes, .. } = &self.names;
        let t = self.table();
        let (ids, entities): (Vec<i64>, Vec<String>) = others.into_iter().unzip();
        sqlx::query(&format!(
            "WITH unclaimed AS (DELETE FROM {claims} WHERE row_id = ANY($1) AND started_at IS NULL), \
             routed AS (INSERT INTO {routes} (row_id, entity_id) \
               SELECT * FROM UNNEST($1::bigint[], $2::text[]) ON CONFLICT (row_id) DO NOTHING) \
             UPDATE {t} SET delivered_at = NULL WHERE id = ANY($1)"
        ))
        .bind(&ids)
        .bind(&entities)
        .execute(executor)
        .await?;
        Ok(())
    }

    /// Settles a batch in one statement (so one round trip, and one commit when it is its own
    /// transaction): responses in, requests out, ledger rows, failures parked, claims and
    /// routes released; and, when `running` is not empty (the end of a hold), those rows
    /// marked delivered and claimed. A response goes in only with the deletion of its
    /// request: a request another manager answered meanwhile (it took it back) gets no
    /// second answer. Returns how many requests it deleted.
    async fn settle_in<'e, 'b, E>(
        &self,
        executor: E,
        batch: &'b [Settle],
        running: &[i64],
    ) -> Result<u64, Error>
    where
        E: sqlx::PgExecutor<'e>,
    {
        if batch.is_empty() && running.is_empty() {
            return Ok(0);
        }
        // Bound from the batch as it is (the caller keeps it, to retry), with what the
        // database cannot store made storable (see `storable`).
        let (mut bodies, mut headers, mut done) = (Vec::new(), Vec::new(), Vec::new());
        let mut ledger = LedgerColumns::default();
        let (mut failed, mut reasons) = (Vec::new(), Vec::new());
        for s in batch {
            match s {
                Settle::Reply {
                    request_id,
                    ledger: Some(e),
                    ..
                } if let Some(reason) = unstorable_id(&e.correlation_id) => {
                    failed.push(*request_id);
                    reasons.push(Cow::Owned(reason));
                }
                Settle::Reply {
                    request_id,
                    response,
                    ledger: entry,
                } => {
                    bodies.push(response.body.as_str());
                    headers.push(response.headers.as_str());
                    done.push(*request_id);
                    if let Some(e) = entry {
                        ledger.push(e);
                    }
                }
                Settle::Fail { request_id, reason } => {
                    failed.push(*request_id);
                    reasons.push(storable_str(reason));
                }
            }
        }
        let now = now_text(&self.options);
        let sql = if running.is_empty() {
            &self.sql.complete
        } else {
            &self.sql.release
        };
        let query = sqlx::query(sql)
            .bind(&bodies)
            .bind(&headers)
            .bind(&self.options.response_queue_name)
            .bind(&now)
            .bind(&done)
            .bind(ledger.correlation_id)
            .bind(ledger.entity_id)
            .bind(ledger.action)
            .bind(ledger.plugin)
            .bind(ledger.success)
            .bind(ledger.error)
            .bind(ledger.response)
            .bind(ledger.received_at)
            .bind(ledger.duration_ms)
            .bind(&failed)
            .bind(utc_now_rfc3339())
            .bind(&self.options.queue_name)
            .bind(&reasons)
            .bind(&self.options.failure_queue_name)
            .bind(&self.options.manager_id);
        let query = if running.is_empty() {
            query
        } else {
            query.bind(running).bind(&self.instance)
        };
        query.execute(executor).await?;
        Ok(done.len() as u64)
    }

    /// Connects (the URL without our options).
    pub async fn connect(
        url: &str,
        options: TransportOptions,
        max_connections: u32,
    ) -> Result<Self, Error> {
        let connect: PgConnectOptions = url
            .parse()
            .map_err(|e| Error::Settings(format!("invalid PostgreSQL DSN: {e}")))?;
        let connect = without_jit(connect);
        // One plain connection first: a closed port or a wrong password is said at once
        // ("connection refused"), where a pool would retry until its acquire timeout.
        {
            use sqlx::Connection;
            sqlx::PgConnection::connect_with(&connect)
                .await?
                .close()
                .await?;
        }
        // No ping before each acquire: a dead connection fails the statement, which the
        // caller retries; a ping would add a round trip to every step of every request.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .connect_with(connect.clone())
            .await?;
        // The backends that mark rows: their own NOTIFYs are not news to this consumer.
        let own_pids: Arc<std::sync::Mutex<HashSet<u32>>> = Arc::default();
        // Every fetch is planned for its values (see `Sql`), and without bitmap scans: the
        // walk of the `available_at` index from the floor, stopping at LIMIT, is the plan that
        // stays cheap however large the backlog; with bitmap scans allowed PostgreSQL scans
        // the whole range and sorts it when the queue is a tenth of the table (13 ms a fetch
        // of 128 rows from 10,000 waiting beside 100,000 parked, instead of 1.5 ms).
        let custom = ("plan_cache_mode", "force_custom_plan");
        let fetch_pool = own_pool(
            &own_pids,
            2,
            connect.clone().options([
                ("synchronous_commit", "off"),
                custom,
                ("enable_bitmapscan", "off"),
            ]),
        )
        .await?;
        // A hold ends within its bound; a few may overlap under load.
        let holds = Kept {
            options: connect
                .clone()
                .options([custom, ("enable_bitmapscan", "off")]),
            idle: std::sync::Mutex::default(),
            own_pids: own_pids.clone(),
            max_idle: 4,
        };
        let starts = Kept {
            options: connect.options([("synchronous_commit", "off")]),
            idle: std::sync::Mutex::default(),
            own_pids: own_pids.clone(),
            max_idle: 1,
        };
        let names = Names::for_table(&options.table_name);
        Ok(Self {
            pool,
            fetch_pool,
            holds,
            starts,
            sql: Sql::new(&options.table_name, &names),
            wide_hold: std::sync::Mutex::default(),
            own_pids,
            deleted: Arc::default(),
            vacuums: Arc::default(),
            vacuum: Arc::default(),
            options,
            listener: Mutex::new(None),
            short: std::sync::atomic::AtomicBool::new(false),
            needles: Needles::new(),
            names,
            foreign: ForeignRows::default(),
            instance: instance_token(),
            registered: std::sync::atomic::AtomicBool::new(false),
            served: std::sync::RwLock::new(None),
            floor: Mutex::new(None),
        })
    }

    /// The pool, for tests and tools.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn table(&self) -> &str {
        &self.options.table_name
    }
}

/// `connect` with PostgreSQL's JIT compilation off, unless the DSN's own `options` set `jit`.
/// PostgreSQL compiles a statement whose estimated cost passes `jit_above_cost` (100,000 by
/// default) at every execution, and the estimate of a fetch is far above its real cost (it
/// stops at LIMIT): with the ownership filter of several managers, over a table holding
/// 30,000 rows of other queues, 40 of a fetch's 41 ms went to compiling it, and the queue
/// bench drained 1,346 requests/s with the filter against 7,356 without. Short statements
/// never gain from JIT.
fn without_jit(connect: PgConnectOptions) -> PgConnectOptions {
    if connect.get_options().is_some_and(|o| o.contains("jit")) {
        connect
    } else {
        connect.options([("jit", "off")])
    }
}

/// The rows of a hold: the connection whose transaction holds them, open (none when nothing
/// was taken), being readied for the settle while the actions run. Dropped unreleased, the
/// connection is closed: PostgreSQL rolls it back.
pub struct PgHeld(Option<tokio::task::JoinHandle<Result<PgConnection, Error>>>);

/// Readies a hold's transaction for its settle, off the request's path (its round trip
/// overlaps the actions): the savepoint a settle that loses a deadlock is rolled back to, and
/// generic plans for the rest of the transaction. The fetch needs a plan for its values (see
/// [`Sql`]); the settle's statements are the same whatever the values, so planning them once
/// per connection saves PostgreSQL a planning per hold.
async fn ready_to_settle(mut tx: PgConnection) -> Result<PgConnection, Error> {
    // Before the savepoint: a rollback to it keeps the setting.
    sqlx::Executor::execute(
        &mut tx,
        "SET LOCAL plan_cache_mode = force_generic_plan; SAVEPOINT settle",
    )
    .await?;
    Ok(tx)
}

/// Connections of the hot path kept out of a pool: sqlx's pool pings every connection given
/// back to it (a round trip per statement; 8% of the manager's CPU in the queue bench). A
/// connection that failed is dropped (closed), never given back.
struct Kept {
    options: PgConnectOptions,
    idle: std::sync::Mutex<Vec<PgConnection>>,
    own_pids: Arc<std::sync::Mutex<HashSet<u32>>>,
    max_idle: usize,
}

impl Kept {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<PgConnection>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection, or a new one.
    async fn take(&self) -> Result<PgConnection, Error> {
        if let Some(conn) = self.idle().pop() {
            return Ok(conn);
        }
        use sqlx::Connection;
        let mut conn = PgConnection::connect_with(&self.options).await?;
        note_pid(&mut conn, &self.own_pids).await?;
        Ok(conn)
    }

    /// A connection that finished its work cleanly (no transaction open).
    fn give_back(&self, conn: PgConnection) {
        let mut idle = self.idle();
        if idle.len() < self.max_idle {
            idle.push(conn);
        } else {
            drop(idle);
            use sqlx::Connection;
            tokio::spawn(conn.close());
        }
    }
}

/// A fetch's rows, sorted out.
struct Read {
    /// Requests this process takes, with their `available_at`.
    taken: Vec<(chrono::NaiveDateTime, Delivery)>,
    /// Rows of another class, with their previous `delivered_at`.
    foreign: Vec<(i64, Option<chrono::NaiveDateTime>)>,
    /// Requests of entities another manager serves, with their entity.
    others: Vec<(i64, String)>,
}

/// Taken rows oldest first (as Symfony takes them).
fn in_order(mut taken: Vec<(chrono::NaiveDateTime, Delivery)>) -> Vec<Delivery> {
    taken.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
    taken.into_iter().map(|(_, d)| d).collect()
}

/// Ledger entries as the columns the settle statement binds.
#[derive(Default)]
struct LedgerColumns<'b> {
    correlation_id: Vec<&'b str>,
    entity_id: Vec<Cow<'b, str>>,
    action: Vec<Cow<'b, str>>,
    plugin: Vec<Option<Cow<'b, str>>>,
    success: Vec<bool>,
    error: Vec<Option<Cow<'b, str>>>,
    response: Vec<&'b str>,
    received_at: Vec<&'b str>,
    duration_ms: Vec<i64>,
}

impl<'b> LedgerColumns<'b> {
    /// An entry whose correlation id the ledger can key (see `unstorable_id`).
    fn push(&mut self, e: &'b LedgerEntry) {
        self.correlation_id.push(&e.correlation_id);
        self.entity_id.push(storable_str(&e.entity_id));
        self.action.push(storable_str(&e.action));
        self.plugin.push(e.plugin.as_deref().map(storable_str));
        self.success.push(e.success);
        self.error.push(e.error.as_deref().map(storable_str));
        self.response.push(e.response.text());
        self.received_at.push(&e.received_at);
        self.duration_ms.push(e.duration_ms);
    }
}

/// Text PostgreSQL can store (see [`super::storable_text`]), copied only when it must change.
fn storable_str(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\\0"))
    } else {
        Cow::Borrowed(s)
    }
}

/// The end of the fetches' WHERE: their order and limit (see [`Sql::hold_planned_once`]).
const TAKE_LIMIT: &str = "ORDER BY available_at ASC LIMIT $5";

/// How often the settle of a hold is tried when it loses a deadlock or a serialization
/// conflict.
const RELEASE_TRIES: u32 = 5;

/// The statements of the consume path, built once per transport (they depend on the table
/// names only). Prepared per connection: PostgreSQL parses each once; the fetches run on
/// connections with `plan_cache_mode = force_custom_plan`, so they are still planned for
/// their values every time (a generic plan of the fetch joins the whole table by hash:
/// 5-20 ms on a 20,000-row backlog instead of 0.6 ms).
struct Sql {
    /// Take, mark and claim, committed (`fetch`).
    fetch: String,
    /// Take and lock, nothing written (`hold`).
    hold: String,
    /// Settle a batch.
    complete: String,
    /// Settle a batch and mark and claim the rows still running (the end of a hold).
    release: String,
    /// Record that actions start (`started`).
    started: String,
}

impl Sql {
    /// The hold statement with `max` as its literal LIMIT, to run with a generic plan: planned
    /// once per connection instead of at every hold (planning is 0.3-0.4 ms of a 0.45 ms hold
    /// of one row, on the path of every request at low load). The LIMIT must be a literal for
    /// that: with `LIMIT $5` unknown a generic plan expects a tenth of the table, and may join
    /// the claims, routes and ledger by hashing them whole. `$5` must still equal `max` (a
    /// one-time filter) so that the statement never takes more rows than it is asked for.
    fn hold_planned_once(&self, max: usize) -> String {
        self.hold.replacen(
            TAKE_LIMIT,
            &format!("AND $5::bigint = {max} ORDER BY available_at ASC LIMIT {max}"),
            1,
        )
    }

    fn new(t: &str, names: &Names) -> Self {
        let Names {
            claims,
            managers,
            served,
            routes,
            ledger,
            failures,
            ..
        } = names;
        let ledger_columns = LEDGER_COLUMNS
            .split(", ")
            .map(|c| format!("l.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        // With a published set ($13), the rows of this process are: those no manager has
        // routed yet (the first taker routes what is not its own), those routed to an entity
        // it serves, and — after the grace period — those routed to an entity no live manager
        // serves, to be answered with an error.
        let live = live_manager("$7");
        let owned = format!(
            "AND (NOT $13 OR NOT EXISTS (SELECT 1 FROM {routes} r WHERE r.row_id = {t}.id) \
               OR EXISTS (SELECT 1 FROM {routes} r JOIN {served} s ON s.entity_id = r.entity_id \
                 WHERE r.row_id = {t}.id AND s.instance = $9) \
               OR ({t}.created_at <= $14::timestamp AND NOT EXISTS (SELECT 1 FROM {routes} r \
                 JOIN {served} s ON s.entity_id = r.entity_id JOIN {managers} g ON g.instance = s.instance \
                 WHERE r.row_id = {t}.id AND {live})))"
        );
        // Symfony's conditions, and rows a dead manager held (its process was replaced, or it
        // stopped heart-beating), taken back at once. ORDER BY available_at alone, as Symfony
        // does: it lets PostgreSQL walk the available_at index and stop at LIMIT, where a
        // tie-breaker forces a sort of the whole backlog (57 ms instead of 0.15 ms for 20,000
        // rows).
        let pick = format!(
            "FROM {t} \
               WHERE queue_name = $1 AND (delivered_at IS NULL OR delivered_at < $2::timestamp \
                 OR EXISTS (SELECT 1 FROM {claims} c LEFT JOIN {managers} g ON g.instance = c.instance \
                   WHERE c.row_id = {t}.id \
                   AND (g.instance IS NULL OR g.beat_at < extract(epoch from clock_timestamp())::bigint - $7))) \
               AND available_at <= $3::timestamp AND available_at >= $19::timestamp \
               AND NOT (id = ANY($6::bigint[])) \
               AND ({}) {owned} \
               {TAKE_LIMIT} FOR UPDATE SKIP LOCKED",
            candidate_filter()
        );
        let age = |at: &str| {
            format!("GREATEST(EXTRACT(EPOCH FROM ($3::timestamp - {at})), 0)::bigint AS age_secs")
        };
        // What both forms read of each taken row: its claim (a start recorded before), its
        // route, whether other managers share the queue, and its ledger entry (the correlation
        // id cut out of the body, without parsing it).
        let tail = format!(
            "SELECT marked.*, c.manager AS claimed_by, c.started_at AS claimed_at, \
               CASE WHEN $13 THEN (SELECT r.entity_id FROM {routes} r WHERE r.row_id = marked.id) END AS routed_to, \
               $13 AND EXISTS (SELECT 1 FROM {managers} WHERE manager <> $8) AS shared, \
               x.cid AS looked_up, {ledger_columns} \
             FROM marked LEFT JOIN {claims} c ON c.row_id = marked.id AND c.started_at IS NOT NULL \
             CROSS JOIN LATERAL (SELECT CASE WHEN marked.headers = '[]' \
               THEN split_part(split_part(split_part(marked.body, $15, 2), $16, 2), $17, 1) \
               ELSE split_part(split_part(marked.body, $18, 2), '\"', 1) END AS cid) x \
             LEFT JOIN {ledger} l ON l.correlation_id = x.cid"
        );
        // Each taken row is claimed for this process (no start time: `started` records that),
        // keeping the start of a claim taken over, so a request that comes back is known to
        // have been started or not.
        let claim = |rows: &str, manager: &str, instance: &str| {
            format!(
                "INSERT INTO {claims} (row_id, manager, instance, started_at) \
                 SELECT id, {manager}, {instance}, NULL FROM {rows} \
                 ON CONFLICT (row_id) DO UPDATE SET instance = EXCLUDED.instance, \
                   manager = CASE WHEN {claims}.started_at IS NULL THEN EXCLUDED.manager ELSE {claims}.manager END"
            )
        };
        let fetch = format!(
            "WITH picked AS (SELECT id, delivered_at {pick}), \
             marked AS (UPDATE {t} m SET delivered_at = $3::timestamp FROM picked WHERE m.id = picked.id \
               RETURNING m.id, m.body, m.headers, m.available_at, picked.delivered_at AS previous, {}), \
             claimed AS ({}) {tail}",
            age("m.created_at"),
            claim("marked", "$8", "$9")
        );
        let hold = format!(
            "WITH marked AS (SELECT id, body, headers, available_at, delivered_at AS previous, {} {pick}) {tail}",
            age("created_at")
        );
        let settle = format!(
            "WITH answered AS (DELETE FROM {t} WHERE id = ANY($5) RETURNING id), \
             replies AS (\
               INSERT INTO {t} (body, headers, queue_name, created_at, available_at) \
               SELECT b, h, $3, $4::timestamp, $4::timestamp FROM UNNEST($1::text[], $2::text[], $5::bigint[]) AS x(b, h, id) \
               WHERE x.id IN (SELECT id FROM answered)), \
             unclaimed AS (DELETE FROM {claims} WHERE row_id = ANY($5 || $15)), \
             unrouted AS (DELETE FROM {routes} WHERE row_id = ANY($5 || $15)), \
             ledger AS (\
               INSERT INTO {ledger} ({LEDGER_COLUMNS}) \
               SELECT a, b, c, d, e, f, g, h, $16, j, $20 FROM UNNEST($6::text[], $7::text[], $8::text[], $9::text[], $10::bool[], $11::text[], $12::text[], $13::text[], $14::bigint[]) AS x(a, b, c, d, e, f, g, h, j) \
               ON CONFLICT (correlation_id) DO NOTHING), \
             parked AS (\
               INSERT INTO {failures} (row_id, original_queue, reason, failed_at) \
               SELECT id, $17, r, $16 FROM UNNEST($15::bigint[], $18::text[]) AS x(id, r) \
               ON CONFLICT (row_id) DO UPDATE SET reason = EXCLUDED.reason, failed_at = EXCLUDED.failed_at)"
        );
        let park = format!(
            "UPDATE {t} SET queue_name = $19, delivered_at = NULL, available_at = $4::timestamp WHERE id = ANY($15)"
        );
        let complete = format!("{settle} {park}");
        let release = format!(
            "{settle}, \
             still AS (UPDATE {t} SET delivered_at = $4::timestamp WHERE id = ANY($21)), \
             claimed AS ({}) {park}",
            claim("UNNEST($21::bigint[]) AS id", "$20", "$22")
        );
        let started = format!(
            "INSERT INTO {claims} (row_id, manager, instance, started_at) \
             SELECT x, $4, $3, $1 FROM UNNEST($2::bigint[]) AS x \
             ON CONFLICT (row_id) DO UPDATE SET started_at = COALESCE({claims}.started_at, EXCLUDED.started_at), \
               instance = EXCLUDED.instance, \
               manager = CASE WHEN {claims}.started_at IS NULL THEN EXCLUDED.manager ELSE {claims}.manager END \
             WHERE {claims}.instance = EXCLUDED.instance OR {claims}.started_at IS NULL \
             RETURNING row_id"
        );
        Self {
            fetch,
            hold,
            complete,
            release,
            started,
        }
    }
}

/// A pool of connections whose backend pids go into `own_pids` (their NOTIFYs are this
/// consumer's own).
async fn own_pool(
    own_pids: &Arc<std::sync::Mutex<HashSet<u32>>>,
    max: u32,
    connect: PgConnectOptions,
) -> Result<PgPool, Error> {
    let pids = own_pids.clone();
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .after_connect(move |conn, _| {
            let pids = pids.clone();
            Box::pin(async move { note_pid(conn, &pids).await })
        })
        .connect_with(connect)
        .await?)
}

/// Notes the backend pid of `conn` among this consumer's own (its NOTIFYs are not news).
async fn note_pid(
    conn: &mut PgConnection,
    own_pids: &std::sync::Mutex<HashSet<u32>>,
) -> Result<(), sqlx::Error> {
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await?;
    if let Ok(pid) = u32::try_from(pid) {
        own_pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid);
    }
    Ok(())
}

/// The condition on a row `g` of the managers table that it is live: not stopped, and beating
/// within `takeover` seconds (an SQL expression), on the database's clock.
fn live_manager(takeover: &str) -> String {
    format!(
        "g.stopped_at IS NULL AND g.beat_at >= {} - {takeover}",
        DIALECT.now
    )
}

/// The SQL of the manager registry on PostgreSQL.
const DIALECT: Dialect = Dialect {
    now: "extract(epoch from clock_timestamp())::bigint",
    param: |n| format!("${n}"),
    json_values: "SELECT value FROM json_array_elements_text({}::json)",
};

impl Queue for PgTransport {
    type Held = PgHeld;

    async fn setup(&self) -> Result<(), Error> {
        let statements = schema::postgres(
            self.table(),
            self.options.use_notify,
            self.options.composite_index,
        );
        let relations = schema::relations(&statements, self.table());
        // Ready: no DDL at all (DDL takes locks that deadlock against other processes'
        // fetches and setups when many start at once).
        if self.tables_ready(&self.pool, &relations).await? {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        // One setup at a time; the one that waited finds the work done.
        sqlx::query("SELECT pg_advisory_xact_lock(7302911)")
            .execute(&mut *tx)
            .await?;
        if !self.tables_ready(&mut *tx, &relations).await? {
            for stmt in statements {
                sqlx::query(&stmt).execute(&mut *tx).await?;
            }
            // Tables an older version created lack these.
            for (table, column, kind) in schema::added_columns(&self.names) {
                sqlx::query(&format!(
                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}"
                ))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn fetch(&self, max: usize) -> Result<Vec<Delivery>, Error> {
        self.register_once().await?;
        // One statement: pick (SKIP LOCKED), mark and claim in the same round trip, committed
        // before anything runs (asynchronously, see `fetch_pool`).
        let floor = self.floor().await?;
        let rows = self
            .bind_fetch(&self.sql.fetch, max, floor)
            .fetch_all(&self.fetch_pool)
            .await?;
        self.note_short(rows.len(), max);
        let Read {
            mut taken,
            foreign,
            others,
        } = self.read_rows(rows)?;
        if !foreign.is_empty() {
            // Another class's row that the SQL filter could not tell apart (its text names the
            // request class, or it is base64): put its delivered_at back as it was, once (later
            // fetches leave it out), from a connection whose NOTIFY this consumer ignores.
            let claims = &self.names.claims;
            let t = self.table();
            let ids: Vec<i64> = foreign.iter().map(|f| f.0).collect();
            self.foreign.add(ids.iter().copied());
            let previous: Vec<Option<chrono::NaiveDateTime>> =
                foreign.iter().map(|f| f.1).collect();
            sqlx::query(&format!(
                "WITH unclaimed AS (DELETE FROM {claims} WHERE row_id = ANY($1)) \
                 UPDATE {t} m SET delivered_at = x.p FROM UNNEST($1::bigint[], $2::timestamp[]) AS x(id, p) WHERE m.id = x.id"
            ))
            .bind(&ids)
            .bind(&previous)
            .execute(&self.fetch_pool)
            .await?;
        }
        self.route(&self.fetch_pool, others).await?;
        self.name_elsewhere(&mut taken).await?;
        Ok(in_order(taken))
    }

    fn holds(&self) -> bool {
        true
    }

    async fn hold(&self, max: usize) -> Result<(Vec<Delivery>, PgHeld), Error> {
        self.register_once().await?;
        let floor = self.floor().await?;
        // An error drops the connection: closed, so its transaction is rolled back.
        let mut tx = self.holds.take().await?;
        let wide = self.wide_hold(max);
        let begin = if wide.is_some() {
            "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan"
        } else {
            "BEGIN"
        };
        sqlx::Executor::execute(&mut tx, begin).await?;
        let rows = self
            .bind_fetch(wide.as_deref().unwrap_or(&self.sql.hold), max, floor)
            .fetch_all(&mut tx)
            .await?;
        self.note_short(rows.len(), max);
        let Read {
            mut taken,
            foreign,
            others,
        } = self.read_rows(rows)?;
        // Not marked, so nothing to put back: only left out of later fetches.
        self.foreign.add(foreign.iter().map(|f| f.0));
        // Routed in this transaction: the rows are locked in it until it ends.
        let routed = !others.is_empty();
        self.route(&mut tx, others).await?;
        self.name_elsewhere(&mut taken).await?;
        if taken.is_empty() {
            sqlx::Executor::execute(&mut tx, if routed { "COMMIT" } else { "ROLLBACK" }).await?;
            self.holds.give_back(tx);
            return Ok((Vec::new(), PgHeld(None)));
        }
        Ok((
            in_order(taken),
            PgHeld(Some(tokio::spawn(ready_to_settle(tx)))),
        ))
    }

    async fn release(
        &self,
        held: PgHeld,
        batch: &[Settle],
        mut running: Vec<i64>,
    ) -> Result<(), Error> {
        let Some(readied) = held.0 else {
            return self.complete(batch.to_vec()).await;
        };
        let mut tx = readied.await.map_err(|e| Error::Task(e.to_string()))??;
        // Claims are taken in ascending row order, by every statement that takes them (the
        // records of starts too): two managers' statements then wait for one another instead
        // of deadlocking on the claims' index.
        running.sort_unstable();
        // The savepoint `ready_to_settle` took after the rows were locked: a settle that
        // loses a deadlock against another manager's statement is rolled back to it and tried
        // again, with the rows still locked. Rolling the whole hold back would put rows whose
        // starts this process recorded back on the queue, unmarked, for another manager to
        // answer "interrupted".
        let mut tries = 0;
        let answered = loop {
            match self.settle_in(&mut tx, batch, &running).await {
                Ok(n) => break n,
                Err(e) if tries < RELEASE_TRIES && e.is_conflict() => {
                    tries += 1;
                    tracing::debug!(cause = %e, tries, "settle of a hold lost a conflict; trying again");
                    sqlx::Executor::execute(&mut tx, "ROLLBACK TO SAVEPOINT settle").await?;
                }
                Err(e) => return Err(e),
            }
        };
        sqlx::Executor::execute(&mut tx, "COMMIT").await?;
        self.holds.give_back(tx);
        self.after_delete(answered);
        Ok(())
    }

    async fn publish(&self, entities: Vec<String>) -> Result<(), Error> {
        self.register_once().await?;
        managers::publish(&self.pool, &self.names, &DIALECT, &self.instance, &entities).await?;
        if let Ok(mut s) = self.served.write() {
            *s = Some(Arc::new(entities.into_iter().collect()));
        }
        Ok(())
    }

    async fn deregister(&self) -> Result<(), Error> {
        managers::deregister(&self.pool, &self.names, &DIALECT, &self.instance).await
    }

    async fn complete(&self, batch: Vec<Settle>) -> Result<(), Error> {
        let answered = self.settle_in(&self.pool, &batch, &[]).await?;
        self.after_delete(answered);
        Ok(())
    }

    async fn started(&self, mut ids: Vec<i64>) -> Result<Vec<i64>, Error> {
        if ids.is_empty() {
            return Ok(ids);
        }
        // In ascending order, as `release` claims (see there).
        ids.sort_unstable();
        // Committed like the claims (see `fetch_pool`). A held row has no claim yet: the
        // record is its claim. A start recorded before (a request re-run because it is
        // idempotent) keeps its first time. The first process to record a start runs the
        // action: a claim of another process is taken over only while it has not started
        // (that process then finds its record refused and does not run it).
        let mut conn = self.starts.take().await?;
        let marked: Vec<i64> = sqlx::query_scalar(&self.sql.started)
            .bind(utc_now_rfc3339())
            .bind(&ids)
            .bind(&self.instance)
            .bind(&self.options.manager_id)
            .fetch_all(&mut conn)
            .await?;
        self.starts.give_back(conn);
        Ok(marked)
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
        sqlx::query(&format!(
            "UPDATE {} SET delivered_at = $1::timestamp WHERE id = ANY($2) AND delivered_at IS NOT NULL",
            self.table()
        ))
        .bind(now_text(&self.options))
        .bind(&ids)
        .execute(&self.fetch_pool)
        .await?;
        Ok(())
    }

    fn drained(&self) -> bool {
        // Listening: a row sent from now on is announced (Symfony's trigger notifies each
        // INSERT). Without a LISTEN connection the loop asks again at once, as before.
        self.options.use_notify
            && self.short.load(std::sync::atomic::Ordering::Relaxed)
            && self.listener.try_lock().is_ok_and(|l| l.is_some())
    }

    async fn wait(&self, timeout: Duration) {
        if !self.options.use_notify {
            tokio::time::sleep(timeout).await;
            return;
        }
        let mut guard = self.listener.lock().await;
        if guard.is_none() {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut l) => match l.listen(self.table()).await {
                    Ok(()) => *guard = Some(l),
                    Err(e) => tracing::warn!(cause = %e, "cannot LISTEN, polling instead"),
                },
                Err(e) => {
                    tracing::warn!(cause = %e, "cannot open the LISTEN connection, polling instead")
                }
            }
        }
        let Some(listener) = guard.as_mut() else {
            drop(guard);
            tokio::time::sleep(timeout).await;
            return;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, listener.try_recv()).await {
                Err(_) => return,
                Ok(Ok(Some(n)))
                    if n.payload() == self.options.queue_name
                        && !self
                            .own_pids
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains(&n.process_id()) =>
                {
                    return;
                }
                Ok(Ok(Some(_))) => {}
                // The connection dropped: notifications may be lost, so look at the table now.
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::warn!(cause = %e, "LISTEN connection failed");
                    *guard = None;
                    return;
                }
            }
        }
    }

    async fn send(&self, queue: &str, row: codec::Encoded) -> Result<i64, Error> {
        let now = now_text(&self.options);
        let id: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO {} (body, headers, queue_name, created_at, available_at) VALUES ($1, $2, $3, $4::timestamp, $4::timestamp) RETURNING id",
            self.table()
        ))
        .bind(row.body)
        .bind(row.headers)
        .bind(queue)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn answered(
        &self,
        correlation_ids: Vec<String>,
    ) -> Result<HashMap<String, LedgerEntry>, Error> {
        let ledger_table = &self.names.ledger;
        // An id the ledger cannot hold is in no row, and a NUL would fail the whole lookup.
        let correlation_ids: Vec<String> = correlation_ids
            .into_iter()
            .filter(|c| unstorable_id(c).is_none())
            .collect();
        if correlation_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {LEDGER_COLUMNS} FROM {ledger_table} WHERE correlation_id = ANY($1)"
        ))
        .persistent(true)
        .bind(&correlation_ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| entry_from_row(r).map(|e| (e.correlation_id.clone(), e)))
            .collect::<Result<_, _>>()
            .map_err(Error::from)
    }

    fn options(&self) -> &TransportOptions {
        &self.options
    }
}

records::impl_records!(PgTransport);

/// Whose a taken row is, when this process publishes the entities it serves.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    /// This process runs it.
    Me,
    /// Another manager serves its entity (or may, once it is back): route it there.
    Other(String),
    /// Routed, and no live manager serves its entity past the grace period.
    Nobody(String),
    /// `all` or `supervisor`, which this process serves: to be checked for other managers
    /// serving it too.
    Plain(String),
}

/// Whose `decoded` is: `mine` the entity ids this process serves, `routed_to` the entity a
/// manager routed the row to, `shared` whether other managers are registered on the queue.
/// A row that is not a well-formed request is this manager's to answer or park; so is every
/// row of a manager alone on the queue.
fn owner(
    decoded: &Result<codec::Decoded, String>,
    mine: &HashSet<String>,
    routed_to: Option<String>,
    shared: bool,
) -> Owner {
    if let Some(entity) = routed_to {
        // The fetch lets a routed row through only for these two reasons.
        return if mine.contains(&entity) {
            Owner::Me
        } else {
            Owner::Nobody(entity)
        };
    }
    let entity = match decoded {
        Ok(codec::Decoded {
            request: Some(Ok(r)),
            ..
        }) => r.entity_id.as_str(),
        _ => return Owner::Me,
    };
    if !shared || entity.len() > MAX_CORRELATION_ID_BYTES {
        Owner::Me
    } else if !mine.contains(entity) {
        Owner::Other(entity.to_owned())
    } else if entity == ALL || entity == SUPERVISOR {
        Owner::Plain(entity.to_owned())
    } else {
        Owner::Me
    }
}

/// The fetch's filter (see [`super::candidate_filter`]).
fn candidate_filter() -> String {
    super::candidate_filter(
        |h, n| format!("strpos({h}, {n})"),
        |c| format!("right({c}, 1)"),
        ["$4", "$10", "$11", "$12"],
        "body",
        "headers",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ManagerRequest;

    /// The statement planned once has its LIMIT written in, and still checks `$5` against
    /// it: a generic plan that knew no LIMIT would hash the claims, routes and ledger whole.
    #[test]
    fn the_hold_planned_once_has_its_limit_written_in() {
        let names = Names::for_table("messenger_messages");
        let sql = Sql::new("messenger_messages", &names);
        assert!(sql.hold.contains(TAKE_LIMIT));
        let once = sql.hold_planned_once(128);
        assert!(!once.contains("LIMIT $5"), "{once}");
        assert_eq!(once.matches("LIMIT 128 FOR UPDATE SKIP LOCKED").count(), 1);
        assert_eq!(once.matches("AND $5::bigint = 128 ORDER BY").count(), 1);
    }

    fn decoded(entity: &str) -> Result<codec::Decoded, String> {
        let row = codec::encode_request(
            &ManagerRequest::new("c", entity, "start"),
            codec::Format::Php,
            None,
        );
        codec::decode(row.body.as_bytes(), &row.headers)
    }

    #[test]
    fn whose_a_row_is() {
        let mine: HashSet<String> = ["a0", "all"].iter().map(|s| s.to_string()).collect();
        // Alone on the queue: every row.
        assert_eq!(owner(&decoded("b0"), &mine, None, false), Owner::Me);
        // Shared: its own, others' (routed there), plain ids checked for other servers.
        assert_eq!(owner(&decoded("a0"), &mine, None, true), Owner::Me);
        assert_eq!(
            owner(&decoded("b0"), &mine, None, true),
            Owner::Other("b0".into())
        );
        assert_eq!(
            owner(&decoded("all"), &mine, None, true),
            Owner::Plain("all".into())
        );
        // Routed: to this manager's entity, or let through because nobody serves it.
        assert_eq!(
            owner(&decoded("a0"), &mine, Some("a0".into()), true),
            Owner::Me
        );
        assert_eq!(
            owner(&decoded("b0"), &mine, Some("b0".into()), true),
            Owner::Nobody("b0".into())
        );
        // A row that is not a well-formed request is answered or parked by whoever takes it.
        assert_eq!(owner(&Err("bad".into()), &mine, None, true), Owner::Me);
    }
}
