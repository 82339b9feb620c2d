//! The plugins directory: loading, broken files, conflicts, the compile cache, hot reload.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ENTITIES, Setup, guests, request};
use marvin_manager::config::Config;
use marvin_manager::runtime::plugins::PluginDir;
use marvin_manager::service::{Manager, Routing};
use serde_json::json;

/// Every file skipped, with the reason: those that did not load, then those the router
/// refused.
fn skipped(m: &Manager) -> Vec<(String, String)> {
    let routing = m.routing();
    let failed = routing.set().failures().iter().map(|f| {
        (
            f.path.file_name().unwrap().to_string_lossy().into_owned(),
            f.error.to_string(),
        )
    });
    let refused = routing.router().refused().iter().map(|r| {
        (
            Path::new(&r.origin)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            r.reason.clone(),
        )
    });
    failed.chain(refused).collect()
}

fn reason_for(m: &Manager, file: &str) -> String {
    let all = skipped(m);
    all.iter()
        .find(|(f, _)| f == file)
        .map(|(_, r)| r.clone())
        .unwrap_or_else(|| panic!("{file} was not reported: {all:?}"))
}

/// The names of the plugins serving.
fn serving(m: &Manager) -> Vec<String> {
    let routing = m.routing();
    routing
        .router()
        .serving()
        .iter()
        .map(|p| p.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_are_reported_and_the_rest_serve() {
    let s = Setup::new(&[
        (guests::ECHO, "echo.wasm"),
        (guests::NOOP, "noop.wasm"),
        (guests::TWIN, "twin.wasm"),
        (guests::BAD_DESCRIBE, "bad.wasm"),
        (guests::WRONG_WORLD, "command.wasm"),
    ]);
    std::fs::write(s.plugins.join("junk.wasm"), "this is not wasm").unwrap();
    std::fs::write(s.plugins.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(s.plugins.join("README.txt"), "not a plugin, not looked at").unwrap();
    let m = s.manager(ENTITIES).await;
    let dir = &m;
    assert_eq!(serving(&m), ["echo", "noop"]);
    assert_eq!(skipped(&m).len(), 5, "{:?}", skipped(&m));
    assert_eq!(reason_for(dir, "junk.wasm"), "not a WebAssembly file");
    assert!(reason_for(dir, "core.wasm").contains("core WebAssembly module, not a component"));
    assert!(reason_for(dir, "command.wasm").starts_with("wrong world"));
    let bad = reason_for(dir, "bad.wasm");
    assert!(
        bad.starts_with("describe() panicked at") && bad.contains("describe is broken on purpose"),
        "{bad}"
    );
    let twin = reason_for(dir, "twin.wasm");
    assert!(
        twin.starts_with(
            "plugin 'twin' claims (container, start), already handled by plugin 'echo' ("
        ),
        "{twin}"
    );
    assert!(twin.contains("echo.wasm"), "{twin}");
    common::assert_echo_still_serves(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_files_with_one_plugin_name_keep_the_first() {
    let s = Setup::new(&[(guests::ECHO, "a-echo.wasm"), (guests::ECHO, "b-echo.wasm")]);
    let m = s.manager(ENTITIES).await;
    let routing = m.routing();
    assert_eq!(routing.router().serving().len(), 1);
    assert!(routing.router().serving()[0].path.ends_with("a-echo.wasm"));
    let reason = reason_for(&m, "b-echo.wasm");
    assert!(
        reason.contains("plugin name 'echo' is already taken by") && reason.contains("a-echo.wasm"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_plugins_are_cached_on_disk() {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let cache = s.path().join("cache");
    let config = Config::default();
    let first = PluginDir::open(
        common::runtime(&config, Some(cache.clone())),
        s.plugins.clone(),
    )
    .await;
    assert!(!first.snapshot().plugins()[0].from_cache);
    let entries: Vec<_> = walk(&cache)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let sha = first.snapshot().plugins()[0].sha256.clone();
    assert!(
        entries[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(sha.as_str())
    );

    let second = PluginDir::open(
        common::runtime(&config, Some(cache.clone())),
        s.plugins.clone(),
    )
    .await;
    assert!(second.snapshot().plugins()[0].from_cache);

    // A damaged entry is compiled again, not trusted.
    std::fs::write(&entries[0], b"garbage").unwrap();
    let third = PluginDir::open(common::runtime(&config, Some(cache)), s.plugins.clone()).await;
    let set = third.snapshot();
    let p = &set.plugins()[0];
    assert!(!p.from_cache);
    assert_eq!(p.name, "echo");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Polls `check` until it holds or `limit` passes; returns how long it took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let t = Instant::now();
    loop {
        if check().await {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_loads_replaces_and_unloads_within_a_second() {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let m = Arc::new(s.manager(ENTITIES).await);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(m.plugins().clone().watch(async {
        let _ = stop_rx.await;
    }));
    let reload = s.plugins.join("reload.wasm");
    let worker_start = |sleep_ms: u64| request("w1", "start", json!({ "sleep_ms": sleep_ms }), 10);

    // echo handles (worker, start) already: take a directory with only container actions.
    std::fs::remove_file(s.plugins.join("echo.wasm")).unwrap();
    std::fs::copy(guests::NOOP, s.plugins.join("noop.wasm")).unwrap();
    within(Duration::from_secs(1), async || {
        let routing = m.routing();
        routing.router().plugin("echo").is_none() && routing.router().plugin("noop").is_some()
    })
    .await;

    // Appears: loaded within 1 s.
    std::fs::copy(guests::RELOAD_V1, &reload).unwrap();
    let took = within(Duration::from_secs(1), async || {
        m.execute(&worker_start(0)).await.output.as_deref() == Some("1.0.0")
    })
    .await;
    eprintln!("new plugin served after {took:?}");

    // Changes while a request runs: the request finishes on v1, new ones get v2 within 1 s.
    let m2 = m.clone();
    let in_flight = tokio::spawn(async move { m2.execute(&worker_start(1500)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tmp = s.plugins.join("reload.wasm.part");
    std::fs::copy(guests::RELOAD_V2, &tmp).unwrap();
    std::fs::rename(&tmp, &reload).unwrap();
    let took = within(Duration::from_secs(1), async || {
        m.execute(&worker_start(0)).await.output.as_deref() == Some("2.0.0")
    })
    .await;
    eprintln!("replaced plugin served after {took:?}");
    let old = in_flight.await.unwrap();
    assert!(old.success, "{old:?}");
    assert_eq!(old.output.as_deref(), Some("1.0.0"));
    assert_eq!(old.metadata["plugin_version"], "1.0.0");

    // Overwritten in place (not renamed): also picked up.
    std::fs::copy(guests::RELOAD_V1, &reload).unwrap();
    within(Duration::from_secs(1), async || {
        m.execute(&worker_start(0)).await.output.as_deref() == Some("1.0.0")
    })
    .await;

    // A broken file appears: reported, the others keep serving.
    std::fs::write(s.plugins.join("broken.wasm"), "garbage").unwrap();
    within(Duration::from_secs(1), async || !skipped(&m).is_empty()).await;
    assert_eq!(reason_for(&m, "broken.wasm"), "not a WebAssembly file");
    assert_eq!(
        m.execute(&worker_start(0)).await.output.as_deref(),
        Some("1.0.0")
    );

    // Disappears: unloaded within 1 s.
    std::fs::remove_file(&reload).unwrap();
    within(Duration::from_secs(1), async || {
        let r = m.execute(&worker_start(0)).await;
        r.error
            .is_some_and(|e| e.starts_with("no plugin handles action 'start' for workers"))
    })
    .await;

    let _ = stop_tx.send(());
    watcher.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_newcomer_is_refused_and_the_holder_keeps_serving() {
    let s = Setup::new(&[(guests::TWIN, "zz-twin.wasm")]);
    let m = s.manager(ENTITIES).await;
    assert_eq!(
        m.execute(&request("c1", "start", json!({}), 5))
            .await
            .output
            .as_deref(),
        Some("twin")
    );
    // echo.wasm sorts first, but twin was there first: echo is the later one and is refused.
    std::fs::copy(guests::ECHO, s.plugins.join("echo.wasm")).unwrap();
    m.plugins().rescan(false).await;
    let reason = reason_for(&m, "echo.wasm");
    assert!(
        reason.starts_with(
            "plugin 'echo' claims (container, start), already handled by plugin 'twin'"
        ),
        "{reason}"
    );
    assert_eq!(
        m.execute(&request("c1", "start", json!({}), 5))
            .await
            .output
            .as_deref(),
        Some("twin")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_plugins_serve_until_a_directory_plugin_takes_their_place() {
    use marvin_manager::message::EntityKind;
    use marvin_manager::runtime::plugins::BUILTIN;
    let s = Setup::new(&[]);
    let config = Config::parse("").unwrap();
    let runtime = common::runtime(&config, Some(s.path().join("cache")));
    let dir = PluginDir::open_with(runtime, s.plugins.clone(), BUILTIN).await;
    let routing = || Routing::new(dir.snapshot());
    let route = |kind, action| {
        routing()
            .router()
            .route(kind, action)
            .map(|p| p.name.clone())
            .unwrap_or_else(|e| e.to_string())
    };
    assert_eq!(route(EntityKind::Container, "start"), "docker-compose");
    assert_eq!(route(EntityKind::Container, "exec_cmd"), "exec-cmd");
    assert!(dir.snapshot().failures().is_empty());
    // echo claims every container action: the built-ins step aside.
    std::fs::copy(guests::ECHO, s.plugins.join("echo.wasm")).unwrap();
    assert!(dir.rescan(false).await);
    assert_eq!(route(EntityKind::Container, "start"), "echo");
    assert_eq!(route(EntityKind::Container, "exec_cmd"), "echo");
    assert!(routing().router().plugin("docker-compose").is_none());
    assert!(routing().router().plugin("exec-cmd").is_none());
    assert!(
        dir.snapshot().failures().is_empty() && routing().router().refused().is_empty(),
        "shadowing is not a failure"
    );
    std::fs::remove_file(s.plugins.join("echo.wasm")).unwrap();
    assert!(dir.rescan(false).await);
    assert_eq!(route(EntityKind::Container, "start"), "docker-compose");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_say_which_actions_are_idempotent_and_first_contract_plugins_still_load() {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm"), (guests::LEGACY, "legacy.wasm")]);
    let m = s.manager(ENTITIES).await;
    assert!(skipped(&m).is_empty(), "{:?}", skipped(&m));
    let req = |entity: &str, action: &str| request(entity, action, json!({}), 5);
    // echo exports `idempotent-actions`: start and stop on containers.
    assert!(m.idempotent(&req("c1", "start")).await);
    assert!(m.idempotent(&req("c1", "stop")).await);
    assert!(!m.idempotent(&req("c1", "restart")).await);
    assert!(
        !m.idempotent(&req("w1", "start")).await,
        "declared for containers only"
    );
    // A plugin of the first contract (no such export) loads, runs, and has none.
    let r = m.execute(&req("c1", "legacy_ping")).await;
    assert!(
        r.success && r.output.as_deref().unwrap().starts_with("pong from 0.1.0"),
        "{r:?}"
    );
    assert!(!m.idempotent(&req("c1", "legacy_ping")).await);
    // ... and is planned by the host in a dry run (it has no `unplannable-actions`): it runs,
    // its changing calls (none here) planned.
    let r = m
        .execute(&request("c1", "legacy_ping", json!({"dry_run": true}), 5))
        .await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["dry_run"], true, "{r:?}");
    assert_eq!(r.metadata["plan"], json!([]), "{r:?}");
    assert_eq!(r.metadata["changed"], false, "{r:?}");
    // The operator's word wins over the plugin's.
    let m = s
        .manager(&format!(
            "{ENTITIES}\n[plugins.echo]\nidempotent = [\"restart\"]\n"
        ))
        .await;
    assert!(m.idempotent(&req("c1", "restart")).await);
    assert!(m.idempotent(&req("w1", "restart")).await);
    assert!(!m.idempotent(&req("c1", "start")).await);
}
