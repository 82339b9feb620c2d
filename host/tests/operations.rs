//! Running it in production, as processes: no configured secret in any output; a queue that
//! is not there yet waited for (and said so) with `/readyz` 503 until it is; `/metrics`
//! counting what was answered; systemd's notifications (READY, RELOADING, WATCHDOG,
//! STOPPING) on a real notify socket; SIGHUP reloading `manager.toml` (a bad file kept out);
//! JSON logs carrying the correlation id; `--failure-limit` and `--memory-limit`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::db::{Db, TempPg, TestDb};
use common::supervisor::Supervisord;
use common::{KillOnDrop, Setup, guests, manager_command, wait_exit};

const DSN_SECRET: &str = "PgS3cret-dsn-4711";
const SV_SECRET: &str = "SvS3cret-4712";
const TOKEN: &str = "TokS3cret-4713";
const SECRETS: [&str; 3] = [DSN_SECRET, SV_SECRET, TOKEN];

/// Fails naming the output a secret leaked into.
fn assert_clean(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} holds the secret {s}:\n{text}");
    }
}

/// The binary run to completion in `cwd` on `dsn`.
fn marvin(cwd: &Path, dsn: &str, args: &[&str]) -> Output {
    let log = cwd.join("commands.log");
    manager_command(cwd, dsn, &log)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("API_TOKEN", TOKEN)
        .env("TAG", "v1")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn serve(cwd: &Path, dsn: &str, args: &[&str]) -> Child {
    manager_command(cwd, dsn, &cwd.join("serve.log"))
        .arg("serve")
        .args(args)
        .env("API_TOKEN", TOKEN)
        .env("TAG", "v1")
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

/// Waits until `log` holds `needle`.
fn wait_log(log: &Path, needle: &str, limit: Duration) -> String {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            t.elapsed() < limit,
            "'{needle}' not logged within {limit:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    common::http_get(port, path)
}

fn wait_status(port: u16, path: &str, want: u16, limit: Duration) -> String {
    common::wait_http(port, path, want, limit, &String::new)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_configured_secret_leaves_in_any_output() {
    let db = TestDb::new(Db::Pg).await;
    // The test server trusts local connections: the password is accepted and ignored, so it
    // is a real DSN with a real secret.
    let dsn = db
        .dsn("")
        .replacen("postgres@", &format!("postgres:{DSN_SECRET}@"), 1);
    let port = free_port();
    let sv = Supervisord::start_with(
        "[program:web]\ncommand=/bin/sleep 3600\nstartsecs=0\nstopwaitsecs=5\n",
        &format!(
            "[inet_http_server]\nport=127.0.0.1:{port}\nusername=marvin\npassword={SV_SECRET}\n"
        ),
    );
    let s = Setup::new(&[(guests::HOSTILE, "hostile.wasm")]);
    let config = |sv_port: u16| {
        format!(
            "[supervisor]\nurl = \"http://marvin:{SV_SECRET}@127.0.0.1:{sv_port}\"\n\n\
             [plugins.supervisor.grants.supervisor]\nprograms = [\"web\"]\n\n\
             [plugins.hostile.grants]\nenv = [\"API_TOKEN\", \"TAG\"]\n\n\
             [entities.web]\nkind = \"worker\"\nprogram = \"web\"\n\n\
             [entities.box]\nkind = \"container\"\nproject = \"marvin\"\nservice = \"box\"\n"
        )
    };
    std::fs::write(s.path().join("manager.toml"), config(port)).unwrap();
    let log = s.path().join("serve.log");
    let mut child = serve(s.path(), &dsn, &[]);
    let dispatch = |entity: &str, action: &str| {
        marvin(
            s.path(),
            &dsn,
            &["dispatch", "--entity", entity, "--action", action, "--wait"],
        )
    };

    // Credentials in the URL are sent as basic auth: the stop is done.
    let o = dispatch("web", "stop");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(sv.state("web"), "STOPPED");
    assert_clean("dispatch", &text(&o));

    // A plugin that puts every variable it sees in its output, error, metadata and log.
    let o = dispatch("box", "env_values");
    let out = text(&o);
    assert!(out.contains("API_TOKEN=***"), "{out}");
    assert!(
        out.contains("TAG=v1"),
        "a value that is no secret stays: {out}"
    );
    assert_clean("the plugin's answer", &out);

    // supervisord away: the answer names it without the credentials.
    std::fs::write(s.path().join("manager.toml"), config(1)).unwrap();
    signal(&child, rustix::process::Signal::HUP);
    wait_log(&log, "configuration reloaded", Duration::from_secs(30));
    let o = dispatch("web", "start");
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("http://127.0.0.1:1"), "{out}");
    assert_clean("the unreachable supervisord's answer", &out);

    // The operator's commands.
    for args in [
        &["plugins"][..],
        &["plugins", "--json"],
        &["entities"],
        &["actions"],
        &["actions", "--json", "--failed"],
    ] {
        let o = marvin(s.path(), &dsn, args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        assert_clean(&format!("{args:?}"), &text(&o));
    }
    // Errors: a DSN with a password (in the URL, in an option) on a closed port, a typo
    // beside a password, a config file that does not parse next to one.
    for bad in [
        format!("postgres://postgres:{DSN_SECRET}@127.0.0.1:1/x"),
        format!("postgres://postgres@127.0.0.1:1/x?password={DSN_SECRET}"),
        format!("postgres://postgres:{DSN_SECRET}@127.0.0.1:1/x?queue_nmae=x"),
        format!("doctrine://default?password={DSN_SECRET}"),
    ] {
        let o = marvin(s.path(), &bad, &["setup"]);
        assert!(!o.status.success());
        let out = text(&o);
        assert!(out.starts_with("error: "), "{out}");
        assert_clean("setup's error", &out);
    }
    let bad = s.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("[supervisor]\nurl = \"http://127.0.0.1:9001\"\npasword = \"{SV_SECRET}\"\n"),
    )
    .unwrap();
    let o = marvin(
        s.path(),
        &dsn,
        &["--config", bad.to_str().unwrap(), "plugins"],
    );
    let out = text(&o);
    assert!(out.contains("line 3"), "{out}");
    assert_clean("a config error", &out);

    signal(&child, rustix::process::Signal::TERM);
    wait_exit(&mut child, Duration::from_secs(30), &log);
    // What Core reads, and what the ledger keeps.
    let rows = db
        .query(&format!("SELECT body, headers FROM {}", db.table()))
        .await;
    assert!(!rows.is_empty());
    assert_clean("the answers' rows", &format!("{rows:?}"));
    let ledger = db
        .query(&format!(
            "SELECT correlation_id, entity_id, action, plugin, error, response FROM {}",
            db.table()
                .replace("messenger_messages", "marvin_manager_ledger")
        ))
        .await;
    assert!(ledger.len() >= 3, "{ledger:?}");
    assert_clean("the ledger", &format!("{ledger:?}"));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("API_TOKEN=***"), "{logged}");
    assert_clean("serve's log", &logged);
    assert_clean(
        "the commands' log",
        &std::fs::read_to_string(s.path().join("commands.log")).unwrap_or_default(),
    );
}

/// What the service told its notify socket, datagram by datagram.
struct NotifySocket {
    path: std::path::PathBuf,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                into.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        Self { path, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn wait_for(&self, needle: &str, limit: Duration) {
        let t = Instant::now();
        while !self.seen().iter().any(|m| m.contains(needle)) {
            assert!(
                t.elapsed() < limit,
                "{needle} not notified within {limit:?}: {:?}",
                self.seen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

const ECHO_CONFIG: &str = "[entities.e1]\nkind = \"container\"\nproject = \"p\"\nservice = \"s\"\n";

/// PostgreSQL not there yet: `serve` says so and retries, `/readyz` is 503 (and systemd is not
/// told READY) until it is; then it serves, `/metrics` counts the answer, SIGHUP is a
/// RELOADING then READY, the watchdog is fed, SIGTERM says STOPPING.
#[test]
fn serve_waits_for_the_queue_and_tells_systemd_and_prometheus() {
    let pg = TempPg::new();
    pg.stop();
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let port = free_port();
    std::fs::write(
        s.path().join("manager.toml"),
        format!("[http]\nlisten = \"127.0.0.1:{port}\"\n\n{ECHO_CONFIG}"),
    )
    .unwrap();
    let dsn = format!("{}?queue_name=q", pg.url());
    let notify = NotifySocket::bind(s.path());
    let log = s.path().join("serve.log");
    let mut child = manager_command(s.path(), &dsn, &log)
        .arg("serve")
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000")
        .spawn()
        .unwrap();
    // Alive, not ready, and saying why, at once (no pool timeout).
    assert_eq!(
        wait_status(port, "/healthz", 200, Duration::from_secs(30)),
        "ok\n"
    );
    let t = Instant::now();
    loop {
        let (status, why) = get(port, "/readyz").unwrap();
        assert_eq!(status, 503, "{why}");
        if why.contains("Connection refused") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{why}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let logged = wait_log(
        &log,
        "the queue is unreachable: waiting for it",
        Duration::from_secs(5),
    );
    assert!(logged.contains("retry_in_secs"), "{logged}");
    notify.wait_for("WATCHDOG=1", Duration::from_secs(5));
    assert!(
        !notify.seen().iter().any(|m| m.contains("READY=1")),
        "READY before the queue: {:?}",
        notify.seen()
    );

    pg.start();
    wait_status(port, "/readyz", 200, Duration::from_secs(60));
    notify.wait_for("READY=1", Duration::from_secs(5));
    let o = marvin(
        s.path(),
        &dsn,
        &["dispatch", "--entity", "e1", "--action", "start", "--wait"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let metrics = wait_status(port, "/metrics", 200, Duration::from_secs(5));
    assert!(
        metrics.contains(
            "marvin_manager_requests_answered_total{plugin=\"echo\",action=\"start\",outcome=\"success\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "marvin_manager_request_duration_seconds_count{plugin=\"echo\",action=\"start\"} 1"
        ),
        "{metrics}"
    );
    // echo makes no host call: nothing changed.
    assert!(
        metrics.contains(
            "marvin_manager_request_effects_total{plugin=\"echo\",action=\"start\",effect=\"unchanged\"} 1"
        ),
        "{metrics}"
    );
    // A dry run through the queue: planned, counted as such, listed as such.
    let o = marvin(
        s.path(),
        &dsn,
        &[
            "dispatch",
            "--entity",
            "e1",
            "--action",
            "start",
            "--wait",
            "--dry-run",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let answer = text(&o);
    assert!(answer.contains("\"dry_run\": true"), "{answer}");
    assert!(answer.contains("\"plan\": []"), "{answer}");
    let metrics = wait_status(port, "/metrics", 200, Duration::from_secs(5));
    assert!(
        metrics.contains(
            "marvin_manager_request_effects_total{plugin=\"echo\",action=\"start\",effect=\"dry_run\"} 1"
        ),
        "{metrics}"
    );
    let o = marvin(s.path(), &dsn, &["actions"]);
    let listed = text(&o);
    assert!(listed.contains("#dry-run"), "{listed}");
    assert!(listed.contains("ok dry run: nothing to do"), "{listed}");
    assert!(listed.contains("ok unchanged"), "{listed}");
    // echo claims start, stop and restart: the built-in docker-compose keeps the rest, and
    // the override is on /metrics and in the log (with the plugin's name and version).
    assert!(
        metrics.contains(
            "marvin_manager_plugin_overrides{plugin=\"echo\",builtin=\"docker-compose\",kind=\"container\",action=\"start\"} 1"
        ),
        "{metrics}"
    );
    let logged = wait_log(
        &log,
        "overrides the built-in 'docker-compose' for (container, start)",
        Duration::from_secs(5),
    );
    assert!(logged.contains("loaded 'echo' 1.2.3 from"), "{logged}");
    assert!(
        metrics.contains("marvin_manager_queue_depth{queue=\"q\"} 2"),
        "the two answers (the start, its dry run) wait for Core on the same queue: {metrics}"
    );
    assert!(metrics.contains("marvin_manager_ready 1"), "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    // Every metric the shipped Grafana dashboard queries is one this process exposes.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/grafana-dashboard.json"
    ))
    .unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut queried = 0;
    for (at, _) in dashboard.match_indices("marvin_manager_") {
        let name: String = dashboard[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {name}, which /metrics does not expose:\n{metrics}"
        );
        queried += 1;
    }
    assert!(queried >= 12, "{queried}");

    signal(&child, rustix::process::Signal::HUP);
    notify.wait_for("RELOADING=1", Duration::from_secs(10));
    wait_log(&log, "configuration reloaded", Duration::from_secs(30));
    signal(&child, rustix::process::Signal::TERM);
    assert!(wait_exit(&mut child, Duration::from_secs(30), &log).success());
    notify.wait_for("STOPPING=1", Duration::from_secs(5));
    let seen = notify.seen();
    let ready = seen.iter().filter(|m| m.contains("READY=1")).count();
    assert_eq!(ready, 2, "once serving, once after the reload: {seen:?}");
}

/// SIGHUP applies a new `manager.toml` (a new entity) and keeps the old one when the new file
/// is bad; JSON log lines carry the request's correlation id.
#[test]
fn sighup_reloads_and_json_logs_carry_the_correlation_id() {
    let s = Setup::new(&[
        (guests::ECHO, "echo.wasm"),
        (guests::COUNTER, "counter.wasm"),
    ]);
    let db = s.path().join("q.db");
    let dsn = format!("sqlite://{}?queue_name=q", db.display());
    let config = s.path().join("manager.toml");
    std::fs::write(&config, ECHO_CONFIG).unwrap();
    let log = s.path().join("serve.log");
    let mut child = serve(s.path(), &dsn, &["--log-format", "json"]);
    // The client reads a file of its own: serve's is made bad below.
    let client = s.path().join("client.toml");
    std::fs::write(&client, "").unwrap();
    let dispatch = |entity: &str, id: &str| {
        marvin(
            s.path(),
            &dsn,
            &[
                "--config",
                client.to_str().unwrap(),
                "dispatch",
                "--entity",
                entity,
                "--action",
                "start",
                "--correlation-id",
                id,
                "--wait",
            ],
        )
    };
    assert!(dispatch("e1", "corr-1").status.success());
    // A second entity, added by a reload, while a slow request is in flight: it finishes on
    // the settings it started with and is answered once.
    assert!(!dispatch("e2", "corr-2").status.success());
    let slow = std::thread::scope(|scope| {
        let slow = scope.spawn(|| {
            marvin(
                s.path(),
                &dsn,
                &[
                    "--config",
                    client.to_str().unwrap(),
                    "dispatch",
                    "--entity",
                    "e1",
                    "--action",
                    "count",
                    "--args",
                    r#"{"ms": 3000}"#,
                    "--correlation-id",
                    "corr-slow",
                    "--wait",
                ],
            )
        });
        wait_log(&log, "effect[corr-slow]", Duration::from_secs(30));
        std::fs::write(
            &config,
            format!(
                "{ECHO_CONFIG}[entities.e2]\nkind = \"container\"\nproject = \"p\"\nservice = \"t\"\n"
            ),
        )
        .unwrap();
        signal(&child, rustix::process::Signal::HUP);
        wait_log(&log, "configuration reloaded", Duration::from_secs(30));
        slow.join().unwrap()
    });
    assert!(slow.status.success(), "{}", text(&slow));
    assert!(text(&slow).contains("counted"), "{}", text(&slow));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged.matches("effect[corr-slow]").count(), 1, "{logged}");
    // Started before the reload, done after it.
    let line_of = |pred: &dyn Fn(&str) -> bool| logged.lines().position(pred).unwrap();
    let started = line_of(&|l| l.contains("effect[corr-slow]"));
    let reloaded = line_of(&|l| l.contains("configuration reloaded"));
    let done = line_of(&|l| l.contains("corr-slow") && l.contains("action done"));
    assert!(started < reloaded && reloaded < done, "{logged}");
    let o = dispatch("e2", "corr-3");
    assert!(o.status.success(), "{}", text(&o));
    // A bad file: reported, the settings in force kept.
    std::fs::write(&config, "[entities.e3\n").unwrap();
    signal(&child, rustix::process::Signal::HUP);
    wait_log(&log, "configuration not reloaded", Duration::from_secs(30));
    let o = dispatch("e2", "corr-4");
    assert!(o.status.success(), "{}", text(&o));
    signal(&child, rustix::process::Signal::TERM);
    assert!(wait_exit(&mut child, Duration::from_secs(30), &log).success());

    let logged = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = logged
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for id in ["corr-1", "corr-3", "corr-4"] {
        let of_request: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["span"]["correlation_id"] == id)
            .collect();
        let messages: Vec<&str> = of_request
            .iter()
            .filter_map(|l| l["message"].as_str())
            .collect();
        assert!(
            messages.contains(&"action done"),
            "{id}: {messages:?}\n{logged}"
        );
        // The plugin's own log line, too.
        assert!(
            messages.iter().any(|m| m.contains("echo start on e")),
            "{id}: {messages:?}\n{logged}"
        );
    }
    let reasons: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["message"] == "configuration not reloaded: keeping the one in force")
        .collect();
    assert_eq!(reasons.len(), 1, "{logged}");
    assert!(
        reasons[0]["cause"].as_str().unwrap().contains("line 1"),
        "{logged}"
    );
}

/// A relative SQLite path in `manager.toml` is the file's neighbour, wherever the command
/// runs; `--failure-limit` and `--memory-limit` stop `serve` as `messenger:consume`'s do.
#[test]
fn sqlite_paths_and_the_limits_of_serve() {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    let etc = s.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(
        etc.join("manager.toml"),
        format!("[transport]\ndsn = \"sqlite://rel.db?queue_name=q\"\n\n{ECHO_CONFIG}"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_marvin-manager"));
        c.current_dir(s.path())
            .env("MARVIN_CONFIG", etc.join("manager.toml"))
            .env("MARVIN_CACHE_DIR", s.path().join("cache"))
            .env_remove("MARVIN_DSN")
            .env_remove("RUST_LOG")
            .args(args);
        c
    };
    let o = run(&["setup"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(etc.join("rel.db").exists());
    assert!(!s.path().join("rel.db").exists());

    for id in ["f1", "f2", "f3"] {
        let o = run(&[
            "dispatch",
            "--entity",
            "nope",
            "--action",
            "start",
            "--correlation-id",
            id,
        ])
        .output()
        .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    let log = s.path().join("serve.log");
    let mut child = run(&["serve", "--failure-limit", "2", "--concurrency", "1"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(wait_exit(&mut child, Duration::from_secs(30), &log).success());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("failure limit reached"), "{logged}");
    let o = run(&["actions", "--json"]).output().unwrap();
    let answered = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["actions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(answered, 2, "stopped after two failures: {}", text(&o));

    let mut child = run(&["serve", "--memory-limit", "1M"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(wait_exit(&mut child, Duration::from_secs(30), &log).success());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("memory limit reached"), "{logged}");
}

/// A reader that goes away (`| grep -q`, `| head`) is no error: the command neither panics
/// nor changes its exit code, `dispatch --wait` included (it still says the action's outcome).
#[test]
fn a_closed_stdout_is_no_error() {
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    std::fs::write(s.path().join("manager.toml"), ECHO_CONFIG).unwrap();
    let dsn = format!("sqlite://{}", s.path().join("q.db").display());
    let log = s.path().join("commands.log");
    // stdout is a pipe whose reader is closed before the command starts: every write fails.
    let closed = |args: &[&str]| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = manager_command(s.path(), &dsn, &log)
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        (o.status, err)
    };
    let serve = KillOnDrop(
        manager_command(s.path(), &dsn, &log)
            .arg("serve")
            .spawn()
            .unwrap(),
    );
    let (status, err) = closed(&["dispatch", "--entity", "e1", "--action", "start", "--wait"]);
    assert!(status.success(), "{status}: {err}");
    let (status, err) = closed(&[
        "dispatch", "--entity", "nope", "--action", "start", "--wait",
    ]);
    assert_eq!(
        status.code(),
        Some(1),
        "a failed action stays a failure: {err}"
    );
    drop(serve);
    for args in [
        &["actions"][..],
        &["actions", "--json"],
        &["plugins"],
        &["plugin", "wit"],
        &["completions", "bash"],
        &["man"],
    ] {
        let (status, err) = closed(args);
        assert!(status.success(), "{args:?}: {status}: {err}");
    }
    // Both answers are there to read.
    let o = marvin(s.path(), &dsn, &["actions", "--json"]);
    let answered = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["actions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(answered, 2, "{}", text(&o));
}

on_both_databases!(the_messenger_commands_work_on_parked_rows);

/// `failed show|retry|remove`, `stats` and `prune`, as an operator runs them, on rows the
/// manager parked: each says what it did and the table shows it.
async fn the_messenger_commands_work_on_parked_rows<T, F>(db: &TestDb, transport: F)
where
    T: marvin_manager::transport::Queue + marvin_manager::transport::Records,
    F: AsyncFn(&str) -> T,
{
    use common::corpus::{Expect, cases};
    let s = Setup::new(&[(guests::ECHO, "echo.wasm")]);
    std::fs::write(s.path().join("manager.toml"), ECHO_CONFIG).unwrap();
    let dsn = db.dsn("");
    let t = transport("").await;
    t.setup().await.unwrap();
    let poison: Vec<_> = cases()
        .into_iter()
        .filter(|c| matches!(c.expect, Expect::Parked(_)))
        .take(3)
        .collect();
    assert_eq!(poison.len(), 3);
    for c in &poison {
        t.send("requests", c.row.clone()).await.unwrap();
    }
    common::db::send(
        &t,
        &common::db::request("good-1", "e1", "start"),
        marvin_manager::codec::Format::Php,
    )
    .await;
    let run = |args: &[&str]| marvin(s.path(), &dsn, args);
    let json = |args: &[&str]| -> serde_json::Value {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
    };

    let stats = json(&["stats", "--json"]);
    let requests = stats["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "requests")
        .unwrap();
    assert_eq!(requests["waiting"], 4, "{stats}");

    let o = run(&["serve", "--limit", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    let parked = json(&["failed", "show", "--json"]);
    let parked = parked.as_array().unwrap();
    assert_eq!(parked.len(), 3, "{parked:?}");
    for (row, case) in parked.iter().zip(&poison) {
        let Expect::Parked(why) = case.expect else {
            unreachable!()
        };
        assert!(row["reason"].as_str().unwrap().contains(why), "{row}");
        assert_eq!(row["original_queue"], "requests");
    }
    let ids: Vec<i64> = parked.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    let one = run(&["failed", "show", &ids[0].to_string()]);
    assert!(
        text(&one).contains("from queue:     requests"),
        "{}",
        text(&one)
    );
    let stats = json(&["stats", "--json"]);
    assert_eq!(stats["answered_last_minute"], 1, "{stats}");
    let failed_queue = stats["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "failed")
        .unwrap();
    assert_eq!(failed_queue["waiting"], 3, "{stats}");

    // Retry puts it back where it came from: taken again (and, still poison, parked again).
    let o = run(&["failed", "retry", &ids[0].to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let queue_of = |rows: Vec<Vec<Option<String>>>| rows[0][0].clone().unwrap();
    let sql = format!(
        "SELECT queue_name FROM {} WHERE id = {}",
        db.table(),
        ids[0]
    );
    assert_eq!(queue_of(db.query(&sql).await), "requests");
    assert_eq!(
        json(&["failed", "show", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let o = run(&["serve", "--limit", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(queue_of(db.query(&sql).await), "failed");
    assert_eq!(
        json(&["failed", "show", "--json"])
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // A row that is not parked is not retried.
    let o = run(&["failed", "retry", "999999"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("0 of 1"), "{}", text(&o));

    let o = run(&["failed", "remove", &ids[1].to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let sql = format!(
        "SELECT CAST(count(*) AS TEXT) FROM {} WHERE queue_name = 'failed'",
        db.table()
    );
    assert_eq!(db.query(&sql).await[0][0].as_deref(), Some("2"));
    let o = run(&["failed", "remove", "--all"]);
    assert!(text(&o).contains("2 of 2"), "{}", text(&o));
    assert_eq!(db.query(&sql).await[0][0].as_deref(), Some("0"));

    // Prune: what is older than the age kept goes.
    assert_eq!(
        json(&["actions", "--json"])["actions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let o = run(&["prune", "--keep", "1h"]);
    assert!(text(&o).contains("pruned 0 ledger row(s)"), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(1100));
    let o = run(&["prune", "--keep", "1s"]);
    assert!(text(&o).contains("pruned 1 ledger row(s)"), "{}", text(&o));
    assert_eq!(
        json(&["actions", "--json"])["actions"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

/// Core's database stays Core's: with the `schema_filter` of `examples/doctrine.yaml`, real
/// Doctrine DBAL's schema comparison (what `doctrine:schema:update` and `migrations:diff`
/// run) against a database the manager set up plans no DROP of the manager's tables; without
/// it, it would drop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctrine_schema_tools_leave_the_managers_tables_alone() {
    let php = std::env::var("MARVIN_TEST_PHP").expect("MARVIN_TEST_PHP (run `. scripts/services`)");
    let base = common::db::pg_base();
    let name = format!("marvin_doctrine_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    let url = format!("{server}/{name}");
    let s = Setup::new(&[]);
    std::fs::write(s.path().join("manager.toml"), "").unwrap();
    let o = marvin(
        s.path(),
        &format!("{url}?queue_name=manager_requests"),
        &["setup"],
    );
    assert!(o.status.success(), "{}", text(&o));

    let doctrine = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/doctrine.yaml"
    ))
    .unwrap();
    // `schema_filter: '~^(?!marvin_manager_)~'` as written for Core.
    let filter = doctrine
        .lines()
        .find_map(|l| l.trim().strip_prefix("schema_filter:"))
        .map(|v| v.trim().trim_matches('\'').to_owned())
        .expect("examples/doctrine.yaml sets schema_filter");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/php/schema_diff.php");
    let diff = |filter: Option<&str>| {
        let mut c = std::process::Command::new(&php);
        c.args([
            script,
            url.replace("postgres://", "pgsql://").as_str(),
            "messenger_messages",
        ]);
        if let Some(f) = filter {
            c.arg(f);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let unfiltered = diff(None);
    assert!(
        unfiltered.contains("DROP TABLE marvin_manager_ledger"),
        "without the filter Doctrine drops the manager's tables: {unfiltered}"
    );
    let filtered = diff(Some(&filter));
    assert!(
        !filtered.contains("marvin_manager_"),
        "with {filter}: {filtered}"
    );
    assert!(!filtered.contains("DROP"), "with {filter}: {filtered}");
    admin.close().await;
}
