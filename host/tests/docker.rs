//! The docker capability and the docker-compose and exec-cmd plugins on the real Docker
//! engine, with compose projects made by the real `docker-compose`. Every effect is checked
//! with `docker inspect` / `docker-compose ps`, never with the plugin's word.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::docker::{Project, docker, endpoint, exists, inspect, started_at, status};
use common::{Setup, request};
use marvin_manager::message::{ManagerRequest, ManagerResponse};
use marvin_manager::service::Manager;
use serde_json::json;

/// A manager with both plugins granted `project` (build and files under `dir`, exec of
/// anything, shell as `shell` says), and `entities` (TOML).
async fn manager(setup: &Setup, p: &Project, shell: bool, entities: &str) -> Manager {
    setup
        .manager_with_docker(&config(p, shell, entities), &endpoint())
        .await
}

/// The config of [`manager`].
fn config(p: &Project, shell: bool, entities: &str) -> String {
    let dir = p.path().display().to_string();
    format!(
        r#"
[docker]
default_project = "{name}"
[plugins.docker-compose.grants]
files = ["{dir}"]
[plugins.docker-compose.grants.docker]
projects = ["{name}"]
build_dirs = ["{dir}"]
[plugins.exec-cmd.grants.docker]
projects = ["{name}"]
exec = ["*"]
exec_shell = {shell}
{entities}
"#,
        name = p.name
    )
}

fn entity(id: &str, p: &Project, service: &str) -> String {
    format!(
        "[entities.{id}]\nkind = \"container\"\nproject = \"{}\"\nservice = \"{service}\"\n",
        p.name
    )
}

async fn run(m: &Manager, entity: &str, action: &str, args: serde_json::Value) -> ManagerResponse {
    m.execute(&request(entity, action, args, 20)).await
}

async fn exec(m: &Manager, entity: &str, command: &str, timeout: i64) -> ManagerResponse {
    let req = request(entity, "exec_cmd", json!({}), timeout).with_command(Some(command.into()));
    m.execute(&req).await
}

const TWO_SERVICES: &str =
    "  web:\n    image: {image}\n  worker:\n    image: {image}\n    scale: 2\n";

#[tokio::test]
async fn start_stop_restart_act_on_every_replica_like_compose() {
    let p = Project::up(TWO_SERVICES);
    let setup = Setup::new(&common::docker::plugins());
    let m = manager(
        &setup,
        &p,
        false,
        &(entity("w", &p, "worker") + &entity("web", &p, "web")),
    )
    .await;
    let (w1, w2, web) = (
        p.container("worker", 1),
        p.container("worker", 2),
        p.container("web", 1),
    );
    // A one-off `run` container of the service is left alone, as compose does.
    p.compose(&[
        "run",
        "-d",
        "--name",
        &format!("{}_oneoff", p.name),
        "worker",
    ]);
    let oneoff = format!("{}_oneoff", p.name);

    // A dry run says what the stop would do and does nothing.
    let before = (started_at(&w1), started_at(&w2));
    let r = run(&m, "w", "stop", json!({"stop_timeout": 5, "dry_run": true})).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["dry_run"], true, "{r:?}");
    assert_eq!(r.metadata["changed"], false, "{r:?}");
    assert_eq!(
        r.metadata["plan"],
        json!([format!("stop {w1}"), format!("stop {w2}")]),
        "{r:?}"
    );
    assert_eq!(status(&w1), "running", "a dry run stops nothing");
    assert_eq!(status(&w2), "running");
    assert_eq!((started_at(&w1), started_at(&w2)), before);

    let r = run(&m, "w", "stop", json!({"stop_timeout": 5})).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["changed"], true, "{r:?}");
    assert!(r.metadata.get("dry_run").is_none(), "{r:?}");
    assert!(r.metadata.get("plan").is_none(), "{r:?}");
    assert_eq!(status(&w1), "exited");
    assert_eq!(status(&w2), "exited");
    assert_eq!(status(&web), "running", "another service is untouched");
    assert_eq!(
        status(&oneoff),
        "running",
        "one-off containers are left alone"
    );
    let states = r.metadata["containers"].as_array().unwrap();
    assert_eq!(states.len(), 2);
    assert!(states.iter().all(|c| c["status"] == "exited"), "{states:?}");
    assert!(r.metadata["timings_ms"]["total"].as_f64().unwrap() > 0.0);

    let r = run(&m, "w", "stop", json!({})).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["already"], true);
    assert_eq!(r.metadata["changed"], false, "a repeated stop: {r:?}");
    assert!(r.output.unwrap().contains("already stopped"));

    let r = run(&m, "w", "start", json!({})).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["already"], false);
    assert_eq!(status(&w1), "running");
    assert_eq!(status(&w2), "running");

    let before = (started_at(&w1), started_at(&w2), started_at(&web));
    let r = run(&m, "w", "start", json!({})).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["already"], true);
    assert_eq!(r.metadata["changed"], false, "an idempotent start: {r:?}");
    assert!(
        r.output.as_deref().unwrap().contains("already running"),
        "{r:?}"
    );
    assert_eq!(
        started_at(&w1),
        before.0,
        "an idempotent start touches nothing"
    );

    let r = run(&m, "w", "restart", json!({"stop_timeout": 5})).await;
    assert!(r.success, "{r:?}");
    assert_ne!(started_at(&w1), before.0, "worker 1 restarted");
    assert_ne!(started_at(&w2), before.1, "worker 2 restarted");
    assert_eq!(started_at(&web), before.2, "web was not restarted");
    assert_eq!(status(&w1), "running");
    let ps = p.compose(&["ps"]);
    for name in [&w1, &w2] {
        let line = ps.lines().find(|l| l.starts_with(name.as_str())).unwrap();
        assert!(line.contains(" Up "), "docker-compose ps: {ps}");
    }
}

