//! The plugin runtime: one wasmtime engine, plugins compiled once (cached on disk) and
//! instantiated fresh for every request under a memory cap, a deadline and a WASI context
//! with no ambient authority.
//!
//! Start with [`Runtime::load`] (a file -> a [`LoadedPlugin`]) and [`Runtime::handle`] (one
//! request on a fresh instance). [`plugins::PluginDir`] keeps a directory of plugins loaded.

pub mod bindings;
mod cache;
mod limits;
pub mod plugins;
pub mod stdio;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config as EngineConfig, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    Trap, UpdateDeadline,
};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use crate::capabilities::policy::{Capability, Policy};
use crate::capabilities::{Backends, Capabilities};
use crate::config::{DEFAULT_MAX_MEMORY_BYTES, PluginConfig};
use crate::message::{EntityKind, ManagerRequest};
use crate::registry::{Entity, Target};
use bindings::{Plugin, PluginPre, types};
use limits::Limiter;
use stdio::Capture;

/// How often the epoch advances; the granularity of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// The deadline of `describe()` at load time.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest plugin file accepted.
const MAX_PLUGIN_BYTES: u64 = 64 << 20;

/// What the runtime needs from the configuration.
#[derive(Debug, Clone, Default)]
pub struct RuntimeSettings {
    /// Where compiled plugins are cached; none: compile every time.
    pub cache_dir: Option<PathBuf>,
    /// Plugin instances alive at once.
    pub max_instances: u32,
    /// The memory cap of plugins without their own.
    pub default_max_memory_bytes: u64,
    /// Per-plugin settings and grants, by plugin name.
    pub plugins: BTreeMap<String, PluginConfig>,
}

impl RuntimeSettings {
    fn memory_cap(&self, plugin: &str) -> u64 {
        self.plugins
            .get(plugin)
            .and_then(|p| p.max_memory_bytes)
            .unwrap_or(self.default_max_memory_bytes)
    }

    fn largest_memory_cap(&self) -> u64 {
        self.plugins
            .values()
            .filter_map(|p| p.max_memory_bytes)
            .fold(self.default_max_memory_bytes, u64::max)
    }
}

/// A runtime failure that is not a plugin's fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The engine could not be created.
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
}

/// The state of one store: WASI, limits, capabilities.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    caps: Capabilities,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A plugin, compiled and described, ready to instantiate.
pub struct LoadedPlugin {
    /// From `describe()`.
    pub name: String,
    /// From `describe()`.
    pub version: String,
    /// The (kind, action) pairs it handles.
    pub handles: Vec<(EntityKind, String)>,
    /// The file it came from.
    pub path: PathBuf,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Its memory cap.
    pub max_memory_bytes: u64,
    /// What it asked for ∩ what it was granted.
    pub policy: Arc<Policy>,
    /// Whether the compiled code came from the disk cache.
    pub from_cache: bool,
    pre: PluginPre<HostState>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What a plugin made of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginOutcome {
    /// Whether the action worked.
    pub success: bool,
    /// What it reports.
    pub output: Option<String>,
    /// Why it failed (a plugin error, a trap, a timeout, a memory overrun).
    pub error: Option<String>,
    /// The plugin's metadata object.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl PluginOutcome {
    fn failed(error: String) -> Self {
        Self {
            success: false,
            output: None,
            error: Some(error),
            metadata: serde_json::Map::new(),
        }
    }
}

/// Advances the engine's epoch until dropped.
struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The engine, the linker with every host interface, and what plugins may be granted.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    settings: RuntimeSettings,
    backends: Backends,
    /// Where each request's host-call trace is written, when recording.
    record_dir: std::sync::RwLock<Option<PathBuf>>,
    _ticker: Ticker,
}

