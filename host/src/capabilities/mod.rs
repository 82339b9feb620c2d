//! The host side of the WIT interfaces plugins import: `log`, `docker`, `supervisor`.
//!
//! Each capability checks the calling plugin's [`policy::Policy`] first, then hands the call to
//! a backend trait (the Docker engine, supervisord, or a fake in tests). Files are not a host
//! interface: granted directories are WASI read-only preopens, set up in `runtime`.

pub mod docker;
pub mod log;
pub mod policy;
pub mod supervisor;

use std::sync::Arc;
use std::time::Instant;

use crate::bindings::types;

pub use docker::{Batch, DockerBackend, PluginLevelDocker};
pub use supervisor::SupervisorBackend;

/// The backends capability calls reach once the policy allows them.
#[derive(Clone)]
pub struct Backends {
    /// The Docker engine.
    pub docker: Arc<dyn DockerBackend>,
    /// supervisord.
    pub supervisor: Arc<dyn SupervisorBackend>,
    /// Docker calls answered as the plugin made them, once granted, instead of the backend
    /// (`plugin test`'s plugin-level scripts); `None` everywhere else.
    pub plugin_level: Option<Arc<dyn PluginLevelDocker>>,
}

impl Default for Backends {
    fn default() -> Self {
        Self {
            docker: Arc::new(docker::Unconfigured),
            supervisor: Arc::new(supervisor::Unconfigured),
            plugin_level: None,
        }
    }
}

/// What one request's changing host calls did — or, in a dry run, would do. The host, not the
/// plugin, knows which calls change something: Docker's start, stop, restart, build and exec;
/// supervisord's start and stop (of a process or a group) and add or remove group. Reading
/// calls (list, inspect, process info, the log's tail, `reload-config`'s comparison, which is
/// what `supervisorctl reread` runs) never count.
#[derive(Debug, Default)]
pub struct Effects {
    /// A dry run: changing calls are recorded and answered as if they had worked, never made.
    planning: bool,
    state: std::sync::Mutex<EffectState>,
}

#[derive(Debug, Default)]
struct EffectState {
    changed: bool,
    plan: Vec<String>,
}

/// What [`Effects`] found, once the request is over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectSummary {
    /// A changing call succeeded.
    pub changed: bool,
    /// In a dry run, the changing calls the plugin made, in the words an operator reads
    /// (`restart web-1`, `add group new2`), in order; `None` when the calls were made.
    pub plan: Option<Vec<String>>,
}

impl Effects {
    /// Effects of a dry run.
    pub fn planning() -> Self {
        Self {
            planning: true,
            state: std::sync::Mutex::default(),
        }
    }

    /// Whether changing calls are planned rather than made.
    pub fn is_planning(&self) -> bool {
        self.planning
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EffectState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A changing call worked (made, or planned: `step` is then what it would do).
    pub(crate) fn did(&self, step: impl FnOnce() -> String) {
        let mut st = self.state();
        if self.planning {
            st.plan.push(step());
        } else {
            st.changed = true;
        }
    }

    /// Notes a changing call's result: it changed something when it worked.
    pub(crate) fn note<T, E>(&self, r: &Result<T, E>) {
        self.changed_if(r.is_ok());
    }

    /// Notes that a changing call changed something when `worked`.
    pub(crate) fn changed_if(&self, worked: bool) {
        if worked && !self.planning {
            self.state().changed = true;
        }
    }

    /// What the request's calls did.
    pub fn summary(&self) -> EffectSummary {
        let st = self.state();
        EffectSummary {
            changed: st.changed,
            plan: self.planning.then(|| st.plan.clone()),
        }
    }
}

/// What the capabilities of one request need: who calls, for which request, until when.
pub struct Capabilities {
    pub(crate) policy: Arc<policy::Policy>,
    pub(crate) correlation_id: String,
    pub(crate) backends: Backends,
    pub(crate) deadline: Instant,
    pub(crate) log: log::LogBudget,
    pub(crate) seen: docker::Seen,
    pub(crate) effects: Effects,
    /// The instance is being made ahead of its request: no host call may reach anything,
    /// and one that is tried is remembered in `touched` (the instance is then not used).
    pub(crate) preparing: bool,
    pub(crate) touched: std::sync::atomic::AtomicBool,
}

impl Capabilities {
    /// The capabilities of one request.
    pub fn new(
        policy: Arc<policy::Policy>,
        correlation_id: String,
        backends: Backends,
        deadline: Instant,
    ) -> Self {
        Self {
            policy,
            correlation_id,
            backends,
            deadline,
            log: log::LogBudget::default(),
            seen: docker::Seen::default(),
            effects: Effects::default(),
            preparing: false,
            touched: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The capabilities of an instance made ahead of any request (see `runtime`): `policy`
    /// grants nothing, so every gated call is refused, and any call at all marks the instance
    /// as one that called the host while it was made.
    pub fn preparing(policy: Arc<policy::Policy>, deadline: Instant) -> Self {
        let mut caps = Self::new(policy, String::new(), Backends::default(), deadline);
        caps.preparing = true;
        caps
    }

    /// Whether a host call was tried while the instance was made ahead of its request.
    pub fn touched(&self) -> bool {
        self.touched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A host call while the instance is made ahead of its request: noted in `touched`, and
    /// `true` for the call to reach nothing.
    pub(crate) fn tried_while_preparing(&self) -> bool {
        if self.preparing {
            self.touched
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.preparing
    }

    /// The same, planning its changing calls instead of making them (a dry run).
    #[must_use]
    pub fn planning(mut self) -> Self {
        self.effects = Effects::planning();
        self
    }

    /// Turns a denial into the plugin's error, logged once with plugin and correlation id.
    pub(crate) fn denied(&self, denied: policy::Denied) -> types::Error {
        if self.tried_while_preparing() {
            return types::Error::PermissionDenied(
                "no host call while the plugin instance is being made".into(),
            );
        }
        tracing::warn!(
            plugin = self.policy.plugin(),
            correlation_id = %self.correlation_id,
            reason = %denied.0,
            "capability call denied"
        );
        if let Some(m) = crate::metrics::get() {
            m.denied(self.policy.plugin());
        }
        types::Error::PermissionDenied(denied.to_string())
    }

    /// Runs a backend call, bounded by the request's deadline.
    pub(crate) async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, types::Error>>,
    ) -> Result<T, types::Error> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, call).await {
            Ok(r) => r,
            Err(_) => Err(types::Error::TimedOut(format!(
                "{what} did not finish before the request's deadline"
            ))),
        }
    }
}

impl types::Host for Capabilities {}
