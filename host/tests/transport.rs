//! One transport suite, run against a real PostgreSQL server and SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;

use common::db::{Db, TestDb, request, send};
use marvin_manager::codec::{self, Format};
use marvin_manager::message::{EntityKind, ManagerResponse};
use marvin_manager::transport::{HistoryFilter, LedgerEntry, Queue, Records, Settle};

on_both_databases!(
    setup_creates_symfonys_table,
    a_request_round_trips_in_one_transaction,
    other_classes_are_never_touched,
    available_at_and_redelivery_follow_symfony,
    fetch_takes_batches_oldest_first,
    concurrent_consumers_never_share_a_row,
    a_cancelled_fetch_leaves_the_queue_usable,
    bad_rows_go_to_the_failure_queue,
    keepalive_moves_delivered_at,
    timestamps_follow_the_configured_zone,
    setup_adds_the_columns_an_older_version_lacked,
    prune_deletes_what_is_older_batch_by_batch,
);

fn response_for(correlation_id: &str) -> ManagerResponse {
    ManagerResponse {
        correlation_id: correlation_id.into(),
        entity_type: EntityKind::Container,
        entity_id: "c1".into(),
        action: "start".into(),
        success: true,
        output: Some("started ✓".into()),
        error: None,
        metadata: serde_json::Map::new(),
    }
}

fn entry(r: &ManagerResponse) -> LedgerEntry {
    LedgerEntry {
        correlation_id: r.correlation_id.clone(),
        entity_id: r.entity_id.clone(),
        action: r.action.clone(),
        plugin: Some("echo".into()),
        success: r.success,
        error: r.error.clone(),
        response: marvin_manager::transport::LedgerResponse::of(r),
        received_at: marvin_manager::transport::utc_now_rfc3339(),
        finished_at: String::new(),
        duration_ms: 3,
        manager: None,
    }
}

async fn setup_creates_symfonys_table<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let t = mk("").await;
    t.setup().await.unwrap();
    t.setup().await.unwrap();
    let cols: Vec<String> = match db.db {
        Db::Pg => {
            let (schema, table) = db.table().split_once('.').unwrap();
            db.query(&format!(
                "SELECT column_name::text || ' ' || data_type::text FROM information_schema.columns \
                 WHERE table_schema = '{schema}' AND table_name = '{table}' ORDER BY ordinal_position"
            ))
            .await
        }
        Db::Sqlite => db.query("SELECT name || ' ' || type FROM pragma_table_info('messenger_messages')").await,
    }
    .into_iter()
    .map(|r| r[0].clone().unwrap())
    .collect();
    let expected = match db.db {
        Db::Pg => vec![
            "id bigint",
            "body text",
            "headers text",
            "queue_name character varying",
            "created_at timestamp without time zone",
            "available_at timestamp without time zone",
            "delivered_at timestamp without time zone",
        ],
        Db::Sqlite => vec![
            "id INTEGER",
            "body CLOB",
            "headers CLOB",
            "queue_name VARCHAR(190)",
            "created_at DATETIME",
            "available_at DATETIME",
            "delivered_at DATETIME",
        ],
    };
    assert_eq!(cols, expected);
    // Symfony 5.4's three indexes; with `composite_index`, also the one Symfony 7.4
    // creates, under DBAL's name, so Doctrine sees the schema either version makes.
    let indexes = async || -> Vec<String> {
        match db.db {
            Db::Pg => {
                let (schema, table) = db.table().split_once('.').unwrap();
                db.query(&format!(
                    "SELECT regexp_replace(indexdef, '^.* ON [^ ]+ USING btree ', '') FROM pg_indexes \
                     WHERE schemaname = '{schema}' AND tablename = '{table}' AND indexname <> '{table}_pkey' ORDER BY 1"
                ))
                .await
            }
            Db::Sqlite => {
                db.query("SELECT substr(sql, instr(sql, '(')) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messenger_messages' AND sql IS NOT NULL ORDER BY 1")
                    .await
            }
        }
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect()
    };
    let symfony_5_4 = vec!["(available_at)", "(delivered_at)", "(queue_name)"];
    assert_eq!(indexes().await, symfony_5_4);
    mk("composite_index=true").await.setup().await.unwrap();
    let mut with_composite = symfony_5_4.clone();
    with_composite.push("(queue_name, available_at, delivered_at, id)");
    assert_eq!(indexes().await, with_composite);
    if db.db == Db::Sqlite {
        let names = db
            .query("SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE '%delivered_at, id)'")
            .await;
        assert_eq!(
            names,
            vec![vec![Some(
                "IDX_75EA56E0FB7336F0E3BD61CE16BA31DBBF396750".to_owned()
            )]]
        );
    }
    if db.db == Db::Pg {
        let schema = db.table().split_once('.').unwrap().0;
        let trig = db
            .query(&format!(
                "SELECT tgname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND NOT tgisinternal"
            ))
            .await;
        assert_eq!(trig, vec![vec![Some("notify_trigger".to_owned())]]);
    }
}

