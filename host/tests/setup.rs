//! Many processes starting at once on an empty database (a host reboot, a compose `up`): five
//! `serve` and five `dispatch --wait`, twenty times, on both databases. Every process
//! succeeds (no "deadlock detected" from concurrent DDL), every request is answered once, and
//! once the tables exist nobody runs DDL again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::db::{Db, TestDb};
use common::{ENTITIES, Setup, guests};
use marvin_manager::transport::{Queue, Records};

on_both_databases!(five_serve_and_five_dispatch_start_together_on_an_empty_database);

const ROUNDS: usize = 20;
const PROCESSES: usize = 5;

async fn five_serve_and_five_dispatch_start_together_on_an_empty_database<T: Queue + Records>(
    db: &TestDb,
    _mk: impl AsyncFn(&str) -> T,
) {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    std::fs::write(s.path().join("manager.toml"), ENTITIES).unwrap();
    let logs = s.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let t0 = Instant::now();
    for round in 0..ROUNDS {
        // An empty database each round: nothing created yet.
        let fresh = TestDb::new(db.db).await;
        let dsn = fresh.dsn("");
        let log = |kind: &str, k: usize| logs.join(format!("{round}-{kind}-{k}.log"));
        let mut serves: Vec<Child> = Vec::new();
        let mut dispatches: Vec<Child> = Vec::new();
        for k in 0..PROCESSES {
            serves.push(
                common::manager_command(s.path(), &dsn, &log("serve", k))
                    .arg("serve")
                    .spawn()
                    .unwrap(),
            );
            dispatches.push(
                common::manager_command(s.path(), &dsn, &log("dispatch", k))
                    .args(["dispatch", "--entity", "c1", "--action", "start", "--wait"])
                    .args(["--correlation-id", &format!("r{round}-{k}")])
                    .spawn()
                    .unwrap(),
            );
        }
        let started = Instant::now();
        for (k, d) in dispatches.iter_mut().enumerate() {
            let status = loop {
                if let Some(status) = d.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "round {round}: dispatch {k} still waiting after 60 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let text = std::fs::read_to_string(log("dispatch", k)).unwrap_or_default();
            assert!(
                status.success(),
                "round {round}: dispatch {k} failed: {text}"
            );
        }
        for (k, serve) in serves.iter_mut().enumerate() {
            let early = serve.try_wait().unwrap();
            let _ = serve.kill();
            let _ = serve.wait();
            let text = std::fs::read_to_string(log("serve", k)).unwrap_or_default();
            assert!(early.is_none(), "round {round}: serve {k} exited: {text}");
            assert!(
                !text.contains("deadlock") && !text.contains("ERROR"),
                "round {round}: serve {k}: {text}"
            );
        }
        let answers = fresh.responses().await;
        let mut ids: Vec<&str> = answers.iter().map(|a| a.correlation_id.as_str()).collect();
        ids.sort_unstable();
        let expected: Vec<String> = (0..PROCESSES).map(|k| format!("r{round}-{k}")).collect();
        assert_eq!(ids, expected, "round {round}: each request answered once");
        assert!(answers.iter().all(|a| a.success), "{answers:?}");
    }
    eprintln!(
        "{:?}: {ROUNDS} rounds of {PROCESSES} serve + {PROCESSES} dispatch on an empty database, all fine, {:?}",
        db.db,
        t0.elapsed()
    );
}
