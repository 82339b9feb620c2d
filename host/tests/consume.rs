//! The consume loop end to end on both databases: answers, dedup, bad rows, graceful stop,
//! keepalive.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::db::{Db, TestDb, request, send};
use common::{ENTITIES, Setup, guests};
use marvin_manager::codec::{self, Format};
use marvin_manager::message::ManagerResponse;
use marvin_manager::service::Manager;
use marvin_manager::service::{ConsumeOptions, ConsumeStats, consume};
use marvin_manager::transport::{HistoryFilter, Queue, Records};

on_both_databases!(
    every_request_is_answered_in_its_format,
    a_completed_correlation_id_is_answered_from_the_ledger,
    a_dry_run_is_recorded_as_such_and_never_answers_a_real_request,
    bad_rows_never_stop_the_service,
    stop_finishes_what_is_in_flight,
    keepalive_keeps_a_long_action_from_redelivery,
    hostile_rows_are_settled_alone,
    foreign_rows_cost_nothing_and_starve_nothing,
    a_dead_managers_requests_come_back_in_seconds_and_run_no_action_twice,
    a_request_core_gave_up_on_is_answered_expired,
    the_hostile_corpus_is_settled_row_by_row,
);

async fn manager(s: &Setup) -> Arc<Manager> {
    Arc::new(s.manager(ENTITIES).await)
}

async fn run_until_idle<T: Queue + Records>(
    t: Arc<T>,
    m: Arc<Manager>,
    limit: u64,
) -> ConsumeStats {
    let opts = ConsumeOptions {
        limit: Some(limit),
        time_limit: Some(Duration::from_secs(30)),
        poll: Duration::from_millis(50),
        ..ConsumeOptions::default()
    };
    consume(t, m, opts, std::future::pending()).await
}

async fn every_request_is_answered_in_its_format<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let t = Arc::new(mk("").await);
    t.setup().await.unwrap();
    for i in 0..40 {
        let format = if i % 2 == 0 {
            Format::Php
        } else {
            Format::Json
        };
        let entity = if i % 3 == 0 { "w1" } else { "c1" };
        send(
            &*t,
            &request(&format!("e2e-{i}"), entity, "restart"),
            format,
        )
        .await;
    }
    let m = manager(&s).await;
    let stats = run_until_idle(t.clone(), m.clone(), 40).await;
    assert_eq!(stats.answered, 40);
    // Every request's used instance was given back once its answer was sent: what is alive
    // is at most the one made ahead for the next request.
    let t0 = Instant::now();
    while m.runtime().live_instances() > 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "{} instances alive after the loop ended",
            m.runtime().live_instances()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rows = db
        .query("SELECT headers FROM {t} WHERE queue_name = 'responses' ORDER BY id")
        .await;
    assert_eq!(rows.len(), 40);
    let json = rows
        .iter()
        .filter(|r| r[0].as_deref() != Some("[]"))
        .count();
    assert_eq!(json, 20, "each response in its request's format");
    let answers = db.responses().await;
    for r in &answers {
        assert!(r.success, "{r:?}");
        assert_eq!(r.metadata["plugin"], "echo");
    }
    assert_eq!(
        db.query("SELECT body FROM {t} WHERE queue_name = 'requests'")
            .await
            .len(),
        0
    );
    let history = t
        .history(HistoryFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(history.len(), 40);
}

async fn a_completed_correlation_id_is_answered_from_the_ledger<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let s = Setup::new(&[(guests::RELOAD_V1, "reload.wasm")]);
    let t = Arc::new(mk("").await);
    t.setup().await.unwrap();
    let m = manager(&s).await;
    let mut req = request("dup-1", "w1", "start");
    req.args = serde_json::json!({"sleep_ms": 300});
    send(&*t, &req, Format::Php).await;
    let first = run_until_idle(t.clone(), m.clone(), 1).await;
    assert_eq!((first.answered, first.from_ledger), (1, 0));
    // Core (or a redelivery) sends the same correlation id again.
    send(&*t, &req, Format::Json).await;
    let started = Instant::now();
    let second = run_until_idle(t.clone(), m, 1).await;
    assert_eq!((second.answered, second.from_ledger), (1, 1));
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "the action ran again"
    );
    let answers = db.responses().await;
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0], answers[1], "the same answer, not a second run");
    assert_eq!(
        t.history(HistoryFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        1
    );
}

