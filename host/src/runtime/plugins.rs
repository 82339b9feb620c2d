//! The plugins directory: every `*.wasm` in it loaded and kept in step with the directory. A
//! change is applied by building a new [`PluginSet`] and swapping it in whole, so a request
//! holds the `Arc` of the set (and plugin) it started with until it finishes. Which plugin
//! serves which action is the router's business: the set only says what loaded, in which
//! precedence order, and what did not.
//!
//! The shipped plugins are built into the binary ([`BUILTIN`]); they come after the
//! directory's, so a newer `docker-compose.wasm` dropped into the directory replaces the
//! built-in one.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{LoadError, LoadedPlugin, Runtime};

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// Where a built-in plugin says it comes from.
pub fn builtin_path(file: &str) -> PathBuf {
    PathBuf::from(format!("(built-in)/{file}"))
}

/// How often the directory is looked at. A file is loaded once it has looked the same twice,
/// so a half-copied file is not loaded; changes land within two polls plus the compile.
pub const POLL_INTERVAL: Duration = Duration::from_millis(150);

/// A file that is not a usable plugin, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub error: LoadError,
}

/// The plugins loaded at one moment, and the files that were skipped.
#[derive(Debug, Default)]
pub struct PluginSet {
    plugins: Vec<Arc<LoadedPlugin>>,
    builtins: Vec<Arc<LoadedPlugin>>,
    failures: Vec<LoadFailure>,
}

impl PluginSet {
    /// The directory's plugins that loaded, in precedence order: those already serving first,
    /// then the others by path.
    pub fn plugins(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins
    }

    /// The built-in plugins, which come after the directory's.
    pub fn builtins(&self) -> &[Arc<LoadedPlugin>] {
        &self.builtins
    }

    /// Files that did not load, with the reason.
    pub fn failures(&self) -> &[LoadFailure] {
        &self.failures
    }
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

impl Stamp {
    /// The stamp of the file at `path`, when there is one.
    pub fn of_path(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }

    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            ino: meta.ino(),
        }
    }
}

struct FileState {
    stamp: Stamp,
    loaded: Result<Arc<LoadedPlugin>, LoadError>,
}

#[derive(Default)]
struct DirState {
    files: BTreeMap<PathBuf, FileState>,
    /// Files seen changed once, waiting to look the same on the next poll.
    settling: HashMap<PathBuf, Stamp>,
}

/// A plugins directory kept loaded.
pub struct PluginDir {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    builtins: Vec<Arc<LoadedPlugin>>,
    current: watch::Sender<Arc<PluginSet>>,
    state: Mutex<DirState>,
}

impl PluginDir {
    /// Loads every `*.wasm` in `dir` (a missing directory is an empty one); no built-ins.
    pub async fn open(runtime: Arc<Runtime>, dir: PathBuf) -> Arc<Self> {
        Self::open_with(runtime, dir, &[]).await
    }

