//! Hostile plugins are contained, and a well-behaved plugin is served correctly after each.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{ENTITIES, Setup, assert_echo_still_serves, guests, request};
use serde_json::json;

fn hostile_entity() -> String {
    format!(
        "{ENTITIES}\n[entities.h]\nkind = \"container\"\nproject = \"marvin\"\nservice = \"evil\"\n"
    )
}

/// The hostile plugin's entity, the plugin's memory capped at 16 MiB.
fn hostile_capped_at_16_mib() -> String {
    format!(
        "{}\n[plugins.hostile]\nmax_memory_bytes = 16777216\n",
        hostile_entity()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_stopped_at_its_deadline() {
    let s = Setup::new(&[
        (guests::HOSTILE, "hostile.wasm"),
        (guests::ECHO, "echo.wasm"),
    ]);
    let m = s.manager(&hostile_entity()).await;
    let t = Instant::now();
    let r = m.execute(&request("h", "loop", json!({}), 1)).await;
    let took = t.elapsed();
    assert!(!r.success);
    let e = r.error.unwrap();
    assert!(e.contains("did not finish within the 1 s timeout"), "{e}");
    assert!(
        took >= Duration::from_millis(950),
        "stopped too early: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "stopped too late: {took:?}");
    assert_echo_still_serves(&m).await;
}

/// Waits until `count()` is `n` (a second at most); `what` names the count.
async fn until(what: &str, n: usize, count: impl Fn() -> usize) {
    let t = Instant::now();
    while count() != n {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{} {what}, not {n}",
            count()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `n` instances are made ahead, and a moment more: the plugin is then idle, and
/// the next request's instance is made ahead too.
async fn made_ahead(m: &marvin_manager::service::Manager, n: usize) {
    until("instances made ahead", n, || m.runtime().made_ahead()).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
}

/// After a request on an idle plugin its next instance is made ahead; that instance is as
/// fresh as one made at the request, and runs under the request's own deadline, grants,
/// correlation id and memory cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_made_ahead_is_fresh_and_runs_under_its_own_request() {
    let s = Setup::new(&[
        (guests::HOSTILE, "hostile.wasm"),
        (guests::ECHO, "echo.wasm"),
    ]);
    let config = hostile_capped_at_16_mib();
    let m = s.manager(&config).await;
    assert_eq!(
        m.runtime().made_ahead(),
        0,
        "nothing is made before a request"
    );
    for i in 1..=3 {
        let r = m.execute(&request("h", "remember", json!({}), 5)).await;
        assert!(r.success, "{r:?}");
        assert_eq!(r.metadata["seen"], 1, "request {i} found a used instance");
        made_ahead(&m, 1).await;
    }
    // Its deadline is the request's (1 s), not the 5 s it was made under.
    let t = Instant::now();
    let r = m.execute(&request("h", "loop", json!({}), 1)).await;
    let e = r.error.unwrap();
    assert!(e.contains("did not finish within the 1 s timeout"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    made_ahead(&m, 1).await;
    // Its host calls go through the plugin's policy, which names it.
    let r = m.execute(&request("h", "docker", json!({}), 5)).await;
    let e = r.error.unwrap();
    assert!(
        e.contains("plugin 'hostile'") && e.contains("docker.projects"),
        "{e}"
    );
    made_ahead(&m, 1).await;
    // Its memory cap is the plugin's.
    let r = m.execute(&request("h", "membomb", json!({}), 10)).await;
    let e = r.error.unwrap();
    assert!(e.contains("exceeded its memory limit"), "{e}");
    made_ahead(&m, 1).await;
    let r = m.execute(&request("h", "remember", json!({}), 5)).await;
    assert_eq!(r.metadata["seen"], 1, "{r:?}");
    // Requests a moment apart, more than the pool holds beside the running one: each used
    // store is dropped (none is kept), and each request found a fresh instance.
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let r = m.execute(&request("h", "remember", json!({}), 5)).await;
        assert_eq!(r.metadata["seen"], 1, "request {i}: {r:?}");
    }
    made_ahead(&m, 1).await;
    until("instances alive (used stores kept)", 1, || {
        usize::try_from(m.runtime().live_instances()).unwrap()
    })
    .await;
    assert_echo_still_serves(&m).await;
}

/// A request's used instance stays with its [`Aftercare`] until whoever sends the answer on
/// drops it: nothing is given back or made ahead before, and both happen after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_used_instance_is_given_back_once_the_answer_is_sent() {
    let s = Setup::new(&[
        (guests::HOSTILE, "hostile.wasm"),
        (guests::ECHO, "echo.wasm"),
    ]);
    let m = s.manager(&hostile_entity()).await;
    let alive = || usize::try_from(m.runtime().live_instances()).unwrap();
    // The first request's instance is made at the request, the second's ahead of it.
    for round in 0..2 {
        let (r, aftercare) = m.answer(&request("h", "remember", json!({}), 5)).await;
        assert_eq!(r.metadata["seen"], 1, "round {round}: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(alive(), 1, "round {round}: the used instance, and no other");
        assert_eq!(m.runtime().made_ahead(), 0, "round {round}");
        drop(aftercare);
        // The used one dropped, the next made ahead (the plugin was idle).
        made_ahead(&m, 1).await;
        until("instances alive", 1, alive).await;
    }
    assert_echo_still_serves(&m).await;
}

/// While a backlog waits (the consumer's fetches fill their slots) no instance is made ahead:
/// a request after an idle spell has its used instance dropped at once and the next one made
/// at its own request; once no backlog waits, the next instance is made ahead again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instance_is_made_ahead_while_a_backlog_waits() {
    let s = Setup::new(&[
        (guests::HOSTILE, "hostile.wasm"),
        (guests::ECHO, "echo.wasm"),
    ]);
    let m = s.manager(&hostile_entity()).await;
    let alive = || usize::try_from(m.runtime().live_instances()).unwrap();
    m.runtime().backlog(true);
    for round in 0..3 {
        // After an idle spell: without a backlog, its next instance would be made ahead.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = m.execute(&request("h", "remember", json!({}), 5)).await;
        assert_eq!(r.metadata["seen"], 1, "round {round}: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(m.runtime().made_ahead(), 0, "round {round}");
        assert_eq!(alive(), 0, "round {round}: the used instance is dropped");
    }
    m.runtime().backlog(false);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = m.execute(&request("h", "remember", json!({}), 5)).await;
    assert_eq!(r.metadata["seen"], 1, "{r:?}");
    made_ahead(&m, 1).await;
    assert_echo_still_serves(&m).await;
}

/// What the hostile plugin's `env` action says it sees, its used instance given back after.
async fn env_seen(
    runtime: &marvin_manager::runtime::Runtime,
    plugin: &marvin_manager::runtime::LoadedPlugin,
    entity: &marvin_manager::message::Entity,
) -> String {
    let req = request("h", "env", json!({}), 5);
    let handled = runtime.handle(plugin, entity, &req).await;
    let out = handled.outcome.unwrap().output.unwrap();
    drop(handled.aftercare);
    out
}

/// A plugin put under another policy after it was loaded (what `plugin test` does with its
/// script's grants) runs under it on every instance, the ones made ahead too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_set_after_load_holds_for_instances_made_ahead() {
    use marvin_manager::capabilities::policy::Policy;
    use marvin_manager::config::{Config, Grants};
    use marvin_manager::message::{Entity, EntityKind, Target};
    let s = Setup::new(&[(guests::HOSTILE, "hostile.wasm")]);
    let runtime = common::runtime(&Config::parse("").unwrap(), None);
    let mut plugin = runtime.load(&s.plugins.join("hostile.wasm")).await.unwrap();
    let entity = Entity {
        id: "h".into(),
        kind: EntityKind::Container,
        target: Target::Compose {
            project: "marvin".into(),
            service: Some("evil".into()),
        },
    };
    // Under the load-time policy (no grants), with an instance made ahead under it.
    assert_eq!(env_seen(&runtime, &plugin, &entity).await, "env=0 args=0");
    until("instances made ahead", 1, || runtime.made_ahead()).await;
    let grants = Grants {
        env: vec!["MARVIN_SET=1".into(), "MARVIN_TOO=2".into()],
        ..Grants::default()
    };
    plugin.set_policy(std::sync::Arc::new(Policy::new(
        "hostile",
        plugin.policy().requested().iter().copied(),
        grants,
        &[],
    )));
    // The instance made under the old policy is gone; the first request after is made
    // inline, the next ahead: both see the new policy's two variables.
    until("instances made ahead", 0, || runtime.made_ahead()).await;
    for i in 0..2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            env_seen(&runtime, &plugin, &entity).await,
            "env=2 args=0",
            "request {i}"
        );
        until("instances made ahead", 1, || runtime.made_ahead()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_gets_a_memory_limit_error() {
    let s = Setup::new(&[
        (guests::HOSTILE, "hostile.wasm"),
        (guests::ECHO, "echo.wasm"),
    ]);
    let config = hostile_capped_at_16_mib();
    let m = s.manager(&config).await;
    let r = m.execute(&request("h", "membomb", json!({}), 10)).await;
    assert!(!r.success);
    let e = r.error.unwrap();
    assert!(e.contains("exceeded its memory limit"), "{e}");
    assert_echo_still_serves(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_becomes_an_error_response_with_the_message() {
    let s = Setup::new(&[
        (guests::HOSTILE, "hostile.wasm"),
        (guests::ECHO, "echo.wasm"),
    ]);
    let m = s.manager(&hostile_entity()).await;
    let r = m.execute(&request("h", "panic", json!({}), 5)).await;
    assert!(!r.success);
    let e = r.error.unwrap();
    assert!(e.contains("panicked at"), "{e}");
    assert!(e.contains("the hostile plugin gave up on purpose"), "{e}");
    assert_eq!(r.metadata["plugin"], "hostile");
    assert_echo_still_serves(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_docker_call_is_denied_naming_the_grant() {
    let s = Setup::new(&[
        (guests::HOSTILE, "hostile.wasm"),
        (guests::ECHO, "echo.wasm"),
    ]);
    let m = s.manager(&hostile_entity()).await;
    let r = m.execute(&request("h", "docker", json!({}), 5)).await;
    assert!(!r.success);
    let e = r.error.unwrap();
    assert!(e.starts_with("permission denied"), "{e}");
    assert!(
        e.contains("plugin 'hostile'") && e.contains("docker.projects"),
        "{e}"
    );
    assert!(e.contains("[plugins.hostile.grants.docker]"), "{e}");

    // Granted: the call passes the policy and reaches the (absent) engine instead.
    let config = format!(
        "{}\n[plugins.hostile.grants.docker]\nprojects = [\"marvin\"]\n",
        hostile_entity()
    );
    let m2 = s.manager(&config).await;
    let r = m2.execute(&request("h", "docker", json!({}), 5)).await;
    let e = r.error.unwrap();
    assert!(e.starts_with("unavailable"), "{e}");
    assert_echo_still_serves(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_outside_a_preopen_and_writes_are_refused() {
    let s = Setup::new(&[
        (guests::HOSTILE, "hostile.wasm"),
        (guests::ECHO, "echo.wasm"),
    ]);
    let data = s.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("hello.txt"), "hello from the host").unwrap();
    std::fs::write(s.path().join("secret.txt"), "top secret").unwrap();
    let data = data.canonicalize().unwrap();
    let config = format!(
        "{}\n[plugins.hostile.grants]\nfiles = [{:?}]\n",
        hostile_entity(),
        data.display().to_string()
    );
    let m = s.manager(&config).await;
    let read = |p: String| request("h", "read", json!({ "path": p }), 5);

    // Inside the grant: readable.
    let r = m
        .execute(&read(format!("{}/hello.txt", data.display())))
        .await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.output.as_deref(), Some("hello from the host"));

    // Outside: `..`, an absolute host path, system files.
    for p in [
        format!("{}/../secret.txt", data.display()),
        s.path().join("secret.txt").display().to_string(),
        "/etc/passwd".into(),
    ] {
        let r = m.execute(&read(p.clone())).await;
        assert!(!r.success, "read {p} succeeded: {r:?}");
        assert!(!r.output.unwrap_or_default().contains("top secret"));
    }

    // Writes into the read-only preopen: refused, nothing on the host.
    let target = data.join("new.txt");
    let r = m
        .execute(&request(
            "h",
            "write",
            json!({ "path": target.display().to_string() }),
            5,
        ))
        .await;
    assert!(!r.success, "{r:?}");
    assert!(!target.exists());
    let r = m
        .execute(&request(
            "h",
            "write",
            json!({ "path": data.join("hello.txt").display().to_string() }),
            5,
        ))
        .await;
    assert!(!r.success, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(data.join("hello.txt")).unwrap(),
        "hello from the host"
    );

    // Not granted at all: nothing is preopened.
    let m = s.manager(&hostile_entity()).await;
    let r = m
        .execute(&read(format!("{}/hello.txt", data.display())))
        .await;
    assert!(!r.success, "{r:?}");
    assert_echo_still_serves(&m).await;
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_flood_is_truncated_with_host_memory_bounded() {
    let s = Setup::new(&[
        (guests::HOSTILE, "hostile.wasm"),
        (guests::ECHO, "echo.wasm"),
    ]);
    let m = s.manager(&hostile_entity()).await;
    // Warm up so the measurement sees the flood, not first-use allocations.
    let _ = m.execute(&request("h", "env", json!({}), 5)).await;
    let before = rss_kib();
    let r = m.execute(&request("h", "flood", json!({}), 30)).await;
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(r.success, "{r:?}");
    assert_eq!(r.output.as_deref(), Some("flooded 100 MB"));
    // 100 MB went through; the host kept 64 KiB of it (plus the guest's own 1 MiB chunk).
    assert!(grown_mib < 32, "host memory grew by {grown_mib} MiB");
    assert_echo_still_serves(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_get_no_environment_or_arguments() {
    // SAFETY-free: a variable the host has must not reach the plugin.
    let s = Setup::new(&[
        (guests::HOSTILE, "hostile.wasm"),
        (guests::ECHO, "echo.wasm"),
    ]);
    let m = s.manager(&hostile_entity()).await;
    assert!(std::env::vars().count() > 0);
    let r = m.execute(&request("h", "env", json!({}), 5)).await;
    assert_eq!(r.output.as_deref(), Some("env=0 args=0"), "{r:?}");
}