async fn a_request_round_trips_in_one_transaction<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let t = mk("").await;
    t.setup().await.unwrap();
    for (i, format) in [Format::Php, Format::Json].into_iter().enumerate() {
        let cid = format!("corr-rt-{i}");
        let id = send(&t, &request(&cid, "c1", "start"), format).await;
        let got = t.fetch(10).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, id);
        assert!(!got[0].redelivered);
        let d = got[0].decoded.as_ref().unwrap();
        assert_eq!(d.format, format);
        assert_eq!(d.bus_name.as_deref(), Some("messenger.bus.default"));
        assert_eq!(
            d.request.as_ref().unwrap().as_ref().unwrap().correlation_id,
            cid
        );
        let delivered = db
            .query(&format!(
                "SELECT {} FROM {{t}} WHERE id = {id}",
                db.ts("delivered_at")
            ))
            .await;
        assert!(delivered[0][0].is_some(), "fetch marks the row delivered");
        assert!(
            t.fetch(10).await.unwrap().is_empty(),
            "a delivered row is not taken twice"
        );

        let r = response_for(&cid);
        t.complete(vec![Settle::Reply {
            request_id: id,
            response: codec::encode_response(&r, format, Some("messenger.bus.default")),
            ledger: Some(Box::new(entry(&r))),
        }])
        .await
        .unwrap();
        assert!(
            db.query(&format!(
                "SELECT CAST(id AS TEXT) FROM {{t}} WHERE id = {id}"
            ))
            .await
            .is_empty()
        );
        let rows = db
            .query("SELECT body, headers, queue_name FROM {t} WHERE queue_name = 'responses' ORDER BY id DESC")
            .await;
        let (body, headers) = (rows[0][0].clone().unwrap(), rows[0][1].clone().unwrap());
        assert_eq!(
            codec::decode_response(body.as_bytes(), &headers).unwrap(),
            r
        );
        let ledger = t.answered(vec![cid.clone()]).await.unwrap();
        assert_eq!(
            ledger[&cid].response.value(),
            serde_json::to_value(&r).unwrap()
        );
    }
    let h = t
        .history(HistoryFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].correlation_id, "corr-rt-1", "newest first");
    // The manager that committed the answer.
    assert_eq!(h[0].manager.as_deref(), Some("marvin-manager"));
}

/// A database set up by an earlier version (a table without a column added since) gets the
/// column at the next setup, and the manager works on it.
async fn setup_adds_the_columns_an_older_version_lacked<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let t = mk("").await;
    t.setup().await.unwrap();
    let ledger = db
        .table()
        .replace("messenger_messages", "marvin_manager_ledger");
    let managers = db
        .table()
        .replace("messenger_messages", "marvin_manager_managers");
    db.exec(&format!("ALTER TABLE {ledger} DROP COLUMN manager"))
        .await;
    db.exec(&format!("ALTER TABLE {managers} DROP COLUMN version"))
        .await;
    let t = mk("").await;
    t.setup().await.unwrap();
    t.heartbeat().await.unwrap();
    let id = send(&t, &request("corr-old-1", "web", "start"), Format::Php).await;
    assert_eq!(t.fetch(1).await.unwrap().len(), 1);
    let r = response_for("corr-old-1");
    t.complete(vec![Settle::Reply {
        request_id: id,
        response: codec::encode_response(&r, Format::Php, None),
        ledger: Some(Box::new(entry(&r))),
    }])
    .await
    .unwrap();
    let h = t
        .history(HistoryFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(h[0].manager.as_deref(), Some("marvin-manager"));
    let m = t.managers().await.unwrap();
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].version, env!("CARGO_PKG_VERSION"));
}

