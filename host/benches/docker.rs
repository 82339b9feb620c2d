//! Idempotent `start` of a running compose service, request to response without a queue,
//! against the bare bollard call it needs and against `docker-compose start`, all measured
//! in the same run on the same engine. Prints numbers and ratios; asserts nothing.
//!
//!   . scripts/services && cargo bench -p marvin-manager --bench docker
//!
//! - host: `Manager::execute` of `start` on a service whose container runs: registry,
//!   router, a fresh docker-compose plugin instance, its one `list-containers` host call
//!   (grant check + bollard), the response with the containers' states.
//! - bare: that bollard call alone (`GET /containers/json` filtered by compose's labels) on
//!   a client made once, as the host's is.
//! - compose: `docker-compose -p <project> start web`, the real compose client.
//!
//! Rounds interleave the three so a noisy neighbour hits all of them alike.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/common/docker.rs"]
mod docker_common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::ListContainersOptions;
use docker_common::Project;
use marvin_manager::capabilities::Backends;
use marvin_manager::capabilities::docker::engine::Engine;
use marvin_manager::config::Config;
use marvin_manager::message::ManagerRequest;
use marvin_manager::registry::Registry;
use marvin_manager::runtime::plugins::PluginDir;
use marvin_manager::runtime::{Runtime, RuntimeSettings};
use marvin_manager::service::Manager;

const ROUNDS: usize = 40;
const PER_ROUND: usize = 10;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn p90(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[(v.len() - 1) * 9 / 10]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let endpoint = docker_common::endpoint();
    let project = Project::up("  web:\n    image: {image}\n  other:\n    image: {image}\n");
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(
        test_programs::DOCKER_COMPOSE,
        plugins.join("docker-compose.wasm"),
    )
    .unwrap();
    let config = Config::parse(&format!(
        "[plugins.docker-compose.grants.docker]\nprojects = [\"{p}\"]\n\
         [entities.web]\nkind = \"container\"\nproject = \"{p}\"\nservice = \"web\"\n",
        p = project.name
    ))
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let docker: Arc<dyn marvin_manager::capabilities::DockerBackend> =
        Arc::new(Engine::new(endpoint.clone()));
    let manager = rt.block_on(async {
        let runtime = Arc::new(
            Runtime::new(
                RuntimeSettings {
                    cache_dir: Some(tmp.path().join("cache")),
                    max_instances: 16,
                    default_max_memory_bytes: config.max_memory_bytes(""),
                    plugins: config.plugins.clone(),
                },
                Backends {
                    docker: docker.clone(),
                    ..Backends::default()
                },
            )
            .unwrap(),
        );
        let dir = PluginDir::open(runtime.clone(), plugins.clone()).await;
        Manager::new(
            Registry::from_config(&config).with_discovery(docker),
            runtime,
            dir,
        )
    });
    let bare = rt.block_on(async {
        Docker::connect_with_host(&endpoint)
            .unwrap()
            .negotiate_version()
            .await
            .unwrap()
    });
    let request = ManagerRequest {
        container_id: "web".into(),
        correlation_id: "bench".into(),
        action: "start".into(),
        command: None,
        args: serde_json::json!({}),
        timeout: 10,
    };
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![
            format!("com.docker.compose.project={}", project.name),
            "com.docker.compose.service=web".to_owned(),
        ],
    )]);
    let host_once = || {
        let t = Instant::now();
        let r = rt.block_on(manager.execute(&request));
        assert!(r.success, "{r:?}");
        assert_eq!(r.metadata["already"], true, "{r:?}");
        t.elapsed()
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
        assert_eq!(list.len(), 1);
        t.elapsed()
    };
    let compose_once = || {
        let t = Instant::now();
        let out = Command::new("docker-compose")
            .arg("-p")
            .arg(&project.name)
            .arg("-f")
            .arg(project.path().join("docker-compose.yml"))
            .args(["start", "web"])
            .output()
            .unwrap();
        assert!(out.status.success());
        t.elapsed()
    };
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
    let (h, b, c) = (
        median(host.clone()),
        median(bare_t.clone()),
        median(compose.clone()),
    );
    println!(
        "idempotent start of a running service ({} samples each, compose {}):",
        host.len(),
        compose.len()
    );
    println!(
        "  host (request -> response) median {:8.3} ms  p90 {:8.3} ms",
        ms(h),
        ms(p90(host))
    );
    println!(
        "  bare bollard list call     median {:8.3} ms  p90 {:8.3} ms",
        ms(b),
        ms(p90(bare_t))
    );
    println!(
        "  docker-compose start       median {:8.3} ms  p90 {:8.3} ms",
        ms(c),
        ms(p90(compose))
    );
    println!(
        "  host / bare = {:.2}x (bar <= 1.5x)   compose / host = {:.0}x (bar >= 20x)",
        h.as_secs_f64() / b.as_secs_f64(),
        c.as_secs_f64() / h.as_secs_f64()
    );
}