#[tokio::test]
async fn restart_all_restarts_every_service_of_the_project() {
    let p = Project::up(TWO_SERVICES);
    let setup = Setup::new(&common::docker::plugins());
    let m = manager(&setup, &p, false, "").await;
    let names = [
        p.container("web", 1),
        p.container("worker", 1),
        p.container("worker", 2),
    ];
    docker(&["stop", "-t", "1", &names[2]]);
    let before: Vec<String> = names.iter().map(|n| started_at(n)).collect();
    // A dry run: every container of the project planned, none touched.
    let r = run(&m, "all", "restart_all", json!({"dry_run": true})).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["changed"], false, "{r:?}");
    let mut plan: Vec<String> = serde_json::from_value(r.metadata["plan"].clone()).unwrap();
    plan.sort();
    let mut expected: Vec<String> = names.iter().map(|n| format!("restart {n}")).collect();
    expected.sort();
    assert_eq!(plan, expected, "{r:?}");
    assert_eq!(status(&names[2]), "exited", "a dry run starts nothing");
    let after: Vec<String> = names.iter().map(|n| started_at(n)).collect();
    assert_eq!(after, before, "a dry run restarts nothing");

    let r = run(&m, "all", "restart_all", json!({})).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["changed"], true, "{r:?}");
    for (n, b) in names.iter().zip(&before) {
        assert_eq!(status(n), "running", "{n}");
        assert_ne!(&started_at(n), b, "{n} restarted");
    }
    assert_eq!(r.metadata["containers"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn discovered_entities_are_acted_on_by_their_label() {
    let id = format!("0b7d-{}", std::process::id());
    let p = Project::up(&format!(
        "  web:\n    image: {{image}}\n    labels:\n      marvin.entity-id: \"{id}\"\n  other:\n    image: {{image}}\n"
    ));
    let setup = Setup::new(&common::docker::plugins());
    // No [entities] at all: the label is the only source.
    let m = manager(&setup, &p, false, "").await;
    let r = run(&m, &id, "stop", json!({"stop_timeout": 2})).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["service"], "web");
    assert_eq!(status(&p.container("web", 1)), "exited");
    assert_eq!(status(&p.container("other", 1)), "running");
    let r = run(&m, &id, "start", json!({})).await;
    assert!(r.success, "{r:?}");
    assert_eq!(status(&p.container("web", 1)), "running");
    // `entities` lists it, found by its label, with no config at all.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_marvin-manager"))
        .args(["entities", "--json"])
        .current_dir(setup.path())
        .env("DOCKER_HOST", endpoint())
        .env_remove("MARVIN_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let found = listed["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(found["source"], "label");
    assert_eq!(found["target"]["project"], p.name.as_str());
    assert_eq!(found["target"]["service"], "web");
    let r = run(&m, "nobody-has-this-label", "start", json!({})).await;
    assert!(!r.success);
    let e = r.error.unwrap();
    assert!(
        e.contains("unknown entity") && e.contains("marvin.entity-id"),
        "{e}"
    );
}

#[tokio::test]
async fn build_reads_the_compose_file_and_tags_the_image_as_compose() {
    let p = Project::with_files(
        "  app:\n    build:\n      context: ./app\n      args:\n        GREETING: first\n",
        &[
            (
                "app/Dockerfile",
                "FROM {image}\nARG GREETING\nRUN echo $GREETING > /greeting\nCMD [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 86400 & wait\"]\n",
            ),
            ("app/.dockerignore", "secret\n"),
            ("app/secret", "do not send"),
        ],
    );
    let tag = format!("{}_app", p.name);
    let first_id = inspect(&tag)["Id"].as_str().unwrap().to_owned();
    // Change the compose file's build arg: the new image must carry it.
    let compose = std::fs::read_to_string(p.path().join("docker-compose.yml")).unwrap();
    std::fs::write(
        p.path().join("docker-compose.yml"),
        compose.replace("GREETING: first", "GREETING: second"),
    )
    .unwrap();
    let setup = Setup::new(&common::docker::plugins());
    let m = manager(&setup, &p, false, &entity("app", &p, "app")).await;
    let r = run(&m, "app", "build", json!({"dry_run": true})).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["changed"], false, "{r:?}");
    assert_eq!(
        r.metadata["plan"],
        json!([format!(
            "build the image of service app of project {} as {tag}",
            p.name
        )]),
        "{r:?}"
    );
    assert_eq!(
        inspect(&tag)["Id"],
        first_id.as_str(),
        "a dry run builds nothing"
    );
    let r = run(&m, "app", "build", json!({})).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["changed"], true, "{r:?}");
    let new_id = inspect(&tag)["Id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, first_id, "the tag points at a new image");
    assert_eq!(r.metadata["image"], tag.as_str());
    assert_eq!(r.metadata["image_id"], new_id.as_str());
    let out = docker(&["run", "--rm", &tag, "cat", "/greeting"]);
    assert_eq!(out.trim(), "second");
    let ls = docker(&["run", "--rm", &tag, "ls", "/"]);
    assert!(!ls.contains("secret"), "the context honours .dockerignore");
    // The running container is not recreated by a build, as with compose.
    assert_eq!(status(&p.container("app", 1)), "running");
}

#[tokio::test]
async fn build_sees_the_granted_environment_as_compose_does() {
    let p = Project::with_files(
        "  app:\n    build:\n      context: ./app\n      args:\n        GREETING: ${GREETING:-first}\n        SECRET:\n",
        &[(
            "app/Dockerfile",
            "FROM {image}\nARG GREETING\nARG SECRET\nRUN echo \"$GREETING\" > /greeting && echo \"$SECRET\" > /secret\nCMD [\"sleep\", \"86400\"]\n",
        )],
    );
    let tag = format!("{}_app", p.name);
    let greeting = || docker(&["run", "--rm", &tag, "cat", "/greeting"]);
    assert_eq!(
        greeting().trim(),
        "first",
        "compose up ran without GREETING"
    );
    // The manager runs in an environment that has both; only GREETING is granted.
    let setup = Setup::new(&[]);
    let config = config(&p, false, &entity("app", &p, "app")).replace(
        "[plugins.docker-compose.grants]\n",
        "[plugins.docker-compose.grants]\nenv = [\"GREETING\"]\n",
    );
    std::fs::write(setup.path().join("manager.toml"), config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_marvin-manager"))
        .args([
            "run",
            "--entity",
            "app",
            "--action",
            "build",
            "--timeout",
            "60",
        ])
        .current_dir(setup.path())
        .env("DOCKER_HOST", endpoint())
        .env("GREETING", "from the manager's environment")
        .env("SECRET", "not granted")
        .env_remove("MARVIN_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(greeting().trim(), "from the manager's environment");
    let secret = docker(&["run", "--rm", &tag, "cat", "/secret"]);
    assert_eq!(secret.trim(), "", "an ungranted variable stays out");
    // `plugins` names the variables a plugin sees, never their values.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_marvin-manager"))
        .args(["plugins"])
        .current_dir(setup.path())
        .env("GREETING", "hidden value")
        .env_remove("MARVIN_CONFIG")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("environment:  GREETING"), "{listing}");
    assert!(!listing.contains("hidden value"), "{listing}");
}

#[tokio::test]
async fn a_failing_build_is_a_clear_error_and_the_host_keeps_serving() {
    let p = Project::with_files(
        "  app:\n    build: ./app\n",
        &[(
            "app/Dockerfile",
            "FROM {image}\nCMD [\"sleep\", \"86400\"]\n",
        )],
    );
    std::fs::write(
        p.path().join("app/Dockerfile"),
        format!(
            "FROM {}\nRUN echo about to fail && false\n",
            common::docker::image()
        ),
    )
    .unwrap();
    let setup = Setup::new(&common::docker::plugins());
    let m = manager(&setup, &p, false, &entity("app", &p, "app")).await;
    let r = run(&m, "app", "build", json!({})).await;
    assert!(!r.success, "{r:?}");
    let e = r.error.unwrap();
    assert!(e.contains("returned a non-zero code: 1"), "{e}");
    assert!(
        e.contains("about to fail"),
        "the log tail is in the error: {e}"
    );
    let r = run(&m, "app", "stop", json!({"stop_timeout": 1})).await;
    assert!(r.success, "{r:?}");
    assert_eq!(status(&p.container("app", 1)), "exited");
}

#[tokio::test]
async fn exec_cmd_runs_argv_and_reports_exit_codes() {
    let p = Project::up("  web:\n    image: {image}\n");
    let setup = Setup::new(&common::docker::plugins());
    let m = manager(&setup, &p, true, &entity("web", &p, "web")).await;

    // exec-cmd says exec_cmd cannot be planned: a dry run runs nothing.
    let req = request("web", "exec_cmd", json!({"dry_run": true}), 10)
        .with_command(Some("touch /planned".into()));
    let r = m.execute(&req).await;
    assert!(!r.success, "{r:?}");
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("'exec_cmd' cannot be planned"),
        "{r:?}"
    );
    assert_eq!(r.metadata["plannable"], false, "{r:?}");
    assert_eq!(r.metadata["dry_run"], true, "{r:?}");
    assert_eq!(r.metadata["changed"], false, "{r:?}");
    let ls = exec(&m, "web", "ls /", 10).await;
    assert!(ls.success, "{ls:?}");
    assert!(
        !ls.output.unwrap().contains("planned"),
        "the command did not run"
    );

    let r = exec(&m, "web", "echo 'hello  world' again", 10).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.metadata["changed"], true, "a command ran: {r:?}");
    assert_eq!(r.output.as_deref(), Some("hello  world again\n"));
    assert_eq!(r.metadata["exit_code"], 0);
    assert_eq!(r.metadata["shell"], false);

    // env, working dir and user reach the process.
    let req = request(
        "web",
        "exec_cmd",
        json!({"env": {"GREETING": "bonjour"}, "workdir": "/bin", "user": "1234"}),
        10,
    )
    .with_command(Some("sh -c 'echo $GREETING; pwd; id -u'".into()));
    let r = m.execute(&req).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.output.as_deref(), Some("bonjour\n/bin\n1234\n"));

    // The command's effect is visible from outside.
    let r = exec(&m, "web", "touch /made-by-exec", 10).await;
    assert!(r.success, "{r:?}");
    docker(&[
        "exec",
        &p.container("web", 1),
        "test",
        "-f",
        "/made-by-exec",
    ]);

    let r = exec(&m, "web", "echo out; echo oops >&2; exit 3", 10).await;
    assert!(!r.success);
    assert_eq!(r.metadata["exit_code"], 3);
    assert_eq!(r.metadata["shell"], true);
    let e = r.error.unwrap();
    assert!(
        e.contains("exited with code 3") && e.contains("oops"),
        "{e}"
    );
    assert_eq!(r.output.as_deref(), Some("out\n"));

    let r = exec(&m, "web", "no-such-binary --flag", 10).await;
    assert!(!r.success);
    let e = r.error.unwrap();
    assert!(e.contains("exited with code 126"), "{e}");
    assert!(e.contains("executable file not found"), "{e}");

    // The request's timeout kills the command, and what it started, through the engine
    // (as for an engine on another machine: no signal from this host).
    let t = Instant::now();
    let r = exec(&m, "web", "sleep 37", 2).await;
    assert!(!r.success);
    let e = r.error.unwrap();
    assert!(
        e.contains("timed out") && e.contains("killed through the engine"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let ps = docker(&["exec", &p.container("web", 1), "ps"]);
    assert!(!ps.contains("sleep 37"), "the command still runs: {ps}");
    let r = exec(&m, "web", "sleep 43 & sleep 44", 2).await;
    let e = r.error.unwrap();
    assert!(e.contains("killed through the engine"), "{e}");
    let ps = docker(&["exec", &p.container("web", 1), "ps"]);
    assert!(
        !ps.contains("sleep 43") && !ps.contains("sleep 44"),
        "the command or its child still runs: {ps}"
    );
}

#[tokio::test]
async fn an_image_without_a_shell_has_its_command_killed_from_this_host() {
    let p = Project::with_files(
        "  bare:\n    build: ./bare\n",
        &[(
            "bare/Dockerfile",
            "FROM {image} AS tools\nFROM scratch\nCOPY --from=tools /bin/busybox /sleep\nCMD [\"/sleep\", \"86400\"]\n",
        )],
    );
    let setup = Setup::new(&common::docker::plugins());
    let m = manager(&setup, &p, false, &entity("bare", &p, "bare")).await;
    let r = exec(&m, "bare", "/sleep 39", 2).await;
    let e = r.error.unwrap();
    // No sh in the image: the engine cannot run the killer, this host's signal does.
    assert!(e.contains("killed on this host"), "{e}");
    let top = docker(&["top", &p.container("bare", 1)]);
    assert!(!top.contains("/sleep 39"), "the command still runs: {top}");
}

#[tokio::test]
async fn exec_through_a_shell_needs_its_grant() {
    let p = Project::up("  web:\n    image: {image}\n");
    let setup = Setup::new(&common::docker::plugins());
    let m = manager(&setup, &p, false, &entity("web", &p, "web")).await;
    let r = exec(&m, "web", "ls / | wc -l", 10).await;
    assert!(!r.success);
    assert!(r.error.unwrap().contains("exec_shell = true"));
    let r = exec(&m, "web", "ls /", 10).await;
    assert!(r.success, "argv without a shell is allowed: {r:?}");
    // No running container: a clear error.
    docker(&["stop", "-t", "1", &p.container("web", 1)]);
    let r = exec(&m, "web", "ls /", 10).await;
    assert!(!r.success);
    assert!(r.error.unwrap().contains("has no running container"));
}

#[tokio::test]
async fn ungranted_projects_and_unknown_services_are_clear_errors() {
    let p = Project::up("  web:\n    image: {image}\n");
    let other = Project::up("  web:\n    image: {image}\n");
    let setup = Setup::new(&common::docker::plugins());
    let m = manager(
        &setup,
        &p,
        false,
        &(entity("theirs", &other, "web") + &entity("nope", &p, "nope")),
    )
    .await;
    let r = run(&m, "theirs", "stop", json!({})).await;
    assert!(!r.success);
    let e = r.error.unwrap();
    assert!(
        e.contains("permission denied") && e.contains(&format!("docker project '{}'", other.name)),
        "{e}"
    );
    assert_eq!(
        status(&other.container("web", 1)),
        "running",
        "nothing happened"
    );
    // Grants apply to a dry run too: planning an ungranted action is a permission error.
    let r = run(&m, "theirs", "stop", json!({"dry_run": true})).await;
    assert!(!r.success, "{r:?}");
    assert!(
        r.error.as_deref().unwrap().contains("permission denied"),
        "{r:?}"
    );
    assert_eq!(r.metadata["dry_run"], true, "{r:?}");
    assert_eq!(r.metadata["plan"], json!([]), "{r:?}");
    let r = run(&m, "nope", "start", json!({})).await;
    assert!(!r.success);
    assert!(
        r.error
            .unwrap()
            .contains("no containers for service 'nope'")
    );
    // The host still serves.
    let r = run(&m, "all", "restart_all", json!({})).await;
    assert!(r.success, "{r:?}");
}

#[tokio::test]
async fn a_container_removed_during_the_action_is_reported() {
    // `sleep` as PID 1 ignores SIGTERM: the restart waits out its stop timeout.
    let p = Project::up("  slow:\n    image: {image}\n    command: [\"sleep\", \"86400\"]\n");
    let setup = Setup::new(&common::docker::plugins());
    let m = manager(&setup, &p, false, &entity("slow", &p, "slow")).await;
    let name = p.container("slow", 1);
    let remover = {
        let name = name.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            docker(&["rm", "-f", &name]);
        })
    };
    let r = run(&m, "slow", "restart", json!({"stop_timeout": 6})).await;
    remover.join().unwrap();
    assert!(!r.success, "{r:?}");
    let e = r.error.unwrap();
    assert!(e.contains(&name), "{e}");
    assert!(!exists(&name));
    // The host keeps serving: the service now has no container.
    let r = run(&m, "slow", "start", json!({})).await;
    assert!(!r.success);
    assert!(r.error.unwrap().contains("no containers"));
}

