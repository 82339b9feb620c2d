//! End to end through PostgreSQL: throughput of no-op actions against a PHP Symfony consumer
//! doing the same work on the same server in the same run, and dispatch-to-response latency
//! with LISTEN/NOTIFY at low load. Prints numbers and ratios; asserts nothing.
//!
//!   . scripts/services && cargo bench -p marvin-manager --bench queue
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marvin_manager::capabilities::Backends;
use marvin_manager::codec::{self, Format};
use marvin_manager::config::Config;
use marvin_manager::message::ManagerRequest;
use marvin_manager::registry::Registry;
use marvin_manager::runtime::plugins::PluginDir;
use marvin_manager::runtime::{Runtime, RuntimeSettings};
use marvin_manager::service::Manager;
use marvin_manager::service::{ConsumeOptions, consume};
use marvin_manager::transport::postgres::PgTransport;
use marvin_manager::transport::sqlite::SqliteTransport;
use marvin_manager::transport::{Dsn, Queue};
use sqlx::postgres::PgListener;

const RUST_ACTIONS: usize = 20_000;
/// Drains of RUST_ACTIONS measured for the throughput and CPU lines; their medians are printed.
const DRAINS: usize = 3;
const PHP_ACTIONS: usize = 600;
const LATENCY_SAMPLES: usize = 400;

fn request(i: usize) -> ManagerRequest {
    request_for(i, "c1")
}

fn request_for(i: usize, entity: &str) -> ManagerRequest {
    ManagerRequest::new(format!("bench-{i}-{}", std::process::id()), entity, "noop")
}

async fn fill(pool: &sqlx::PgPool, table: &str, queue: &str, from: usize, n: usize) {
    fill_for(pool, table, queue, from, n, &["c1"]).await;
}

