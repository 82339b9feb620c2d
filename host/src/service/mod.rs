//! The service: the consume loop ([`consume`]) and one request's execution
//! ([`Manager::execute`]): resolve the entity (registry), choose the plugin (router), run it
//! (runtime), and turn what happened into Core's response. It is the only stage that knows
//! all the others; `cli` builds its parts and hands them in.

mod consume;

use std::sync::{Arc, RwLock};
use std::time::Instant;

use tracing::Instrument;

pub use consume::{
    ConsumeOptions, ConsumeStats, DEFAULT_HOLD, Execute, Health, HealthState, consume,
};

use crate::message::{EntityKind, ManagerRequest, ManagerResponse};
use crate::registry::Registry;
use crate::router::{Override, Refusal, Routable, Router};
use crate::runtime::plugins::{PluginDir, PluginSet};
use crate::runtime::{Aftercare, Handled, LoadedPlugin, PluginOutcome, Runtime};

impl Routable for Arc<LoadedPlugin> {
    fn name(&self) -> &str {
        &self.name
    }
    fn handles(&self) -> &[(EntityKind, String)] {
        &self.handles
    }
    fn origin(&self) -> String {
        self.path.display().to_string()
    }
}

/// The plugins loaded at one moment and who serves what among them.
#[derive(Debug)]
pub struct Routing {
    set: Arc<PluginSet>,
    router: Router<Arc<LoadedPlugin>>,
}

impl Routing {
    /// Routes the plugins of `set`.
    pub fn new(set: Arc<PluginSet>) -> Self {
        let router = Router::build(
            set.plugins().iter().cloned(),
            set.builtins().iter().cloned(),
        );
        Self { set, router }
    }

    /// What loaded, and what did not.
    pub fn set(&self) -> &PluginSet {
        &self.set
    }

    /// Who serves what.
    pub fn router(&self) -> &Router<Arc<LoadedPlugin>> {
        &self.router
    }
}

/// Everything needed to carry out a request.
pub struct Manager {
    registry: Registry,
    runtime: Arc<Runtime>,
    plugins: Arc<PluginDir>,
    routing: RwLock<Arc<Routing>>,
    redactor: crate::secrets::Redactor,
}

impl Manager {
    /// A manager over a registry and a loaded plugins directory.
    pub fn new(registry: Registry, runtime: Arc<Runtime>, plugins: Arc<PluginDir>) -> Self {
        let routing = Routing::new(plugins.snapshot());
        log_refusals(&[], routing.router.refused());
        log_overrides(&[], routing.router.overrides());
        count_plugins(None, &routing);
        Self {
            registry,
            runtime,
            plugins,
            routing: RwLock::new(Arc::new(routing)),
            redactor: crate::secrets::Redactor::default(),
        }
    }

    /// Every response is scrubbed of these secrets before it leaves (to Core and the
    /// ledger): whatever a plugin or a backend's error put in it.
    pub fn with_redactor(mut self, redactor: crate::secrets::Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// The plugin runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The plugins directory.
    pub fn plugins(&self) -> &Arc<PluginDir> {
        &self.plugins
    }

    /// The routes of the plugins serving now; rebuilt when the directory's set changed. Hold
    /// the `Arc` for the length of a request.
    pub fn routing(&self) -> Arc<Routing> {
        let set = self.plugins.snapshot();
        let current = self
            .routing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if Arc::ptr_eq(&current.set, &set) {
            return current;
        }
        let mut slot = self.routing.write().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&slot.set, &set) {
            let routing = Routing::new(set);
            log_refusals(slot.router.refused(), routing.router.refused());
            log_overrides(slot.router.overrides(), routing.router.overrides());
            count_plugins(Some(&slot), &routing);
            *slot = Arc::new(routing);
        }
        slot.clone()
    }

