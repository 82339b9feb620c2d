//! Faults with real processes, on both databases: `serve` killed with SIGKILL again and again
//! while it works through requests whose action leaves a countable side effect — a line
//! appended to a file in a real container by `exec_cmd` (300 requests), and a line the
//! `counter` guest writes through the host's log (1,000 requests). Nothing is lost, nothing is
//! answered twice, and no action runs twice: a request interrupted by a kill is answered
//! "interrupted, not run again" within seconds of the restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::db::{Db, TestDb, send};
use common::docker::{Project, docker, endpoint};
use common::{Setup, guests};
use marvin_manager::codec::Format;
use marvin_manager::message::{ManagerRequest, ManagerResponse};
use marvin_manager::transport::{Queue, Records};

on_both_databases!(
    sigkill_loses_nothing_answers_once_and_runs_no_action_twice,
    sigkill_under_a_thousand_requests
);

/// Kills per run.
const KILLS: usize = 10;
/// Entity ids: their requests run side by side.
const ENTITIES: usize = 6;

fn serve(cwd: &Path, dsn: &str, log: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_marvin-manager"))
        .current_dir(cwd)
        .arg("serve")
        .env("MARVIN_CACHE_DIR", cwd.join("cache"))
        .env("MARVIN_DSN", dsn)
        .env("MARVIN_CONFIG", cwd.join("manager.toml"))
        .env_remove("MARVIN_PLUGINS_DIR")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(cwd.join(log))
                .unwrap(),
        ))
        .spawn()
        .unwrap()
}

/// 300 `exec_cmd` requests appending a line to a file in a real container.
async fn sigkill_loses_nothing_answers_once_and_runs_no_action_twice<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let p = Project::up("  web:\n    image: {image}\n");
    let s = Setup::new(&[]);
    std::fs::write(
        s.path().join("manager.toml"),
        format!(
            r#"
[docker]
endpoint = "{endpoint}"
[plugins.exec-cmd.grants.docker]
projects = ["{name}"]
exec = ["*"]
exec_shell = true
{entities}"#,
            endpoint = endpoint(),
            name = p.name,
            entities = entities(&p.name),
        ),
    )
    .unwrap();
    let requests = (0..300)
        .map(|i| {
            ManagerRequest::new(format!("k{i}"), format!("box{}", i % ENTITIES), "exec_cmd")
                .with_command(Some(format!("echo k{i} >> /effects")))
                .with_timeout(600)
        })
        .collect();
    let effects = || docker(&["exec", &p.container("web", 1), "cat", "/effects"]);
    kill_loop(db, mk, &s, requests, effects).await;
}

/// 1,000 requests of the `counter` guest, whose effect is a line in the manager's log.
async fn sigkill_under_a_thousand_requests<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let s = Setup::new(&[(guests::COUNTER, "counter.wasm")]);
    std::fs::write(s.path().join("manager.toml"), entities("p")).unwrap();
    let requests = (0..1000)
        .map(|i| {
            ManagerRequest::new(format!("n{i}"), format!("box{}", i % ENTITIES), "count")
                .with_args(serde_json::json!({"ms": 40}))
                .with_timeout(600)
        })
        .collect();
    let log = s.path().join("serve.log");
    let effects = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.split("effect[")
            .skip(1)
            .filter_map(|rest| rest.split(']').next())
            .map(|id| format!("{id}\n"))
            .collect::<String>()
    };
    kill_loop(db, mk, &s, requests, effects).await;
}

/// `ENTITIES` entity ids on the service `web` of compose project `project`.
fn entities(project: &str) -> String {
    (0..ENTITIES)
        .map(|e| {
            format!(
                "[entities.box{e}]\nkind = \"container\"\nproject = \"{project}\"\nservice = \"web\"\n"
            )
        })
        .collect()
}

/// Sends `requests`, kills `serve` [`KILLS`] times while it works through them, restarts it
/// once more and checks: every request answered exactly once, every success ran exactly once,
/// nothing ran twice (`effects` lists one correlation id per line per run), no claim left.
async fn kill_loop<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
    s: &Setup,
    requests: Vec<ManagerRequest>,
    effects: impl Fn() -> String,
) {
    let total = requests.len();
    let t = mk("").await;
    t.setup().await.unwrap();
    for req in &requests {
        send(&t, req, Format::Php).await;
    }
    let dsn = db.dsn("");
    // A cheap pseudo-random pause, different on every run.
    let mut seed = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
    );
    let mut pause = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        Duration::from_millis(100 + (seed >> 33) % 900)
    };
    for _ in 0..KILLS {
        // Killed while it works: once it has answered something since it started.
        let before = db.responses().await.len();
        let mut child = serve(s.path(), &dsn, "serve.log");
        let up = Instant::now();
        while db.responses().await.len() == before && up.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(pause()).await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let killed_at = db.responses().await.len();
    let mut child = serve(s.path(), &dsn, "serve.log");
    let restart = Instant::now();
    let answers = loop {
        let answers = db.responses().await;
        if answers.len() >= total {
            break answers;
        }
        if restart.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let log = std::fs::read_to_string(s.path().join("serve.log")).unwrap_or_default();
            let kept = std::env::temp_dir().join(format!("faults-{:?}-serve.log", db.db));
            let _ = std::fs::write(&kept, &log);
            eprintln!("serve's log kept in {}", kept.display());
            let errors: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("ERROR"))
                .take(10)
                .collect();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "{} of {total} answered 90 s after the last restart; serve's first errors:\n{}\nits log ends:\n{}",
                answers.len(),
                errors.join("\n"),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let drained = restart.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();

    // Every request answered exactly once.
    let mut by_id: HashMap<&str, Vec<&ManagerResponse>> = HashMap::new();
    for a in &answers {
        by_id.entry(a.correlation_id.as_str()).or_default().push(a);
    }
    assert_eq!(answers.len(), total, "no request answered twice");
    assert_eq!(by_id.len(), total, "no request lost");
    // The side effects, counted where they happened.
    let effects = effects();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in effects.lines() {
        *runs.entry(line.trim()).or_default() += 1;
    }
    let twice: Vec<(&&str, &usize)> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "actions run twice: {twice:?}");
    let mut interrupted = 0;
    for (id, a) in &by_id {
        let a = a[0];
        if a.metadata.get("interrupted") == Some(&serde_json::Value::Bool(true)) {
            interrupted += 1;
            assert!(!a.success);
            assert!(runs.get(id).copied().unwrap_or(0) <= 1);
        } else {
            assert!(a.success, "{a:?}");
            assert_eq!(runs.get(id), Some(&1), "{id} answered but not run once");
        }
    }
    eprintln!(
        "{:?}: {total} requests, {KILLS} kills, {killed_at} answered before the last restart, {interrupted} interrupted, \
         the rest answered {drained:?} after it",
        db.db
    );
    assert!(
        drained < Duration::from_secs(60),
        "the interrupted requests took {drained:?}"
    );
    // Answered requests hold no claim.
    let claims = db
        .table()
        .replace("messenger_messages", "marvin_manager_claims");
    assert!(
        db.query(&format!("SELECT CAST(row_id AS TEXT) FROM {claims}"))
            .await
            .is_empty()
    );
}
