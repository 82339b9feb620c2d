//! Every shipped plugin tested in isolation: each `plugins/<plugin>/tests/*.toml` script runs
//! the plugin in the real runtime with scripted host calls (no Docker, no supervisord), and
//! must pass. `marvin-manager plugin test` runs the same scripts one at a time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use marvin_manager::scripting::{self, Script};

fn scripts(plugin: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins")
        .join(plugin)
        .join("tests");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

async fn run_all(plugin: &str, wasm: &str) -> usize {
    let cache = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let all = scripts(plugin);
    for path in &all {
        let script = Script::load(path).unwrap();
        let report = scripting::run(Path::new(wasm), &script, Some(cache.path().into()), &[])
            .await
            .unwrap();
        if !report.passed() {
            failures.push(format!("== {}\n{}", path.display(), report.render()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    all.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_compose_scripts() {
    let n = run_all("docker-compose", test_programs::DOCKER_COMPOSE).await;
    assert!(n >= 10, "{n} scripts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_cmd_scripts() {
    let n = run_all("exec-cmd", test_programs::EXEC_CMD).await;
    assert!(n >= 6, "{n} scripts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_scripts() {
    let n = run_all("supervisor", test_programs::SUPERVISOR).await;
    assert!(n >= 10, "{n} scripts");
}