async fn a_dry_run_is_recorded_as_such_and_never_answers_a_real_request<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let t = Arc::new(mk("").await);
    t.setup().await.unwrap();
    let m = manager(&s).await;
    let planned = request("same-id", "c1", "restart").planned();
    send(&*t, &planned, Format::Php).await;
    let first = run_until_idle(t.clone(), m.clone(), 1).await;
    assert_eq!((first.answered, first.from_ledger), (1, 0));
    // The same correlation id, for real (and its dry run again): each runs.
    send(&*t, &request("same-id", "c1", "restart"), Format::Php).await;
    let second = run_until_idle(t.clone(), m.clone(), 1).await;
    assert_eq!(
        (second.answered, second.from_ledger),
        (1, 0),
        "the real request ran"
    );
    send(&*t, &planned, Format::Php).await;
    let third = run_until_idle(t.clone(), m.clone(), 1).await;
    assert_eq!(
        (third.answered, third.from_ledger),
        (1, 0),
        "a dry run is planned again"
    );
    // A redelivery of the real request is answered from the ledger: its own answer.
    send(&*t, &request("same-id", "c1", "restart"), Format::Php).await;
    let fourth = run_until_idle(t.clone(), m, 1).await;
    assert_eq!((fourth.answered, fourth.from_ledger), (1, 1));
    let answers = db.responses().await;
    let dry: Vec<bool> = answers
        .iter()
        .map(|r| r.metadata.get("dry_run") == Some(&serde_json::json!(true)))
        .collect();
    assert_eq!(dry, vec![true, false, true, false], "{answers:?}");
    assert_eq!(answers[1], answers[3]);
    let mut ids: Vec<String> = t
        .history(HistoryFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.correlation_id)
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["same-id", "same-id#dry-run"]);
}

async fn bad_rows_never_stop_the_service<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let t = Arc::new(mk("").await);
    t.setup().await.unwrap();
    let needle = codec::request_class_needle();
    // Undecodable, no correlation id to answer to: parked in the failure queue.
    t.send(
        "requests",
        codec::Encoded {
            body: format!("O:3:\\\"{needle}\\\"}}"),
            headers: "[]".into(),
        },
    )
    .await
    .unwrap();
    // Decodable, wrong field type, correlation id known: an error response.
    let headers = format!(
        "{{\"type\":{}}}",
        codec::php_json(&serde_json::json!(codec::REQUEST_CLASS))
    );
    t.send(
        "requests",
        codec::Encoded {
            body:
                r#"{"containerId":"c1","correlationId":"bad-1","action":"start","timeout":"soon"}"#
                    .into(),
            headers,
        },
    )
    .await
    .unwrap();
    send(&*t, &request("good-1", "c1", "start"), Format::Php).await;
    let stats = run_until_idle(t.clone(), manager(&s).await, 3).await;
    assert_eq!(stats.failed_rows, 1);
    assert_eq!(stats.answered, 2);
    let answers = db.responses().await;
    let bad = answers
        .iter()
        .find(|r| r.correlation_id == "bad-1")
        .unwrap();
    assert!(!bad.success);
    assert!(
        bad.error
            .as_deref()
            .unwrap()
            .contains("`timeout` is not an integer"),
        "{bad:?}"
    );
    assert!(
        answers
            .iter()
            .any(|r| r.correlation_id == "good-1" && r.success)
    );
    let parked = t.failed_rows().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert!(!parked[0].reason.is_empty());
    assert_eq!(
        db.query("SELECT body FROM {t} WHERE queue_name = 'failed'")
            .await
            .len(),
        1
    );
}

