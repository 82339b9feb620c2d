//! The two messages of the contract with Marvin Core, as the rest of the host sees them.

use serde::{Deserialize, Serialize};

/// The default of `ManagerRequestCommand::$timeout`, in seconds.
pub const DEFAULT_TIMEOUT_SECS: i64 = 10;
/// The longest timeout honoured; a larger one is clamped.
pub const MAX_TIMEOUT_SECS: i64 = 3600;

/// What an entity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityKind {
    /// A Docker compose service.
    Container,
    /// A Supervisor program or group.
    Worker,
}

impl EntityKind {
    /// `container` / `worker`, as `entityType` carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Worker => "worker",
        }
    }

    /// `containers` / `workers`, for messages.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Container => "containers",
            Self::Worker => "workers",
        }
    }
}

impl std::fmt::Display for EntityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `EnderLab\MarvinManagerBundle\Messenger\ManagerRequestCommand`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagerRequest {
    /// The entity id (a UUID, or the special `all` / `supervisor`).
    pub container_id: String,
    /// Ties the response to the request.
    pub correlation_id: String,
    /// The action, e.g. `start`.
    pub action: String,
    /// The command of `exec_cmd`.
    pub command: Option<String>,
    /// Extra arguments, any JSON value (PHP sends an array: `[]` when empty).
    pub args: serde_json::Value,
    /// Seconds.
    pub timeout: i64,
}

impl ManagerRequest {
    /// The timeout to enforce: Core's value, or the default when it is not positive, at most
    /// [`MAX_TIMEOUT_SECS`].
    pub fn timeout(&self) -> std::time::Duration {
        let secs = if self.timeout > 0 {
            self.timeout.min(MAX_TIMEOUT_SECS)
        } else {
            DEFAULT_TIMEOUT_SECS
        };
        std::time::Duration::from_secs(secs.unsigned_abs())
    }
}

/// `EnderLab\MarvinManagerBundle\Messenger\ManagerResponseCommand`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagerResponse {
    /// The request's correlation id.
    pub correlation_id: String,
    /// `container` or `worker`.
    pub entity_type: EntityKind,
    /// The request's entity id.
    pub entity_id: String,
    /// The request's action.
    pub action: String,
    /// Whether the action did what was asked.
    pub success: bool,
    /// What the action printed or reports.
    pub output: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Details: state after the action, timings, the plugin that ran it.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl ManagerResponse {
    /// A failure before any plugin ran (unknown entity, unsupported action, ...).
    pub fn failure(request: &ManagerRequest, kind: EntityKind, error: impl Into<String>) -> Self {
        Self {
            correlation_id: request.correlation_id.clone(),
            entity_type: kind,
            entity_id: request.container_id.clone(),
            action: request.action.clone(),
            success: false,
            output: None,
            error: Some(error.into()),
            metadata: serde_json::Map::new(),
        }
    }
}
