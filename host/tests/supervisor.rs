//! The supervisor capability and plugin on real supervisord instances, each with its own
//! config and socket. Effects are checked with `supervisorctl`, never with the plugin's word;
//! `reread` and `update` are compared with what `supervisorctl` does on an identical second
//! supervisord.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::supervisor::Supervisord;
use common::{Setup, request};
use marvin_manager::message::ManagerResponse;
use marvin_manager::service::Manager;
use serde_json::json;

const PROGRAMS: &str = "\
[program:web]
command=/bin/sleep 3600
startsecs=0
stopwaitsecs=5

[group:workers]
programs=a,b

[program:a]
command=/bin/sleep 3601
startsecs=0

[program:b]
command=/bin/sleep 3602
startsecs=0

[program:broken]
command=/nonexistent/binary
autostart=false
startsecs=0
startretries=0

[program:crash]
command=/bin/sh -c \"echo about to crash; exit 3\"
autostart=false
startsecs=1
startretries=0

[program:secret]
command=/bin/sleep 3603
startsecs=0
";

/// The same, edited: `web` changed, `workers` gone, `fresh` new.
const EDITED: &str = "\
[program:web]
command=/bin/sleep 3700
startsecs=0

[program:broken]
command=/nonexistent/binary
autostart=false
startsecs=0
startretries=0

[program:secret]
command=/bin/sleep 3603
startsecs=0

[program:fresh]
command=/bin/sleep 3800
startsecs=0
";

const ENTITIES: &str = r#"
[entities.web]
kind = "worker"
program = "web"
[entities.workers]
kind = "worker"
program = "workers"
[entities.worker-a]
kind = "worker"
program = "workers:a"
[entities.all-workers]
kind = "worker"
program = "workers:*"
[entities.broken]
kind = "worker"
program = "broken"
[entities.crash]
kind = "worker"
program = "crash"
[entities.secret]
kind = "worker"
program = "secret"
[entities.nope]
kind = "worker"
program = "nope"
"#;

async fn manager(setup: &Setup, s: &Supervisord, config: bool) -> Manager {
    let toml = format!(
        "[plugins.supervisor.grants.supervisor]\nprograms = [\"web\", \"workers\", \"broken\", \"crash\", \"fresh\", \"nope\"]\nconfig = {config}\n{ENTITIES}"
    );
    setup.manager_with_supervisor(&toml, &s.url()).await
}

fn setup() -> Setup {
    Setup::new(&[(common::guests::SUPERVISOR, "supervisor.wasm")])
}