async fn stop_finishes_what_is_in_flight<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let s = Setup::new(&[(guests::RELOAD_V1, "reload.wasm")]);
    let t = Arc::new(mk("").await);
    t.setup().await.unwrap();
    let mut req = request("slow-1", "w1", "start");
    req.args = serde_json::json!({"sleep_ms": 1000});
    send(&*t, &req, Format::Php).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = ConsumeOptions {
        poll: Duration::from_millis(50),
        ..ConsumeOptions::default()
    };
    let run = tokio::spawn(consume(t.clone(), manager(&s).await, opts, async {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped_at = Instant::now();
    stop_tx.send(()).unwrap();
    // A request that arrives after the stop is left for the next consumer.
    send(&*t, &request("late-1", "w1", "start"), Format::Php).await;
    let stats = run.await.unwrap();
    assert!(
        stopped_at.elapsed() >= Duration::from_millis(500),
        "returned before the action finished"
    );
    assert_eq!(stats.answered, 1);
    let answers = db.responses().await;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].output.as_deref(), Some("1.0.0"));
    let left = db
        .query(&format!(
            "SELECT {} FROM {{t}} WHERE queue_name = 'requests'",
            db.ts("delivered_at")
        ))
        .await;
    assert_eq!(left, vec![vec![None]], "the late request is untouched");
}

async fn keepalive_keeps_a_long_action_from_redelivery<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let s = Setup::new(&[(guests::RELOAD_V1, "reload.wasm")]);
    let t = Arc::new(mk("redeliver_timeout=1").await);
    let thief = mk("redeliver_timeout=1").await;
    t.setup().await.unwrap();
    let mut req = request("long-1", "w1", "start");
    req.args = serde_json::json!({"sleep_ms": 3500});
    send(&*t, &req, Format::Php).await;
    let opts = ConsumeOptions {
        limit: Some(1),
        poll: Duration::from_millis(50),
        keepalive: Duration::from_millis(300),
        ..ConsumeOptions::default()
    };
    let run = tokio::spawn(consume(
        t.clone(),
        manager(&s).await,
        opts,
        std::future::pending(),
    ));
    // Another consumer keeps looking while the action runs: the row must never be due.
    let watch_until = Instant::now() + Duration::from_millis(3200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    while Instant::now() < watch_until {
        let stolen = thief.fetch(10).await.unwrap();
        assert!(stolen.is_empty(), "another consumer took a running request");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = run.await.unwrap();
    assert_eq!(stats.answered, 1);
    assert_eq!(db.responses().await.len(), 1);
}

/// Rows whose fields cannot be stored (an over-long or NUL-holding correlation id, a NUL in
/// the entity id or in a failure reason) are settled alone: parked with the reason or
/// answered with an error, while the valid requests fetched with them are answered once.
async fn hostile_rows_are_settled_alone<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let t = Arc::new(mk("").await);
    t.setup().await.unwrap();
    let long = "x".repeat(300);
    let hostile = [
        (long.as_str(), "c1"),
        ("nul\0id", "c1"),
        ("nul-entity", "c\0x"),
    ];
    for format in [Format::Php, Format::Json] {
        for i in 0..3 {
            send(
                &*t,
                &request(&format!("good-{format:?}-{i}"), "c1", "start"),
                format,
            )
            .await;
        }
        for (id, entity) in hostile {
            send(
                &*t,
                &request(&format!("{id}{format:?}"), entity, "start"),
                format,
            )
            .await;
        }
    }
    // An undecodable row whose reason would quote a NUL.
    t.send(
        "requests",
        codec::Encoded {
            body: format!("O:3:\\\"{}\\0\\\"}}", codec::request_class_needle()),
            headers: "[]".into(),
        },
    )
    .await
    .unwrap();
    let stats = run_until_idle(t.clone(), manager(&s).await, 13).await;
    assert_eq!(stats.failed_rows, 5, "{stats:?}");
    assert_eq!(stats.answered, 8, "{stats:?}");
    let answers = db.responses().await;
    let good: Vec<&ManagerResponse> = answers
        .iter()
        .filter(|r| r.correlation_id.starts_with("good-"))
        .collect();
    assert_eq!(good.len(), 6, "each valid request answered once");
    assert!(good.iter().all(|r| r.success));
    let nul_entity: Vec<&ManagerResponse> = answers
        .iter()
        .filter(|r| r.correlation_id.starts_with("nul-entity"))
        .collect();
    assert_eq!(nul_entity.len(), 2);
    assert!(
        nul_entity
            .iter()
            .all(|r| !r.success && r.error.as_deref().unwrap().starts_with("unknown entity"))
    );
    let parked = t.failed_rows().await.unwrap();
    let reasons: Vec<&str> = parked.iter().map(|f| f.reason.as_str()).collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("correlation id of 303 bytes")
                || r.contains("correlation id of 304 bytes"))
            .count(),
        2,
        "{reasons:?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("holds a NUL byte"))
            .count(),
        2,
        "{reasons:?}"
    );
    assert!(reasons.iter().all(|r| !r.contains('\0')), "{reasons:?}");
    assert_eq!(
        db.query("SELECT id FROM {t} WHERE queue_name = 'requests'")
            .await
            .len(),
        0,
        "every row settled"
    );
}

