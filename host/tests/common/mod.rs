//! Shared helpers: a plugins directory of test guests in a temp dir, a manager over it.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use marvin_manager::capabilities::Backends;
use marvin_manager::config::{Config, DEFAULT_MAX_MEMORY_BYTES};
use marvin_manager::message::ManagerRequest;
use marvin_manager::registry::Registry;
use marvin_manager::runtime::plugins::PluginDir;
use marvin_manager::runtime::{Runtime, RuntimeSettings};
use marvin_manager::service::Manager;

pub use test_programs as guests;

pub mod corpus;
pub mod db;
pub mod docker;
pub mod supervisor;

/// A temp folder with a `plugins` directory holding copies of the given guests.
pub struct Setup {
    pub tmp: tempfile::TempDir,
    pub plugins: PathBuf,
}

impl Setup {
    pub fn new(guests: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let plugins = tmp.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        for (src, name) in guests {
            std::fs::copy(src, plugins.join(name)).unwrap();
        }
        Self { tmp, plugins }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// A manager over this plugins directory with `config` (TOML) and a cache in the temp dir.
    pub async fn manager(&self, config: &str) -> Manager {
        let config = Config::parse(config).unwrap();
        config.validate().unwrap();
        let runtime = runtime(&config, Some(self.tmp.path().join("cache")));
        let dir = PluginDir::open(runtime.clone(), self.plugins.clone()).await;
        Manager::new(Registry::from_config(&config), runtime, dir)
    }

    /// A manager whose docker capability and discovery reach the engine at `endpoint`.
    pub async fn manager_with_docker(&self, config: &str, endpoint: &str) -> Manager {
        use marvin_manager::capabilities::docker::engine::Engine;
        let docker: Arc<dyn marvin_manager::capabilities::DockerBackend> =
            Arc::new(Engine::new(endpoint));
        self.manager_with(
            config,
            Backends {
                docker,
                ..Backends::default()
            },
        )
        .await
    }

    /// A manager whose supervisor capability reaches supervisord at `url`.
    pub async fn manager_with_supervisor(&self, config: &str, url: &str) -> Manager {
        use marvin_manager::capabilities::supervisor::rpc::Supervisord;
        self.manager_with(
            config,
            Backends {
                supervisor: Arc::new(Supervisord::new(url, None, None).unwrap()),
                ..Backends::default()
            },
        )
        .await
    }

    /// A manager over these backends, discovering entities through its docker backend.
    pub async fn manager_with(&self, config: &str, backends: Backends) -> Manager {
        self.manager_observed(config, backends, None).await
    }

    /// The same, with `observer` (the recorder of `--record`) seeing every request.
    pub async fn manager_observed(
        &self,
        config: &str,
        backends: Backends,
        observer: Option<Arc<dyn marvin_manager::runtime::Observer>>,
    ) -> Manager {
        let config = Config::parse(config).unwrap();
        config.validate().unwrap();
        let docker = backends.docker.clone();
        let runtime = runtime_observed(
            &config,
            Some(self.tmp.path().join("cache")),
            backends,
            observer,
        );
        let dir = PluginDir::open(runtime.clone(), self.plugins.clone()).await;
        Manager::new(
            Registry::from_config(&config).with_discovery(docker),
            runtime,
            dir,
        )
    }
}

pub fn runtime(config: &Config, cache_dir: Option<PathBuf>) -> Arc<Runtime> {
    runtime_with(config, cache_dir, Backends::default())
}

pub fn runtime_with(
    config: &Config,
    cache_dir: Option<PathBuf>,
    backends: Backends,
) -> Arc<Runtime> {
    runtime_observed(config, cache_dir, backends, None)
}

/// A runtime whose requests `observer` sees (the recorder of `--record`).
pub fn runtime_observed(
    config: &Config,
    cache_dir: Option<PathBuf>,
    backends: Backends,
    observer: Option<Arc<dyn marvin_manager::runtime::Observer>>,
) -> Arc<Runtime> {
    Arc::new(
        Runtime::new(
            RuntimeSettings {
                cache_dir,
                max_instances: 16,
                default_max_memory_bytes: config
                    .runtime
                    .max_memory_bytes
                    .unwrap_or(DEFAULT_MAX_MEMORY_BYTES),
                plugins: config.plugins.clone(),
                environment: Vec::new(),
                keep_resident_bytes: None,
            },
            backends,
            observer,
        )
        .unwrap(),
    )
}

pub fn request(
    entity: &str,
    action: &str,
    args: serde_json::Value,
    timeout: i64,
) -> ManagerRequest {
    ManagerRequest::new(format!("corr-{entity}-{action}"), entity, action)
        .with_args(args)
        .with_timeout(timeout)
}

/// Entities used across tests: a container `c1` (project marvin, service web), a worker `w1`.
pub const ENTITIES: &str = r#"
[entities.c1]
kind = "container"
project = "marvin"
service = "web"
[entities.w1]
kind = "worker"
program = "consumer"
"#;

/// The well-behaved plugin still answers correctly.
pub async fn assert_echo_still_serves(m: &Manager) {
    let r = m
        .execute(&request("c1", "start", serde_json::json!({"k": "v"}), 5))
        .await;
    assert!(r.success, "echo failed after the hostile call: {r:?}");
    let seen: serde_json::Value = serde_json::from_str(r.output.as_deref().unwrap()).unwrap();
    assert_eq!(seen["action"], "start");
    assert_eq!(seen["args"]["k"], "v");
    assert_eq!(r.metadata["plugin"], "echo");
}

/// The `marvin-manager` binary run from `cwd` on `dsn`, as an operator would start it there:
/// `cwd/manager.toml`, its `plugins` directory, a compile cache in `cwd/cache`; stderr
/// appended to `log`.
pub fn manager_command(cwd: &Path, dsn: &str, log: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_marvin-manager"));
    c.current_dir(cwd)
        .env("MARVIN_CACHE_DIR", cwd.join("cache"))
        .env("MARVIN_DSN", dsn)
        .env("MARVIN_CONFIG", cwd.join("manager.toml"))
        .env_remove("MARVIN_PLUGINS_DIR")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        ));
    c
}

/// A child process killed and reaped when the test ends, failed or not.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` to exit; past `limit` it is killed and the test fails with its log.
pub fn wait_exit(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    log: &Path,
) -> std::process::ExitStatus {
    let t = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "the process did not exit within {limit:?}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// GET `path` from a listener on 127.0.0.1:`port`, as curl would: (status, body); `None`
/// while nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, answer.split_once("\r\n\r\n")?.1.to_owned()))
}

/// Polls `path` until it answers `want`; the body. Past `limit` the test fails with the last
/// answer and `context()` (a log).
pub fn wait_http(
    port: u16,
    path: &str,
    want: u16,
    limit: std::time::Duration,
    context: &dyn Fn() -> String,
) -> String {
    let t = std::time::Instant::now();
    loop {
        if let Some((status, body)) = http_get(port, path)
            && status == want
        {
            return body;
        }
        assert!(
            t.elapsed() < limit,
            "{path} did not answer {want} within {limit:?}: {:?}\n{}",
            http_get(port, path),
            context()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
