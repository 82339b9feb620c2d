//! Registry and router through the whole host: what a plugin receives, what Core gets back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ENTITIES, Setup, guests, request};
use marvin_manager::message::EntityKind;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reaches_the_plugin_resolved() {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let m = s.manager(ENTITIES).await;
    let mut req = request(
        "c1",
        "exec_cmd",
        json!({"nested": {"list": [1, 2, "é"]}}),
        7,
    );
    req.command = Some("php bin/console cache:clear".into());
    let r = m.execute(&req).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.correlation_id, req.correlation_id);
    assert_eq!(r.entity_type, EntityKind::Container);
    assert_eq!(r.entity_id, "c1");
    assert_eq!(r.action, "exec_cmd");
    let seen: serde_json::Value = serde_json::from_str(r.output.as_deref().unwrap()).unwrap();
    assert_eq!(seen["correlation_id"], req.correlation_id);
    assert_eq!(
        seen["target"],
        json!({"project": "marvin", "service": "web"})
    );
    assert_eq!(seen["command"], "php bin/console cache:clear");
    assert_eq!(seen["args"], json!({"nested": {"list": [1, 2, "é"]}}));
    assert_eq!(seen["timeout_ms"], 7000);
    assert_eq!(r.metadata["echoed"], true);
    assert_eq!(r.metadata["plugin"], "echo");
    assert_eq!(r.metadata["plugin_version"], "1.2.3");
    assert!(r.metadata["duration_ms"].is_u64());

    let r = m.execute(&request("w1", "restart", json!([]), 0)).await;
    let seen: serde_json::Value = serde_json::from_str(r.output.as_deref().unwrap()).unwrap();
    assert_eq!(r.entity_type, EntityKind::Worker);
    assert_eq!(seen["target"], json!({"program": "consumer"}));
    assert_eq!(seen["args"], json!([]));
    assert_eq!(
        seen["timeout_ms"], 10_000,
        "a timeout of 0 means Core's default of 10 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_entities_all_and_supervisor() {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let m = s.manager(ENTITIES).await;
    let r = m
        .execute(&request("all", "restart_all", json!({}), 5))
        .await;
    let seen: serde_json::Value = serde_json::from_str(r.output.as_deref().unwrap()).unwrap();
    assert_eq!(
        seen["target"],
        json!({"project": "marvin", "service": null})
    );
    let r = m
        .execute(&request("supervisor", "reread", json!({}), 5))
        .await;
    assert_eq!(r.entity_type, EntityKind::Worker);
    let seen: serde_json::Value = serde_json::from_str(r.output.as_deref().unwrap()).unwrap();
    assert_eq!(seen["target"], "supervisord");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_core_can_show() {
    let s = Setup::new(&[(guests::NOOP, "noop.wasm")]);
    let m = s.manager(ENTITIES).await;
    let r = m.execute(&request("x", "start", json!({}), 5)).await;
    assert!(!r.success);
    assert_eq!(r.error.as_deref(), Some("unknown entity 'x'"));
    let r = m.execute(&request("x", "reread", json!({}), 5)).await;
    assert_eq!(r.entity_type, EntityKind::Worker);
    let r = m.execute(&request("w1", "build", json!({}), 5)).await;
    assert_eq!(
        r.error.as_deref(),
        Some(
            "action 'build' is not supported for workers (supported: start, stop, restart, reread, update)"
        )
    );
    let r = m.execute(&request("c1", "start", json!({}), 5)).await;
    assert!(
        r.error
            .unwrap()
            .starts_with("no plugin handles action 'start' for containers")
    );
    let r = m.execute(&request("c1", "reread", json!({}), 5)).await;
    assert_eq!(
        r.error.as_deref(),
        Some(
            "action 'reread' is not supported for containers (supported: start, stop, restart, restart_all, build, exec_cmd, noop)"
        )
    );
}
