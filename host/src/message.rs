//! The contract with Marvin Core as the rest of the host sees it: the two messages, the kinds
//! of entity and the actions Core knows for each, and what an entity id resolves to. Data
//! types only: imports no stage.

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

/// The entity id of `restart_all`: every service of the default compose project.
pub const ALL: &str = "all";
/// The entity id of `reread` and `update`: supervisord itself.
pub const SUPERVISOR: &str = "supervisor";

/// The actions Marvin Core knows for each kind (its `Manager*ActionReference` enums), in its order.
pub fn contract_actions(kind: EntityKind) -> &'static [&'static str] {
    match kind {
        EntityKind::Container => &[
            "start",
            "stop",
            "restart",
            "restart_all",
            "build",
            "exec_cmd",
        ],
        EntityKind::Worker => &["start", "stop", "restart", "reread", "update"],
    }
}

impl EntityKind {
    /// The kind an entity most likely has when only the action is known (an unknown or
    /// malformed request's `entityType`): worker for the worker-only actions, else container.
    pub fn guess(action: &str) -> Self {
        let containers = contract_actions(Self::Container);
        let worker_only = contract_actions(Self::Worker)
            .iter()
            .any(|a| *a == action && !containers.contains(a));
        if worker_only {
            Self::Worker
        } else {
            Self::Container
        }
    }
}

/// Where an action lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A compose service, or the whole project when `service` is none.
    Compose {
        /// The compose project.
        project: String,
        /// The service.
        service: Option<String>,
    },
    /// A supervisor program, group or `group:name`.
    Program(String),
    /// supervisord itself.
    Supervisord,
}

/// A resolved entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// The id Core uses.
    pub id: String,
    /// Container or worker.
    pub kind: EntityKind,
    /// Where actions on it land.
    pub target: Target,
}

/// `EnderLab\MarvinManagerBundle\Messenger\ManagerRequestCommand`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagerRequest {
    /// The entity id Core sends as `containerId`: a container's or a worker's id, or the
    /// special `all` / `supervisor`.
    #[serde(rename = "containerId")]
    pub entity_id: String,
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
    /// A request as Core builds one: no command, no args (PHP's `[]`), the default timeout.
    pub fn new(
        correlation_id: impl Into<String>,
        entity_id: impl Into<String>,
        action: impl Into<String>,
    ) -> Self {
        Self {
            entity_id: entity_id.into(),
            correlation_id: correlation_id.into(),
            action: action.into(),
            command: None,
            args: serde_json::Value::Array(Vec::new()),
            timeout: DEFAULT_TIMEOUT_SECS,
        }
    }

    /// With the command of `exec_cmd`.
    #[must_use]
    pub fn with_command(mut self, command: Option<String>) -> Self {
        self.command = command;
        self
    }

    /// With Core's `args`.
    #[must_use]
    pub fn with_args(mut self, args: serde_json::Value) -> Self {
        self.args = args;
        self
    }

    /// With a timeout in seconds.
    #[must_use]
    pub fn with_timeout(mut self, secs: i64) -> Self {
        self.timeout = secs;
        self
    }

    /// Whether Core asks for a dry run (`args.dry_run`: `true`, or PHP's `"true"` / `"1"` /
    /// `1`): the action is planned, nothing is changed.
    pub fn dry_run(&self) -> bool {
        match self.args.get("dry_run") {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => matches!(s.as_str(), "true" | "1"),
            Some(serde_json::Value::Number(n)) => n.as_i64() == Some(1),
            _ => false,
        }
    }

    /// With `args.dry_run = true` (an object's other keys kept).
    #[must_use]
    pub fn planned(mut self) -> Self {
        if !self.args.is_object() {
            self.args = serde_json::Value::Object(serde_json::Map::new());
        }
        if let Some(m) = self.args.as_object_mut() {
            m.insert("dry_run".into(), serde_json::Value::Bool(true));
        }
        self
    }

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
            entity_id: request.entity_id.clone(),
            action: request.action.clone(),
            success: false,
            output: None,
            error: Some(error.into()),
            metadata: serde_json::Map::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_its_entity_containerid_on_the_wire() {
        let r = ManagerRequest::new("c-1", "web", "start").with_timeout(0);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["containerId"], "web");
        assert_eq!(v["args"], serde_json::json!([]));
        assert_eq!(r.timeout(), std::time::Duration::from_secs(10));
        let back: ManagerRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let long = r.with_timeout(99_999);
        assert_eq!(long.timeout(), std::time::Duration::from_secs(3600));
    }

    #[test]
    fn the_kind_of_an_unknown_entity_follows_the_action() {
        assert_eq!(EntityKind::guess("reread"), EntityKind::Worker);
        assert_eq!(EntityKind::guess("update"), EntityKind::Worker);
        assert_eq!(EntityKind::guess("start"), EntityKind::Container);
        assert_eq!(EntityKind::guess("whatever"), EntityKind::Container);
    }
}
