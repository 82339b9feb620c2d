//! The `marvin-manager` binary: `plugins` and `run`, with `--config`, `--plugins-dir` and the
//! default `manager.toml` in the working directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Setup, guests};

fn marvin(cwd: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_marvin-manager"))
        .args(args)
        .current_dir(cwd)
        .env("MARVIN_CACHE_DIR", cwd.join("cache"))
        .env_remove("MARVIN_CONFIG")
        .env_remove("MARVIN_PLUGINS_DIR")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn plugins_lists_the_good_one_and_two_reasons_and_exits_0() {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm"), (guests::TWIN, "twin.wasm")]);
    std::fs::write(s.plugins.join("notes.wasm"), "not wasm at all").unwrap();
    let o = marvin(s.path(), &["plugins"]);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("echo 1.2.3"), "{out}");
    assert!(
        out.contains("handles:      container start, container stop"),
        "{out}"
    );
    // What echo declares of its actions.
    let echo = out
        .split("\n\n")
        .find(|b| b.starts_with("echo 1.2.3"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        echo.contains("\n  idempotent:   container start, container stop\n"),
        "{echo}"
    );
    assert!(!echo.contains("no dry run:"), "{echo}");
    assert!(out.contains("2 file(s) skipped:"), "{out}");
    assert!(out.contains("notes.wasm: not a WebAssembly file"), "{out}");
    assert!(
        out.contains(
            "twin.wasm: plugin 'twin' claims (container, start), already handled by plugin 'echo'"
        ),
        "{out}"
    );
    assert!(!out.contains("twin 0.1.0"), "{out}");
}

#[test]
fn a_plugin_overrides_only_the_builtin_actions_it_claims_and_says_so() {
    // twin claims (container, start) only: the built-in docker-compose keeps the rest.
    let s = Setup::new(&[(guests::TWIN, "twin.wasm")]);
    let o = marvin(s.path(), &["plugins"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("twin 0.1.0"), "{out}");
    assert!(
        out.contains("  overrides:    built-in docker-compose for container start"),
        "{out}"
    );
    assert!(
        out.contains("  overridden:   container start by twin ("),
        "{out}"
    );
    let o = marvin(s.path(), &["plugins", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let plugin = |name: &str| {
        v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("the built-in {name} still serves: {v}"))
    };
    let compose = plugin("docker-compose");
    assert!(
        compose["handles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["action"] == "stop"),
        "{compose}"
    );
    let pairs = |p: &serde_json::Value, key: &str| -> Vec<String> {
        p[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                format!(
                    "{} {}",
                    h["kind"].as_str().unwrap(),
                    h["action"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        pairs(compose, "idempotent"),
        ["container start", "container stop"]
    );
    assert!(pairs(compose, "unplannable").is_empty(), "{compose}");
    let exec = plugin("exec-cmd");
    assert_eq!(pairs(exec, "unplannable"), ["container exec_cmd"]);
    assert!(pairs(exec, "idempotent").is_empty(), "{exec}");
    assert!(
        out.contains("\n  no dry run:   container exec_cmd\n"),
        "{out}"
    );
    assert_eq!(v["overrides"][0]["plugin"], "twin");
    assert_eq!(v["overrides"][0]["builtin"], "docker-compose");
    assert_eq!(v["overrides"][0]["whole"], false);
    assert_eq!(v["overrides"][0]["handles"][0]["action"], "start");
    // Each action goes where the table says.
    std::fs::write(
        s.path().join("manager.toml"),
        "[entities.web]\nkind = \"container\"\nproject = \"none-here\"\nservice = \"web\"\n",
    )
    .unwrap();
    let run = |action: &str| {
        let o = marvin(
            s.path(),
            &[
                "run",
                "--entity",
                "web",
                "--action",
                action,
                "--timeout",
                "5",
            ],
        );
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    assert_eq!(run("start")["output"], "twin");
    let stop = run("stop");
    assert_eq!(stop["metadata"]["plugin"], "docker-compose", "{stop}");
}

#[test]
fn plugin_test_runs_a_folder_of_scripts_for_ci() {
    let s = Setup::new(&[]);
    let dir = s.path().join("scripts");
    std::fs::create_dir(&dir).unwrap();
    let script = |call: &str, field: &str| {
        format!(
            "[request]\nentity = \"web\"\naction = \"start\"\n[entity]\nkind = \"container\"\nproject = \"marvin\"\nservice = \"web\"\n\
             [[calls]]\ncall = \"{call}\"\nok = [{{ id = \"c1\", name = \"marvin_web_1\", state = {{ status = \"running\", {field} = 0 }} }}]\n\
             [expect]\nsuccess = true\nmetadata = {{ already = true }}\n"
        )
    };
    // WIT's spelling of a field (exit-code) reads as well as snake_case; the answer's
    // project and service default to the listed ones.
    std::fs::write(
        dir.join("a-running.toml"),
        script("docker.list-containers", "exit-code"),
    )
    .unwrap();
    std::fs::write(
        dir.join("b-snake.toml"),
        script("docker.list-containers", "exit_code"),
    )
    .unwrap();
    let plugin = test_programs::DOCKER_COMPOSE;
    let junit = s.path().join("junit.xml");
    let o = marvin(
        s.path(),
        &[
            "plugin",
            "test",
            plugin,
            "--script",
            dir.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("2 script(s): 2 passed, 0 failed"), "{out}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("tests=\"2\"") && xml.contains("failures=\"0\""),
        "{xml}"
    );
    assert!(xml.contains("<testcase name=\"a-running\""), "{xml}");

    // A misspelt call: the nearest name, not a list of differences; the run fails with 1.
    std::fs::write(
        dir.join("c-typo.toml"),
        script("docker.list_container", "exit_code"),
    )
    .unwrap();
    let o = marvin(
        s.path(),
        &[
            "plugin",
            "test",
            plugin,
            "--script",
            dir.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    let out = stdout(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("3 script(s): 2 passed, 1 failed"), "{out}");
    assert!(
        err.contains("call 1: unknown host call 'docker.list_container' (did you mean docker.list-containers?)"),
        "{err}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("errors=\"1\""), "{xml}");

    // A scripted inspect without compose's labels says so.
    std::fs::remove_file(dir.join("c-typo.toml")).unwrap();
    std::fs::write(
        dir.join("d-inspect.toml"),
        "[request]\nentity = \"web\"\naction = \"inspect\"\n[entity]\nkind = \"container\"\nproject = \"marvin\"\nservice = \"web\"\n\
         [[calls]]\ncall = \"docker.inspect\"\nok = { id = \"c1\", name = \"marvin_web_1\" }\n",
    )
    .unwrap();
    let o = marvin(
        s.path(),
        &[
            "plugin",
            "test",
            guests::HOSTILE,
            "--script",
            dir.join("d-inspect.toml").to_str().unwrap(),
        ],
    );
    let out = stdout(&o);
    assert!(
        out.contains("has no `project` and `service` (compose's labels"),
        "{out}"
    );

    // No .wasm where a Rust library was built: what is missing.
    let release = s.path().join("target/wasm32-wasip2/release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("libmine.rlib"), "").unwrap();
    let o = marvin(
        s.path(),
        &[
            "plugin",
            "test",
            release.join("mine.wasm").to_str().unwrap(),
            "--script",
            dir.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(err.contains("crate-type = [\"cdylib\"]"), "{err}");
}

#[test]
fn plugin_test_watch_runs_again_when_the_plugin_changes() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    use std::time::Duration;
    let s = Setup::new(&[]);
    let wasm = s.path().join("plugin.wasm");
    std::fs::copy(test_programs::DOCKER_COMPOSE, &wasm).unwrap();
    let script = s.path().join("start.toml");
    std::fs::write(
        &script,
        "[request]\nentity = \"web\"\naction = \"start\"\n[entity]\nkind = \"container\"\nproject = \"marvin\"\nservice = \"web\"\n\
         [[calls]]\ncall = \"docker.list-containers\"\nok = [{ id = \"c1\", name = \"marvin_web_1\" }]\n[expect]\nsuccess = true\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_marvin-manager"))
        .args([
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--script",
            script.to_str().unwrap(),
            "--watch",
        ])
        .current_dir(s.path())
        .env("MARVIN_CACHE_DIR", s.path().join("cache"))
        .env_remove("MARVIN_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |want: &str| -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
            let done = line == want;
            seen.push(line);
            if done {
                return seen;
            }
        }
        panic!("no {want:?} line: {seen:?}");
    };
    let first = wait_for("PASS");
    assert!(
        first.iter().any(|l| l.contains("plugin docker-compose")),
        "{first:?}"
    );
    // Another plugin in its place (a rebuild): the script runs again, and now fails.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::copy(test_programs::EXEC_CMD, &wasm).unwrap();
    let second = wait_for("FAIL");
    assert!(
        second.iter().any(|l| l.contains("plugin exec-cmd")),
        "{second:?}"
    );
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn plugins_shows_requested_against_granted() {
    let s = Setup::new(&[(guests::HOSTILE, "hostile.wasm")]);
    let config = s.path().join("elsewhere.toml");
    std::fs::write(
        &config,
        "[plugins.hostile.grants.docker]\nprojects = [\"marvin\", \"lab/*\"]\n",
    )
    .unwrap();
    let o = marvin(
        std::path::Path::new("/"),
        &[
            "plugins",
            "--config",
            config.to_str().unwrap(),
            "--plugins-dir",
            s.plugins.to_str().unwrap(),
        ],
    );
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("hostile 0.6.6"), "{out}");
    assert!(out.contains("docker (granted: marvin, lab/*)"), "{out}");
    assert!(
        out.contains(
            "files (requested, not granted: add `files` in [plugins.hostile.grants] (files))"
        ),
        "{out}"
    );

    let o = marvin(
        s.path(),
        &["plugins", "--json", "--config", config.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let caps = &v["plugins"][0]["capabilities"];
    assert_eq!(caps[0]["name"], "docker");
    assert_eq!(caps[0]["effective"], true);
    assert_eq!(caps[1]["name"], "files");
    assert_eq!(caps[1]["effective"], false);
    assert_eq!(v["errors"], serde_json::json!([]));
}

#[test]
fn run_uses_manager_toml_from_the_working_directory() {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    std::fs::write(
        s.path().join("manager.toml"),
        "[entities.abc]\nkind = \"worker\"\nprogram = \"workers:consumer\"\n",
    )
    .unwrap();
    let o = marvin(
        s.path(),
        &[
            "run",
            "--entity",
            "abc",
            "--action",
            "restart",
            "--timeout",
            "3",
            "--args",
            "{\"a\":1}",
            "--correlation-id",
            "c-42",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["correlationId"], "c-42");
    assert_eq!(r["entityType"], "worker");
    assert_eq!(r["entityId"], "abc");
    assert_eq!(r["action"], "restart");
    assert_eq!(r["success"], true);
    let seen: serde_json::Value = serde_json::from_str(r["output"].as_str().unwrap()).unwrap();
    assert_eq!(seen["target"]["program"], "workers:consumer");
    assert_eq!(seen["timeout_ms"], 3000);
    assert_eq!(seen["args"]["a"], 1);
    assert_eq!(r["metadata"]["changed"], false, "echo makes no host call");

    // --dry-run: the plugin sees `args.dry_run`, the answer says it was a dry run.
    let o = marvin(
        s.path(),
        &[
            "run",
            "--entity",
            "abc",
            "--action",
            "restart",
            "--args",
            "{\"a\":1}",
            "--dry-run",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let seen: serde_json::Value = serde_json::from_str(r["output"].as_str().unwrap()).unwrap();
    assert_eq!(seen["args"], serde_json::json!({"a": 1, "dry_run": true}));
    assert_eq!(r["metadata"]["dry_run"], true, "{r}");
    assert_eq!(r["metadata"]["plan"], serde_json::json!([]), "{r}");
    assert_eq!(r["metadata"]["changed"], false, "{r}");

    // Failure: the response still prints, and the exit code says so.
    let o = marvin(s.path(), &["run", "--entity", "nope", "--action", "start"]);
    assert_eq!(o.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = r["error"].as_str().unwrap();
    assert!(
        e.starts_with("unknown entity 'nope' (not in the config"),
        "{e}"
    );
    assert_eq!(r["success"], false);
    assert!(r["correlationId"].as_str().unwrap().len() == 36);
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    let s = Setup::new(&[]);
    std::fs::write(s.path().join("manager.toml"), "[plugins.x]\ngrants = 3\n").unwrap();
    let o = marvin(s.path(), &["plugins"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("invalid config file manager.toml"), "{err}");
    let o = marvin(s.path(), &["plugins", "--config", "missing.toml"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot read config file missing.toml"),
        "{err}"
    );
}

#[test]
fn plugin_test_passes_fails_with_differences_and_takes_core_requests() {
    let s = Setup::new(&[]);
    let script = s.path().join("stop.toml");
    std::fs::write(
        &script,
        r#"
[entity]
kind = "container"
project = "marvin"
service = "web"

[[calls]]
call = "docker.list-containers"
args = { project = "marvin", service = "web" }
ok = [{ id = "c1", name = "marvin_web_1", project = "marvin", service = "web" }]

[[calls]]
call = "docker.stop"
args = { id = "c1" }

[[calls]]
call = "docker.list-containers"
ok = [{ id = "c1", name = "marvin_web_1", project = "marvin", service = "web", status = "exited" }]

[expect]
success = true
metadata = { already = false }
"#,
    )
    .unwrap();
    // The request as Core sends it, in its own file.
    let request = s.path().join("request.json");
    std::fs::write(
        &request,
        r#"{"containerId": "web", "correlationId": "c-1", "action": "stop", "args": {}, "timeout": 10}"#,
    )
    .unwrap();
    let args = |script: &Path| {
        vec![
            "plugin".to_owned(),
            "test".into(),
            test_programs::DOCKER_COMPOSE.into(),
            "--request".into(),
            request.display().to_string(),
            "--script".into(),
            script.display().to_string(),
        ]
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        marvin(s.path(), &refs)
    };
    let o = run(args(&script));
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("2. docker.stop {\"id\":\"c1\",\"timeout_secs\":9} -> ok"),
        "{out}"
    );
    assert!(out.ends_with("PASS\n"), "{out}");

    // A plugin that does something else than the script says: exit 1, the differences.
    let text = std::fs::read_to_string(&script).unwrap();
    let wrong = s.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        text.replace("call = \"docker.stop\"", "call = \"docker.restart\"")
            .replace("already = false", "already = true"),
    )
    .unwrap();
    let o = run(args(&wrong));
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("call 2: expected docker.restart {\"id\":\"c1\"}, got docker.stop {\"id\":\"c1\",\"timeout_secs\":9}"),
        "{out}"
    );
    assert!(
        out.contains("response metadata.already: expected true, got false")
            || out.contains("response success: expected true, got false"),
        "{out}"
    );
    assert!(out.ends_with("FAIL\n"), "{out}");

    // A bad script is a clear error.
    let bad = s.path().join("bad.toml");
    std::fs::write(&bad, "[[calls]]\ncal = 1\n").unwrap();
    let o = run(args(&bad));
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown field `cal`"), "{err}");

    // A shipped script with fixtures next to it (`{script_dir}`), run from elsewhere.
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugins/docker-compose/tests/build-env.toml"
    );
    let o = run(vec![
        "plugin".into(),
        "test".into(),
        test_programs::DOCKER_COMPOSE.into(),
        "--script".into(),
        shipped.into(),
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.ends_with("PASS\n"), "{out}");
}