async fn other_classes_are_never_touched<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    // The seed configuration: requests and responses share one queue.
    let t = mk("queue_name=shared&response_queue_name=shared").await;
    t.setup().await.unwrap();
    let resp = codec::encode_response(
        &response_for("r-1"),
        Format::Php,
        Some("messenger.bus.default"),
    );
    let other_json = codec::Encoded {
        body: "{\"x\":1}".into(),
        headers: "{\"type\":\"App\\\\Message\\\\Other\"}".into(),
    };
    t.send("shared", resp).await.unwrap();
    t.send("shared", other_json).await.unwrap();
    // An answer whose text names the request class: the SQL filter cannot tell it apart.
    let mut grep = response_for("r-2");
    grep.output = Some(format!("src/Handler.php: use {};", codec::REQUEST_CLASS));
    t.send("shared", codec::encode_response(&grep, Format::Php, None))
        .await
        .unwrap();
    t.send("shared", codec::encode_response(&grep, Format::Json, None))
        .await
        .unwrap();
    let req_id = send(&t, &request("q-1", "c1", "start"), Format::Php).await;
    let got = t.fetch(10).await.unwrap();
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), vec![req_id]);
    let untouched = db
        .query(&format!("SELECT CAST(id AS TEXT) FROM {{t}} WHERE queue_name = 'shared' AND delivered_at IS NULL AND id <> {req_id}"))
        .await;
    assert_eq!(untouched.len(), 4, "other classes keep delivered_at NULL");
    let r = response_for("q-1");
    t.complete(vec![Settle::Reply {
        request_id: req_id,
        response: codec::encode_response(&r, Format::Php, None),
        ledger: None,
    }])
    .await
    .unwrap();
    // Our own response on the shared queue is not taken either.
    assert!(t.fetch(10).await.unwrap().is_empty());
    assert_eq!(
        db.query("SELECT CAST(id AS TEXT) FROM {t} WHERE delivered_at IS NOT NULL")
            .await
            .len(),
        0
    );
    assert_eq!(db.query("SELECT CAST(id AS TEXT) FROM {t}").await.len(), 5);
}

async fn insert_raw(
    db: &TestDb,
    body: &str,
    headers: &str,
    available: i64,
    delivered: Option<i64>,
) -> i64 {
    let delivered = delivered.map_or("NULL".to_owned(), |d| db.at(d));
    let sql = format!(
        "INSERT INTO {{t}} (body, headers, queue_name, created_at, available_at, delivered_at) VALUES ('{}', '{}', 'requests', {}, {}, {delivered})",
        body.replace('\'', "''"),
        headers.replace('\'', "''"),
        db.at(0),
        db.at(available)
    );
    db.exec(&sql).await;
    db.query("SELECT CAST(MAX(id) AS TEXT) FROM {t}").await[0][0]
        .clone()
        .unwrap()
        .parse()
        .unwrap()
}

fn request_row(cid: &str) -> (String, String) {
    let e = codec::encode_request(&request(cid, "c1", "start"), Format::Php, None);
    (e.body, e.headers)
}

async fn available_at_and_redelivery_follow_symfony<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let t = mk("redeliver_timeout=3600").await;
    t.setup().await.unwrap();
    let (b, h) = request_row("later");
    insert_raw(db, &b, &h, 3600, None).await;
    let (b, h) = request_row("stale");
    let stale = insert_raw(db, &b, &h, -7300, Some(-7200)).await;
    let (b, h) = request_row("running");
    insert_raw(db, &b, &h, -20, Some(-10)).await;
    let got = t.fetch(10).await.unwrap();
    assert_eq!(got.len(), 1, "only the row past its redeliver timeout");
    assert_eq!(got[0].id, stale);
    assert!(got[0].redelivered);
}

async fn fetch_takes_batches_oldest_first<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let t = mk("").await;
    t.setup().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let (b, h) = request_row(&format!("b{i}"));
        ids.push(insert_raw(db, &b, &h, -100 + i, None).await);
    }
    let first: Vec<i64> = t.fetch(3).await.unwrap().iter().map(|d| d.id).collect();
    assert_eq!(first, ids[..3]);
    let rest: Vec<i64> = t.fetch(10).await.unwrap().iter().map(|d| d.id).collect();
    assert_eq!(rest, ids[3..]);
}

async fn concurrent_consumers_never_share_a_row<T: Queue + Records>(
    _db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let a = mk("").await;
    let b = mk("").await;
    a.setup().await.unwrap();
    let mut all = HashSet::new();
    for i in 0..60 {
        all.insert(send(&a, &request(&format!("cc{i}"), "c1", "start"), Format::Php).await);
    }
    let take = async |t: &T| {
        let mut got = Vec::new();
        loop {
            let batch = t.fetch(4).await.unwrap();
            if batch.is_empty() {
                return got;
            }
            got.extend(batch.into_iter().map(|d| d.id));
        }
    };
    let (ga, gb) = tokio::join!(take(&a), take(&b));
    let sa: HashSet<i64> = ga.iter().copied().collect();
    let sb: HashSet<i64> = gb.iter().copied().collect();
    assert!(sa.is_disjoint(&sb), "a row went to both consumers");
    assert_eq!(sa.len() + sb.len(), 60);
    assert_eq!(&sa | &sb, all);
}

