//! Instances made ahead of their request. Making an instance (its store, its WASI context, the
//! instantiation) and dropping one (returning its memory to the pool) take about as long as a
//! short action itself; a plugin whose request came after an idle spell gets its next instance
//! made in the background, and its used store dropped there too, so the next request only fills
//! in its own capabilities and calls `handle`.
//!
//! Every instance still serves exactly one request and is made fresh from the plugin's code:
//! nothing of one request reaches the next. While it is made, the instance's host calls reach
//! nothing — its capabilities grant nothing — and a plugin that calls the host while it is
//! instantiated (a start function; no toolchain we know emits one that does) has that instance
//! thrown away and is always instantiated inline from then on, so what it sees never depends on
//! whether its instance was made ahead.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::Store;

use super::stdio::Capture;
use super::{DESCRIBE_TIMEOUT, HostState, new_store};
use crate::bindings::{Plugin, PluginPre};
use crate::capabilities::Capabilities;
use crate::capabilities::policy::Policy;
use crate::config::Grants;

/// A request that starts at least this long after the plugin's previous one ended finds the
/// plugin idle: its instance is then made ahead for the next. Requests that follow each other
/// closer (a burst, one entity's line) are served as they come, the instance made and dropped
/// inline: handing that work to another thread costs a wake-up each time and saves nothing
/// when the next request is already waiting.
const IDLE_GAP: std::time::Duration = std::time::Duration::from_micros(200);

/// Instances made ahead, over all plugins, at most: the pool has room for these beside
/// `max_instances` running ones.
pub(super) const MAX_AHEAD: u32 = 16;

/// An instance ready for its request.
pub(super) struct Prepared {
    store: Store<HostState>,
    instance: Plugin,
    stdout: Capture,
    stderr: Capture,
    _counted: Counted,
}

impl Prepared {
    /// The store, the instance and its captured output; its place among the [`MAX_AHEAD`]
    /// is given back.
    pub(super) fn into_parts(self) -> (Store<HostState>, Plugin, Capture, Capture) {
        (self.store, self.instance, self.stdout, self.stderr)
    }
}

/// One of the [`MAX_AHEAD`] places, given back when the instance is taken or dropped.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How one plugin is instantiated: its instance made ahead, and how to make the next.
pub(super) struct Ahead {
    pre: PluginPre<HostState>,
    /// The plugin's policy: its WASI environment and preopens.
    policy: Arc<Policy>,
    max_memory_bytes: u64,
    /// Instances made ahead now, over all plugins.
    count: Arc<AtomicUsize>,
    ready: Mutex<Option<Prepared>>,
    /// A making is under way.
    busy: AtomicBool,
    /// The plugin called the host while it was instantiated: never made ahead again.
    off: AtomicBool,
    maker: Maker,
    /// When the plugin's last request ended.
    last_end: Mutex<Option<Instant>>,
}

impl Ahead {
    pub(super) fn new(
        pre: PluginPre<HostState>,
        policy: Arc<Policy>,
        max_memory_bytes: u64,
        count: Arc<AtomicUsize>,
        maker: Maker,
    ) -> Self {
        Self {
            maker,
            pre,
            policy,
            max_memory_bytes,
            count,
            ready: Mutex::new(None),
            busy: AtomicBool::new(false),
            off: AtomicBool::new(false),
            last_end: Mutex::new(None),
        }
    }

    /// The plugin's instantiation, for an instance made at its request.
    pub(super) fn pre(&self) -> &PluginPre<HostState> {
        &self.pre
    }

    /// The plugin's policy, the one every instance of it is made under.
    pub(super) fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The same plugin under `policy`, nothing made ahead yet.
    pub(super) fn with_policy(&self, policy: Arc<Policy>) -> Self {
        Self::new(
            self.pre.clone(),
            policy,
            self.max_memory_bytes,
            self.count.clone(),
            self.maker.clone(),
        )
    }

    /// A request starts: whether the plugin was idle before it (its first request, or one
    /// [`IDLE_GAP`] after the previous one ended) while no backlog waits (see
    /// [`Maker::backlog`]).
    pub(super) fn after_idle(&self) -> bool {
        if self.maker.backlogged() {
            return false;
        }
        let last = *self.last_end.lock().unwrap_or_else(|e| e.into_inner());
        last.is_none_or(|t| t.elapsed() >= IDLE_GAP)
    }

    /// A request that used `used` has its answer: the next one to start within [`IDLE_GAP`]
    /// of now does not find the plugin idle, and what is left of it is its [`Aftercare`].
    pub(super) fn ended(self: &Arc<Self>, used: Store<HostState>, idle: bool) -> Aftercare {
        *self.last_end.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        Aftercare(Some((self.clone(), used, idle)))
    }

    /// A request is done with `used`: after an idle plugin (`idle`), its store is dropped and
    /// the next instance made on the maker's thread; else both are left to the request's own
    /// thread (the store dropped here, the next instance made when it is asked for).
    fn done(self: &Arc<Self>, used: Store<HostState>, idle: bool) {
        if idle {
            self.refill(used);
        } else {
            drop(used);
        }
    }