impl Runtime {
    /// One engine with the pooling allocator and epoch interruption.
    pub fn new(mut settings: RuntimeSettings, backends: Backends) -> Result<Self, RuntimeError> {
        if settings.default_max_memory_bytes == 0 {
            settings.default_max_memory_bytes = DEFAULT_MAX_MEMORY_BYTES;
        }
        if settings.max_instances == 0 {
            settings.max_instances = 256;
        }
        let n = settings.max_instances;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(8))
            .total_stacks(n)
            .max_memory_size(usize::try_from(settings.largest_memory_cap()).unwrap_or(usize::MAX))
            // Returning a slot with madvise costs a TLB shootdown across threads for every
            // request: decommit slots in batches instead.
            .decommit_batch_size(32);
        let mut config = EngineConfig::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:?}")))?;

        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| {
                Plugin::add_to_linker::<_, HasSelf<Capabilities>>(&mut linker, |s| &mut s.caps)
            })
            .map_err(|e| RuntimeError::Engine(format!("{e:?}")))?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let ticker_stop = stop.clone();
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))?;

        let cache_dir = settings
            .cache_dir
            .as_deref()
            .map(|d| cache::engine_dir(&engine, d));
        Ok(Self {
            engine,
            linker,
            cache_dir,
            settings,
            backends,
            record_dir: std::sync::RwLock::new(None),
            _ticker: Ticker(stop),
        })
    }

    /// Reads, compiles (through the cache) and describes a plugin file. The error says why the
    /// file is not a usable plugin.
    pub async fn load(&self, path: &Path) -> Result<LoadedPlugin, String> {
        let wasm = read_plugin_file(path)?;
        self.load_bytes(path, wasm).await
    }

    /// Compiles (through the cache) and describes a plugin held in memory; `path` names it.
    pub async fn load_bytes(&self, path: &Path, wasm: Vec<u8>) -> Result<LoadedPlugin, String> {
        let sha256 = cache::hex(&Sha256::digest(&wasm));
        let engine = self.engine.clone();
        let dir = self.cache_dir.clone();
        let hash = sha256.clone();
        let (component, from_cache) = tokio::task::spawn_blocking(move || {
            cache::compile(&engine, dir.as_deref(), &wasm, &hash)
        })
        .await
        .map_err(|e| format!("compilation did not finish: {e}"))?
        .map_err(|e| format!("not a valid component: {}", first_line(&format!("{e:?}"))))?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("wrong world: {}", first_line(&format!("{e:?}"))))?;
        let pre = PluginPre::new(instance_pre).map_err(|e| {
            format!(
                "wrong world: it does not export `describe` and `handle` of marvin:manager/plugin@0.1.0 ({})",
                first_line(&format!("{e:?}"))
            )
        })?;

        // describe() runs like a request: fresh instance, no grants, a deadline, the default cap.
        let probe = Arc::new(Policy::new("(loading)", [], Default::default()));
        let deadline = Instant::now() + DESCRIBE_TIMEOUT;
        let (mut store, stdout, stderr) = self.store(
            probe,
            "describe".into(),
            self.settings.default_max_memory_bytes,
            deadline,
            self.backends.clone(),
        )?;
        let call = async {
            let plugin = pre.instantiate_async(&mut store).await?;
            plugin.call_describe(&mut store).await
        };
        let info =
            match tokio::time::timeout(DESCRIBE_TIMEOUT + Duration::from_millis(500), call).await {
                Ok(Ok(info)) => info,
                Ok(Err(e)) => {
                    let limiter = &store.data().limiter;
                    return Err(classify(
                        &e,
                        limiter,
                        &stderr,
                        "describe()",
                        DESCRIBE_TIMEOUT,
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "describe() did not return within {DESCRIBE_TIMEOUT:?}"
                    ));
                }
            };
        drain("(loading)", "describe", &stdout, &stderr);
        validate_name(&info.name)?;
        if info.version.trim().is_empty() {
            return Err(format!("plugin '{}' declares no version", info.name));
        }
        let handles = info
            .handles
            .iter()
            .map(|h| (kind_from_wit(h.kind), h.action.clone()))
            .collect::<Vec<_>>();
        let caps = info.capabilities.iter().map(|c| capability_from_wit(*c));
        let grants = self
            .settings
            .plugins
            .get(&info.name)
            .map(|p| p.grants.clone())
            .unwrap_or_default();
        Ok(LoadedPlugin {
            max_memory_bytes: self.settings.memory_cap(&info.name),
            policy: Arc::new(Policy::new(&info.name, caps, grants)),
            name: info.name,
            version: info.version,
            handles,
            path: path.to_owned(),
            sha256,
            from_cache,
            pre,
        })
    }

    /// Records each request's host calls, request and response into `dir` as
    /// `<correlation id>.json`, a trace `plugin test --replay` runs again; `None` stops.
    pub fn set_record_dir(&self, dir: Option<PathBuf>) {
        *self.record_dir.write().unwrap_or_else(|e| e.into_inner()) = dir;
    }

    fn store(
        &self,
        policy: Arc<Policy>,
        correlation_id: String,
        max_memory_bytes: u64,
        deadline: Instant,
        backends: Backends,
    ) -> Result<(Store<HostState>, Capture, Capture), String> {
        let stdout = Capture::default();
        let stderr = Capture::default();
        // No arguments, stdin, network or inherited stdio: WasiCtxBuilder denies all of them
        // unless asked. Only granted environment variables and directories, read-only.
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        wasi.envs(policy.environment());
        for dir in policy.preopens() {
            let guest = dir.to_string_lossy();
            wasi.preopened_dir(dir, guest.as_ref(), FsPerms::ReadOnly)
                .map_err(|e| {
                    format!("cannot preopen granted directory {}: {e:?}", dir.display())
                })?;
        }
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter::new(max_memory_bytes),
            caps: Capabilities::new(policy, correlation_id, backends, deadline),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Ok((store, stdout, stderr))
    }

    /// Runs one request on a fresh instance of `plugin`, within `req`'s timeout.
    pub async fn handle(
        &self,
        plugin: &LoadedPlugin,
        entity: &Entity,
        req: &ManagerRequest,
    ) -> PluginOutcome {
        let timeout = req.timeout();
        let deadline = Instant::now() + timeout;
        let record_dir = self
            .record_dir
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let recorder = record_dir
            .as_ref()
            .map(|_| crate::testing::Recorder::new(self.backends.clone()));
        let backends = recorder
            .as_ref()
            .map_or_else(|| self.backends.clone(), |r| r.backends());
        let (mut store, stdout, stderr) = match self.store(
            plugin.policy.clone(),
            req.correlation_id.clone(),
            plugin.max_memory_bytes,
            deadline,
            backends,
        ) {
            Ok(s) => s,
            Err(e) => return PluginOutcome::failed(e),
        };
        let request = types::Request {
            correlation_id: req.correlation_id.clone(),
            entity_id: entity.id.clone(),
            kind: kind_to_wit(entity.kind),
            target: match &entity.target {
                Target::Compose { project, service } => {
                    types::Target::Compose(types::ComposeTarget {
                        project: project.clone(),
                        service: service.clone(),
                    })
                }
                Target::Program(p) => types::Target::Program(p.clone()),
                Target::Supervisord => types::Target::Supervisord,
            },
            action: req.action.clone(),
            command: req.command.clone(),
            args: req.args.to_string(),
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        };
        let call = async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            instance.call_handle(&mut store, &request).await
        };
        // The epoch callback stops wasm code at the deadline and capability calls are bounded
        // by it; this outer bound is the last resort.
        let result = tokio::time::timeout(timeout + Duration::from_millis(250), call).await;
        let dropped_lines = store.data().caps.log.dropped();
        if dropped_lines > 0 {
            tracing::warn!(plugin = %plugin.name, correlation_id = %req.correlation_id, dropped_lines, "plugin log lines over the limit were dropped");
        }
        let outcome = match result {
            Ok(Ok(resp)) => outcome_from_wit(resp, &plugin.name),
            Ok(Err(e)) => PluginOutcome::failed(classify(
                &e,
                &store.data().limiter,
                &stderr,
                &format!("plugin '{}'", plugin.name),
                timeout,
            )),
            Err(_) => PluginOutcome::failed(timeout_message(
                &format!("plugin '{}'", plugin.name),
                timeout,
            )),
        };
        drain(&plugin.name, &req.correlation_id, &stdout, &stderr);
        if let (Some(dir), Some(recorder)) = (record_dir, recorder) {
            let trace = crate::testing::Script::trace(
                req,
                entity,
                plugin.policy.grants(),
                recorder.calls(),
                &outcome,
            );
            write_trace(&dir, &req.correlation_id, &trace);
        }
        outcome
    }
}

