//! Per-request cost of a fresh instance + `handle` for a no-op plugin, against a bare wasmtime
//! baseline measured in the same run. Prints numbers; asserts nothing.
//!
//!   cargo bench -p marvin-manager --bench instantiate
//!
//! - bare: wasmtime alone: pooled `InstancePre`, empty WASI context, no limits, no deadline,
//!   no capture; instantiate + call `handle`.
//! - runtime: `Runtime::handle`: fresh store with memory cap, epoch deadline, captured stdio,
//!   capabilities, instantiate + `handle` + response conversion.
//! - manager: `Manager::execute`: registry + router + runtime + response metadata.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

/// The allocator the service runs with (see `main.rs`), so the numbers are the service's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marvin_manager::bindings::{Request, Response, types};
use marvin_manager::capabilities::Backends;
use marvin_manager::config::Config;
use marvin_manager::message::{Entity, EntityKind, ManagerRequest, Target};
use marvin_manager::registry::Registry;
use marvin_manager::runtime::plugins::PluginDir;
use marvin_manager::runtime::{Runtime, RuntimeSettings};
use marvin_manager::service::Manager;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

const WARMUP: usize = 1_000;
const ITERATIONS: usize = 20_000;

struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let total: Duration = samples.iter().sum();
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        mean: total / samples.len() as u32,
    }
}

async fn measure<F: AsyncFnMut()>(mut f: F) -> Stats {
    for _ in 0..WARMUP {
        f().await;
    }
    let mut samples = Vec::with_capacity(ITERATIONS);
    for _ in 0..ITERATIONS {
        let t = Instant::now();
        f().await;
        samples.push(t.elapsed());
    }
    stats(samples)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn wit_request() -> Request {
    Request {
        correlation_id: "bench".into(),
        entity_id: "c1".into(),
        kind: types::EntityKind::Container,
        target: types::Target::Compose(types::ComposeTarget {
            project: "p".into(),
            service: Some("s".into()),
        }),
        action: "noop".into(),
        command: None,
        args: "{}".into(),
        timeout_ms: 10_000,
    }
}

async fn bare(wasm: &Path) -> Stats {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(16)
        .total_core_instances(128)
        .total_memories(32)
        .total_tables(128)
        .total_stacks(16);
    let mut config = wasmtime::Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).unwrap();
    let component = Component::from_file(&engine, wasm).unwrap();
    let mut linker: Linker<Bare> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    linker.define_unknown_imports_as_traps(&component).unwrap();
    let pre = linker.instantiate_pre(&component).unwrap();
    let req = wit_request();
    measure(async || {
        let mut store = Store::new(
            &engine,
            Bare {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        let instance = pre.instantiate_async(&mut store).await.unwrap();
        let handle = instance
            .get_typed_func::<(&Request,), (Response,)>(&mut store, "handle")
            .unwrap();
        let (resp,) = handle.call_async(&mut store, (&req,)).await.unwrap();
        assert!(resp.success);
    })
    .await
}

fn request() -> ManagerRequest {
    ManagerRequest::new("bench", "c1", "noop").with_args(serde_json::json!({}))
}

async fn runtime_handle(wasm: &Path, keep_resident_bytes: Option<usize>) -> Stats {
    let runtime = Runtime::new(
        RuntimeSettings {
            max_instances: 16,
            keep_resident_bytes,
            ..Default::default()
        },
        Backends::default(),
        None,
    )
    .unwrap();
    let plugin = runtime.load(wasm).await.unwrap();
    let entity = Entity {
        id: "c1".into(),
        kind: EntityKind::Container,
        target: Target::Compose {
            project: "p".into(),
            service: Some("s".into()),
        },
    };
    let req = request();
    measure(async || {
        let out = runtime
            .handle(&plugin, &entity, &req)
            .await
            .outcome
            .unwrap();
        assert!(out.success);
    })
    .await
}

async fn manager_execute(wasm: &Path) -> Stats {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(wasm, dir.path().join("noop.wasm")).unwrap();
    let config =
        Config::parse("[entities.c1]\nkind = \"container\"\nproject = \"p\"\nservice = \"s\"\n")
            .unwrap();
    let runtime = Arc::new(
        Runtime::new(
            RuntimeSettings {
                max_instances: 16,
                ..Default::default()
            },
            Backends::default(),
            None,
        )
        .unwrap(),
    );
    let plugins = PluginDir::open(runtime.clone(), dir.path().to_owned()).await;
    let manager = Manager::new(Registry::from_config(&config), runtime, plugins);
    let req = request();
    measure(async || {
        let r = manager.execute(&req).await;
        assert!(r.success);
    })
    .await
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let wasm = Path::new(test_programs::NOOP);
    println!(
        "no-op plugin, instantiate + handle, {ITERATIONS} iterations after {WARMUP} warm-up, one thread"
    );
    rt.block_on(async {
        let base = bare(wasm).await;
        let ours = runtime_handle(wasm, None).await;
        // The same with every page of a finished instance returned to the kernel (what the
        // runtime did before keeping pages resident).
        let returned = runtime_handle(wasm, Some(0)).await;
        let full = manager_execute(wasm).await;
        println!(
            "{:<10} {:>10} {:>10} {:>10} {:>12} {:>12}",
            "", "p50 µs", "p99 µs", "mean µs", "p50 ×bare", "p99 ×bare"
        );
        for (name, s) in [
            ("bare", &base),
            ("runtime", &ours),
            ("no keep", &returned),
            ("manager", &full),
        ] {
            println!(
                "{name:<10} {:>10.1} {:>10.1} {:>10.1} {:>12.2} {:>12.2}",
                us(s.p50),
                us(s.p99),
                us(s.mean),
                us(s.p50) / us(base.p50),
                us(s.p99) / us(base.p99)
            );
        }
        let verdict = if us(ours.p50) <= 50.0 {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "target: runtime p50 <= 50 µs: {verdict} ({:.1} µs)",
            us(ours.p50)
        );
    });
}
