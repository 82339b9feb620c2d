//! The plugin runtime: one wasmtime engine, plugins compiled once (cached on disk) and
//! instantiated fresh for every request under a memory cap, a deadline and a WASI context
//! with no ambient authority.
//!
//! Start with [`Runtime::load`] (a file -> a [`LoadedPlugin`]) and [`Runtime::handle`] (one
//! request on a fresh instance). [`plugins::PluginDir`] keeps a directory of plugins loaded
//! and follows its changes. The runtime knows no queue and no route table: the service asks
//! it to run a plugin the router chose.

mod ahead;
mod cache;
mod error;
mod limits;
pub mod plugins;
pub mod stdio;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config as EngineConfig, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    Trap, UpdateDeadline,
};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{Plugin, PluginPre, types};
use crate::capabilities::policy::{Capability, Policy};
use crate::capabilities::{Backends, Capabilities, EffectSummary};
use crate::config::{DEFAULT_MAX_MEMORY_BYTES, Grants, PluginConfig};
use crate::message::{Entity, EntityKind, ManagerRequest, Target};
pub use ahead::Aftercare;
pub use error::{LoadError, RunError};
use limits::Limiter;
use stdio::Capture;

/// How often the epoch advances; the granularity of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// The optional export that names a plugin's idempotent actions.
const IDEMPOTENT_EXPORT: &str = "idempotent-actions";
/// The optional export that names the actions a dry run must not run.
const UNPLANNABLE_EXPORT: &str = "unplannable-actions";

/// Calls the optional export `name` (a list of (kind, action) pairs) when the plugin has it.
async fn optional_actions(
    instance: &wasmtime::component::Instance,
    store: &mut Store<HostState>,
    name: &str,
) -> wasmtime::Result<Option<Vec<types::HandledAction>>> {
    if instance.get_export_index(&mut *store, None, name).is_none() {
        return Ok(None);
    }
    let f = instance
        .get_typed_func::<(), (Vec<types::HandledAction>,)>(&mut *store, name)
        .map_err(|e| wasmtime::format_err!("{name} has the wrong type: {e}"))?;
    Ok(Some(f.call_async(&mut *store, ()).await?.0))
}

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
    /// The manager's environment (read by the CLI), from which `grants.env` picks what each
    /// plugin sees.
    pub environment: Vec<(String, String)>,
    /// How much of a plugin memory stays mapped when its instance ends, its dirty pages reset
    /// in place, so the next instance in that slot takes no page faults there; `None`:
    /// [`KEEP_RESIDENT_BYTES`]; `Some(0)`: every page returned to the kernel.
    pub keep_resident_bytes: Option<usize>,
}

/// The default of [`RuntimeSettings::keep_resident_bytes`]: a small plugin's whole working set
/// (its stack and heap pages), at most this much resident per pooled memory slot. 2 MiB: a
/// Rust plugin's memory is its 1 MiB stack, then its data and heap; the shipped plugins start
/// with 2 MiB of memory, so a short action neither grows it nor touches a page returned to the
/// kernel.
pub const KEEP_RESIDENT_BYTES: usize = 2 << 20;

impl RuntimeSettings {
    fn memory_cap(&self, plugin: &str) -> u64 {
        self.plugins
            .get(plugin)
            .and_then(|p| p.max_memory_bytes)
            .unwrap_or(self.default_max_memory_bytes)
    }

    /// The (kind, action) pairs of `plugin` that may run again after a crash:
    /// `[plugins.<name>] idempotent` (actions, on every kind the plugin handles them for)
    /// when set, else what the plugin declares (`idempotent-actions`), else none.
    fn idempotent(
        &self,
        plugin: &str,
        handles: &[(EntityKind, String)],
        declared: Option<Vec<types::HandledAction>>,
    ) -> BTreeSet<(EntityKind, String)> {
        match self.plugins.get(plugin).and_then(|p| p.idempotent.as_ref()) {
            Some(actions) => handles
                .iter()
                .filter(|(_, a)| actions.contains(a))
                .cloned()
                .collect(),
            None => declared
                .unwrap_or_default()
                .into_iter()
                .map(|h| (kind_from_wit(h.kind), h.action))
                .collect(),
        }
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
    /// Whether the compiled code came from the disk cache.
    pub from_cache: bool,
    /// The (kind, action) pairs that may run again after a crash interrupted them.
    pub idempotent: BTreeSet<(EntityKind, String)>,
    /// The (kind, action) pairs a dry run must not run (the plugin's `unplannable-actions`).
    pub unplannable: BTreeSet<(EntityKind, String)>,
    /// How to instantiate it, now or ahead of a request; holds its policy.
    ahead: Arc<ahead::Ahead>,
}

impl LoadedPlugin {
    /// What it asked for ∩ what it was granted.
    pub fn policy(&self) -> &Arc<Policy> {
        self.ahead.policy()
    }

