//! One request's journey through the host: registry -> router -> runtime -> response. The
//! queue consumer (fetch, decode, dedup, reply) builds on [`Manager::execute`].

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::message::{EntityKind, ManagerRequest, ManagerResponse};
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::runtime::plugins::PluginDir;

/// Everything needed to carry out a request.
pub struct Manager {
    registry: Registry,
    runtime: Arc<Runtime>,
    plugins: Arc<PluginDir>,
}

impl Manager {
    /// A manager over a registry and a loaded plugins directory.
    pub fn new(registry: Registry, runtime: Arc<Runtime>, plugins: Arc<PluginDir>) -> Self {
        Self {
            registry,
            runtime,
            plugins,
        }
    }

    /// The plugin runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The plugins directory.
    pub fn plugins(&self) -> &Arc<PluginDir> {
        &self.plugins
    }

    /// Carries out one request. Never fails: every problem becomes an error response.
    pub async fn execute(&self, req: &ManagerRequest) -> ManagerResponse {
        let span = tracing::info_span!(
            "request",
            correlation_id = %req.correlation_id,
            entity_id = %req.container_id,
            action = %req.action,
            plugin = tracing::field::Empty,
        );
        self.execute_inner(req).instrument(span).await
    }

    async fn execute_inner(&self, req: &ManagerRequest) -> ManagerResponse {
        let started = Instant::now();
        let entity = match self.registry.resolve(&req.container_id).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(reason = %e, "request refused");
                return ManagerResponse::failure(req, guess_kind(&req.action), e);
            }
        };
        // Hold this set (and so this plugin version) until the request is done.
        let set = self.plugins.snapshot();
        let plugin = match set.route(entity.kind, &req.action) {
            Ok(p) => p.clone(),
            Err(e) => {
                tracing::warn!(reason = %e, "request refused");
                return ManagerResponse::failure(req, entity.kind, e);
            }
        };
        tracing::Span::current().record("plugin", plugin.name.as_str());
        let outcome = self.runtime.handle(&plugin, &entity, req).await;
        let mut metadata = outcome.metadata;
        metadata.insert("plugin".into(), plugin.name.clone().into());
        metadata.insert("plugin_version".into(), plugin.version.clone().into());
        metadata.insert(
            "duration_ms".into(),
            serde_json::Value::from(
                u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ),
        );
        if outcome.success {
            tracing::info!("action done");
        } else {
            tracing::warn!(
                error = outcome.error.as_deref().unwrap_or(""),
                "action failed"
            );
        }
        ManagerResponse {
            correlation_id: req.correlation_id.clone(),
            entity_type: entity.kind,
            entity_id: req.container_id.clone(),
            action: req.action.clone(),
            success: outcome.success,
            output: outcome.output,
            error: if outcome.success {
                outcome.error
            } else {
                Some(
                    outcome
                        .error
                        .unwrap_or_else(|| "the action failed without saying why".into()),
                )
            },
            metadata,
        }
    }
}

/// The kind an unknown entity most likely has, for `entityType` of the error response.
pub(crate) fn guess_kind(action: &str) -> EntityKind {
    let worker_only = crate::router::contract_actions(EntityKind::Worker)
        .iter()
        .any(|a| {
            *a == action && !crate::router::contract_actions(EntityKind::Container).contains(a)
        });
    if worker_only {
        EntityKind::Worker
    } else {
        EntityKind::Container
    }
}