/// `n` requests, round robin over `entities`.
async fn fill_for(
    pool: &sqlx::PgPool,
    table: &str,
    queue: &str,
    from: usize,
    n: usize,
    entities: &[&str],
) {
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(1000) {
        let bodies: Vec<String> = chunk
            .iter()
            .map(|&i| {
                let req = request_for(i, entities[i % entities.len()]);
                codec::encode_request(&req, Format::Php, Some("messenger.bus.default")).body
            })
            .collect();
        sqlx::query(&format!(
            "INSERT INTO {table} (body, headers, queue_name, created_at, available_at) \
             SELECT b, '[]', $2, now() AT TIME ZONE 'UTC' - interval '1 second', now() AT TIME ZONE 'UTC' - interval '1 second' FROM UNNEST($1::text[]) AS x(b)"
        ))
        .bind(&bodies)
        .bind(queue)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// What one measured drain read.
#[derive(Clone, Copy)]
struct Drain {
    /// Actions per second.
    rate: f64,
    /// The manager's CPU µs per action.
    manager_us: f64,
    /// PostgreSQL's CPU µs per action (summed over its processes).
    pg_us: f64,
    /// WAL bytes written per action (the server's, all sessions).
    wal_bytes: f64,
    /// Checkpoints that started during the drain: after one, the first change to each page
    /// writes the whole page to the WAL, and PostgreSQL's CPU per action rises with it.
    checkpoints: i64,
    /// Autovacuum's vacuums and analyzes of the queue table that ran during the drain (its
    /// work counts as PostgreSQL's CPU).
    autovacuums: i64,
}

/// The median of each reading of `drains` (of the checkpoints and autovacuum runs: their sum).
fn medians(drains: &[Drain]) -> Drain {
    let m = |f: fn(&Drain) -> f64| median(drains.iter().map(f).collect());
    Drain {
        rate: m(|d| d.rate),
        manager_us: m(|d| d.manager_us),
        pg_us: m(|d| d.pg_us),
        wal_bytes: m(|d| d.wal_bytes),
        checkpoints: drains.iter().map(|d| d.checkpoints).sum(),
        autovacuums: drains.iter().map(|d| d.autovacuums).sum(),
    }
}

/// The server's WAL position in bytes, and the checkpoints it has started so far (PostgreSQL
/// 17 counts them in `pg_stat_checkpointer`, older versions in `pg_stat_bgwriter`).
async fn wal_and_checkpoints(admin: &sqlx::PgPool) -> (i64, i64) {
    let wal = sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
        .fetch_one(admin)
        .await
        .unwrap();
    let checkpoints =
        match sqlx::query_scalar("SELECT num_timed + num_requested FROM pg_stat_checkpointer")
            .fetch_one(admin)
            .await
        {
            Ok(n) => n,
            Err(_) => sqlx::query_scalar(
                "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter",
            )
            .fetch_one(admin)
            .await
            .unwrap(),
        };
    (wal, checkpoints)
}

/// Autovacuum's vacuums plus analyzes of `table` so far.
async fn autovacuums(admin: &sqlx::PgPool, table: &str) -> i64 {
    let (schema, name) = table.split_once('.').unwrap();
    sqlx::query_scalar(
        "SELECT autovacuum_count + autoanalyze_count FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
    )
    .bind(schema)
    .bind(name)
    .fetch_one(admin)
    .await
    .unwrap()
}

/// One measured drain: the answers of earlier drains consumed (as Core does) and the table
/// vacuumed, so every drain starts from the table a deployment has in steady state; then `n`
/// requests filled from id `from` and drained by `transport` with `hold`.
async fn drain_once(
    admin: &sqlx::PgPool,
    table: &str,
    transport: &Arc<PgTransport>,
    manager: &Arc<Manager>,
    from: usize,
    n: usize,
    hold: Option<Duration>,
) -> Drain {
    sqlx::query(&format!(
        "DELETE FROM {table} WHERE queue_name = 'responses'"
    ))
    .execute(admin)
    .await
    .unwrap();
    sqlx::query(&format!("VACUUM ANALYZE {table}"))
        .execute(admin)
        .await
        .unwrap();
    fill(admin, table, "requests", from, n).await;
    let opts = ConsumeOptions {
        limit: Some(n as u64),
        poll: Duration::from_millis(20),
        hold,
        ..Default::default()
    };
    let (wal0, checkpoints0) = wal_and_checkpoints(admin).await;
    let auto0 = autovacuums(admin, table).await;
    let cpu0 = common::Cpu::now("self");
    let t = Instant::now();
    // Spawned, as `serve` runs it (on the runtime's workers).
    let stats = tokio::spawn(consume(
        transport.clone(),
        manager.clone(),
        opts,
        std::future::pending(),
    ))
    .await
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let (ours, pg) = common::Cpu::now("self").since(&cpu0);
    let (wal1, checkpoints1) = wal_and_checkpoints(admin).await;
    // Counted when the statistics are flushed (within a second of the work).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let auto1 = autovacuums(admin, table).await;
    assert_eq!(stats.answered, n as u64);
    Drain {
        rate: n as f64 / secs,
        manager_us: ours / n as f64 * 1e6,
        pg_us: pg / n as f64 * 1e6,
        wal_bytes: (wal1 - wal0) as f64 / n as f64,
        checkpoints: checkpoints1 - checkpoints0,
        autovacuums: auto1 - auto0,
    }
}

/// Which of an alternating comparison's two variants drain `round` runs: in ABBA order
/// (off, on, on, off, …), not ABAB. The transport vacuums its table after every 10,000
/// deletions, every second drain of 5,000: in ABAB order those vacuums always landed on the
/// same variant, which read 0.60–1.12 for metrics on/off and 0.69–1.07 for held/marked within
/// one day.
fn second(round: usize) -> bool {
    matches!(round % 4, 1 | 2)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort_unstable();
    samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3
}

fn main() {
    let base =
        std::env::var("MARVIN_TEST_PG").expect("MARVIN_TEST_PG: run `. scripts/services` first");
    let php = std::env::var("MARVIN_TEST_PHP").unwrap_or_else(|_| "php".into());
    if std::env::var_os("RUST_LOG").is_some() {
        marvin_manager::cli::logging::init("warn", marvin_manager::cli::logging::LogFormat::Text);
    }
    marvin_manager::cli::tune_allocator();
    // The binary's runtime: the manager measured here runs as `serve` does.
    let rt = marvin_manager::cli::async_runtime().unwrap();
    rt.block_on(async {
        let schema = format!("bench_{}", std::process::id());
        let admin = sqlx::PgPool::connect(&base).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
        let table = format!("{schema}.messenger_messages");
        let dsn = Dsn::parse(&format!("{base}?table_name={table}&queue_name=requests&response_queue_name=responses")).unwrap();
        let transport = Arc::new(PgTransport::connect(&dsn.url, dsn.options.clone(), 8).await.unwrap());
        transport.setup().await.unwrap();

        let plugins = tempfile::tempdir().unwrap();
        std::fs::copy(test_programs::NOOP, plugins.path().join("noop.wasm")).unwrap();
        let config = Config::parse("[entities.c1]\nkind = \"container\"\nproject = \"p\"\nservice = \"s\"\n").unwrap();
        let runtime = Arc::new(Runtime::new(RuntimeSettings::default(), Backends::default(), None).unwrap());
        let dir = PluginDir::open(runtime.clone(), plugins.path().to_owned()).await;
        let manager = Arc::new(Manager::new(Registry::from_config(&config), runtime, dir));

        // 0. The SQL-only ceiling on this server, right before the manager.
        fill(&admin, &table, "ceiling", 10_000_000, CEILING_ROWS).await;
        let ceiling = pg_ceiling(&admin, &table, "ceiling", CEILING_ROWS).await;
        sqlx::query(&format!("DELETE FROM {table} WHERE queue_name = 'ceiling_answers'")).execute(&admin).await.unwrap();
        sqlx::query(&format!("VACUUM ANALYZE {table}")).execute(&admin).await.unwrap();

        // 1. Rust throughput: a backlog of no-op requests drained by `consume`, DRAINS times
        //    (the first right after start, the others warm), each from the table as a
        //    deployment has it: the previous answers consumed by Core and vacuumed. One drain's
        //    CPU varies by a few µs from run to run on this shared machine; the median of the
        //    drains is the reading, each drain printed beside it.
        let mut drains: Vec<Drain> = Vec::with_capacity(DRAINS);
        for k in 0..DRAINS {
            let from = if k == 0 { 0 } else { 6_000_000 + k * RUST_ACTIONS };
            drains.push(drain_once(&admin, &table, &transport, &manager, from, RUST_ACTIONS, ConsumeOptions::default().hold).await);
        }
        let Drain { rate: rust_rate, manager_us: ours_us, pg_us, .. } = medians(&drains);
        let rust_secs = RUST_ACTIONS as f64 / rust_rate;

        // 2. PHP Symfony consumer, same server, same work (take, answer, acknowledge).
        fill(&admin, &table, "php_requests", RUST_ACTIONS, PHP_ACTIONS).await;
        let script = format!("{}/../tests/php/bench_consumer.php", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(&php)
            .args([&script, &base, &table, "php_requests", "php_responses", &PHP_ACTIONS.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text.split_whitespace();
        let php_n: f64 = parts.next().unwrap().parse().unwrap();
        let php_secs: f64 = parts.next().unwrap().parse().unwrap();
        let php_rate = php_n / php_secs;

        // 3. Latency at low load: one request at a time while `consume` waits on LISTEN. Start
        //    from the table as a deployment has it in steady state: Core has consumed the
        //    answers and autovacuum has run (here: done by hand, so the run is repeatable).
        sqlx::query(&format!("DELETE FROM {table} WHERE queue_name <> 'requests'")).execute(&admin).await.unwrap();
        sqlx::query(&format!("VACUUM ANALYZE {table}")).execute(&admin).await.unwrap();
        let mut listener = PgListener::connect(&base).await.unwrap();
        listener.listen(&table).await.unwrap();
        // The floor: one INSERT and its NOTIFY coming back, no consumer involved.
        let mut floor = Vec::with_capacity(LATENCY_SAMPLES);
        for _ in 0..LATENCY_SAMPLES {
            let t = Instant::now();
            transport.send("ping", codec::Encoded { body: "x".into(), headers: "[]".into() }).await.unwrap();
            loop {
                if listener.recv().await.unwrap().payload() == "ping" {
                    break;
                }
            }
            floor.push(t.elapsed());
        }
        // The SQL path alone, no consumer loop: send, fetch, ledger lookup, complete, NOTIFY.
        let dsn2 = Dsn::parse(&format!("{base}?table_name={table}&queue_name=direct&response_queue_name=direct_responses")).unwrap();
        let direct = PgTransport::connect(&dsn2.url, dsn2.options, 4).await.unwrap();
        let mut sql_path = Vec::with_capacity(LATENCY_SAMPLES);
        for i in 0..LATENCY_SAMPLES {
            let req = request(2_000_000 + i);
            let t = Instant::now();
            direct.send("direct", codec::encode_request(&req, Format::Php, None)).await.unwrap();
            let got = direct.fetch(1).await.unwrap();
            let _ = direct.answered(vec![req.correlation_id.clone()]).await.unwrap();
            let resp = marvin_manager::message::ManagerResponse::failure(&req, marvin_manager::message::EntityKind::Container, "x");
            direct
                .complete(vec![marvin_manager::transport::Settle::Reply { request_id: got[0].id, response: codec::encode_response(&resp, Format::Php, None), ledger: None }])
                .await
                .unwrap();
            loop {
                if listener.recv().await.unwrap().payload() == "direct_responses" {
                    break;
                }
            }
            sql_path.push(t.elapsed());
        }
        let mut samples = latency(&transport, &manager, &mut listener, ConsumeOptions::default().hold, 1_000_000).await;
        // The same with every row marked when taken and answered in a second commit.
        let mut marked = latency(&transport, &manager, &mut listener, None, 1_500_000).await;
        let (p50, p99) = (pct(&mut samples, 0.50), pct(&mut samples, 0.99));
        // The latency's listener is done: left listening unread, its session would hold every
        // later NOTIFY on the server (a client that never reads).
        drop(listener);
        drop(direct);

        // 4. Metrics on vs off: the same drain, alternating, counting paused in between.
        const METRICS_ROUNDS: usize = 7;
        const METRICS_ACTIONS: usize = 5_000;
        let mut metrics_runs = [Vec::new(), Vec::new()];
        marvin_manager::metrics::install("bench");
        for round in 0..METRICS_ROUNDS * 2 {
            let on = second(round);
            marvin_manager::metrics::set_enabled(on);
            let from = RUST_ACTIONS + PHP_ACTIONS + 1_000_000 + round * METRICS_ACTIONS;
            metrics_runs[usize::from(on)].push(drain_once(&admin, &table, &transport, &manager, from, METRICS_ACTIONS, ConsumeOptions::default().hold).await);
        }
        marvin_manager::metrics::set_enabled(false);
        let counted = marvin_manager::metrics::install("bench").encode();
        assert!(counted.contains(&format!("outcome=\"success\"}} {}", METRICS_ROUNDS * METRICS_ACTIONS)), "{counted}");

        // 4b. Rows held in their fetch's transaction (one commit per short action) against
        //     rows marked when taken (two commits), alternating, with CPU per action.
        let mut held_runs = [Vec::new(), Vec::new()];
        for round in 0..METRICS_ROUNDS * 2 {
            let hold = second(round);
            let from = RUST_ACTIONS + PHP_ACTIONS + 3_000_000 + round * METRICS_ACTIONS;
            let bound = if hold { ConsumeOptions::default().hold } else { None };
            held_runs[usize::from(hold)].push(drain_once(&admin, &table, &transport, &manager, from, METRICS_ACTIONS, bound).await);
        }
        let (metrics_off, metrics_on) = (medians(&metrics_runs[0]), medians(&metrics_runs[1]));
        let (marked_m, held_m) = (medians(&held_runs[0]), medians(&held_runs[1]));

        // 5. The ownership filter of several managers: the same drain by a manager that
        //    published what it serves while another manager is registered (every fetch then
        //    filters by entity), alternating with one that never published (no filter). Both
        //    transports connected here, so neither carries the earlier sections' state.
        let filtered = Arc::new(PgTransport::connect(&dsn.url, dsn.options.clone(), 8).await.unwrap());
        let plain = Arc::new(PgTransport::connect(&dsn.url, dsn.options.clone(), 8).await.unwrap());
        filtered.publish(vec!["c1".into()]).await.unwrap();
        sqlx::query(&format!(
            "INSERT INTO {schema}.marvin_manager_managers (instance, manager, beat_at) \
             VALUES ('bench-other', 'bench-other-host', extract(epoch from now())::bigint)"
        ))
        .execute(&admin)
        .await
        .unwrap();
        let mut owned = [Vec::new(), Vec::new()];
        for round in 0..METRICS_ROUNDS * 2 {
            let with = second(round);
            let from = RUST_ACTIONS + PHP_ACTIONS + 2_000_000 + round * METRICS_ACTIONS;
            let by = if with { &filtered } else { &plain };
            owned[usize::from(with)].push(drain_once(&admin, &table, by, &manager, from, METRICS_ACTIONS, ConsumeOptions::default().hold).await);
        }
        let (unfiltered, with_filter) = (medians(&owned[0]).rate, medians(&owned[1]).rate);

        // 6. Three `serve` processes sharing one queue, each serving its own entity, against
        //    one `serve` serving all three: the same backlog, from the fill to the last answer.
        let one = serve_drain(&base, &admin, &[&["c1", "c2", "c3"]]).await;
        let three = serve_drain(&base, &admin, &[&["c1"], &["c2"], &["c3"]]).await;

        println!("end to end through PostgreSQL, no-op plugin");
        println!("  manager:      {RUST_ACTIONS} actions in {rust_secs:.2} s = {rust_rate:.0} actions/s (median of {DRAINS} drains)");
        println!(
            "  CPU per action (less noisy than rates; median of {DRAINS} drains): manager {ours_us:.1} µs (target <= 40) + PostgreSQL {pg_us:.0} µs"
        );
        for (k, d) in drains.iter().enumerate() {
            let when = if k == 0 { "first, right after start" } else { "warm" };
            println!("    drain {}: {:.0} actions/s, manager {:.1} µs + PostgreSQL {:.0} µs, WAL {:.0} bytes per action, checkpoints started {}, autovacuum runs on the table {} ({when})", k + 1, d.rate, d.manager_us, d.pg_us, d.wal_bytes, d.checkpoints, d.autovacuums);
        }
        println!("  SQL-only ceiling (Symfony's statements in batches of {CEILING_BATCH}, {CEILING_CLIENTS} clients, no plugin, no codec): {ceiling:.0} rows/s");
        println!("  manager / ceiling: {:.2} (target >= 0.6)", rust_rate / ceiling);
        println!("  PHP Symfony:  {php_n:.0} actions in {php_secs:.2} s = {php_rate:.0} actions/s ({:.3} of the ceiling)", php_rate / ceiling);
        println!("  ratio:        {:.1}x (target >= 20x; throughput target >= 3000/s: {})", rust_rate / php_rate, if rust_rate >= 3000.0 { "met" } else { "NOT met" });
        println!(
            "metrics on vs off ({METRICS_ROUNDS} alternating pairs of drains of {METRICS_ACTIONS}, medians): on {:.0} actions/s, off {:.0} actions/s, on/off {:.3} (target >= 0.95); manager CPU per action on {:.1} µs, off {:.1} µs",
            metrics_on.rate,
            metrics_off.rate,
            metrics_on.rate / metrics_off.rate,
            metrics_on.manager_us,
            metrics_off.manager_us,
        );
        println!(
            "rows held while short actions run vs marked when taken ({METRICS_ROUNDS} alternating pairs of drains of {METRICS_ACTIONS}, medians): held {:.0} actions/s, marked {:.0} actions/s, held/marked {:.2}; manager CPU per action held {:.1} µs, marked {:.1} µs; PostgreSQL held {:.0} µs, marked {:.0} µs; WAL per action held {:.0} bytes, marked {:.0}",
            held_m.rate,
            marked_m.rate,
            held_m.rate / marked_m.rate,
            held_m.manager_us,
            marked_m.manager_us,
            held_m.pg_us,
            marked_m.pg_us,
            held_m.wal_bytes,
            marked_m.wal_bytes,
        );
        let all: Vec<&Drain> = metrics_runs.iter().chain(&held_runs).chain(&owned).flatten().collect();
        println!(
            "  the {} drains of {METRICS_ACTIONS} above and below: checkpoints started during them {}, autovacuum runs on the table {}, PostgreSQL CPU per action {:.0}–{:.0} µs, WAL {:.0}–{:.0} bytes (a drain that meets a checkpoint writes whole pages)",
            all.len(),
            all.iter().map(|d| d.checkpoints).sum::<i64>(),
            all.iter().map(|d| d.autovacuums).sum::<i64>(),
            all.iter().map(|d| d.pg_us).fold(f64::INFINITY, f64::min),
            all.iter().map(|d| d.pg_us).fold(0.0, f64::max),
            all.iter().map(|d| d.wal_bytes).fold(f64::INFINITY, f64::min),
            all.iter().map(|d| d.wal_bytes).fold(0.0, f64::max),
        );
        println!(
            "ownership filter ({METRICS_ROUNDS} alternating pairs of drains of {METRICS_ACTIONS}, medians): with {with_filter:.0} actions/s, without {unfiltered:.0} actions/s, with/without {:.3} (target >= 0.90)",
            with_filter / unfiltered
        );
        println!(
            "serve processes, {SERVE_ACTIONS} requests over 3 entities: one manager {one:.0} actions/s, three managers (one entity each) {three:.0} actions/s, three/one {:.2}",
            three / one
        );
        println!("latency, dispatch to response committed, LISTEN/NOTIFY, {LATENCY_SAMPLES} sequential requests");
        println!("  p50 {p50:.2} ms (target <= 2.5), p99 {p99:.2} ms (target <= 10)");
        println!("  rows marked when taken, answered in a second commit: p50 {:.2} ms, p99 {:.2} ms", pct(&mut marked, 0.5), pct(&mut marked, 0.99));
        println!("  floor (INSERT + its NOTIFY back, no consumer): p50 {:.2} ms, p99 {:.2} ms", pct(&mut floor, 0.5), pct(&mut floor, 0.99));
        println!("  SQL path alone (send, fetch, ledger, complete, NOTIFY): p50 {:.2} ms, p99 {:.2} ms", pct(&mut sql_path, 0.5), pct(&mut sql_path, 0.99));

        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await.unwrap();

        // 7. The embedded default: SQLite (WAL), its own ceiling, then the manager.
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("queue.db").display());
        let dsn = Dsn::parse(&format!("{url}?queue_name=requests&response_queue_name=responses")).unwrap();
        let lite = Arc::new(SqliteTransport::connect(&dsn.url, dsn.options.clone()).await.unwrap());
        lite.setup().await.unwrap();
        let pool = lite.pool().clone();
        fill_sqlite(&pool, "ceiling", 10_000_000, SQLITE_ACTIONS).await;
        let lite_ceiling = sqlite_ceiling(&pool, "ceiling", SQLITE_ACTIONS).await;
        sqlx::query("DELETE FROM messenger_messages WHERE queue_name = 'ceiling_answers'").execute(&pool).await.unwrap();
        fill_sqlite(&pool, "requests", 0, SQLITE_ACTIONS).await;
        let opts = ConsumeOptions { limit: Some(SQLITE_ACTIONS as u64), poll: Duration::from_millis(20), ..Default::default() };
        let t = Instant::now();
        let stats = tokio::spawn(consume(lite.clone(), manager.clone(), opts, std::future::pending())).await.unwrap();
        assert_eq!(stats.answered, SQLITE_ACTIONS as u64);
        let lite_rate = SQLITE_ACTIONS as f64 / t.elapsed().as_secs_f64();
        println!("SQLite (WAL), no-op plugin");
        println!("  SQL-only ceiling (the same statements in batches of {CEILING_BATCH}, one writer): {lite_ceiling:.0} rows/s");
        println!("  manager: {SQLITE_ACTIONS} actions = {lite_rate:.0} actions/s, {:.2} of the ceiling", lite_rate / lite_ceiling);
    });
}

/// Dispatch-to-answer latency at low load: one request at a time while `consume` (rows held
/// for `hold`, or marked when taken) waits on LISTEN.
async fn latency(
    transport: &Arc<PgTransport>,
    manager: &Arc<Manager>,
    listener: &mut PgListener,
    hold: Option<Duration>,
    from: usize,
) -> Vec<Duration> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = ConsumeOptions {
        poll: Duration::from_secs(5),
        hold,
        ..Default::default()
    };
    let consumer = tokio::spawn(consume(transport.clone(), manager.clone(), opts, async {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES {
        let row = codec::encode_request(
            &request(from + i),
            Format::Php,
            Some("messenger.bus.default"),
        );
        let t = Instant::now();
        transport.send("requests", row).await.unwrap();
        loop {
            let n = listener.recv().await.unwrap();
            if n.payload() == "responses" {
                break;
            }
        }
        samples.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(());
    consumer.await.unwrap();
    samples
}

const CEILING_ROWS: usize = 20_000;
const CEILING_BATCH: i64 = 100;
const CEILING_CLIENTS: usize = 2;
const SQLITE_ACTIONS: usize = 10_000;

/// The SQL-only ceiling on PostgreSQL: the statements Symfony's Doctrine transport runs for a
/// message — take (SELECT … FOR UPDATE SKIP LOCKED, mark `delivered_at`, commit), answer
/// (INSERT the response, DELETE the request, commit) — in batches of [`CEILING_BATCH`], by
/// [`CEILING_CLIENTS`] connections at once, no plugin, no codec. Rows per second.
async fn pg_ceiling(pool: &sqlx::PgPool, table: &str, queue: &str, n: usize) -> f64 {
    let t = Instant::now();
    let clients = (0..CEILING_CLIENTS).map(|_| {
        let (pool, table, queue) = (pool.clone(), table.to_owned(), queue.to_owned());
        tokio::spawn(async move {
            let now = "now() AT TIME ZONE 'UTC'";
            loop {
                let mut tx = pool.begin().await.unwrap();
                let rows: Vec<(i64, String, String)> = sqlx::query_as(&format!(
                    "SELECT m.id, m.body, m.headers FROM {table} m WHERE (m.delivered_at IS NULL OR m.delivered_at < {now} - interval '1 hour') \
                     AND m.available_at <= {now} AND m.queue_name = $1 ORDER BY m.available_at ASC LIMIT $2 FOR UPDATE SKIP LOCKED"
                ))
                .bind(&queue)
                .bind(CEILING_BATCH)
                .fetch_all(&mut *tx)
                .await
                .unwrap();
                if rows.is_empty() {
                    break;
                }
                let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
                sqlx::query(&format!("UPDATE {table} SET delivered_at = {now} WHERE id = ANY($1)"))
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                let bodies: Vec<String> = rows.into_iter().map(|r| r.1).collect();
                let mut tx = pool.begin().await.unwrap();
                sqlx::query(&format!(
                    "INSERT INTO {table} (body, headers, queue_name, created_at, available_at) \
                     SELECT b, '[]', $2, {now}, {now} FROM UNNEST($1::text[]) AS x(b)"
                ))
                .bind(&bodies)
                .bind(format!("{queue}_answers"))
                .execute(&mut *tx)
                .await
                .unwrap();
                sqlx::query(&format!("DELETE FROM {table} WHERE id = ANY($1)"))
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        })
    });
    for c in clients.collect::<Vec<_>>() {
        c.await.unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// `n` requests on `queue` of the SQLite queue.
async fn fill_sqlite(pool: &sqlx::SqlitePool, queue: &str, from: usize, n: usize) {
    let mut tx = pool.begin().await.unwrap();
    for i in from..from + n {
        let body =
            codec::encode_request(&request(i), Format::Php, Some("messenger.bus.default")).body;
        sqlx::query(
            "INSERT INTO messenger_messages (body, headers, queue_name, created_at, available_at) \
             VALUES (?1, '[]', ?2, datetime('now', '-1 second'), datetime('now', '-1 second'))",
        )
        .bind(body)
        .bind(queue)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

/// The same ceiling on SQLite: one writer (SQLite has one), `BEGIN IMMEDIATE` as the
/// transport takes it.
async fn sqlite_ceiling(pool: &sqlx::SqlitePool, queue: &str, n: usize) -> f64 {
    let t = Instant::now();
    loop {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT m.id, m.body FROM messenger_messages m WHERE (m.delivered_at IS NULL OR m.delivered_at < datetime('now', '-1 hour')) \
             AND m.available_at <= datetime('now') AND m.queue_name = ?1 ORDER BY m.available_at ASC LIMIT ?2",
        )
        .bind(queue)
        .bind(CEILING_BATCH)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        if rows.is_empty() {
            break;
        }
        let ids = serde_json::to_string(&rows.iter().map(|r| r.0).collect::<Vec<_>>()).unwrap();
        sqlx::query("UPDATE messenger_messages SET delivered_at = datetime('now') WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        for (_, body) in &rows {
            sqlx::query(
                "INSERT INTO messenger_messages (body, headers, queue_name, created_at, available_at) \
                 VALUES (?1, '[]', ?2, datetime('now'), datetime('now'))",
            )
            .bind(body)
            .bind(format!("{queue}_answers"))
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        sqlx::query("DELETE FROM messenger_messages WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

const SERVE_ACTIONS: usize = 9_000;

/// Starts one `serve` per entry of `managers` (the entity ids each serves) on a fresh queue,
/// waits until each has published them, fills [`SERVE_ACTIONS`] requests round robin over
/// every entity, and returns the rate from the fill to the last answer.
async fn serve_drain(base: &str, admin: &sqlx::PgPool, managers: &[&[&str]]) -> f64 {
    let schema = format!("bench_{}_{}", std::process::id(), managers.len());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(admin)
        .await
        .unwrap();
    let table = format!("{schema}.messenger_messages");
    let dsn =
        format!("{base}?table_name={table}&queue_name=requests&response_queue_name=responses");
    let parsed = Dsn::parse(&dsn).unwrap();
    PgTransport::connect(&parsed.url, parsed.options, 2)
        .await
        .unwrap()
        .setup()
        .await
        .unwrap();
    let dirs: Vec<tempfile::TempDir> = managers
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut children = Vec::new();
    for (i, (entities, dir)) in managers.iter().zip(&dirs).enumerate() {
        let mut config = format!("[manager]\nid = \"bench-{i}\"\n[docker]\ndiscovery = false\n");
        for e in *entities {
            config.push_str(&format!(
                "[entities.{e}]\nkind = \"container\"\nproject = \"p\"\nservice = \"{e}\"\n"
            ));
        }
        children.push(common::serve_noop(dir.path(), &dsn, &config));
    }
    let served = format!("{schema}.marvin_manager_served");
    let up = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(DISTINCT instance) FROM {served}"))
            .fetch_one(admin)
            .await
            .unwrap_or(0);
        if n as usize == managers.len() {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "the managers did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all: Vec<&str> = managers.iter().flat_map(|m| m.iter().copied()).collect();
    let t = Instant::now();
    fill_for(admin, &table, "requests", 5_000_000, SERVE_ACTIONS, &all).await;
    loop {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE queue_name = 'responses'"
        ))
        .fetch_one(admin)
        .await
        .unwrap();
        if n as usize >= SERVE_ACTIONS {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "{n} of {SERVE_ACTIONS} answered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = SERVE_ACTIONS as f64 / t.elapsed().as_secs_f64();
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    // A killed process's sessions end on the server a little later: one still holding a lock
    // can make the DROP lose a deadlock; try again.
    for attempt in 1.. {
        match sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(admin)
            .await
        {
            Ok(_) => break,
            Err(e) if attempt < 10 => {
                eprintln!("dropping {schema} (attempt {attempt}): {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("dropping {schema}: {e}"),
        }
    }
    rate
}
