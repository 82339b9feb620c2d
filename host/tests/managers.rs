//! Several managers on one queue, with real processes on one PostgreSQL: three `serve`s, each
//! with its own config (its own entities of the `counter` guest, and a container of its own
//! compose project on the test engine). Every request is answered once, by the manager that
//! serves its entity (the ledger and each manager's log say which); a manager killed with
//! SIGKILL mid-run leaves its entities' requests waiting, then answered "no live manager" after
//! the bound while the others keep flowing; restarted, it serves its entities again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Child;
use std::time::{Duration, Instant};

use common::db::{Db, TestDb, send};
use common::docker::{Project, endpoint, started_at};
use common::{Setup, guests};
use marvin_manager::codec::Format;
use marvin_manager::message::{ManagerRequest, ManagerResponse};
use marvin_manager::transport::{Queue, Records};

const HOSTS: [&str; 3] = ["a", "b", "c"];
/// Counter entities per manager: `<host>0` … `<host>4`.
const PER_HOST: usize = 5;
/// Seconds: the takeover bound (a silent manager is dead) and the grace of unserved requests.
const BOUND: u64 = 3;

struct Host {
    name: String,
    setup: Setup,
    project: Project,
    child: Option<Child>,
}

impl Host {
    fn new(h: &str) -> Self {
        let setup = Setup::new(&[(guests::COUNTER, "counter.wasm")]);
        let project = Project::up("  web:\n    image: {image}\n");
        let mut config = format!(
            "[manager]\nid = \"host-{h}\"\ntakeover_secs = {BOUND}\nunserved_grace_secs = {BOUND}\n\
             [docker]\nendpoint = \"{}\"\ndiscovery = false\n\
             [plugins.docker-compose.grants.docker]\nprojects = [\"{}\"]\n\
             [entities.web-{h}]\nkind = \"container\"\nproject = \"{}\"\nservice = \"web\"\n",
            endpoint(),
            project.name,
            project.name
        );
        // a and c also act on a supervisord (none answers there): both serve plain
        // `supervisor`.
        if h != "b" {
            config.push_str("[supervisor]\nurl = \"http://127.0.0.1:1\"\n");
            // And one entity both serve (the same program on two hosts).
            config.push_str(
                "[entities.shared]\nkind = \"container\"\nproject = \"p-shared\"\nservice = \"web\"\n",
            );
        }
        for e in 0..PER_HOST {
            config.push_str(&format!(
                "[entities.{h}{e}]\nkind = \"container\"\nproject = \"p-{h}\"\nservice = \"web\"\n"
            ));
        }
        std::fs::write(setup.path().join("manager.toml"), config).unwrap();
        Self {
            name: format!("host-{h}"),
            setup,
            project,
            child: None,
        }
    }

    fn start(&mut self, dsn: &str) {
        let log = self.setup.path().join("serve.log");
        self.child = Some(
            common::manager_command(self.setup.path(), dsn, &log)
                .arg("serve")
                .spawn()
                .unwrap(),
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.setup.path().join("serve.log")).unwrap_or_default()
    }

