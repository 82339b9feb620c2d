//! Interop with the real Symfony Messenger (PHP, Debian packages): PHP dispatches requests
//! with each serializer, the manager answers, PHP's real `Worker` consumes every answer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::db::{Db, TestDb};
use common::{ENTITIES, Setup, guests};
use marvin_manager::service::{ConsumeOptions, consume};
use marvin_manager::transport::{Queue, Records};
use serde_json::{Value, json};

fn php() -> String {
    std::env::var("MARVIN_TEST_PHP").unwrap_or_else(|_| {
        panic!("MARVIN_TEST_PHP is not set: these tests need PHP with Symfony Messenger. Run them with `bash scripts/test`, or `. scripts/services` first.")
    })
}

fn script(name: &str) -> String {
    format!("{}/../tests/php/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run_php(args: &[&str]) -> String {
    let o = Command::new(php()).args(args).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "php {args:?} failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn cases(prefix: &str) -> Value {
    json!([
        {"containerId": "c1", "correlationId": format!("{prefix}-1"), "action": "start", "command": null, "args": [], "timeout": 10},
        {"containerId": "c1", "correlationId": format!("{prefix}-2"), "action": "exec_cmd",
         "command": "php bin/console app:say \"Café ✓ 日本\" 'single' back\\slash",
         "args": {"0": "-l", "1": "Café ✓ 日本", "opts": {"depth": 2, "follow": false, "ratio": 0.5, "list": [1, 2, [3, {"deep": "ü"}]]}},
         "timeout": 30},
        {"containerId": "w1", "correlationId": format!("{prefix}-3"), "action": "restart", "command": null, "args": {"x": null}, "timeout": 5, "retried": true},
        {"containerId": "all", "correlationId": format!("{prefix}-4"), "action": "restart_all", "command": null, "args": [], "timeout": 10},
        {"containerId": "supervisor", "correlationId": format!("{prefix}-5"), "action": "reread", "command": null, "args": [], "timeout": 10},
        {"containerId": "nope", "correlationId": format!("{prefix}-6"), "action": "start", "command": null, "args": [], "timeout": 10}
    ])
}

/// Empty PHP arrays come back as `[]` whatever they meant.
fn norm(v: &Value) -> Value {
    match v {
        Value::Array(a) if a.is_empty() => json!({}),
        other => other.clone(),
    }
}

async fn interop<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
    serializer: &str,
    shared_queue: bool,
) {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let (req_q, resp_q) = if shared_queue {
        ("manager_messages", "manager_messages")
    } else {
        ("requests", "responses")
    };
    let extra = format!("queue_name={req_q}&response_queue_name={resp_q}");
    let t = Arc::new(mk(&extra).await);
    t.setup().await.unwrap();

    let prefix = format!(
        "{serializer}-{}",
        if shared_queue { "shared" } else { "split" }
    );
    let cases = cases(&prefix);
    let file = s.path().join("cases.json");
    std::fs::write(&file, cases.to_string()).unwrap();
    let php_db = db.base().to_owned();
    run_php(&[
        &script("dispatch.php"),
        &php_db,
        db.table(),
        req_q,
        serializer,
        file.to_str().unwrap(),
    ]);

    let manager = Arc::new(s.manager(ENTITIES).await);
    let n = cases.as_array().unwrap().len() as u64;
    let opts = ConsumeOptions {
        limit: Some(n),
        time_limit: Some(Duration::from_secs(30)),
        poll: Duration::from_millis(50),
        ..Default::default()
    };
    let stats = consume(t.clone(), manager, opts, std::future::pending()).await;
    assert_eq!(
        (stats.answered, stats.failed_rows),
        (n, 0),
        "answered, failed rows"
    );

    let out = s.path().join("received.jsonl");
    run_php(&[
        &script("consume.php"),
        &php_db,
        db.table(),
        resp_q,
        serializer,
        &n.to_string(),
        out.to_str().unwrap(),
    ]);
    let received: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        received.len() as u64,
        n,
        "PHP's Worker handled every answer"
    );

    let ids: Vec<String> = cases
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["correlationId"].as_str().unwrap().to_owned())
        .collect();
    let ledger = t.answered(ids.clone()).await.unwrap();
    for case in cases.as_array().unwrap() {
        let id = case["correlationId"].as_str().unwrap();
        let got = received
            .iter()
            .find(|r| r["correlationId"] == id)
            .unwrap_or_else(|| panic!("no answer for {id}"));
        let meant = &ledger[id].response.value();
        assert_eq!(
            got["class"],
            "EnderLab\\MarvinManagerBundle\\Messenger\\ManagerResponseCommand"
        );
        for field in [
            "correlationId",
            "entityType",
            "entityId",
            "action",
            "success",
            "output",
            "error",
        ] {
            assert_eq!(got[field], meant[field], "{id}: {field}");
        }
        assert_eq!(
            norm(&got["metadata"]),
            norm(&meant["metadata"]),
            "{id}: metadata"
        );
        if case["containerId"] == "nope" {
            assert_eq!(got["success"], false);
            assert_eq!(got["error"], "unknown entity 'nope'");
            continue;
        }
        assert_eq!(got["success"], true, "{id}: {got}");
        // What the plugin saw is what PHP sent.
        let seen: Value = serde_json::from_str(got["output"].as_str().unwrap()).unwrap();
        assert_eq!(seen["correlation_id"], case["correlationId"]);
        assert_eq!(seen["command"], case["command"], "{id}");
        assert_eq!(norm(&seen["args"]), norm(&case["args"]), "{id}");
        assert_eq!(
            seen["timeout_ms"],
            case["timeout"].as_i64().unwrap() * 1000,
            "{id}"
        );
    }
    // Nothing left behind in the queues.
    assert!(
        db.query("SELECT body FROM {t}").await.is_empty(),
        "rows left in the table"
    );
}

macro_rules! interop_tests {
    ($($name:ident: $db:ident, $serializer:literal, $shared:literal;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let db = TestDb::new(Db::$db).await;
                match Db::$db {
                    Db::Pg => interop(&db, async |e: &str| db.pg(e).await, $serializer, $shared).await,
                    Db::Sqlite => interop(&db, async |e: &str| db.sqlite(e).await, $serializer, $shared).await,
                }
            }
        )*
    };
}

interop_tests! {
    pg_php_serializer: Pg, "php", false;
    pg_json_serializer: Pg, "json", false;
    pg_shared_queue: Pg, "php", true;
    pg_shared_queue_json: Pg, "json", true;
    sqlite_php_serializer: Sqlite, "php", false;
    sqlite_json_serializer: Sqlite, "json", false;
    sqlite_shared_queue: Sqlite, "php", true;
}