/// A fetch dropped part-way (a `select!` that picked another branch) must not keep a
/// transaction, and the database's write lock, open on a pooled connection: the next fetch and
/// the answers' commit would wait out the busy timeout (seen as a SIGTERM that hung `serve`).
async fn a_cancelled_fetch_leaves_the_queue_usable<T: Queue + Records>(
    _db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let t = mk("").await;
    // Another consumer: its own connections, so a lock left on one of `t`'s shows.
    let other = mk("").await;
    t.setup().await.unwrap();
    let id = send(&t, &request("cancel-1", "c1", "start"), Format::Php).await;
    // Cancel at many points: after 0, 1, 2, … polls, with the worker threads' timing between.
    for polls in 0..40u32 {
        let mut fetch = Box::pin(t.fetch(1));
        for _ in 0..polls {
            let woken = futures_util::poll!(fetch.as_mut());
            if woken.is_ready() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_micros(200)).await;
        }
        drop(fetch);
        // Whatever the cancelled fetch did, the queue still answers promptly.
        let next =
            tokio::time::timeout(std::time::Duration::from_secs(5), other.keepalive(vec![id]))
                .await
                .unwrap_or_else(|_| {
                    panic!("the queue is locked after a fetch cancelled at poll {polls}")
                });
        next.unwrap();
    }
}

async fn bad_rows_go_to_the_failure_queue<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let t = mk("failure_queue_name=failed").await;
    t.setup().await.unwrap();
    let needle = codec::request_class_needle();
    let garbage = format!("O:99:\\\"{needle}\\\":broken}}");
    let id = insert_raw(db, &garbage, "[]", -5, None).await;
    let got = t.fetch(10).await.unwrap();
    assert_eq!(got.len(), 1);
    let reason = got[0].decoded.clone().unwrap_err();
    t.complete(vec![Settle::Fail {
        request_id: id,
        reason: reason.clone(),
    }])
    .await
    .unwrap();
    let row = db
        .query(&format!(
            "SELECT queue_name, body FROM {{t}} WHERE id = {id}"
        ))
        .await;
    assert_eq!(row[0][0].as_deref(), Some("failed"));
    assert_eq!(
        row[0][1].as_deref(),
        Some(garbage.as_str()),
        "the row is kept as it was"
    );
    let failed = t.failed_rows().await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, id);
    assert_eq!(failed[0].original_queue, "requests");
    assert_eq!(failed[0].reason, reason);
    assert!(t.fetch(10).await.unwrap().is_empty());
}

async fn keepalive_moves_delivered_at<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let t = mk("").await;
    t.setup().await.unwrap();
    let (b, h) = request_row("ka");
    let id = insert_raw(db, &b, &h, -100, Some(-50)).await;
    t.keepalive(vec![id]).await.unwrap();
    let got = db
        .query(&format!(
            "SELECT {} FROM {{t}} WHERE id = {id}",
            db.ts("delivered_at")
        ))
        .await;
    let now = chrono::Utc::now().naive_utc();
    let at =
        chrono::NaiveDateTime::parse_from_str(got[0][0].as_deref().unwrap(), "%Y-%m-%d %H:%M:%S")
            .unwrap();
    assert!((now - at).num_seconds().abs() <= 2, "{at} vs {now}");
}

async fn timestamps_follow_the_configured_zone<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let t = mk("timezone=Asia/Tokyo").await;
    t.setup().await.unwrap();
    let id = send(&t, &request("tz", "c1", "start"), Format::Php).await;
    let got = db
        .query(&format!(
            "SELECT {}, {} FROM {{t}} WHERE id = {id}",
            db.ts("created_at"),
            db.ts("available_at")
        ))
        .await;
    let created = got[0][0].clone().unwrap();
    assert_eq!(created.len(), 19, "whole seconds, no zone: {created}");
    let at = chrono::NaiveDateTime::parse_from_str(&created, "%Y-%m-%d %H:%M:%S").unwrap();
    let tokyo = chrono::Utc::now().naive_utc() + chrono::Duration::hours(9);
    assert!((tokyo - at).num_seconds().abs() <= 2, "{at} vs {tokyo}");
    // And it is fetchable by a consumer in the same zone.
    assert_eq!(t.fetch(1).await.unwrap().len(), 1);
}