    /// The correlation ids whose action ran in this manager, with how many times.
    fn effects(&self) -> HashMap<String, usize> {
        let mut n = HashMap::new();
        for line in self.log().lines() {
            if let Some(rest) = line.split("effect[").nth(1)
                && let Some(id) = rest.split(']').next()
            {
                *n.entry(id.to_owned()).or_default() += 1;
            }
        }
        n
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The ledger: correlation id -> (entity, manager, success, error).
async fn read_ledger(db: &TestDb) -> HashMap<String, (String, String, bool, String)> {
    let ledger = db
        .table()
        .replace("messenger_messages", "marvin_manager_ledger");
    db.query(&format!(
        "SELECT correlation_id, entity_id, manager, CAST(success AS TEXT), error FROM {ledger}"
    ))
    .await
    .into_iter()
    .map(|r| {
        let s = |i: usize| r[i].clone().unwrap_or_default();
        (s(0), (s(1), s(2), s(3) == "true", s(4)))
    })
    .collect()
}

/// Waits until `ids` are all answered (at most `limit`); the answers by correlation id.
async fn answered(
    db: &TestDb,
    ids: &HashSet<String>,
    limit: Duration,
    hosts: &[Host],
) -> HashMap<String, Vec<ManagerResponse>> {
    let t = Instant::now();
    loop {
        let mut by: HashMap<String, Vec<ManagerResponse>> = HashMap::new();
        for r in db.responses().await {
            by.entry(r.correlation_id.clone()).or_default().push(r);
        }
        if ids.iter().all(|i| by.contains_key(i)) {
            return by;
        }
        if t.elapsed() > limit {
            let missing = ids.iter().filter(|i| !by.contains_key(*i)).count();
            let logs: Vec<String> = hosts
                .iter()
                .map(|h| {
                    let log = h.log();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    format!(
                        "== {}\n{}",
                        h.name,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            panic!(
                "{missing} of {} not answered after {limit:?}\n{}",
                ids.len(),
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The host letter of an entity id (`b3` -> `b`, `web-c` -> `c`).
fn host_of(entity: &str) -> String {
    entity
        .strip_prefix("web-")
        .unwrap_or(&entity[..1])
        .to_owned()
}

fn count(id: &str, entity: &str, ms: u64) -> ManagerRequest {
    ManagerRequest::new(id, entity, "count")
        .with_args(serde_json::json!({ "ms": ms }))
        .with_timeout(600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_share_one_queue_and_each_request_lands_on_its_manager() {
    let db = TestDb::new(Db::Pg).await;
    let dsn = db.dsn("");
    // The bound as the managers have it: `managers` judges who is dead by it.
    let t = db.pg(&format!("takeover_timeout={BOUND}")).await;
    t.setup().await.unwrap();
    let mut hosts: Vec<Host> = HOSTS.iter().map(|h| Host::new(h)).collect();
    for h in &mut hosts {
        h.start(&dsn);
    }
    // All three registered with what they serve.
    let up = Instant::now();
    while t
        .managers()
        .await
        .unwrap()
        .iter()
        .filter(|m| !m.entities.is_empty())
        .count()
        < 3
    {
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "the managers did not register"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1. 3,000 requests spread over the three managers' entities, and a real restart of each
    //    manager's container: each answered once, by its manager.
    let before: Vec<String> = hosts
        .iter()
        .map(|h| started_at(&h.project.container("web", 1)))
        .collect();
    let mut ids = HashSet::new();
    for i in 0..3000 {
        let entity = format!("{}{}", HOSTS[i % 3], (i / 3) % PER_HOST);
        let id = format!("n{i}");
        send(&t, &count(&id, &entity, 0), Format::Php).await;
        ids.insert(id);
    }
    for h in HOSTS {
        let id = format!("restart-{h}");
        send(
            &t,
            &ManagerRequest::new(&id, format!("web-{h}"), "restart"),
            Format::Php,
        )
        .await;
        ids.insert(id);
    }
    // An entity served by a and c: each request runs on one of them, once.
    let mut shared = HashSet::new();
    for i in 0..60 {
        let id = format!("s{i}");
        send(&t, &count(&id, "shared", 0), Format::Php).await;
        shared.insert(id.clone());
        ids.insert(id);
    }
    let answers = answered(&db, &ids, Duration::from_secs(180), &hosts).await;
    let ledger = read_ledger(&db).await;
    for id in &ids {
        let a = &answers[id];
        assert_eq!(a.len(), 1, "{id} answered {} times", a.len());
        assert!(a[0].success, "{id}: {:?}", a[0]);
        let (entity, manager, _, _) = &ledger[id];
        if shared.contains(id) {
            assert!(
                manager == "host-a" || manager == "host-c",
                "{id} on {manager}"
            );
            let ran: usize = hosts
                .iter()
                .map(|h| h.effects().get(id).copied().unwrap_or(0))
                .sum();
            assert_eq!(ran, 1, "{id} ran {ran} times");
            continue;
        }
        assert_eq!(
            manager,
            &format!("host-{}", host_of(entity)),
            "{id} on {entity}"
        );
    }
    for (h, host) in hosts.iter().enumerate() {
        let mut effects = host.effects();
        effects.retain(|id, _| id.starts_with('n'));
        let own: Vec<&String> = effects.keys().collect();
        assert_eq!(own.len(), 1000, "{} ran {} actions", host.name, own.len());
        for (id, n) in &effects {
            assert_eq!(*n, 1, "{id} ran {n} times in {}", host.name);
            let i: usize = id[1..].parse().unwrap();
            assert_eq!(i % 3, h, "{id} ran in {}", host.name);
        }
        assert_ne!(
            started_at(&host.project.container("web", 1)),
            before[h],
            "{}'s container was not restarted",
            host.name
        );
    }

    // 2. host-b killed mid-run: its requests wait, then get "no live manager"; a's and c's
    //    keep flowing.
    let mut ids = HashSet::new();
    for i in 0..300 {
        let entity = format!("{}{}", HOSTS[i % 3], (i / 3) % PER_HOST);
        let id = format!("m{i}");
        send(&t, &count(&id, &entity, 100), Format::Php).await;
        ids.insert(id);
    }
    let b_done = || async {
        read_ledger(&db)
            .await
            .iter()
            .filter(|(id, (_, m, _, _))| id.starts_with('m') && m == "host-b")
            .count()
    };
    let up = Instant::now();
    while b_done().await < 10 {
        assert!(up.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hosts[1].kill();
    let killed = chrono::Utc::now();
    // While it is dead, `managers` says so, and the others serve on.
    let answers = answered(&db, &ids, Duration::from_secs(60), &hosts).await;
    let listed = t.managers().await.unwrap();
    let b = listed.iter().find(|m| m.name == "host-b").unwrap();
    assert_eq!(
        b.state,
        marvin_manager::transport::ManagerState::Dead,
        "{listed:?}"
    );
    let ledger = read_ledger(&db).await;
    let effects: Vec<HashMap<String, usize>> = hosts.iter().map(Host::effects).collect();
    let (mut unserved, mut by_b) = (0, 0);
    for id in &ids {
        let a = &answers[id];
        assert_eq!(a.len(), 1, "{id} answered {} times", a.len());
        let (entity, manager, success, error) = &ledger[id];
        let ran: usize = effects
            .iter()
            .map(|e| e.get(id).copied().unwrap_or(0))
            .sum();
        assert!(ran <= 1, "{id} ran {ran} times");
        if host_of(entity) != "b" {
            assert!(*success, "{id}: {error}");
            assert_eq!(manager, &format!("host-{}", host_of(entity)));
            continue;
        }
        if manager == "host-b" {
            by_b += 1;
            assert!(*success, "{id}: {error}");
            continue;
        }
        // Answered for host-b by another, after the bound, without running it.
        assert!(!success, "{id} ran on {manager}");
        assert!(manager == "host-a" || manager == "host-c", "{manager}");
        assert!(
            error.contains(&format!("no live manager serves entity '{entity}'"))
                && error.contains("host-a")
                && error.contains("host-c")
                || error.contains("stopped before answering"),
            "{id}: {error}"
        );
        assert_eq!(effects[0].get(id).or(effects[2].get(id)), None);
        let finished = db
            .query(&format!(
                "SELECT finished_at FROM {} WHERE correlation_id = '{id}'",
                db.table()
                    .replace("messenger_messages", "marvin_manager_ledger")
            ))
            .await[0][0]
            .clone()
            .unwrap();
        let finished = chrono::DateTime::parse_from_rfc3339(&finished).unwrap();
        assert!(
            finished.signed_duration_since(killed) >= chrono::Duration::milliseconds(1500),
            "{id} answered {finished} though host-b was killed at {killed}"
        );
        unserved += 1;
    }
    assert!(
        unserved > 0,
        "host-b answered all {by_b} of its requests before the kill"
    );
    eprintln!(
        "host-b: {by_b} answered before the kill, {unserved} answered 'no live manager' after it"
    );

    // 3. host-b back: its entities' requests are served again.
    hosts[1].start(&dsn);
    let mut ids = HashSet::new();
    for i in 0..30 {
        let id = format!("r{i}");
        send(
            &t,
            &count(&id, &format!("b{}", i % PER_HOST), 0),
            Format::Php,
        )
        .await;
        ids.insert(id);
    }
    // `supervisor` is served by a and c: it names neither and runs nothing; the host-named
    // form goes to its host.
    send(
        &t,
        &ManagerRequest::new("amb", "supervisor", "reread"),
        Format::Php,
    )
    .await;
    send(
        &t,
        &ManagerRequest::new("at-c", "supervisor@host-c", "reread"),
        Format::Php,
    )
    .await;
    ids.extend(["amb".to_owned(), "at-c".to_owned()]);
    let answers = answered(&db, &ids, Duration::from_secs(60), &hosts).await;
    let ledger = read_ledger(&db).await;
    for id in ids.iter().filter(|i| i.starts_with('r')) {
        assert!(answers[id][0].success, "{id}: {:?}", answers[id][0]);
        assert_eq!(ledger[id].1, "host-b", "{id}");
    }
    let amb = &answers["amb"][0];
    assert!(
        amb.error.as_deref().unwrap_or_default().contains(
            "entity 'supervisor' is served by several managers (host-a, host-c): name the one you mean"
        ),
        "{amb:?}"
    );
    let at_c = &answers["at-c"][0];
    assert_eq!(ledger["at-c"].1, "host-c", "{at_c:?}");
    // Resolved there as its `supervisor` and handed to the supervisor plugin.
    assert_eq!(at_c.metadata["plugin"], "supervisor", "{at_c:?}");
    // The operator's view: every manager live again, with its entities.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_marvin-manager"))
        .args(["managers", "--json"])
        .env("MARVIN_DSN", &dsn)
        .env_remove("MARVIN_CONFIG")
        .current_dir(hosts[0].setup.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let live: Vec<&str> = listed["managers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "live")
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(live, ["host-a", "host-b", "host-c"], "{listed}");
    let b = listed["managers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "host-b" && m["state"] == "live")
        .unwrap();
    assert!(
        b["entities"].as_array().unwrap().iter().any(|e| e == "b0"),
        "{b}"
    );
}
