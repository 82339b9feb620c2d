//! Idempotent `start` of a running compose service, request to response without a queue,
//! against the bare bollard call it needs and against `docker-compose start`, all measured
//! in the same run on the same engine. Prints numbers and ratios; asserts nothing.
//!
//!   . scripts/services && cargo bench -p marvin-manager --bench docker
//!
//! - host: `Manager::answer` of `start` on a service whose container runs: registry,
//!   router, a fresh docker-compose plugin instance, its one `list-containers` host call
//!   (grant check + bollard), the response with the containers' states.
//! - bare: that bollard call alone (`GET /containers/json` filtered by compose's labels) on
//!   a client made once, as the host's is.
//! - compose: `docker-compose -p <project> start web`, the real compose client.
//!
//! Both calls run beside a one-second timer, as in `serve`, whose loop bounds each wait by its
//! poll (1 s) and each hold by its bound (50 ms): a timer registered while the runtime's driver
//! sleeps with no earlier one wakes the driver to re-arm it (an interrupt to an idle CPU), which
//! `serve` does not pay for a request's deadline, and the bare call would pay for bollard's.
//!
//! Rounds interleave the three so a noisy neighbour hits all of them alike. The host's time
//! ends when its answer is known: the used instance is given back after it (as `serve` does
//! once the answer is on its way), and each call is followed by a short busy wait so that
//! neither side's leftover work (the host's instance given back and the next made ahead,
//! hyper's connection closing) runs during the other's call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
#[path = "../tests/common/mod.rs"]
mod test_common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptions;
use common::{line, ratio};
use test_common::Setup;
use test_common::docker::{self as docker_common, Project};

/// 1,000 samples of each call: with 400, the same build read 1.08x to 1.15x from run to run
/// (the medians of two spread distributions, each off by ±10 µs), more than any change
/// measured here.
const ROUNDS: usize = 100;
const PER_ROUND: usize = 10;
/// The busy wait after each call: longer than the host's work after an answer (about 0.1 ms).
const SETTLE: std::time::Duration = std::time::Duration::from_micros(300);

/// Waits [`SETTLE`] without letting the CPU idle (an idle CPU wakes slower, which would make
/// the next call pay for the wait).
fn settle() {
    let t = Instant::now();
    while t.elapsed() < SETTLE {
        std::hint::spin_loop();
    }
}

fn main() {
    let endpoint = docker_common::endpoint();
    let project = Project::up("  web:\n    image: {image}\n  other:\n    image: {image}\n");
    let rt = common::tokio();
    // As `serve`'s loop: a timer pending at all times (see the header).
    rt.spawn(async {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
    let config = format!(
        "[plugins.docker-compose.grants.docker]\nprojects = [\"{p}\"]\n\
         [entities.web]\nkind = \"container\"\nproject = \"{p}\"\nservice = \"web\"\n",
        p = project.name
    );
    let setup = Setup::new(&[(test_programs::DOCKER_COMPOSE, "docker-compose.wasm")]);
    let manager = rt.block_on(setup.manager_with_docker(&config, &endpoint));
    let bare = rt.block_on(async {
        Docker::connect_with_host(&endpoint)
            .unwrap()
            .negotiate_version()
            .await
            .unwrap()
    });
    let request = common::request("web", "start");
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![
            format!("com.docker.compose.project={}", project.name),
            "com.docker.compose.service=web".to_owned(),
        ],
    )]);
    // What the plugin itself timed: its `list-containers` call (the host call, the lowering
    // of its result) and its whole `handle`.
    let inside = std::cell::RefCell::new((Vec::new(), Vec::new()));
    let host_once = || {
        let t = Instant::now();
        let (r, aftercare) = rt.block_on(manager.answer(&request));
        let took = t.elapsed();
        // As `serve` does once the answer is on its way to the writer.
        drop(aftercare);
        settle();
        assert!(r.success, "{r:?}");
        assert_eq!(r.metadata["already"], true, "{r:?}");
        let ms = |k: &str| {
            std::time::Duration::from_secs_f64(r.metadata["timings_ms"][k].as_f64().unwrap() / 1e3)
        };
        let mut inside = inside.borrow_mut();
        inside.0.push(ms("list"));
        inside.1.push(ms("total"));
        took
    };
    let bare_once = || {
        let t = Instant::now();
        let list = rt
            .block_on(bare.list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            })))
            .unwrap();
        let took = t.elapsed();
        assert_eq!(list.len(), 1);
        settle();
        took
    };
    let compose_once = || compose(&project, &["start", "web"]);
    for _ in 0..20 {
        host_once();
        bare_once();
    }
    compose_once();
    let (mut host, mut bare_t, mut compose) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            host.push(host_once());
            bare_t.push(bare_once());
        }
        // docker-compose takes ~0.5 s a call: a sample every fourth round.
        if round % 4 == 0 {
            compose.push(compose_once());
        }
    }
    println!(
        "idempotent start of a running service ({} samples each, compose {}):",
        host.len(),
        compose.len()
    );
    println!("{}", line("host (request -> response)", &host));
    println!("{}", line("bare bollard list call", &bare_t));
    println!("{}", line("docker-compose start", &compose));
    let (list, total) = inside.take();
    println!("{}", line("  in the plugin: list call", &list));
    println!("{}", line("  in the plugin: handle", &total));
    println!(
        "  host - bare = {:.3} ms: the list call as the plugin sees it {:+.3} ms, the plugin's own work {:.3} ms, outside the plugin (store, instantiation, routing, response) {:.3} ms",
        ms(common::median(host.clone())) - ms(common::median(bare_t.clone())),
        ms(common::median(list.clone())) - ms(common::median(bare_t.clone())),
        ms(common::median(total.clone())) - ms(common::median(list)),
        ms(common::median(host.clone())) - ms(common::median(total)),
    );
    println!(
        "  host / bare = {:.2}x (bar <= 1.15x)   compose / host = {:.0}x (bar >= 20x)",
        ratio(&host, &bare_t),
        ratio(&compose, &host)
    );
    restart_all(&rt, &endpoint, &bare);
}