/// A queue drained faster than autovacuum runs gets vacuumed and analyzed by the consumer,
/// so the fetch keeps its index plan (statistics from an empty table made it 30x slower);
/// the later vacuums, every 10,000 answers, analyze only one time in ten (an analyze reads a
/// sample of 30,000 rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_maintains_a_fast_draining_queue() {
    let db = TestDb::new(Db::Pg).await;
    let t = db.pg("").await;
    t.setup().await.unwrap();
    let (schema, table) = db.table().split_once('.').unwrap();
    // Two columns of the table's statistics, as text.
    let stats = |vacuum: &str, analyze: &str| {
        let sql = format!(
            "SELECT CAST({vacuum} AS TEXT), CAST({analyze} AS TEXT) FROM pg_stat_user_tables WHERE schemaname = '{schema}' AND relname = '{table}'"
        );
        let db = &db;
        async move { db.query(&sql).await }
    };
    let last = || stats("last_vacuum", "last_analyze");
    let counts = || stats("vacuum_count", "analyze_count");
    assert_eq!(last().await, vec![vec![None, None]]);
    for i in 0..260 {
        send(&t, &request(&format!("v{i}"), "c1", "start"), Format::Php).await;
    }
    let mut batch = Vec::new();
    for d in t.fetch(300).await.unwrap() {
        let r = response_for(&format!("v{}", d.id));
        batch.push(Settle::Reply {
            request_id: d.id,
            response: codec::encode_response(&r, Format::Php, None),
            ledger: None,
        });
    }
    assert_eq!(batch.len(), 260);
    t.complete(batch).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let row = last().await;
        if row[0][0].is_some() && row[0][1].is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no vacuum/analyze: {row:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let one = |s: &str| Some(s.to_owned());
    assert_eq!(counts().await, vec![vec![one("1"), one("1")]]);
    // 10,000 more answers: a second vacuum, without an analyze.
    db.query(
        "INSERT INTO {t} (body, headers, queue_name, created_at, available_at) \
         SELECT body, headers, queue_name, created_at, available_at FROM {t}, generate_series(1, 10000) \
         WHERE id = (SELECT min(id) FROM {t} WHERE queue_name = 'responses')",
    )
    .await;
    let ids: Vec<i64> = db
        .query("SELECT CAST(id AS TEXT) FROM {t} WHERE queue_name = 'responses'")
        .await
        .into_iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(ids.len() > 10_000);
    for chunk in ids.chunks(2_000) {
        let r = response_for("again");
        t.complete(
            chunk
                .iter()
                .map(|&id| Settle::Reply {
                    request_id: id,
                    response: codec::encode_response(&r, Format::Php, None),
                    ledger: None,
                })
                .collect(),
        )
        .await
        .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let row = counts().await;
        if row[0][0] == one("2") {
            assert_eq!(row[0][1], one("1"), "the second vacuum analyzed: {row:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no second vacuum: {row:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The transport's sessions run without PostgreSQL's JIT compilation (a fetch with the
/// ownership filter was compiled at every execution: 40 of its 41 ms), as PostgreSQL reports
/// them; a DSN that sets `jit` in its own `options` keeps its choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_sessions_run_without_jit_unless_the_dsn_asks() {
    let db = TestDb::new(Db::Pg).await;
    assert_eq!(
        db.query("SELECT current_setting('jit')").await,
        vec![vec![Some("on".to_owned())]],
        "the test needs PostgreSQL's default"
    );
    let t = db.pg("").await;
    t.setup().await.unwrap();
    let jit: String = sqlx::query_scalar("SELECT current_setting('jit')")
        .fetch_one(t.pool())
        .await
        .unwrap();
    assert_eq!(jit, "off");
    // A request still round-trips on these sessions.
    send(&t, &request("j1", "c1", "start"), Format::Php).await;
    assert_eq!(t.fetch(10).await.unwrap().len(), 1);

    let theirs = db.pg("options=-c%20jit%3Don").await;
    let jit: String = sqlx::query_scalar("SELECT current_setting('jit')")
        .fetch_one(theirs.pool())
        .await
        .unwrap();
    assert_eq!(jit, "on");
}

/// SQLite stores what it is given: a BLOB body, or text that is not UTF-8, is a bad row for
/// the failure queue, never a fetch that fails (which stopped the whole queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_blob_and_non_utf8_bodies_are_bad_rows_not_failed_fetches() {
    let db = TestDb::new(Db::Sqlite).await;
    let t = db.sqlite("").await;
    t.setup().await.unwrap();
    let now = db.at(-1);
    // A BLOB, and TEXT holding bytes that are not UTF-8 (both pass the SQL filter: headers
    // `[]`, a body not ending in `}`).
    db.exec(&format!(
        "INSERT INTO {{t}} (body, headers, queue_name, created_at, available_at) VALUES (X'4F3A33FFFE', '[]', 'requests', {now}, {now})"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO {{t}} (body, headers, queue_name, created_at, available_at) VALUES (CAST(X'4F3A33FFFE' AS TEXT), '[]', 'requests', {now}, {now})"
    ))
    .await;
    send(&t, &request("fine-1", "c1", "start"), Format::Php).await;
    let taken = t.fetch(10).await.unwrap();
    assert_eq!(taken.len(), 3);
    let bad: Vec<String> = taken
        .iter()
        .filter_map(|d| d.decoded.as_ref().err().cloned())
        .collect();
    assert_eq!(
        bad,
        [
            "body is not valid UTF-8 text",
            "body is not valid UTF-8 text"
        ]
    );
    let good = taken.iter().find(|d| d.decoded.is_ok()).unwrap();
    t.complete(
        taken
            .iter()
            .filter(|d| d.decoded.is_err())
            .map(|d| Settle::Fail {
                request_id: d.id,
                reason: d.decoded.as_ref().err().cloned().unwrap(),
            })
            .collect(),
    )
    .await
    .unwrap();
    assert_eq!(t.failed_rows().await.unwrap().len(), 2);
    assert!(t.fetch(10).await.unwrap().is_empty(), "{}", good.id);
}

/// On PostgreSQL the fetch statement reads the ledger itself for the correlation id it finds
/// in the body (both serializers), so a batch costs no separate lookup; an id it cannot cut
/// out of the body (one holding a quote) is reported as another id, to be looked up apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_fetch_reads_the_ledger_of_what_it_takes() {
    let db = TestDb::new(Db::Pg).await;
    let t = db.pg("").await;
    t.setup().await.unwrap();
    for (cid, format) in [
        ("corr-php-1", Format::Php),
        ("corr-json-1", Format::Json),
        ("corr-\"quoted\";s:1", Format::Php),
    ] {
        // Answered once…
        let id = send(&t, &request(cid, "web", "start"), format).await;
        let got = t.fetch(1).await.unwrap();
        assert_eq!(got[0].id, id);
        // Not answered yet: nothing in the ledger.
        assert!(got[0].looked_up.as_ref().unwrap().1.is_none());
        let r = response_for(cid);
        t.complete(vec![Settle::Reply {
            request_id: id,
            response: codec::encode_response(&r, format, None),
            ledger: Some(Box::new(entry(&r))),
        }])
        .await
        .unwrap();
        // …then sent again by Core: the fetch brings the first answer along.
        send(&t, &request(cid, "web", "start"), format).await;
        let got = t.fetch(1).await.unwrap();
        let (looked, entry) = got[0].looked_up.clone().unwrap();
        if cid.contains('"') {
            assert_ne!(looked, cid, "{format:?}");
            assert!(entry.is_none());
        } else {
            assert_eq!(looked, cid, "{format:?}");
            assert_eq!(
                entry.unwrap().response.value(),
                serde_json::to_value(&r).unwrap()
            );
        }
        t.complete(vec![Settle::Fail {
            request_id: got[0].id,
            reason: "done".into(),
        }])
        .await
        .unwrap();
    }
}

/// A hold (PostgreSQL): the rows taken are locked, neither marked nor claimed, so no other
/// consumer takes them; the answer is committed by the very transaction that locked the row
/// (one commit); a row still running at the release is marked and claimed then; a start is
/// recorded apart (committed while the row is held); a dropped hold (a crash) leaves its rows
/// as they were, and the next taker sees the recorded start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_hold_answers_in_the_transaction_that_took_the_rows() {
    let db = TestDb::new(Db::Pg).await;
    let t = db.pg("").await;
    t.setup().await.unwrap();
    let other = db.pg("").await;
    let a = send(&t, &request("hold-a", "web", "start"), Format::Php).await;
    let b = send(&t, &request("hold-b", "web", "start"), Format::Php).await;
    let c = send(&t, &request("hold-c", "web", "start"), Format::Php).await;
    let (rows, held) = t.hold(10).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [a, b, c]);
    let state = |id: i64| {
        let db = &db;
        async move {
            db.query(&format!(
                "SELECT CAST(delivered_at AS TEXT), CAST(xmax AS TEXT), \
                 (SELECT instance || ' ' || COALESCE(started_at, '-') FROM {}.marvin_manager_claims WHERE row_id = {id}) \
                 FROM {{t}} WHERE id = {id}",
                db.table().split('.').next().unwrap()
            ))
            .await
            .into_iter()
            .next()
        }
    };
    // Locked, not written: no mark, no claim; the locker's transaction id is the row's xmax.
    let (row_a, row_b) = (state(a).await.unwrap(), state(b).await.unwrap());
    assert_eq!((&row_a[0], &row_a[2]), (&None, &None));
    let locker = row_a[1].clone().unwrap();
    assert_ne!(locker, "0");
    assert_eq!(row_b[1].as_deref(), Some(locker.as_str()));
    // Another consumer skips them, by fetch or by hold.
    assert!(other.fetch(10).await.unwrap().is_empty());
    let (none, _) = other.hold(10).await.unwrap();
    assert!(none.is_empty());
    // The start of c is recorded (committed) while it is held: its claim.
    assert_eq!(t.started(vec![c]).await.unwrap(), [c]);
    assert!(
        state(c).await.unwrap()[2]
            .as_deref()
            .is_some_and(|s| !s.ends_with(" -"))
    );
    // Released: a answered, b untouched (not run), c still running.
    let r = response_for("hold-a");
    t.release(
        held,
        &[Settle::Reply {
            request_id: a,
            response: codec::encode_response(&r, Format::Php, None),
            ledger: Some(Box::new(entry(&r))),
        }],
        vec![c],
    )
    .await
    .unwrap();
    // The answer was written inside the transaction that locked the request: in its
    // settle savepoint, a subtransaction, whose id comes after the locker's (the locker took
    // its id when it locked the rows; the subtransaction's was taken at the settle).
    let answer = db
        .query("SELECT CAST(xmin AS TEXT) FROM {t} WHERE queue_name = 'responses'")
        .await;
    assert_eq!(answer.len(), 1);
    let written: u64 = answer[0][0].as_deref().unwrap().parse().unwrap();
    let locked: u64 = locker.parse().unwrap();
    assert!(written >= locked, "answer xmin {written}, locker {locked}");
    assert!(state(a).await.is_none());
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
    let row_b = state(b).await.unwrap();
    assert_eq!((&row_b[0], &row_b[2]), (&None, &None));
    let row_c = state(c).await.unwrap();
    assert!(row_c[0].is_some(), "still running: marked delivered");
    assert!(
        row_c[2].as_deref().is_some_and(|s| !s.ends_with(" -")),
        "its start kept"
    );
    // The other consumer now takes b (free again), never c (marked, its manager alive).
    let got = other.fetch(10).await.unwrap();
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), [b]);
    assert!(got[0].claimed.is_none());
    // A hold dropped after a start was recorded (a crash mid-action): the row is back as it
    // was, and whoever takes it next knows the action started.
    let d = send(&t, &request("hold-d", "web", "start"), Format::Php).await;
    let (rows, held) = t.hold(10).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [d]);
    assert_eq!(t.started(vec![d]).await.unwrap(), [d]);
    // (sqlx rolls a dropped transaction back when its connection goes back to the pool, in
    // a task of its own: moments later.)
    drop(held);
    let mut got = Vec::new();
    for _ in 0..100 {
        got = other.fetch(10).await.unwrap();
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), [d]);
    assert!(got[0].claimed.is_some(), "the recorded start comes with it");
    // The late answer of c goes in as any other.
    let r = response_for("hold-c");
    t.complete(vec![Settle::Reply {
        request_id: c,
        response: codec::encode_response(&r, Format::Php, None),
        ledger: Some(Box::new(entry(&r))),
    }])
    .await
    .unwrap();
    assert!(state(c).await.is_none());
    assert_eq!(db.responses().await.len(), 2);
}