/// Rows of another class that mention the request class (here a `…CommandV2` in JSON) are
/// left as they are, are not rewritten over and over while the consumer idles, and do not
/// keep a request behind them from being answered.
async fn foreign_rows_cost_nothing_and_starve_nothing<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let t = Arc::new(mk("").await);
    t.setup().await.unwrap();
    let v2 = format!("{}V2", codec::REQUEST_CLASS);
    let headers = format!("{{\"type\":{}}}", codec::php_json(&serde_json::json!(v2)));
    for i in 0..300 {
        t.send(
            "requests",
            codec::Encoded {
                body: format!(
                    r#"{{"containerId":"c1","correlationId":"v2-{i}","action":"start"}}"#
                ),
                headers: headers.clone(),
            },
        )
        .await
        .unwrap();
    }
    send(&*t, &request("behind-1", "c1", "start"), Format::Php).await;
    let started = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = ConsumeOptions {
        batch: 64,
        concurrency: 64,
        poll: Duration::from_millis(50),
        ..ConsumeOptions::default()
    };
    let run = tokio::spawn(consume(t.clone(), manager(&s).await, opts, async {
        let _ = stop_rx.await;
    }));
    while db.responses().await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the request behind 300 foreign rows was not answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Idle now: the foreign rows are written no more (PostgreSQL: a row's xmin changes with
    // every UPDATE; SQLite: delivered_at stays NULL).
    let versions = match db.db {
        Db::Pg => {
            "SELECT xmin::text, delivered_at::text FROM {t} WHERE queue_name = 'requests' ORDER BY id"
        }
        Db::Sqlite => {
            "SELECT CAST(id AS TEXT), delivered_at FROM {t} WHERE queue_name = 'requests' ORDER BY id"
        }
    };
    let before = db.query(versions).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = db.query(versions).await;
    stop_tx.send(()).unwrap();
    let stats = run.await.unwrap();
    assert_eq!(stats.answered, 1);
    assert_eq!(before.len(), 300);
    assert!(
        before.iter().all(|r| r[1].is_none()),
        "delivered_at put back"
    );
    assert_eq!(before, after, "foreign rows rewritten while idle");
}

/// A manager that died (killed mid-action, its host gone) holds its requests only until it
/// has missed its heartbeats for `takeover_timeout`, not for the hour of `redeliver_timeout`.
/// The action may have run, so a request that is not idempotent is answered "interrupted",
/// not run again. A manager restarted under the same id takes them back at once.
async fn a_dead_managers_requests_come_back_in_seconds_and_run_no_action_twice<
    T: Queue + Records,