    /// Runs it under `policy` from now on, every instance of it (an instance made ahead under
    /// the policy before is dropped): the plugin test harness grants what its script says.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.ahead = Arc::new(self.ahead.with_policy(policy));
    }
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
    /// With what the host saw of the request's changing calls: `changed` on every outcome;
    /// in a dry run, `dry_run` and the `plan`. These keys are the host's: a plugin's own value
    /// of them is replaced.
    #[must_use]
    pub fn with_effects(mut self, effects: EffectSummary) -> Self {
        self.metadata
            .insert("changed".into(), serde_json::Value::Bool(effects.changed));
        if let Some(plan) = effects.plan {
            self.metadata
                .insert("dry_run".into(), serde_json::Value::Bool(true));
            self.metadata.insert("plan".into(), plan.into());
        }
        self
    }
}

impl From<RunError> for PluginOutcome {
    /// The failure Core gets when the plugin gave no answer.
    fn from(e: RunError) -> Self {
        Self {
            success: false,
            output: None,
            error: Some(e.to_string()),
            metadata: serde_json::Map::new(),
        }
    }
}

/// Watches the requests plugins handle; `--record` writes each one's host calls and response
/// as a trace. The CLI builds it (the runtime knows only this trait) and hands it in.
pub trait Observer: Send + Sync {
    /// A request starts: the observation wraps `backends`, which its host calls then reach.
    fn begin(&self, backends: &Backends) -> Box<dyn Observation>;
}

/// One request under an [`Observer`].
pub trait Observation: Send {
    /// The backends this request's host calls reach.
    fn backends(&self) -> Backends;
    /// The request has ended with `outcome`.
    fn end(
        self: Box<Self>,
        request: &ManagerRequest,
        entity: &Entity,
        grants: &Grants,
        outcome: &Result<PluginOutcome, RunError>,
    );
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
    observer: Option<Arc<dyn Observer>>,
    /// Instances made ahead now, over all plugins.
    ahead: Arc<AtomicUsize>,
    maker: ahead::Maker,
    _ticker: Ticker,
}

