//! Cost as the backlog grows: a `serve` process (no-op plugin) drains the first requests of a
//! backlog of 10,000, 100,000 and 1,000,000 waiting requests, beside a failure queue of
//! 100,000 rows parked over the day before, on PostgreSQL. Prints the rate, the cost of one fetch statement on that
//! backlog, and the resident memory of `serve`; asserts nothing.
//!
//!   . scripts/services && cargo bench -p marvin-manager --bench backlog
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use marvin_manager::codec::{self, Format};
use marvin_manager::message::{EntityKind, ManagerRequest, ManagerResponse};
use marvin_manager::transport::postgres::PgTransport;
use marvin_manager::transport::{Dsn, Queue, Settle};

const BACKLOGS: [usize; 3] = [10_000, 100_000, 1_000_000];
const PARKED: usize = 100_000;
/// Requests answered per measure (the first of the backlog).
const DRAINED: usize = 5_000;
const FETCH_SAMPLES: usize = 200;
/// A correlation id of fixed width, replaced in SQL (PHP's `serialize` counts bytes).
const PLACEHOLDER: &str = "bench-000000000000";

/// Resident and peak resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

/// `n` waiting requests for entity `c1` on queue `queue`, made in SQL from one encoded body,
/// available an hour ago, or spread over the `spread` seconds before that (rows parked over
/// the day before the backlog); created now, so they run rather than being answered
/// "expired".
async fn backlog(pool: &sqlx::PgPool, table: &str, queue: &str, n: usize, tag: &str, spread: i64) {
    let template = codec::encode_request(
        &ManagerRequest::new(PLACEHOLDER, "c1", "noop"),
        Format::Php,
        Some("messenger.bus.default"),
    )
    .body;
    sqlx::query(&format!(
        "INSERT INTO {table} (body, headers, queue_name, created_at, available_at) \
         SELECT replace($1, $2, $3 || lpad(g::text, length($2) - length($3), '0')), '[]', $4, \
           now() AT TIME ZONE 'UTC', \
           now() AT TIME ZONE 'UTC' - interval '1 hour' - (g % $6) * interval '1 second' \
         FROM generate_series(1, $5) g"
    ))
    .bind(&template)
    .bind(PLACEHOLDER)
    .bind(format!("bench-{tag}"))
    .bind(queue)
    .bind(i64::try_from(n).unwrap())
    .bind(spread.max(1))
    .execute(pool)
    .await
    .unwrap();
}

fn pct(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3
}

fn main() {
    let base =
        std::env::var("MARVIN_TEST_PG").expect("MARVIN_TEST_PG: run `. scripts/services` first");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin = sqlx::PgPool::connect(&base).await.unwrap();
        println!("backlog on PostgreSQL, a failure queue of {PARKED} parked rows beside it, `serve` with a no-op plugin");
        println!(
            "{:>10} {:>16} {:>16} {:>18} {:>22}",
            "backlog", "actions/s", "fetch p50 (ms)", "serve RSS (MiB)", "CPU/action serve+PG µs"
        );
        let mut rates = Vec::new();
        let mut fetches = Vec::new();
        for n in BACKLOGS {
            let schema = format!("backlog_{}_{n}", std::process::id());
            sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
            let table = format!("{schema}.messenger_messages");
            let dsn = format!("{base}?table_name={table}&queue_name=requests&response_queue_name=responses");
            let parsed = Dsn::parse(&dsn).unwrap();
            let t = PgTransport::connect(&parsed.url, parsed.options.clone(), 4).await.unwrap();
            t.setup().await.unwrap();
            // The failure queue: parked rows and their records, parked over the day before
            // (younger than the ledger's retention: `serve` prunes nothing of them).
            backlog(&admin, &table, "failed", PARKED, "f", 23 * 3600).await;
            sqlx::query(&format!(
                "INSERT INTO {schema}.marvin_manager_failures (row_id, original_queue, reason, failed_at) \
                 SELECT id, 'requests', 'bench', to_char(available_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') FROM {table} WHERE queue_name = 'failed'"
            ))
            .execute(&admin)
            .await
            .unwrap();
            backlog(&admin, &table, "requests", n, "r", 1).await;
            sqlx::query(&format!("VACUUM ANALYZE {table}")).execute(&admin).await.unwrap();

            // One fetch statement on this backlog (taking one row and answering it).
            let mut samples = Vec::with_capacity(FETCH_SAMPLES);
            for _ in 0..FETCH_SAMPLES {
                let at = Instant::now();
                let got = t.fetch(1).await.unwrap();
                samples.push(at.elapsed());
                let req = ManagerRequest::new("x", "c1", "noop");
                let resp = ManagerResponse::failure(&req, EntityKind::Container, "x");
                t.complete(vec![Settle::Reply {
                    request_id: got[0].id,
                    response: codec::encode_response(&resp, Format::Php, None),
                    ledger: None,
                }])
                .await
                .unwrap();
            }
            let fetch_p50 = pct(&mut samples, 0.5);

            // `serve` drains the first DRAINED requests.
            let dir = tempfile::tempdir().unwrap();
            let answered = || async {
                sqlx::query_scalar::<_, i64>(&format!(
                    "SELECT count(*) FROM {table} WHERE queue_name = 'responses'"
                ))
                .fetch_one(&admin)
                .await
                .unwrap() as usize
            };
            let before = answered().await;
            let mut child = common::serve_noop(
                dir.path(),
                &dsn,
                "[docker]\ndiscovery = false\n[entities.c1]\nkind = \"container\"\nproject = \"p\"\nservice = \"s\"\n",
            );
            // Timed from its first answer (start-up and plugin compilation left out).
            let up = Instant::now();
            while answered().await == before {
                assert!(
                    up.elapsed() < Duration::from_secs(120),
                    "serve answered nothing: {}",
                    std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let from = answered().await;
            let cpu0 = common::Cpu::now(&child.id().to_string());
            let at = Instant::now();
            let mut peak = 0.0f64;
            loop {
                let done = answered().await - from;
                peak = peak.max(rss_mib(child.id()).0);
                if done >= DRAINED {
                    break;
                }
                assert!(at.elapsed() < Duration::from_secs(300), "{done} answered");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let done = answered().await - from;
            let rate = done as f64 / at.elapsed().as_secs_f64();
            let (serve_cpu, pg_cpu) = common::Cpu::now(&child.id().to_string()).since(&cpu0);
            let per = |secs: f64| secs / done as f64 * 1e6;
            let cpu = format!("{:.0} + {:.0}", per(serve_cpu), per(pg_cpu));
            let (_, hwm) = rss_mib(child.id());
            // Stopped as systemd stops it (SIGTERM: what it holds is answered or released),
            // so no backend of it is still at work when the schema is dropped.
            let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
            println!("{n:>10} {rate:>16.0} {fetch_p50:>16.2} {:>18} {cpu:>22}", format!("{peak:.1} (peak {hwm:.1})"));
            rates.push(rate);
            fetches.push(fetch_p50);
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await.unwrap();
        }
        let spread = |v: &[f64]| {
            let max = v.iter().copied().fold(f64::MIN, f64::max);
            let min = v.iter().copied().fold(f64::MAX, f64::min);
            max / min
        };
        println!(
            "largest / smallest: rate {:.2}, fetch {:.2} (target: within 1.2)",
            spread(&rates),
            spread(&fetches)
        );
    });
}