    /// The instance made ahead, when there is one.
    pub(super) fn take(&self) -> Option<Prepared> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// On the maker's thread: drops `used` (the store a request is done with), then makes the
    /// next instance when none is ready and the plugin may have one.
    fn refill(self: &Arc<Self>, used: Store<HostState>) {
        let wanted = !self.off.load(Ordering::Relaxed)
            && self.count.load(Ordering::Relaxed) < MAX_AHEAD as usize
            && !self.busy.swap(true, Ordering::AcqRel);
        let this = self.clone();
        self.maker.send(Box::pin(async move {
            drop(used);
            if wanted {
                this.make().await;
                this.busy.store(false, Ordering::Release);
            }
        }));
    }

    async fn make(&self) {
        if self
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return;
        }
        if self.count.fetch_add(1, Ordering::AcqRel) >= MAX_AHEAD as usize {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let counted = Counted(self.count.clone());
        let nothing = Arc::new(Policy::new("(preparing)", [], Grants::default(), &[]));
        let caps = Capabilities::preparing(nothing, Instant::now() + DESCRIBE_TIMEOUT);
        let Ok((mut store, stdout, stderr)) = new_store(
            self.pre.instance_pre().engine(),
            &self.policy,
            caps,
            self.max_memory_bytes,
        ) else {
            // A preopen that fails now fails the request too: it says why there.
            return;
        };
        let instance = match self.pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            Err(e) => {
                // The request instantiates inline and reports what fails.
                tracing::debug!(plugin = self.policy.plugin(), error = %e, "instance not made ahead");
                return;
            }
        };
        if store.data().caps.touched() {
            tracing::info!(
                plugin = self.policy.plugin(),
                "the plugin calls the host while it is instantiated: its instances are made at each request"
            );
            self.off.store(true, Ordering::Relaxed);
            return;
        }
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) = Some(Prepared {
            store,
            instance,
            stdout,
            stderr,
            _counted: counted,
        });
    }
}

/// What is left of a request once its answer is known: its used instance to give back, and
/// after an idle spell the plugin's next instance to make ahead. Done when dropped. Whoever
/// sends the answer on drops it after the answer is on its way: dropping a store takes as long
/// as a short action's own work, and waking the thread that makes instances takes about 10 µs
/// on a virtual machine (an interrupt to an idle CPU), neither of which an answer should wait
/// for.
#[must_use = "dropping it at once hands the instance back before the answer is sent"]
pub struct Aftercare(Option<(Arc<Ahead>, Store<HostState>, bool)>);

impl Aftercare {
    /// Nothing left to do (a request that ran no plugin).
    pub fn none() -> Self {
        Self(None)
    }
}

impl Drop for Aftercare {
    fn drop(&mut self) {
        if let Some((ahead, used, idle)) = self.0.take() {
            ahead.done(used, idle);
        }
    }
}

impl std::fmt::Debug for Aftercare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Aftercare(instance to give back)"
        } else {
            "Aftercare(nothing)"
        })
    }
}

type Job = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The thread that makes instances ahead and drops used ones, beside the runtime's workers so
/// that this work never delays a request's I/O. It ends when the last plugin holding it does.
#[derive(Clone)]
pub(super) struct Maker {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    /// Requests are waiting beyond those running (see [`Maker::backlog`]).
    backlog: Arc<AtomicBool>,
}

impl Maker {
    /// Starts the thread; none (and so nothing made ahead, every job run where it is sent)
    /// when the system refuses one.
    pub(super) fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("plugin-maker".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                else {
                    return;
                };
                while let Ok(job) = rx.recv() {
                    rt.block_on(job);
                }
            });
        let jobs = match started {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "no thread to make plugin instances ahead: each is made at its request");
                None
            }
        };
        Self {
            jobs,
            backlog: Arc::default(),
        }
    }

    /// Whether requests are waiting beyond those running (a burst, a backlog being drained):
    /// then no plugin is idle. Its next request is already there, so the instance it needs is
    /// made when it asks, as the used one is dropped where it ends: handing each to this
    /// thread would cost a wake-up of it (and the CPU it takes from the requests) for an
    /// answer that waits for nothing. Measured on drains of 5,000 no-op requests of one
    /// entity, alternating, 2 cores: 61.2 µs of manager CPU per action (median of 13) against
    /// 66.7 µs with instances made ahead after every gap of [`IDLE_GAP`] (one request in ten
    /// or twenty, at the edges of the batches), and 7% more actions per second.
    pub(super) fn backlog(&self, waiting: bool) {
        if self.backlog.load(Ordering::Relaxed) != waiting {
            self.backlog.store(waiting, Ordering::Relaxed);
        }
    }

    fn backlogged(&self) -> bool {
        self.backlog.load(Ordering::Relaxed)
    }

    fn send(&self, job: Job) {
        if let Some(tx) = &self.jobs {
            // A maker that is gone (its runtime could not be built) drops the job: the store
            // it held is dropped with it and the instance is made at the request.
            let _ = tx.send(job);
        }
    }
}