>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let t = Arc::new(mk("manager_id=host-b&takeover_timeout=2").await);
    t.setup().await.unwrap();
    let name = |table: &str| db.table().replace("messenger_messages", table);
    let (claims, managers) = (
        name("marvin_manager_claims"),
        name("marvin_manager_managers"),
    );
    // What a manager process leaves when it dies mid-action: its request marked delivered
    // and claimed, its last heartbeat. Its pid (in its token) names no live process.
    let died = async |id: &str, action: &str, manager: &str, started: bool| {
        send(&*t, &request(id, "c1", action), Format::Php).await;
        db.exec(&format!(
            "UPDATE {{t}} SET delivered_at = {} WHERE delivered_at IS NULL AND queue_name = 'requests'",
            db.at(0)
        ))
        .await;
        let instance = format!("2147483647-{manager}");
        db.exec(&format!(
            "INSERT INTO {claims} (row_id, manager, instance, started_at) \
             SELECT id, '{manager}', '{instance}', {} FROM {{t}} \
             WHERE queue_name = 'requests' AND id NOT IN (SELECT row_id FROM {claims})",
            if started {
                "'2026-12-03T10:00:00.000Z'"
            } else {
                "NULL"
            }
        ))
        .await;
        db.exec(&format!(
            "INSERT INTO {managers} (instance, manager, beat_at) VALUES ('{instance}', '{manager}', {}) \
             ON CONFLICT (instance) DO NOTHING",
            chrono::Utc::now().timestamp()
        ))
        .await;
    };
    died("crash-1", "restart", "host-a", true).await;
    let t0 = Instant::now();
    let stats = run_until_idle(t.clone(), manager(&s).await, 1).await;
    let took = t0.elapsed();
    assert_eq!(stats.answered, 1);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "taken back after {took:?}"
    );
    let answers = db.responses().await;
    assert_eq!(answers.len(), 1);
    assert!(!answers[0].success);
    assert_eq!(answers[0].metadata["interrupted"], true);
    assert_eq!(answers[0].metadata["manager"], "host-a");

    // Restarted under the same id (host-c), its previous process gone: at once.
    died("crash-2", "restart", "host-c", true).await;
    let restarted = Arc::new(mk("manager_id=host-c").await);
    let t0 = Instant::now();
    let stats = run_until_idle(restarted, manager(&s).await, 1).await;
    assert_eq!(stats.answered, 1);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    let answers = db.responses().await;
    let second = answers
        .iter()
        .find(|r| r.correlation_id == "crash-2")
        .unwrap();
    assert_eq!(second.metadata["interrupted"], true);

    // An action its plugin declares idempotent (echo's `idempotent-actions`: `start` on
    // containers) is run again; a request that only waited for its turn (claimed, its start
    // not recorded) never ran, so it runs.
    died("crash-3", "start", "host-d", true).await;
    died("waiting-4", "restart", "host-d", false).await;
    let stats = run_until_idle(
        Arc::new(mk("manager_id=host-d").await),
        manager(&s).await,
        2,
    )
    .await;
    assert_eq!(stats.answered, 2);
    let answers = db.responses().await;
    for id in ["crash-3", "waiting-4"] {
        let a = answers.iter().find(|r| r.correlation_id == id).unwrap();
        assert!(a.success, "{a:?}");
        assert!(!a.metadata.contains_key("interrupted"), "{a:?}");
        // echo answers with what it received: it ran.
        assert!(a.output.as_deref().unwrap().contains(id), "{a:?}");
    }
    // Answered requests hold no claim.
    let left = db
        .query(&format!("SELECT CAST(row_id AS TEXT) FROM {claims}"))
        .await;
    assert!(left.is_empty(), "{left:?}");
}

/// A request sent long before it is taken (a backlog after an outage): Core marked it timed
/// out long ago, so it is answered "expired", not carried out minutes late.
async fn a_request_core_gave_up_on_is_answered_expired<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let t = Arc::new(mk("").await);
    t.setup().await.unwrap();
    send(&*t, &request("stale-1", "c1", "restart"), Format::Php).await;
    db.exec(&format!(
        "UPDATE {{t}} SET created_at = {}, available_at = {}",
        db.at(-300),
        db.at(-300)
    ))
    .await;
    send(&*t, &request("fresh-1", "c1", "restart"), Format::Php).await;
    let stats = run_until_idle(t.clone(), manager(&s).await, 2).await;
    assert_eq!(stats.answered, 2);
    let answers = db.responses().await;
    let stale = answers
        .iter()
        .find(|r| r.correlation_id == "stale-1")
        .unwrap();
    assert!(!stale.success);
    assert_eq!(stale.metadata["expired"], true);
    assert_eq!(stale.metadata["changed"], false, "not run: nothing changed");
    assert!(
        stale.metadata.get("plugin").is_none(),
        "no plugin ran: {stale:?}"
    );
    let age = stale.metadata["age_secs"].as_u64().unwrap();
    assert!((299..=310).contains(&age), "{age}");
    let fresh = answers
        .iter()
        .find(|r| r.correlation_id == "fresh-1")
        .unwrap();
    assert!(fresh.success, "{fresh:?}");
}