#[tokio::test]
async fn a_daemon_that_is_down_is_unavailable_until_it_is_back() {
    let p = Project::up("  web:\n    image: {image}\n");
    let setup = Setup::new(&common::docker::plugins());
    // The endpoint is a symlink: first to a socket nobody listens on, then to the engine.
    let link = setup.path().join("docker.sock");
    let dead = setup.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    std::os::unix::fs::symlink(&dead, &link).unwrap();
    let dir = p.path().display().to_string();
    let config = format!(
        "[plugins.docker-compose.grants.docker]\nprojects = [\"{}\"]\n[plugins.docker-compose.grants]\nfiles = [\"{dir}\"]\n{}",
        p.name,
        entity("web", &p, "web")
    );
    let m = setup
        .manager_with_docker(&config, &format!("unix://{}", link.display()))
        .await;
    let r = run(&m, "web", "stop", json!({})).await;
    assert!(!r.success);
    let e = r.error.unwrap();
    assert!(
        e.contains("unavailable: cannot reach the Docker engine"),
        "{e}"
    );
    // The daemon comes back.
    std::fs::remove_file(&link).unwrap();
    let real = endpoint();
    std::os::unix::fs::symlink(real.trim_start_matches("unix://"), &link).unwrap();
    let r = run(&m, "web", "stop", json!({"stop_timeout": 2})).await;
    assert!(r.success, "{r:?}");
    assert_eq!(status(&p.container("web", 1)), "exited");
}

