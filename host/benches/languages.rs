//! What a plugin costs by the language it is written in: the `logs` plugin in Rust
//! (examples/logs-plugin), Python (examples/python-plugin, componentize-py) and JavaScript
//! (examples/js-plugin, componentize-js), side by side, measured in the same run. Prints
//! numbers and ratios to Rust; asserts nothing.
//!
//!   . scripts/services   # the toolchains
//!   (build the three examples as docs/writing-plugins.md does)
//!   cargo bench -p marvin-manager --bench languages
//!
//! - size: the component file;
//! - first compile: `Runtime::load` with an empty cache (Cranelift compiles the component);
//! - cached load: `Runtime::load` again, from the compile cache;
//! - handle: instantiate + `handle` of a `logs` request whose one host call (`tail-log`)
//!   answers "unavailable" (no supervisord configured): p50 and p90, the interleaved rounds
//!   hitting the three alike.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{line, median};
use marvin_manager::capabilities::Backends;
use marvin_manager::message::{Entity, EntityKind, ManagerRequest, Target};
use marvin_manager::runtime::{LoadedPlugin, Runtime, RuntimeSettings};

const ROUNDS: usize = 20;
const PER_ROUND: usize = 10;

fn runtime(cache: Option<PathBuf>) -> Runtime {
    Runtime::new(
        RuntimeSettings {
            cache_dir: cache,
            max_instances: 8,
            ..Default::default()
        },
        Backends::default(),
        None,
    )
    .unwrap()
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugins = [
        (
            "rust",
            root.join("examples/logs-plugin/target/wasm32-wasip2/release/logs_plugin.wasm"),
        ),
        ("python", root.join("examples/python-plugin/logs_py.wasm")),
        ("js", root.join("examples/js-plugin/logs_js.wasm")),
    ];
    for (lang, p) in &plugins {
        assert!(
            p.exists(),
            "{lang}: {} is missing: build the examples as docs/writing-plugins.md does",
            p.display()
        );
    }
    let rt = common::tokio();
    let cache = tempfile::tempdir().unwrap();
    let entity = Entity {
        id: "consumer".into(),
        kind: EntityKind::Worker,
        target: Target::Program("consumer".into()),
    };
    let req = ManagerRequest::new("bench", "consumer", "logs").with_args(serde_json::json!({}));
    let mut loaded: Vec<(&str, Runtime, LoadedPlugin)> = Vec::new();
    println!("the logs plugin by language:");
    for (lang, path) in &plugins {
        let size = std::fs::metadata(path).unwrap().len();
        let dir = cache.path().join(lang);
        let t = Instant::now();
        rt.block_on(runtime(Some(dir.clone())).load(path)).unwrap();
        let first = t.elapsed();
        let r = runtime(Some(dir));
        let t = Instant::now();
        let plugin = rt.block_on(r.load(path)).unwrap();
        let cached = t.elapsed();
        println!(
            "  {lang:<7} size {:>6.1} MB  first compile {:>8.2} s  cached load {:>8.1} ms  memory cap {} MiB",
            size as f64 / 1e6,
            first.as_secs_f64(),
            cached.as_secs_f64() * 1e3,
            plugin.max_memory_bytes >> 20
        );
        loaded.push((lang, r, plugin));
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); loaded.len()];
    for _ in 0..ROUNDS {
        for (i, (_, r, plugin)) in loaded.iter().enumerate() {
            for _ in 0..PER_ROUND {
                let t = Instant::now();
                let out = rt
                    .block_on(r.handle(plugin, &entity, &req))
                    .outcome
                    .unwrap();
                samples[i].push(t.elapsed());
                assert!(!out.success, "no supervisord: the call fails");
            }
        }
    }
    println!(
        "instantiate + handle ({} samples each):",
        ROUNDS * PER_ROUND
    );
    let rust = median(samples[0].clone());
    for ((lang, _, _), s) in loaded.iter().zip(&samples) {
        let m = median(s.clone());
        println!(
            "{}   {:.1}x rust",
            line(lang, s),
            m.as_secs_f64() / rust.as_secs_f64()
        );
    }
}