async fn run(m: &Manager, entity: &str, action: &str) -> ManagerResponse {
    m.execute(&request(entity, action, json!({}), 20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_restart_act_as_supervisorctl() {
    let s = Supervisord::start(PROGRAMS);
    let setup = setup();
    let m = manager(&setup, &s, false).await;
    assert_eq!(s.state("web"), "RUNNING");

    let r = run(&m, "web", "stop").await;
    assert!(r.success, "{r:?}");
    assert_eq!(s.state("web"), "STOPPED");
    assert_eq!(r.metadata["already"], false);
    assert_eq!(r.metadata["processes"][0]["state"], "STOPPED");
    let r = run(&m, "web", "stop").await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["already"], true);
    assert!(r.output.unwrap().contains("already stopped"));

    let r = run(&m, "web", "start").await;
    assert!(r.success, "{r:?}");
    assert_eq!(s.state("web"), "RUNNING");
    let pid = s.pid("web");
    let r = run(&m, "web", "start").await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["already"], true);
    assert!(r.output.unwrap().contains("already running"));
    assert_eq!(s.pid("web"), pid, "an idempotent start touches nothing");

    let r = run(&m, "web", "restart").await;
    assert!(r.success, "{r:?}");
    assert_eq!(s.state("web"), "RUNNING");
    assert_ne!(s.pid("web"), pid, "restarted: a new process");
    assert_eq!(
        r.output.as_deref(),
        Some("web:web: stopped\nweb:web: started")
    );

    // Groups and group:name.
    let r = run(&m, "workers", "stop").await;
    assert!(r.success, "{r:?}");
    assert_eq!(s.state("workers:a"), "STOPPED");
    assert_eq!(s.state("workers:b"), "STOPPED");
    assert_eq!(r.metadata["processes"].as_array().unwrap().len(), 2);
    let r = run(&m, "worker-a", "start").await;
    assert!(r.success, "{r:?}");
    assert_eq!(s.state("workers:a"), "RUNNING");
    assert_eq!(s.state("workers:b"), "STOPPED");
    let a = s.pid("workers:a");
    // Restart of a group with one process running: both run after, a with a new pid.
    let r = run(&m, "all-workers", "restart").await;
    assert!(r.success, "{r:?}");
    assert_eq!(s.state("workers:a"), "RUNNING");
    assert_eq!(s.state("workers:b"), "RUNNING");
    assert_ne!(s.pid("workers:a"), a);
    assert_eq!(s.state("web"), "RUNNING", "other programs untouched");
}

/// Output and `supervisorctl status` minus pids and uptimes.
fn states(s: &Supervisord) -> Vec<(String, String)> {
    s.status().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reread_and_update_do_what_supervisorctl_does() {
    let ours = Supervisord::start(PROGRAMS);
    let theirs = Supervisord::start(PROGRAMS);
    let setup = setup();
    let m = manager(&setup, &ours, true).await;
    assert_eq!(states(&ours), states(&theirs));
    // Both stop one worker first, so update meets a mix of states.
    ours.ctl(&["stop", "workers:b"]);
    theirs.ctl(&["stop", "workers:b"]);

    let r = run(&m, "supervisor", "reread").await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.output.as_deref(), Some("No config updates to processes"));
    assert_eq!(
        theirs.ctl(&["reread"]).trim(),
        "No config updates to processes"
    );

    ours.set_programs(EDITED);
    theirs.set_programs(EDITED);
    let r = run(&m, "supervisor", "reread").await;
    assert!(r.success, "{r:?}");
    let expected = theirs.ctl(&["reread"]);
    assert_eq!(r.output.as_deref().unwrap(), expected.trim());
    assert_eq!(
        r.metadata["groups"],
        json!({"available": ["fresh"], "changed": ["web"], "disappeared": ["crash", "workers"]})
    );
    // reread reads: it changed nothing.
    assert_eq!(r.metadata["changed"], json!(false), "{r:?}");
    // reread changes nothing running.
    assert_eq!(states(&ours), states(&theirs));

    // A dry run of the update: the plan, and nothing touched (states and pids alike).
    let snapshot = |s: &Supervisord| -> Vec<String> {
        s.ctl(&["status"])
            .lines()
            .map(|l| l.split(", uptime").next().unwrap_or(l).to_owned())
            .collect()
    };
    let before = snapshot(&ours);
    let r = m
        .execute(&request(
            "supervisor",
            "update",
            json!({"dry_run": true}),
            20,
        ))
        .await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["dry_run"], json!(true), "{r:?}");
    assert_eq!(r.metadata["changed"], json!(false), "{r:?}");
    assert_eq!(
        r.metadata["plan"],
        json!([
            "stop group crash",
            "remove group crash",
            "stop group workers",
            "remove group workers",
            "stop group web",
            "remove group web",
            "add group web",
            "add group fresh"
        ]),
        "{r:?}"
    );
    let planned_output = r.output.clone();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(snapshot(&ours), before, "a dry run touches nothing");

    let old_web = ours.pid("web");
    let r = run(&m, "supervisor", "update").await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["changed"], json!(true), "{r:?}");
    let expected = theirs.ctl(&["update"]);
    assert_eq!(r.output.as_deref().unwrap(), expected.trim());
    assert_eq!(
        planned_output.as_deref().unwrap(),
        expected.trim(),
        "the dry run said what the update then did"
    );
    // Let autostart programs of added groups come up on both.
    for s in [&ours, &theirs] {
        for _ in 0..100 {
            if s.state("fresh") == "RUNNING" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    assert_eq!(states(&ours), states(&theirs));
    assert_eq!(ours.state("fresh"), "RUNNING");
    assert_eq!(ours.state("workers:a"), "ABSENT");
    assert_ne!(
        ours.pid("web"),
        old_web,
        "the changed group runs its new config"
    );
    assert!(ours.ctl(&["status", "web"]).contains("RUNNING"));

    // Nothing left to do: supervisorctl prints nothing; we say so.
    let r = run(&m, "supervisor", "update").await;
    assert!(r.success, "{r:?}");
    assert_eq!(theirs.ctl(&["update"]).trim(), "");
    assert_eq!(r.output.as_deref(), Some("No config updates to processes"));
    assert_eq!(r.metadata["changed"], json!(false), "nothing to do: {r:?}");
    assert_eq!(states(&ours), states(&theirs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_clear_and_the_host_keeps_serving() {
    let mut s = Supervisord::start(PROGRAMS);
    let setup = setup();
    let m = manager(&setup, &s, false).await;

    let r = run(&m, "nope", "start").await;
    assert!(!r.success);
    assert_eq!(
        r.error.as_deref(),
        Some("no supervisor program or group 'nope'")
    );

    let r = run(&m, "broken", "start").await;
    assert!(!r.success, "{r:?}");
    let e = r.error.unwrap();
    assert!(e.contains("spawn error") && e.contains("NO_FILE"), "{e}");
    assert!(e.contains("broken"), "{e}");
    assert_eq!(s.state("broken"), "STOPPED");

    let r = run(&m, "crash", "start").await;
    assert!(!r.success, "{r:?}");
    let e = r.error.unwrap();
    eprintln!("{e}");
    assert!(e.contains("spawn error"), "{e}");
    assert!(
        e.contains("about to crash"),
        "the log tail is in the error: {e}"
    );
    assert_eq!(s.state("crash"), "FATAL");

    let r = run(&m, "secret", "stop").await;
    assert!(!r.success);
    let e = r.error.unwrap();
    assert!(
        e.contains("permission denied") && e.contains("supervisor program 'secret:secret'"),
        "{e}"
    );
    assert_eq!(s.state("secret"), "RUNNING", "nothing happened");

    let r = run(&m, "supervisor", "update").await;
    assert!(!r.success);
    assert!(r.error.unwrap().contains("config = true"));

    // The host still serves.
    let r = run(&m, "web", "restart").await;
    assert!(r.success, "{r:?}");

    s.kill();
    let r = run(&m, "web", "start").await;
    assert!(!r.success);
    let e = r.error.unwrap();
    assert!(e.contains("unavailable: cannot reach supervisord"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inet_http_server_with_basic_auth() {
    use marvin_manager::capabilities::Backends;
    use marvin_manager::capabilities::supervisor::rpc::Supervisord as Rpc;
    use std::sync::Arc;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Supervisord::start_with(
        PROGRAMS,
        &format!("[inet_http_server]\nport=127.0.0.1:{port}\nusername=marvin\npassword=s3cret\n"),
    );
    let setup = setup();
    let config =
        format!("[plugins.supervisor.grants.supervisor]\nprograms = [\"web\"]\n{ENTITIES}");
    let url = format!("http://127.0.0.1:{port}");
    let with = |password: &str| Backends {
        supervisor: Arc::new(Rpc::new(&url, Some("marvin"), Some(password)).unwrap()),
        ..Backends::default()
    };
    let m = setup.manager_with(&config, with("s3cret")).await;
    let r = run(&m, "web", "stop").await;
    assert!(r.success, "{r:?}");
    assert_eq!(s.state("web"), "STOPPED");
    let m = setup.manager_with(&config, with("wrong")).await;
    let r = run(&m, "web", "start").await;
    assert!(!r.success);
    let e = r.error.unwrap();
    assert!(e.contains("refused the credentials"), "{e}");
    assert_eq!(s.state("web"), "STOPPED");
}

/// A group whose member cannot spawn: the answer gives that member's reason (as a single
/// program's failure does) and says the others started; only the new group asked for is
/// added and reported by `update` with `args.groups`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_a_member_that_fails_and_update_of_one_group() {
    const MIXED: &str = "\
[group:mixed]
programs=good,bad1,bad2

[program:good]
command=/bin/sleep 3604
autostart=false
startsecs=0

[program:bad1]
command=/nonexistent/bad1
autostart=false
startsecs=0
startretries=0

[program:bad2]
command=/bin/sh -c \"echo crashing-now; exit 3\"
autostart=false
startsecs=1
startretries=0
";
    let s = Supervisord::start(MIXED);
    let setup = setup();
    let toml = "[plugins.supervisor.grants.supervisor]\nprograms = [\"mixed\", \"new1\", \"new2\"]\nconfig = true\n\n[entities.mixed]\nkind = \"worker\"\nprogram = \"mixed\"\n";
    let m = setup.manager_with_supervisor(toml, &s.url()).await;

    let r = run(&m, "mixed", "start").await;
    assert!(!r.success, "{r:?}");
    let e = r.error.clone().unwrap();
    assert!(e.contains("mixed:bad1"), "{e}");
    assert!(e.contains("/nonexistent/bad1"), "the member's reason: {e}");
    assert!(e.contains("mixed:bad2"), "{e}");
    assert!(e.contains("crashing-now"), "the member's log tail: {e}");
    assert_eq!(r.output.as_deref(), Some("mixed:good: started"), "{r:?}");
    assert_eq!(r.metadata["acted_on"], json!(["mixed:good"]));
    assert_eq!(s.state("mixed:good"), "RUNNING");
    assert_ne!(s.state("mixed:bad1"), "RUNNING");

    s.set_programs(&format!(
        "{MIXED}\n[program:new1]\ncommand=/bin/sleep 3605\nstartsecs=0\n\n\
         [program:new2]\ncommand=/bin/sleep 3606\nstartsecs=0\n"
    ));
    let r = m
        .execute(&request(
            "supervisor",
            "update",
            json!({"groups": ["new2"]}),
            20,
        ))
        .await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["groups"]["added"], json!(["new2"]), "{r:?}");
    assert_eq!(r.metadata["changed"], json!(true), "{r:?}");
    assert_eq!(r.output.as_deref(), Some("new2: added process group"));
    let status = s.status();
    assert_eq!(
        status.get("new2").map(String::as_str),
        Some("RUNNING"),
        "{status:?}"
    );
    assert!(
        !status.contains_key("new1"),
        "new1 was not asked for: {status:?}"
    );
}

/// A supervisord that takes the connection and never answers: the request fails with a
/// timeout within its deadline and a second, and the host still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisord_that_never_answers_times_out_within_the_deadline() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let setup = setup();
    let toml = format!("[plugins.supervisor.grants.supervisor]\nprograms = [\"web\"]\n{ENTITIES}");
    let m = setup
        .manager_with_supervisor(&toml, &format!("http://127.0.0.1:{port}"))
        .await;
    let deadline = std::time::Duration::from_secs(2);
    let t = std::time::Instant::now();
    let r = m.execute(&request("web", "start", json!({}), 2)).await;
    let took = t.elapsed();
    assert!(!r.success, "{r:?}");
    assert!(
        took < deadline + std::time::Duration::from_secs(1),
        "answered after {took:?}"
    );
    let e = r.error.unwrap();
    assert!(e.contains("deadline") || e.contains("timeout"), "{e}");
}