/// The hostile corpus (`common/corpus.rs`, both serializers), each row followed by a valid
/// request: every hostile row ends as its case says (answered, with success or the error it
/// names; parked with its reason; or left as it was, when it is another class's), every valid
/// request is answered once, and nothing of ours is left on the queue.
async fn the_hostile_corpus_is_settled_row_by_row<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    use common::corpus::{Expect, cases};
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let t = Arc::new(mk("").await);
    t.setup().await.unwrap();
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut ids = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        ids.push(t.send("requests", c.row.clone()).await.unwrap());
        send(
            &*t,
            &request(&format!("valid-{i}"), "c1", "start"),
            Format::Php,
        )
        .await;
    }
    let taken = cases.iter().filter(|c| c.expect != Expect::Foreign).count() + cases.len();
    let stats = run_until_idle(t.clone(), manager(&s).await, taken as u64).await;
    let answers = db.responses().await;
    let parked = t.failed_rows().await.unwrap();
    let waiting: Vec<String> = db
        .query("SELECT CAST(id AS TEXT) FROM {t} WHERE queue_name = 'requests' AND delivered_at IS NULL")
        .await
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect();
    let mut wrong = Vec::new();
    for (c, id) in cases.iter().zip(&ids) {
        let answered: Vec<_> = answers
            .iter()
            .filter(|a| !c.correlation_id.is_empty() && a.correlation_id == c.correlation_id)
            .collect();
        let parked_as = parked
            .iter()
            .find(|f| f.id == *id)
            .map(|f| f.reason.clone());
        let left = waiting.contains(&id.to_string());
        let ok = match &c.expect {
            Expect::Ok => answered.len() == 1 && answered[0].success,
            Expect::Error(text) => {
                answered.len() == 1
                    && !answered[0].success
                    && answered[0].error.as_deref().unwrap_or("").contains(text)
            }
            Expect::Parked(text) => parked_as
                .as_deref()
                .is_some_and(|r| r.contains(text) && !r.is_empty()),
            Expect::Foreign => left && parked_as.is_none(),
        };
        if !ok {
            wrong.push(format!(
                "{}: expected {:?}; answered {:?}, parked {:?}, left on the queue {left}",
                c.name,
                c.expect,
                answered
                    .iter()
                    .map(|a| (a.success, a.error.clone()))
                    .collect::<Vec<_>>(),
                parked_as.map(|r| r.chars().take(200).collect::<String>()),
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    for i in 0..cases.len() {
        let valid: Vec<_> = answers
            .iter()
            .filter(|a| a.correlation_id == format!("valid-{i}"))
            .collect();
        assert!(valid.len() == 1 && valid[0].success, "valid-{i}: {valid:?}");
    }
    let foreign = cases.iter().filter(|c| c.expect == Expect::Foreign).count();
    assert_eq!(
        waiting.len(),
        foreign,
        "only the other classes' rows are left"
    );
    eprintln!(
        "{:?}: {} hostile rows ({} answered, {} parked, {foreign} left alone), {} valid: {stats:?}",
        db.db,
        cases.len(),
        cases
            .iter()
            .filter(|c| matches!(c.expect, Expect::Ok | Expect::Error(_)))
            .count(),
        cases
            .iter()
            .filter(|c| matches!(c.expect, Expect::Parked(_)))
            .count(),
        cases.len()
    );
}

/// A PostgreSQL queue set up, with the echo and counter guests.
async fn pg_with_echo_and_counter() -> (
    TestDb,
    Setup,
    Arc<marvin_manager::transport::postgres::PgTransport>,
) {
    let db = TestDb::new(Db::Pg).await;
    let s = Setup::new(&[
        (guests::ECHO, "echo.wasm"),
        (guests::COUNTER, "counter.wasm"),
    ]);
    let t = Arc::new(db.pg("").await);
    t.setup().await.unwrap();
    (db, s, t)
}

/// PostgreSQL holds the rows of a fetch while their actions run: a short action's request is
/// answered by the transaction that took it, never written before (no `delivered_at` mark,
/// seen by a trigger logging every update of the queue table); an action outliving the
/// bound is marked once, when the bound passes; with holding off every row is marked when
/// taken. Every request is answered once either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_short_action_costs_one_commit() {
    let (db, s, t) = pg_with_echo_and_counter().await;
    let schema = db.table().split('.').next().unwrap().to_owned();
    db.exec(&format!("CREATE TABLE {schema}.updates (row_id bigint)"))
        .await;
    db.exec(&format!(
        "CREATE FUNCTION {schema}.log_update() RETURNS trigger AS $$ \
           BEGIN INSERT INTO {schema}.updates VALUES (OLD.id); RETURN NEW; END $$ LANGUAGE plpgsql"
    ))
    .await;
    db.exec(&format!(
        "CREATE TRIGGER log_update BEFORE UPDATE ON {{t}} FOR EACH ROW EXECUTE FUNCTION {schema}.log_update()"
    ))
    .await;
    let updates = || {
        let db = &db;
        let schema = schema.clone();
        async move {
            let mut ids: Vec<i64> = db
                .query(&format!(
                    "SELECT CAST(row_id AS TEXT) FROM {schema}.updates"
                ))
                .await
                .into_iter()
                .map(|r| r[0].clone().unwrap().parse::<i64>().unwrap())
                .collect();
            // A row may be written twice: marked, then kept alive (the keep-alive's first
            // tick comes as the loop starts).
            ids.sort_unstable();
            ids.dedup();
            ids
        }
    };
    let mut long = 0;
    for i in 0..11 {
        // The long one: the counter guest's `count` on a container, 600 ms; the others the
        // echo guest's `start` of a worker.
        let mut req = if i == 5 {
            request("one-commit-long", "c1", "count")
        } else {
            request(&format!("one-commit-{i}"), "w1", "start")
        };
        req.args = serde_json::json!({ "ms": 600 });
        let id = send(&*t, &req, Format::Php).await;
        if i == 5 {
            long = id;
        }
    }
    let stats = run_until_idle(t.clone(), manager(&s).await, 11).await;
    assert_eq!(stats.answered, 11);
    assert_eq!(db.responses().await.len(), 11);
    assert_eq!(
        updates().await,
        [long],
        "only the long action's row is written"
    );
    // Holding off: every row marked when taken.
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            send(
                &*t,
                &request(&format!("two-commits-{i}"), "w1", "start"),
                Format::Php,
            )
            .await,
        );
    }
    let opts = ConsumeOptions {
        limit: Some(4),
        time_limit: Some(Duration::from_secs(30)),
        poll: Duration::from_millis(50),
        hold: None,
        ..ConsumeOptions::default()
    };
    let stats = consume(t.clone(), manager(&s).await, opts, std::future::pending()).await;
    assert_eq!(stats.answered, 4);
    assert_eq!(db.responses().await.len(), 15);
    ids.insert(0, long);
    assert_eq!(updates().await, ids);
}