    /// Follows the plugins directory until `shutdown` resolves, rebuilding the routes (and
    /// saying what was refused) as soon as the set changes.
    pub async fn watch_plugins(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let mut changes = self.plugins.changes();
        let watch = self.plugins.clone().watch(shutdown);
        tokio::pin!(watch);
        loop {
            tokio::select! {
                () = &mut watch => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.routing();
                }
            }
        }
    }

    /// The entity ids this manager serves now (see [`Registry::served`]).
    pub async fn served(&self) -> (Vec<String>, Option<String>) {
        self.registry.served().await
    }

    /// Whether the request may run again after a crash interrupted it: its plugin says its
    /// action is idempotent. Unknown entity or action: no (it is answered without running
    /// anyway).
    pub async fn idempotent(&self, req: &ManagerRequest) -> bool {
        // A dry run changes nothing: interrupted, it is planned again.
        if req.dry_run() {
            return true;
        }
        let Ok(entity) = self.registry.resolve(&req.entity_id).await else {
            return false;
        };
        self.routing()
            .router
            .route(entity.kind, &req.action)
            .is_ok_and(|p| p.idempotent.contains(&(entity.kind, req.action.clone())))
    }

    /// Carries out one request. Never fails: every problem becomes an error response.
    pub async fn execute(&self, req: &ManagerRequest) -> ManagerResponse {
        self.answer(req).await.0
    }

    /// Carries out one request ([`Manager::execute`]); the [`Aftercare`] is what is left to do
    /// once the answer is sent: drop it after sending the answer on.
    pub async fn answer(&self, req: &ManagerRequest) -> (ManagerResponse, Aftercare) {
        let span = tracing::info_span!(
            "request",
            correlation_id = %req.correlation_id,
            entity_id = %req.entity_id,
            action = %req.action,
            plugin = tracing::field::Empty,
        );
        let (mut response, aftercare) = self.execute_inner(req).instrument(span).await;
        // Every answer says whether it changed anything (one that ran no plugin did not), and
        // a dry run's says it was one.
        response
            .metadata
            .entry("changed")
            .or_insert(serde_json::Value::Bool(false));
        if req.dry_run() {
            response
                .metadata
                .entry("dry_run")
                .or_insert(serde_json::Value::Bool(true));
        }
        if !self.redactor.is_empty() {
            let r = &self.redactor;
            for text in [&mut response.output, &mut response.error]
                .into_iter()
                .flatten()
            {
                r.scrub_string(text);
            }
            r.scrub_map(&mut response.metadata);
        }
        (response, aftercare)
    }

    async fn execute_inner(&self, req: &ManagerRequest) -> (ManagerResponse, Aftercare) {
        let started = Instant::now();
        let entity = match self.registry.resolve(&req.entity_id).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(reason = %e, "request refused");
                return (
                    ManagerResponse::failure(req, EntityKind::guess(&req.action), e.to_string()),
                    Aftercare::none(),
                );
            }
        };
        // Hold these routes (and so this plugin version) until the request is done.
        let routing = self.routing();
        let plugin = match routing.router.route(entity.kind, &req.action) {
            Ok(p) => p.clone(),
            Err(e) => {
                tracing::warn!(reason = %e, "request refused");
                return (
                    ManagerResponse::failure(req, entity.kind, e.to_string()),
                    Aftercare::none(),
                );
            }
        };
        tracing::Span::current().record("plugin", plugin.name.as_str());
        if req.dry_run()
            && plugin
                .unplannable
                .contains(&(entity.kind, req.action.clone()))
        {
            tracing::info!("dry run of an action its plugin cannot plan: not run");
            let mut r = ManagerResponse::failure(
                req,
                entity.kind,
                format!(
                    "'{}' cannot be planned: plugin '{}' says what it does is known only by doing it; nothing was run",
                    req.action, plugin.name
                ),
            );
            r.metadata.insert("plannable".into(), false.into());
            r.metadata
                .insert("plan".into(), serde_json::Value::Array(Vec::new()));
            r.metadata
                .insert("plugin".into(), plugin.name.clone().into());
            r.metadata
                .insert("plugin_version".into(), plugin.version.clone().into());
            return (r, Aftercare::none());
        }
        let Handled {
            outcome,
            effects,
            aftercare,
        } = self.runtime.handle(&plugin, &entity, req).await;
        let outcome = outcome
            .unwrap_or_else(PluginOutcome::from)
            .with_effects(effects);
        let mut metadata = outcome.metadata;
        metadata.insert("plugin".into(), plugin.name.clone().into());
        metadata.insert("plugin_version".into(), plugin.version.clone().into());
        metadata.insert(
            "duration_ms".into(),
            serde_json::Value::from(
                u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ),
        );
        if let Some(m) = crate::metrics::get() {
            m.duration(&plugin.name, &req.action, started.elapsed().as_secs_f64());
        }
        if outcome.success {
            tracing::info!("action done");
        } else {
            tracing::warn!(
                error = outcome.error.as_deref().unwrap_or(""),
                "action failed"
            );
        }
        let response = ManagerResponse {
            correlation_id: req.correlation_id.clone(),
            entity_type: entity.kind,
            entity_id: req.entity_id.clone(),
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
        };
        (response, aftercare)
    }
}

/// The plugin metrics: how many serve, and the files that failed to load or were refused
/// since `before`.
fn count_plugins(before: Option<&Routing>, now: &Routing) {
    let Some(m) = crate::metrics::get() else {
        return;
    };
    let failing = |r: &Routing| r.set.failures().len() + r.router.refused().len();
    let was = before.map_or(0, failing);
    m.plugins(
        now.router.serving().iter().map(|p| p.name.as_str()),
        failing(now).saturating_sub(was),
    );
    m.overrides(now.router.overrides().iter().flat_map(|o| {
        o.pairs.iter().map(move |(k, a)| {
            (
                o.plugin.as_str(),
                o.builtin.as_str(),
                k.as_str(),
                a.as_str(),
            )
        })
    }));
}

/// The manager in force, replaced whole on a reload of the configuration: a request holds
/// the manager it started on until it is done, so nothing in flight is dropped or changes
/// grants half-way.
pub struct Reloadable(RwLock<Arc<Manager>>);

impl Reloadable {
    /// Starts with `manager`.
    pub fn new(manager: Arc<Manager>) -> Self {
        Self(RwLock::new(manager))
    }

    /// The manager new requests run on.
    pub fn current(&self) -> Arc<Manager> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// New requests run on `manager` from now on; the old one lives as long as the requests
    /// running on it.
    pub fn replace(&self, manager: Arc<Manager>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = manager;
    }
}

/// Logs the plugins refused now that were not refused before.
fn log_refusals(before: &[Refusal], now: &[Refusal]) {
    for r in now.iter().filter(|r| !before.contains(r)) {
        tracing::error!(path = %r.origin, reason = %r.reason, "plugin skipped");
    }
}

/// Says each override that is new (a built-in's actions taken over by a plugin).
fn log_overrides(before: &[Override], now: &[Override]) {
    for o in now.iter().filter(|o| !before.contains(o)) {
        tracing::warn!(plugin = %o.plugin, builtin = %o.builtin, "{o}");
    }
}