const SERVICES: usize = 10;
const RESTART_ROUNDS: usize = 8;

/// `restart_all` of a 10-service project (stop timeout 0: SIGKILL, then start): through the
/// host, against the bare API calls it needs made in parallel (list, a restart of each
/// container at once, list), and against `docker-compose restart -t 0`; interleaved.
fn restart_all(rt: &tokio::runtime::Runtime, endpoint: &str, bare: &Docker) {
    let services: String = (0..SERVICES)
        .map(|i| format!("  s{i}:\n    image: {{image}}\n"))
        .collect();
    let project = Project::up(&services);
    let config = format!(
        "[plugins.docker-compose.grants.docker]\nprojects = [\"{p}\"]\n[docker]\ndefault_project = \"{p}\"\n",
        p = project.name
    );
    let setup = Setup::new(&[(test_programs::DOCKER_COMPOSE, "docker-compose.wasm")]);
    let manager = rt.block_on(setup.manager_with_docker(&config, endpoint));
    let request = marvin_manager::message::ManagerRequest::new("bench", "all", "restart_all")
        .with_args(serde_json::json!({"stop_timeout": 0}));
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("com.docker.compose.project={}", project.name)],
    )]);
    let list = || async {
        bare.list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .unwrap()
    };
    let host_once = || {
        let t = Instant::now();
        let r = rt.block_on(manager.execute(&request));
        assert!(r.success, "{r:?}");
        t.elapsed()
    };
    let bare_once = || {
        let t = Instant::now();
        rt.block_on(async {
            let ids: Vec<String> = list().await.into_iter().filter_map(|c| c.id).collect();
            assert_eq!(ids.len(), SERVICES);
            let restarts = ids.iter().map(|id| {
                bare.restart_container(
                    id,
                    Some(bollard::query_parameters::RestartContainerOptions {
                        t: Some(0),
                        signal: None,
                    }),
                )
            });
            for r in futures_util::future::join_all(restarts).await {
                r.unwrap();
            }
            list().await;
        });
        t.elapsed()
    };
    let compose_once = || compose(&project, &["restart", "-t", "0"]);
    host_once();
    bare_once();
    let (mut host, mut bare_t, mut compose) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RESTART_ROUNDS {
        host.push(host_once());
        bare_t.push(bare_once());
        compose.push(compose_once());
    }
    println!(
        "restart_all of a {SERVICES}-service project, stop timeout 0 ({RESTART_ROUNDS} samples each):"
    );
    println!("{}", line("host (request -> response)", &host));
    println!("{}", line("bare parallel API calls", &bare_t));
    println!("{}", line("docker-compose restart", &compose));
    println!(
        "  host / bare = {:.2}x (bar <= 1.3x)   compose / host = {:.1}x",
        ratio(&host, &bare_t),
        ratio(&compose, &host)
    );
}

/// How long the real `docker-compose <args>` takes on `project`.
fn compose(project: &Project, args: &[&str]) -> std::time::Duration {
    let t = Instant::now();
    let out = Command::new("docker-compose")
        .arg("-p")
        .arg(&project.name)
        .arg("-f")
        .arg(project.path().join("docker-compose.yml"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success());
    t.elapsed()
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
