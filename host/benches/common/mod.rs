//! What the service benches share: a manager over one plugin and given backends, and the
//! numbers they print.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use marvin_manager::capabilities::Backends;
use marvin_manager::config::Config;
use marvin_manager::message::ManagerRequest;
use marvin_manager::registry::Registry;
use marvin_manager::runtime::plugins::PluginDir;
use marvin_manager::runtime::{Runtime, RuntimeSettings};
use marvin_manager::service::Manager;

/// A two-thread tokio runtime, as small as this machine.
pub fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A manager over `plugin` (path, file name) in a plugins dir inside `tmp`, with `config`
/// (TOML) and `backends`; entities are also discovered through its docker backend.
pub fn manager(
    rt: &tokio::runtime::Runtime,
    tmp: &tempfile::TempDir,
    plugin: (&str, &str),
    config: &str,
    backends: Backends,
) -> Manager {
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(plugin.0, plugins.join(plugin.1)).unwrap();
    let config = Config::parse(config).unwrap();
    let docker = backends.docker.clone();
    rt.block_on(async {
        let runtime = Arc::new(
            Runtime::new(
                RuntimeSettings {
                    cache_dir: Some(tmp.path().join("cache")),
                    max_instances: 16,
                    default_max_memory_bytes: config.max_memory_bytes(""),
                    plugins: config.plugins.clone(),
                },
                backends,
            )
            .unwrap(),
        );
        let dir = PluginDir::open(runtime.clone(), plugins).await;
        Manager::new(
            Registry::from_config(&config).with_discovery(docker),
            runtime,
            dir,
        )
    })
}

/// A request as Core sends it.
pub fn request(entity: &str, action: &str) -> ManagerRequest {
    ManagerRequest {
        container_id: entity.into(),
        correlation_id: "bench".into(),
        action: action.into(),
        command: None,
        args: serde_json::json!({}),
        timeout: 10,
    }
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

pub fn p90(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[(v.len() - 1) * 9 / 10]
}

/// `label  median … ms  p90 … ms`.
pub fn line(label: &str, samples: &[Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "  {label:<27}median {:8.3} ms  p90 {:8.3} ms",
        ms(median(samples.to_vec())),
        ms(p90(samples.to_vec()))
    )
}

/// a / b of the medians.
pub fn ratio(a: &[Duration], b: &[Duration]) -> f64 {
    median(a.to_vec()).as_secs_f64() / median(b.to_vec()).as_secs_f64()
}