impl Runtime {
    /// One engine with the pooling allocator and epoch interruption; capability calls reach
    /// `backends`, through `observer`'s wrapping when there is one.
    pub fn new(
        mut settings: RuntimeSettings,
        backends: Backends,
        observer: Option<Arc<dyn Observer>>,
    ) -> Result<Self, RuntimeError> {
        if settings.default_max_memory_bytes == 0 {
            settings.default_max_memory_bytes = DEFAULT_MAX_MEMORY_BYTES;
        }
        if settings.max_instances == 0 {
            settings.max_instances = 256;
        }
        // Room for the instances made ahead of their requests beside the running ones.
        let n = settings.max_instances.saturating_add(ahead::MAX_AHEAD);
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
        // A fresh instance touching the pages its previous user returned takes a page fault
        // for each: keep the low pages resident and reset only the dirty ones (found with the
        // PAGEMAP_SCAN ioctl where the kernel has it, Linux 6.7+).
        let keep = settings.keep_resident_bytes.unwrap_or(KEEP_RESIDENT_BYTES);
        pool.linear_memory_keep_resident(keep)
            .table_keep_resident(keep.min(64 << 10))
            .pagemap_scan(wasmtime::Enabled::Auto);
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
            observer,
            ahead: Arc::new(AtomicUsize::new(0)),
            maker: ahead::Maker::start(),
            _ticker: Ticker(stop),
        })
    }

    /// Says whether requests are waiting beyond those running (the consumer's last fetch
    /// took as many rows as it asked for): while they are, no instance is made ahead of its
    /// request, each is made when its request asks (see `ahead`).
    pub fn backlog(&self, waiting: bool) {
        self.maker.backlog(waiting);
    }

    /// Plugin instances made ahead of their requests and not taken yet, over all plugins.
    pub fn made_ahead(&self) -> usize {
        self.ahead.load(Ordering::Relaxed)
    }

    /// Plugin instances alive now, over all plugins: running, made ahead, and used ones not
    /// dropped yet (the engine's own count of the instances it holds memory for).
    pub fn live_instances(&self) -> u64 {
        self.engine
            .pooling_allocator_metrics()
            .map_or(0, |m| m.component_instances())
    }

    /// Reads, compiles (through the cache) and describes a plugin file. The error says why the
    /// file is not a usable plugin.
    pub async fn load(&self, path: &Path) -> Result<LoadedPlugin, LoadError> {
        let wasm = read_plugin_file(path)?;
        self.load_bytes(path, wasm).await
    }

    /// Compiles (through the cache) and describes a plugin held in memory; `path` names it.
    pub async fn load_bytes(&self, path: &Path, wasm: Vec<u8>) -> Result<LoadedPlugin, LoadError> {
        let sha256 = cache::hex(&Sha256::digest(&wasm));
        let engine = self.engine.clone();
        let dir = self.cache_dir.clone();
        let hash = sha256.clone();
        let (component, from_cache) = tokio::task::spawn_blocking(move || {
            cache::compile(&engine, dir.as_deref(), &wasm, &hash)
        })
        .await
        .map_err(|e| LoadError::CompileTask(e.to_string()))?
        .map_err(|e| LoadError::Invalid(first_line(&format!("{e:?}")).to_owned()))?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WrongWorld(first_line(&format!("{e:?}")).to_owned()))?;
        let pre = PluginPre::new(instance_pre)
            .map_err(|e| LoadError::MissingExports(first_line(&format!("{e:?}")).to_owned()))?;

        // describe() runs like a request: fresh instance, no grants, a deadline, the default cap.
        let probe = Arc::new(Policy::new("(loading)", [], Grants::default(), &[]));
        let deadline = Instant::now() + DESCRIBE_TIMEOUT;
        let (mut store, stdout, stderr) = self.store(
            probe,
            "describe".into(),
            self.settings.default_max_memory_bytes,
            deadline,
            self.backends.clone(),
        )?;
        let call = async {
            let instance = pre.instance_pre().instantiate_async(&mut store).await?;
            let plugin = Plugin::new(&mut store, &instance)?;
            let info = plugin.call_describe(&mut store).await?;
            // Optional (worlds `plugin-with-idempotence`, `plugin-with-planning`): a 0.1.0
            // plugin has neither export.
            let declared = optional_actions(&instance, &mut store, IDEMPOTENT_EXPORT).await?;
            let unplannable = optional_actions(&instance, &mut store, UNPLANNABLE_EXPORT)
                .await?
                .unwrap_or_default();
            wasmtime::Result::<_>::Ok((info, declared, unplannable))
        };
        let (info, declared, unplannable) =
            match tokio::time::timeout(DESCRIBE_TIMEOUT + Duration::from_millis(500), call).await {
                Ok(Ok(info)) => info,
                Ok(Err(e)) => {
                    let limiter = &store.data().limiter;
                    return Err(
                        classify(&e, limiter, &stderr, "describe()", DESCRIBE_TIMEOUT).into(),
                    );
                }
                Err(_) => {
                    return Err(RunError::NoReturn {
                        who: "describe()".into(),
                        within: DESCRIBE_TIMEOUT,
                    }
                    .into());
                }
            };
        drain("(loading)", "describe", &stdout, &stderr);
        validate_name(&info.name)?;
        if info.version.trim().is_empty() {
            return Err(LoadError::NoVersion(info.name));
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
        let max_memory_bytes = self.settings.memory_cap(&info.name);
        let policy = Arc::new(Policy::new(
            &info.name,
            caps,
            grants,
            &self.settings.environment,
        ));
        Ok(LoadedPlugin {
            max_memory_bytes,
            idempotent: self.settings.idempotent(&info.name, &handles, declared),
            unplannable: unplannable
                .iter()
                .map(|h| (kind_from_wit(h.kind), h.action.clone()))
                .collect(),
            ahead: Arc::new(ahead::Ahead::new(
                pre,
                policy,
                max_memory_bytes,
                self.ahead.clone(),
                self.maker.clone(),
            )),
            name: info.name,
            version: info.version,
            handles,
            path: path.to_owned(),
            sha256,
            from_cache,
        })
    }

    fn store(
        &self,
        policy: Arc<Policy>,
        correlation_id: String,
        max_memory_bytes: u64,
        deadline: Instant,
        backends: Backends,
    ) -> Result<(Store<HostState>, Capture, Capture), RunError> {
        let caps = Capabilities::new(policy.clone(), correlation_id, backends, deadline);
        new_store(&self.engine, &policy, caps, max_memory_bytes)
    }

    /// Runs one request on a fresh instance of `plugin`, within `req`'s timeout: the plugin's
    /// answer, or why it gave none.
    pub async fn handle(
        &self,
        plugin: &LoadedPlugin,
        entity: &Entity,
        req: &ManagerRequest,
    ) -> Handled {
        let observation = self.observer.as_ref().map(|o| o.begin(&self.backends));
        let backends = observation
            .as_ref()
            .map_or_else(|| self.backends.clone(), |o| o.backends());
        let handled = self.run(plugin, entity, req, backends).await;
        if let Some(o) = observation {
            o.end(req, entity, plugin.policy().grants(), &handled.outcome);
        }
        handled
    }

    async fn run(
        &self,
        plugin: &LoadedPlugin,
        entity: &Entity,
        req: &ManagerRequest,
        backends: Backends,
    ) -> Handled {
        let timeout = req.timeout();
        let deadline = Instant::now() + timeout;
        let mut caps = Capabilities::new(
            plugin.policy().clone(),
            req.correlation_id.clone(),
            backends,
            deadline,
        );
        if req.dry_run() {
            caps = caps.planning();
        }
        // The instance made ahead when there is one, with this request's capabilities (its
        // deadline too); else one made now.
        let idle = plugin.ahead.after_idle();
        let (mut store, stdout, stderr, instance) = match plugin.ahead.take() {
            Some(ready) => {
                let (mut store, instance, stdout, stderr) = ready.into_parts();
                store.data_mut().caps = caps;
                store.set_epoch_deadline(1);
                (store, stdout, stderr, Some(instance))
            }
            None => match new_store(&self.engine, plugin.policy(), caps, plugin.max_memory_bytes) {
                Ok((store, stdout, stderr)) => (store, stdout, stderr, None),
                Err(e) => {
                    return Handled {
                        outcome: Err(e),
                        effects: EffectSummary::default(),
                        aftercare: Aftercare::none(),
                    };
                }
            },
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
            let instance = match instance {
                Some(i) => i,
                None => plugin.ahead.pre().instantiate_async(&mut store).await?,
            };
            instance.call_handle(&mut store, &request).await
        };
        // The epoch callback stops wasm code at the deadline and capability calls are bounded
        // by it; this outer bound is the last resort.
        let result = tokio::time::timeout(timeout + Duration::from_millis(250), call).await;
        let dropped_lines = store.data().caps.log.dropped();
        if dropped_lines > 0 {
            tracing::warn!(plugin = %plugin.name, correlation_id = %req.correlation_id, dropped_lines, "plugin log lines over the limit were dropped");
        }
        let who = || format!("plugin '{}'", plugin.name);
        let outcome = match result {
            Ok(Ok(resp)) => Ok(outcome_from_wit(resp, &plugin.name)),
            Ok(Err(e)) => Err(classify(
                &e,
                &store.data().limiter,
                &stderr,
                &who(),
                timeout,
            )),
            Err(_) => Err(RunError::Timeout {
                who: who(),
                timeout,
            }),
        };
        drain(&plugin.name, &req.correlation_id, &stdout, &stderr);
        let effects = store.data().caps.effects.summary();
        Handled {
            outcome,
            effects,
            aftercare: plugin.ahead.ended(store, idle),
        }
    }
}