#[tokio::test]
async fn a_recorded_trace_replays_and_catches_a_plugin_that_changed_its_calls() {
    use marvin_manager::capabilities::Backends;
    use marvin_manager::capabilities::docker::engine::Engine;
    use marvin_manager::scripting::{self, Recorder, Script};
    let p = Project::up(TWO_SERVICES);
    let setup = Setup::new(&common::docker::plugins());
    let traces = setup.path().join("traces");
    // Recording wraps the real backends, as the CLI does for `--record`.
    let backends = Backends {
        docker: std::sync::Arc::new(Engine::new(endpoint())),
        ..Backends::default()
    };
    let m = setup
        .manager_observed(
            &config(&p, false, &entity("w", &p, "worker")),
            backends,
            Some(std::sync::Arc::new(Recorder::new(traces.clone()))),
        )
        .await;
    docker(&["stop", "-t", "1", &p.container("worker", 2)]);
    let r = m
        .execute(
            &ManagerRequest::new("rec-1", "w", "start")
                .with_args(json!({}))
                .with_timeout(20),
        )
        .await;
    assert!(r.success, "{r:?}");
    assert_eq!(status(&p.container("worker", 2)), "running");
    let trace = Script::load(&traces.join("rec-1.json")).unwrap();
    let calls: Vec<&str> = trace.calls.iter().map(|c| c.call.as_str()).collect();
    assert_eq!(
        calls,
        [
            "docker.list-containers",
            "docker.start",
            "docker.list-containers"
        ],
        "only the stopped replica is started"
    );
    // Replayed without Docker: the same plugin passes, and nothing touches the engine.
    docker(&["stop", "-t", "1", &p.container("worker", 1)]);
    let cache = setup.path().join("replay-cache");
    let same = scripting::run(
        std::path::Path::new(test_programs::DOCKER_COMPOSE),
        &trace,
        Some(cache.clone()),
        &[],
    )
    .await
    .unwrap();
    assert!(same.passed(), "{}", same.render());
    assert_eq!(
        status(&p.container("worker", 1)),
        "exited",
        "replay reached Docker"
    );
    // A version that starts every replica without looking makes other calls: caught.
    let changed = scripting::run(
        std::path::Path::new(test_programs::COMPOSE_V2),
        &trace,
        Some(cache),
        &[],
    )
    .await
    .unwrap();
    assert!(!changed.passed());
    let text = changed.render();
    assert!(text.contains("call 2: expected docker.start"), "{text}");
    assert!(text.contains("FAIL"), "{text}");
}