/// A hold takes at most the rows it asks for, whichever statement takes them: the widest take
/// so far runs a statement planned once with its LIMIT written in, a narrower one the
/// statement planned for its values, a wider one a new statement planned once. Rows held
/// by one hold are not taken by the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_holds_take_no_more_than_asked_wide_or_narrow() {
    let db = TestDb::new(Db::Pg).await;
    let t = db.pg("").await;
    t.setup().await.unwrap();
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(
            send(
                &t,
                &request(&format!("width-{i}"), "web", "start"),
                Format::Php,
            )
            .await,
        );
    }
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for (ask, expect) in [(4, 4), (2, 2), (4, 4), (8, 0)] {
        let (rows, held) = t.hold(ask).await.unwrap();
        assert_eq!(rows.len(), expect, "hold({ask})");
        taken.extend(rows.iter().map(|r| r.id));
        kept.push(held);
    }
    assert_eq!(taken, sent, "each row once, oldest first");
    let late = send(&t, &request("width-late", "web", "start"), Format::Php).await;
    let (rows, _held) = t.hold(8).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [late]);
    let (rows, _held) = t.hold(3).await.unwrap();
    assert!(rows.is_empty());
}

/// The PostgreSQL fetch starts its walk of `available_at` at a floor (the queue's oldest row
/// less 5 s, read every 2 s) so it does not pass the parked rows and answers of every
/// day before: a row that comes back old (redelivered) is above it, and a row whose sender's
/// clock is far behind (available 10 minutes ago when sent) is still taken, at the next
/// reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_the_fetch_floor_loses_no_row() {
    let db = TestDb::new(Db::Pg).await;
    let t = db.pg("redeliver_timeout=60").await;
    t.setup().await.unwrap();
    // Parked rows and answers of an hour ago, below any floor.
    for i in 0..50 {
        let (b, h) = request_row(&format!("old-{i}"));
        let id = insert_raw(&db, &b, &h, -3600, None).await;
        db.exec(&format!(
            "UPDATE {{t}} SET queue_name = 'failed' WHERE id = {id}"
        ))
        .await;
    }
    // Taken 2 hours ago and never answered: redelivered now, floor or not.
    let (b, h) = request_row("stale");
    let stale = insert_raw(&db, &b, &h, -7300, Some(-7200)).await;
    let got = t.fetch(10).await.unwrap();
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), [stale]);
    t.complete(vec![Settle::Fail {
        request_id: stale,
        reason: "done".into(),
    }])
    .await
    .unwrap();
    // Read again with the queue empty: 5 s before "now".
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(t.fetch(10).await.unwrap().is_empty());
    // A row its sender stamped 10 minutes ago is below it…
    let (b, h) = request_row("skewed");
    let skewed = insert_raw(&db, &b, &h, -600, None).await;
    let start = std::time::Instant::now();
    assert!(t.fetch(10).await.unwrap().is_empty());
    let mut got = Vec::new();
    while got.is_empty() && start.elapsed() < std::time::Duration::from_secs(10) {
        got = t.fetch(10).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // …is taken within a reading of the floor.
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), [skewed]);
    assert!(start.elapsed() < std::time::Duration::from_secs(4));
}