/// Writes a trace; a failure is logged, the request is not affected.
fn write_trace(dir: &Path, correlation_id: &str, trace: &crate::testing::Script) {
    let name: String = correlation_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{name}.json"));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| serde_json::to_vec_pretty(trace).map_err(std::io::Error::other))
        .and_then(|bytes| std::fs::write(&path, bytes));
    match written {
        Ok(()) => tracing::debug!(path = %path.display(), "trace recorded"),
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot write the trace"),
    }
}

fn read_plugin_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_PLUGIN_BYTES {
        return Err(format!(
            "file is larger than {} MiB",
            MAX_PLUGIN_BYTES >> 20
        ));
    }
    let wasm = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err("not a WebAssembly file".into());
    }
    if wasm[4..8] == [1, 0, 0, 0] {
        return Err(
            "a core WebAssembly module, not a component (build it with `--target wasm32-wasip2`)"
                .into(),
        );
    }
    Ok(wasm)
}

fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "plugin name '{name}' is not a valid name (lowercase letters, digits, '-' and '_', at most 64)"
        ))
    }
}

fn mib(bytes: usize) -> String {
    #[allow(clippy::cast_precision_loss)]
    let m = bytes as f64 / f64::from(1u32 << 20);
    format!("{m:.1} MiB")
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn timeout_message(who: &str, timeout: Duration) -> String {
    format!(
        "{who} did not finish within the {} s timeout and was stopped",
        timeout.as_secs_f64()
    )
}

/// Says why a call into a plugin failed, in terms an operator can act on.
fn classify(
    err: &wasmtime::Error,
    limiter: &Limiter,
    stderr: &Capture,
    who: &str,
    timeout: Duration,
) -> String {
    let trap = err.downcast_ref::<Trap>();
    if trap == Some(&Trap::Interrupt) {
        return timeout_message(who, timeout);
    }
    if let Some(wanted) = limiter.refused_growth {
        return format!(
            "{who} exceeded its memory limit of {} (it tried to grow a memory to {})",
            mib(limiter.max_memory_bytes()),
            mib(wanted)
        );
    }
    let stderr = stderr.text();
    if let Some(at) = stderr.find("panicked at ") {
        let panic = &stderr[at..];
        let mut lines = panic.lines();
        let location = lines.next().unwrap_or_default().trim_end_matches(':');
        let message: Vec<&str> = lines
            .take_while(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        return format!("{who} {location}: {}", message.join("\n").trim());
    }
    match trap {
        Some(t) => format!("{who} trapped: {t}"),
        None => format!("{who} failed: {}", first_line(&format!("{err:?}"))),
    }
}

/// Emits what a plugin printed as log lines, bounded.
fn drain(plugin: &str, correlation_id: &str, stdout: &Capture, stderr: &Capture) {
    for (stream, capture) in [("stdout", stdout), ("stderr", stderr)] {
        let (text, dropped) = capture.take();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let line =
                crate::capabilities::log::truncate(line, crate::capabilities::log::MAX_LINE_BYTES);
            if stream == "stdout" {
                tracing::info!(plugin, correlation_id, stream, "{line}");
            } else {
                tracing::warn!(plugin, correlation_id, stream, "{line}");
            }
        }
        if dropped > 0 {
            tracing::warn!(
                plugin,
                correlation_id,
                stream,
                dropped_bytes = dropped,
                "plugin output over the limit was dropped"
            );
        }
    }
}

fn outcome_from_wit(resp: types::Response, plugin: &str) -> PluginOutcome {
    let metadata = if resp.metadata.trim().is_empty() {
        Ok(serde_json::Map::new())
    } else {
        match serde_json::from_str::<serde_json::Value>(&resp.metadata) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(serde_json::Value::Array(a)) if a.is_empty() => Ok(serde_json::Map::new()),
            Ok(_) => Err(format!(
                "plugin '{plugin}' returned metadata that is not a JSON object"
            )),
            Err(e) => Err(format!(
                "plugin '{plugin}' returned metadata that is not valid JSON: {e}"
            )),
        }
    };
    match metadata {
        Ok(metadata) => PluginOutcome {
            success: resp.success,
            output: resp.output,
            error: resp.error,
            metadata,
        },
        Err(e) => PluginOutcome {
            success: false,
            output: resp.output,
            error: Some(e),
            metadata: serde_json::Map::new(),
        },
    }
}

fn kind_from_wit(k: types::EntityKind) -> EntityKind {
    match k {
        types::EntityKind::Container => EntityKind::Container,
        types::EntityKind::Worker => EntityKind::Worker,
    }
}

fn kind_to_wit(k: EntityKind) -> types::EntityKind {
    match k {
        EntityKind::Container => types::EntityKind::Container,
        EntityKind::Worker => types::EntityKind::Worker,
    }
}

fn capability_from_wit(c: types::Capability) -> Capability {
    match c {
        types::Capability::Docker => Capability::Docker,
        types::Capability::DockerExec => Capability::DockerExec,
        types::Capability::DockerBuild => Capability::DockerBuild,
        types::Capability::Supervisor => Capability::Supervisor,
        types::Capability::SupervisorConfig => Capability::SupervisorConfig,
        types::Capability::Files => Capability::Files,
    }
}