/// One request's run: the plugin's answer or why it gave none, what its host calls changed,
/// and what is left to do once the answer is sent.
#[derive(Debug)]
pub struct Handled {
    /// The plugin's answer, or why it gave none.
    pub outcome: Result<PluginOutcome, RunError>,
    /// What the plugin's host calls changed.
    pub effects: EffectSummary,
    /// The used instance to give back: drop it once the answer is on its way.
    pub aftercare: Aftercare,
}

/// A store for one instance of a plugin with `policy` (its WASI environment and read-only
/// preopens) whose host calls go through `caps`; wasm code stops at `caps.deadline`, read at
/// each epoch tick so that an instance made ahead of its request takes the request's.
fn new_store(
    engine: &Engine,
    policy: &Policy,
    caps: Capabilities,
    max_memory_bytes: u64,
) -> Result<(Store<HostState>, Capture, Capture), RunError> {
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
            .map_err(|e| RunError::Preopen {
                dir: dir.display().to_string(),
                cause: format!("{e:?}"),
            })?;
    }
    let state = HostState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        limiter: Limiter::new(max_memory_bytes),
        caps,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|ctx| {
        if Instant::now() >= ctx.data().caps.deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    Ok((store, stdout, stderr))
}

fn read_plugin_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    let meta = std::fs::metadata(path).map_err(|e| LoadError::Read(e.to_string()))?;
    if meta.len() > MAX_PLUGIN_BYTES {
        return Err(LoadError::TooLarge {
            max_mib: MAX_PLUGIN_BYTES >> 20,
        });
    }
    let wasm = std::fs::read(path).map_err(|e| LoadError::Read(e.to_string()))?;
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    if wasm[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::CoreModule);
    }
    Ok(wasm)
}