/// A prune of more rows than one of its batches: every ledger row answered before the cut and
/// every row parked before it (with its record) goes, the newer ones stay.
async fn prune_deletes_what_is_older_batch_by_batch<T: Queue + Records>(
    db: &TestDb,
    mk: impl AsyncFn(&str) -> T,
) {
    let t = mk("failure_queue_name=failed").await;
    t.setup().await.unwrap();
    let schema = db
        .table()
        .rsplit_once('.')
        .map_or(String::new(), |(s, _)| format!("{s}."));
    let ledger = format!("{schema}marvin_manager_ledger");
    let failures = format!("{schema}marvin_manager_failures");
    let (old, new) = ("2020-01-01T00:00:00.000Z", "2999-01-01T00:00:00.000Z");
    let numbers = |n: usize| {
        format!("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})")
    };
    let ledger_rows = |n: usize, prefix: &str, at: &str| {
        format!(
            "{} INSERT INTO {ledger} (correlation_id, entity_id, action, plugin, success, error, \
             response, received_at, finished_at, duration_ms, manager) \
             SELECT '{prefix}' || i, 'c1', 'start', 'p', true, NULL, '{{}}', '{at}', '{at}', 1, 'm' FROM n",
            numbers(n)
        )
    };
    db.exec(&ledger_rows(4_500, "old-", old)).await;
    db.exec(&ledger_rows(10, "new-", new)).await;
    // Parked rows with their records: 2,500 parked long ago, 3 parked now.
    for (n, from, at) in [(2_500, 1_000_000, old), (3, 2_000_000, new)] {
        db.exec(&format!(
            "{} INSERT INTO {{t}} (id, body, headers, queue_name, created_at, available_at) \
             SELECT {from} + i, 'b', '[]', 'failed', {now}, {now} FROM n",
            numbers(n),
            now = db.at(0)
        ))
        .await;
        db.exec(&format!(
            "{} INSERT INTO {failures} (row_id, original_queue, reason, failed_at) \
             SELECT {from} + i, 'requests', 'bad', '{at}' FROM n",
            numbers(n)
        ))
        .await;
    }
    let pruned = t.prune("2024-01-01T00:00:00.000Z".into()).await.unwrap();
    assert_eq!((pruned.ledger, pruned.failed), (4_500, 2_500));
    let count = |sql: String| async move {
        db.query(&sql).await[0][0]
            .clone()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let left = count(format!("SELECT CAST(COUNT(*) AS TEXT) FROM {ledger}")).await;
    assert_eq!(left, 10, "the newer ledger rows stay");
    let fresh = count(format!(
        "SELECT CAST(COUNT(*) AS TEXT) FROM {ledger} WHERE correlation_id LIKE 'new-%'"
    ))
    .await;
    assert_eq!(fresh, 10);
    let rows =
        count("SELECT CAST(COUNT(*) AS TEXT) FROM {t} WHERE queue_name = 'failed'".into()).await;
    assert_eq!(rows, 3, "the rows parked since stay");
    let records = count(format!("SELECT CAST(COUNT(*) AS TEXT) FROM {failures}")).await;
    assert_eq!(records, 3, "and their records");
    assert_eq!(t.failed_rows().await.unwrap().len(), 3);
    // Nothing older is left: a second prune finds nothing.
    let again = t.prune("2024-01-01T00:00:00.000Z".into()).await.unwrap();
    assert_eq!((again.ledger, again.failed), (0, 0));
}