/// A loop whose fetch took every row there was waits for the next NOTIFY instead of asking
/// the queue again at once: a request sent while the one before runs (its NOTIFY arriving
/// before the loop waits) is still taken at once, never left for the poll (a minute here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_request_sent_while_the_last_one_runs_is_not_left_for_the_poll() {
    let (db, s, t) = pg_with_echo_and_counter().await;
    let opts = ConsumeOptions {
        limit: Some(3),
        time_limit: Some(Duration::from_secs(50)),
        poll: Duration::from_secs(60),
        ..ConsumeOptions::default()
    };
    let consumer = tokio::spawn(consume(
        t.clone(),
        manager(&s).await,
        opts,
        std::future::pending(),
    ));
    let answered = async |id: &str, since: Instant| {
        while !db.responses().await.iter().any(|r| r.correlation_id == id) {
            assert!(
                since.elapsed() < Duration::from_secs(20),
                "{id} not answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        since.elapsed()
    };
    // The loop is idle (waiting on LISTEN); a request wakes it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    send(&*t, &request("notify-0", "w1", "start"), Format::Php).await;
    answered("notify-0", sent).await;
    // A 600 ms action; the next request is sent while it runs.
    let mut long = request("notify-1", "c1", "count");
    long.args = serde_json::json!({ "ms": 600 });
    send(&*t, &long, Format::Php).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = Instant::now();
    send(&*t, &request("notify-2", "w1", "start"), Format::Php).await;
    let took = answered("notify-2", sent).await;
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(consumer.await.unwrap().answered, 3);
}
