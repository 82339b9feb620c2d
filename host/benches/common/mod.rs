//! What the service benches share besides the tests' helpers: a runtime, a request, and
//! the numbers they print.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

/// The allocator the service runs with (see `main.rs`), so the numbers are the service's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use marvin_manager::message::ManagerRequest;

/// The tokio runtime of the binary (one worker fewer than the cores, at least one).
pub fn tokio() -> tokio::runtime::Runtime {
    marvin_manager::cli::tune_allocator();
    // The binary's runtime: what is measured runs as in `serve`.
    marvin_manager::cli::async_runtime().unwrap()
}

/// A request as Core sends it.
pub fn request(entity: &str, action: &str) -> ManagerRequest {
    ManagerRequest::new("bench", entity, action).with_args(serde_json::json!({}))
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

/// A `marvin-manager serve` process in `dir` on `dsn`, with the no-op guest as its only
/// plugin and `config` as its `manager.toml`; its log (warnings) in `dir/serve.log`.
pub fn serve_noop(dir: &std::path::Path, dsn: &str, config: &str) -> std::process::Child {
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::copy(test_programs::NOOP, dir.join("plugins/noop.wasm")).unwrap();
    std::fs::write(dir.join("manager.toml"), config).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_marvin-manager"))
        .arg("serve")
        .current_dir(dir)
        .env("MARVIN_DSN", dsn)
        .env("MARVIN_CONFIG", dir.join("manager.toml"))
        .env("MARVIN_CACHE_DIR", dir.join("cache"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
        .spawn()
        .unwrap()
}

/// CPU seconds (user + system) used so far by process `pid` (`"self"`: this one) and by each
/// `postgres` process, by pid.
pub struct Cpu {
    ours: f64,
    pg: std::collections::HashMap<String, f64>,
}

impl Cpu {
    pub fn now(pid: &str) -> Self {
        let ticks = 100.0; // USER_HZ on Linux
        let read = |path: &std::path::Path| -> Option<(String, f64)> {
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(") ")?;
            let comm = head.split_once(" (")?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let t = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some((comm, t / ticks))
        };
        let ours = read(&std::path::Path::new("/proc").join(pid)).map_or(0.0, |(_, t)| t);
        let pg = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let (comm, t) = read(&e.path())?;
                        (comm == "postgres")
                            .then(|| (e.file_name().to_string_lossy().into_owned(), t))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { ours, pg }
    }

    /// CPU seconds of the process and of PostgreSQL since `earlier`: what each PostgreSQL
    /// process alive now used since then (all of it for one that began since); one that
    /// ended meanwhile is not counted (its whole past would be taken away).
    pub fn since(&self, earlier: &Self) -> (f64, f64) {
        let pg = self
            .pg
            .iter()
            .map(|(pid, t)| t - earlier.pg.get(pid).copied().unwrap_or(0.0))
            .sum();
        (self.ours - earlier.ours, pg)
    }
}