    /// Loads `builtins` (file name, component bytes), then every `*.wasm` in `dir`.
    pub async fn open_with(
        runtime: Arc<Runtime>,
        dir: PathBuf,
        builtins: &[(&str, &[u8])],
    ) -> Arc<Self> {
        let mut loaded = Vec::new();
        for (file, wasm) in builtins {
            let path = builtin_path(file);
            match runtime.load_bytes(&path, wasm.to_vec()).await {
                Ok(p) => loaded.push(Arc::new(p)),
                // A build of the manager whose plugins do not load is a bug; say it and serve
                // the rest.
                Err(reason) => tracing::error!(plugin = file, %reason, "built-in plugin skipped"),
            }
        }
        let set = PluginSet {
            builtins: loaded.clone(),
            ..PluginSet::default()
        };
        let this = Arc::new(Self {
            runtime,
            dir,
            builtins: loaded,
            current: watch::Sender::new(Arc::new(set)),
            state: Mutex::new(DirState::default()),
        });
        this.rescan(false).await;
        this
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The plugins serving now. Hold the `Arc` for the length of a request.
    pub fn snapshot(&self) -> Arc<PluginSet> {
        self.current.borrow().clone()
    }

    /// Sees every new set.
    pub fn changes(&self) -> watch::Receiver<Arc<PluginSet>> {
        self.current.subscribe()
    }

    fn scan_dir(&self) -> BTreeMap<PathBuf, Stamp> {
        let mut found = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return found;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "wasm")
                && let Ok(meta) = std::fs::metadata(&path)
                && meta.is_file()
            {
                found.insert(path, Stamp::of(&meta));
            }
        }
        found
    }

    /// Looks at the directory once and applies what changed. With `settle`, a new or changed
    /// file waits until it looks the same on two looks in a row. Returns whether the set changed.
    pub async fn rescan(&self, settle: bool) -> bool {
        let found = self.scan_dir();
        // Decide what to (re)load without holding the lock across the loads.
        let to_load: Vec<(PathBuf, Stamp)> = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let mut to_load = Vec::new();
            for (path, stamp) in &found {
                if st.files.get(path).is_some_and(|f| f.stamp == *stamp) {
                    st.settling.remove(path);
                    continue;
                }
                if settle && st.settling.get(path) != Some(stamp) {
                    st.settling.insert(path.clone(), *stamp);
                    continue;
                }
                st.settling.remove(path);
                to_load.push((path.clone(), *stamp));
            }
            st.settling.retain(|p, _| found.contains_key(p));
            let removed = st.files.keys().any(|p| !found.contains_key(p));
            if to_load.is_empty() && !removed {
                return false;
            }
            to_load
        };
        let mut loaded = Vec::with_capacity(to_load.len());
        for (path, stamp) in to_load {
            let result = self.runtime.load(&path).await.map(Arc::new);
            loaded.push((
                path,
                FileState {
                    stamp,
                    loaded: result,
                },
            ));
        }

        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.snapshot();
        let mut events = Vec::new();
        st.files.retain(|p, _| {
            let keep = found.contains_key(p);
            if !keep {
                events.push(format!("unloaded {}", p.display()));
            }
            keep
        });
        for (path, state) in loaded {
            let verb = if st.files.contains_key(&path) {
                "replaced"
            } else {
                "loaded"
            };
            if let Ok(p) = &state.loaded {
                events.push(format!(
                    "{verb} '{}' {} from {}",
                    p.name,
                    p.version,
                    path.display()
                ));
            }
            st.files.insert(path, state);
        }
        // Plugins already serving keep precedence over newcomers: a conflict refuses the later.
        let rank = |path: &Path| {
            previous
                .plugins()
                .iter()
                .position(|p| p.path == path)
                .unwrap_or(usize::MAX)
        };
        let mut plugins = Vec::new();
        let mut failures = Vec::new();
        for (path, file) in &st.files {
            match &file.loaded {
                Ok(p) => plugins.push(p.clone()),
                Err(error) => failures.push(LoadFailure {
                    path: path.clone(),
                    error: error.clone(),
                }),
            }
        }
        plugins.sort_by(|a, b| {
            rank(&a.path)
                .cmp(&rank(&b.path))
                .then_with(|| a.path.cmp(&b.path))
        });
        let set = PluginSet {
            plugins,
            builtins: self.builtins.clone(),
            failures,
        };
        for event in events {
            tracing::info!(dir = %self.dir.display(), "plugin {event}");
        }
        let old_failures = previous.failures();
        for f in set.failures() {
            if !old_failures.contains(f) {
                tracing::error!(path = %f.path.display(), reason = %f.error, "plugin skipped");
            }
        }
        self.current.send_replace(Arc::new(set));
        true
    }

    /// Follows the directory until `shutdown` resolves.
    pub async fn watch(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => { self.rescan(true).await; }
            }
        }
    }
}
