//! The cost of one `marvin-manager dispatch` on tables that exist (one connection, one INSERT,
//! no DDL), 300 calls one after the other, next to Symfony's own dispatch from PHP (a process
//! per message, as a cron job or a console command sends them) on the same server in the same
//! run. Prints numbers and the ratio; asserts only that every message arrived.
//!
//!   . scripts/services && cargo bench -p marvin-manager --bench dispatch
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::process::Command;
use std::time::Instant;

const CALLS: usize = 300;

fn main() {
    let base =
        std::env::var("MARVIN_TEST_PG").expect("MARVIN_TEST_PG: run `. scripts/services` first");
    let php = std::env::var("MARVIN_TEST_PHP").unwrap_or_else(|_| "php".into());
    let schema = format!("bench_dispatch_{}", std::process::id());
    let table = format!("{schema}.messenger_messages");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = rt.block_on(sqlx::PgPool::connect(&base)).unwrap();
    rt.block_on(sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin))
        .unwrap();
    let dsn = format!("{base}?table_name={table}&queue_name=requests");
    let exe = env!("CARGO_BIN_EXE_marvin-manager");
    let run = |args: &[&str]| {
        let out = Command::new(exe)
            .args(args)
            .env("MARVIN_DSN", &dsn)
            .env_remove("MARVIN_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["setup"]);

    let t = Instant::now();
    for i in 0..CALLS {
        run(&[
            "dispatch",
            "--entity",
            "c1",
            "--action",
            "start",
            "--correlation-id",
            &format!("d-{i}"),
        ]);
    }
    let ours = t.elapsed().as_secs_f64();

    let cases = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        cases.path(),
        r#"[{"containerId":"c1","correlationId":"p","action":"start","command":null,"args":[],"timeout":10}]"#,
    )
    .unwrap();
    let script = format!("{}/../tests/php/dispatch.php", env!("CARGO_MANIFEST_DIR"));
    let t = Instant::now();
    for _ in 0..CALLS {
        let out = Command::new(&php)
            .arg(&script)
            .args([base.as_str(), table.as_str(), "php_requests", "php"])
            .arg(cases.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let theirs = t.elapsed().as_secs_f64();

    let count = |queue: &str| -> i64 {
        rt.block_on(
            sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {table} WHERE queue_name = '{queue}'"
            ))
            .fetch_one(&admin),
        )
        .unwrap()
    };
    assert_eq!(count("requests"), CALLS as i64);
    assert_eq!(count("php_requests"), CALLS as i64);
    rt.block_on(sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin))
        .unwrap();
    println!("{CALLS} dispatches one after the other, a process each, tables already there");
    println!(
        "  marvin-manager dispatch: {ours:.2} s = {:.1} ms a call",
        ours * 1000.0 / CALLS as f64
    );
    println!(
        "  Symfony (PHP, DoctrineTransport::send): {theirs:.2} s = {:.1} ms a call",
        theirs * 1000.0 / CALLS as f64
    );
    println!("  ratio: {:.2}x Symfony's time", ours / theirs);
}
