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

/// What the capabilities of one request need: who calls, for which request, until when.
pub struct Capabilities {
    pub(crate) policy: Arc<policy::Policy>,
    pub(crate) correlation_id: String,
    pub(crate) backends: Backends,
    pub(crate) deadline: Instant,
    pub(crate) log: log::LogBudget,
    pub(crate) seen: docker::Seen,
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
        }
    }

    /// Turns a denial into the plugin's error, logged once with plugin and correlation id.
    pub(crate) fn denied(&self, denied: policy::Denied) -> types::Error {
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