fn validate_name(name: &str) -> Result<(), LoadError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(LoadError::InvalidName(name.to_owned()))
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Says why a call into a plugin failed, in terms an operator can act on.
fn classify(
    err: &wasmtime::Error,
    limiter: &Limiter,
    stderr: &Capture,
    who: &str,
    timeout: Duration,
) -> RunError {
    let who = who.to_owned();
    let trap = err.downcast_ref::<Trap>();
    if trap == Some(&Trap::Interrupt) {
        return RunError::Timeout { who, timeout };
    }
    if let Some(wanted) = limiter.refused_growth {
        return RunError::Memory {
            who,
            limit: limiter.max_memory_bytes(),
            wanted,
        };
    }
    let stderr = stderr.text();
    if let Some(at) = stderr.find("panicked at ") {
        let panic = &stderr[at..];
        let mut lines = panic.lines();
        let location = lines.next().unwrap_or_default().trim_end_matches(':');
        let message: Vec<&str> = lines
            .take_while(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        return RunError::Panic {
            who,
            location: location.to_owned(),
            message: message.join("\n").trim().to_owned(),
        };
    }
    match trap {
        Some(t) => RunError::Trap {
            who,
            trap: t.to_string(),
        },
        None => RunError::Failed {
            who,
            cause: first_line(&format!("{err:?}")).to_owned(),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_gets_its_own_memory_cap_and_the_pool_fits_the_largest() {
        let mut plugins = BTreeMap::new();
        plugins.insert(
            "big".to_owned(),
            PluginConfig {
                max_memory_bytes: Some(128 << 20),
                ..PluginConfig::default()
            },
        );
        let s = RuntimeSettings {
            default_max_memory_bytes: 32 << 20,
            plugins,
            ..RuntimeSettings::default()
        };
        assert_eq!(s.memory_cap("big"), 128 << 20);
        assert_eq!(s.memory_cap("other"), 32 << 20);
        assert_eq!(s.largest_memory_cap(), 128 << 20);
    }

    #[test]
    fn only_components_with_a_usable_name_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        assert_eq!(
            read_plugin_file(&file("junk.wasm", b"junk")),
            Err(LoadError::NotWasm)
        );
        assert_eq!(
            read_plugin_file(&file("core.wasm", b"\0asm\x01\0\0\0")),
            Err(LoadError::CoreModule)
        );
        assert!(matches!(
            read_plugin_file(&dir.path().join("missing.wasm")),
            Err(LoadError::Read(_))
        ));
        assert_eq!(validate_name("docker-compose"), Ok(()));
        assert_eq!(
            validate_name("Bad Name"),
            Err(LoadError::InvalidName("Bad Name".into()))
        );
    }
}
