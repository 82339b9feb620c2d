//! `marvin-manager serve` as a process: the embedded default with no config at all, `dispatch
//! --wait`, `actions`, and a graceful stop on SIGTERM that finishes the action in flight.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Setup, guests, wait_exit};

fn marvin(cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_marvin-manager"));
    c.current_dir(cwd)
        .env("MARVIN_CACHE_DIR", cwd.join("cache"))
        .env_remove("MARVIN_CONFIG")
        .env_remove("MARVIN_PLUGINS_DIR")
        .env_remove("MARVIN_DSN")
        .env_remove("RUST_LOG");
    c
}

fn run(cwd: &Path, args: &[&str]) -> Output {
    marvin(cwd).args(args).output().unwrap()
}

fn serve(cwd: &Path) -> Child {
    marvin(cwd)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(cwd.join("serve.log")).unwrap(),
        ))
        .spawn()
        .unwrap()
}

#[test]
fn the_embedded_default_serves_with_no_config_at_all() {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let mut child = serve(s.path());
    // No manager.toml: `all` has no project, and an unknown entity is an error Core can show.
    let o = run(
        s.path(),
        &["dispatch", "--entity", "x", "--action", "start", "--wait"],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = r["error"].as_str().unwrap();
    assert!(
        e.starts_with("unknown entity 'x' (not in the config"),
        "{e}"
    );
    let o = run(
        s.path(),
        &[
            "dispatch",
            "--entity",
            "supervisor",
            "--action",
            "reread",
            "--serializer",
            "json",
            "--wait",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["success"], true);
    assert_eq!(r["metadata"]["plugin"], "echo");
    assert!(
        s.path().join("marvin.db").exists(),
        "the SQLite queue lives in the working directory"
    );

    let o = run(s.path(), &["actions"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("supervisor reread  ok"), "{out}");
    assert!(out.contains("x start  FAILED"), "{out}");
    let o = run(
        s.path(),
        &["actions", "--failed", "--json", "--since", "1h"],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["actions"].as_array().unwrap().len(), 1);

    unsafe_kill(child.id(), "TERM");
    assert!(
        wait_exit(
            &mut child,
            Duration::from_secs(10),
            &s.path().join("serve.log")
        )
        .success()
    );
}

#[test]
fn sigterm_finishes_the_action_in_flight() {
    let s = Setup::new(&[(guests::RELOAD_V1, "reload.wasm")]);
    std::fs::write(
        s.path().join("manager.toml"),
        "[entities.w1]\nkind = \"worker\"\nprogram = \"p\"\n",
    )
    .unwrap();
    let mut child = serve(s.path());
    let o = run(
        s.path(),
        &[
            "dispatch",
            "--entity",
            "w1",
            "--action",
            "start",
            "--args",
            "{\"sleep_ms\":0}",
            "--wait",
        ],
    );
    assert!(o.status.success(), "the service is up");
    let slow = marvin(s.path())
        .args([
            "dispatch",
            "--entity",
            "w1",
            "--action",
            "start",
            "--args",
            "{\"sleep_ms\":1500}",
            "--wait",
            "--correlation-id",
            "slow-1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let t = Instant::now();
    unsafe_kill(child.id(), "TERM");
    let status = wait_exit(
        &mut child,
        Duration::from_secs(10),
        &s.path().join("serve.log"),
    );
    assert!(status.success());
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "exited before the action finished"
    );
    let o = slow.wait_with_output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["correlationId"], "slow-1");
    assert_eq!(r["output"], "1.0.0");
    let log = std::fs::read_to_string(s.path().join("serve.log")).unwrap();
    assert!(log.contains("stop requested"), "{log}");
}

fn unsafe_kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}
