//! Entity id -> entity: what Core's `containerId` names, and where an action on it lands.
//!
//! Two sources: the config file's `[entities]`, and discovery — a container carrying the
//! label `marvin.entity-id` is the entity of that id, with its compose project and service.
//! The config wins when both name an id. Discovered entities are remembered for
//! [`DISCOVERY_TTL`]; an id nobody knows costs one filtered container listing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bindings::docker::Container;
use crate::bindings::error_text;
use crate::capabilities::docker::{DockerBackend, label};
use crate::config::Config;
use crate::message::{ALL, Entity, EntityKind, SUPERVISOR, Target};

/// How long a discovered entity is trusted before the engine is asked again.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(30);

/// Why an entity id names nothing the manager can act on. The texts are what Core shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// Neither the config nor (when it is off) discovery knows the id.
    #[error("unknown entity '{id}'")]
    Unknown {
        /// The id.
        id: String,
    },
    /// Not in the config, and no compose container carries the label.
    #[error(
        "unknown entity '{id}' (not in the config, and no compose container has the label {}={id})",
        label::ENTITY_ID
    )]
    NotLabelled {
        /// The id.
        id: String,
    },
    /// The label is on containers of several services.
    #[error(
        "unknown entity '{id}': the label {}={id} is on containers of several services ({})",
        label::ENTITY_ID,
        services.join(", ")
    )]
    Ambiguous {
        /// The id.
        id: String,
        /// `project/service` of each.
        services: Vec<String>,
    },
    /// Not in the config, and the engine could not be asked.
    #[error("unknown entity '{id}' (not in the config; discovery by label failed: {cause})")]
    DiscoveryFailed {
        /// The id.
        id: String,
        /// What the engine said.
        cause: String,
    },
    /// `all` without a project to act on.
    #[error("entity 'all' needs [docker] default_project in the config{configured}{discovery}")]
    NoDefaultProject {
        /// ` (containers span projects a, b)` when configured containers span several.
        configured: SpanNote,
        /// What discovery found instead, when it is on.
        discovery: DiscoveryNote,
    },
}

/// The projects configured containers span, when several (for `all`'s error).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanNote(pub Vec<String>);

impl std::fmt::Display for SpanNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.len() > 1 {
            write!(f, " (containers span projects {})", self.0.join(", "))?;
        }
        Ok(())
    }
}

/// Why discovery gave no project for `all`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DiscoveryNote {
    /// Discovery is off.
    #[default]
    Off,
    /// No container is labelled.
    NoneLabelled,
    /// Labelled containers span several projects.
    Span(Vec<String>),
    /// The engine could not be asked.
    Failed(String),
}

impl std::fmt::Display for DiscoveryNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => Ok(()),
            Self::NoneLabelled => {
                f.write_str(", or containers labelled marvin.entity-id in one project")
            }
            Self::Span(p) => write!(f, " (labelled containers span projects {})", p.join(", ")),
            Self::Failed(cause) => write!(f, " (discovery failed: {cause})"),
        }
    }
}

/// The entities the manager knows.
#[derive(Clone)]
pub struct Registry {
    entities: BTreeMap<String, Entity>,
    /// The project of `all`, or why there is none.
    default_project: Result<String, SpanNote>,
    discovery: Option<Arc<Discovery>>,
    /// This manager's name: `all@<name>` and `supervisor@<name>` are its `all` and
    /// `supervisor`.
    name: Option<String>,
    /// Whether it acts on supervisord (a `[supervisor] url`, or worker entities).
    supervisord: bool,
}

/// Entities found by their containers' `marvin.entity-id` label.
struct Discovery {
    docker: Arc<dyn DockerBackend>,
    found: Mutex<HashMap<String, (Entity, Instant)>>,
}

impl Registry {
    /// The entities of the config file.
    pub fn from_config(config: &Config) -> Self {
        let mut entities = BTreeMap::new();
        for (id, e) in &config.entities {
            let target = match e.kind {
                EntityKind::Container => Target::Compose {
                    project: e.project.clone().unwrap_or_default(),
                    service: e.service.clone(),
                },
                EntityKind::Worker => Target::Program(e.program.clone().unwrap_or_default()),
            };
            entities.insert(
                id.clone(),
                Entity {
                    id: id.clone(),
                    kind: e.kind,
                    target,
                },
            );
        }
        let default_project = match &config.docker.default_project {
            Some(p) => Ok(p.clone()),
            None => {
                let projects: BTreeSet<&str> = config
                    .entities
                    .values()
                    .filter_map(|e| e.project.as_deref())
                    .collect();
                if projects.len() == 1 {
                    Ok(projects.into_iter().collect())
                } else {
                    Err(SpanNote(projects.into_iter().map(str::to_owned).collect()))
                }
            }
        };
        let supervisord = config.supervisor.url.is_some()
            || entities.values().any(|e| e.kind == EntityKind::Worker);
        Self {
            entities,
            default_project,
            discovery: None,
            name: None,
            supervisord,
        }
    }

    /// Names this manager: `all@<name>` and `supervisor@<name>` then mean its `all` and
    /// `supervisor` (the ids to use when several managers share the queue).
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// `all` for `all@<this manager>`, `supervisor` for `supervisor@<this manager>`; any
    /// other id as it is.
    fn local<'a>(&self, id: &'a str) -> &'a str {
        match (id.split_once('@'), &self.name) {
            (Some((base @ (ALL | SUPERVISOR), host)), Some(name)) if host == name => base,
            _ => id,
        }
    }

    /// The entity ids this manager serves now, for the other managers sharing the queue:
    /// configured ones, those discovered by label, `all@<name>` and `supervisor@<name>`, and
    /// plain `all` (when it has a project for it) and `supervisor` (when it acts on
    /// supervisord). With an engine that cannot be reached, the ids without the discovered
    /// ones, and the error.
    pub async fn served(&self) -> (Vec<String>, Option<String>) {
        let mut ids: BTreeSet<String> = self.entities.keys().cloned().collect();
        let failed = match self.discovered().await {
            Ok(found) => {
                ids.extend(found.into_iter().map(|e| e.id));
                None
            }
            Err(e) => Some(e),
        };
        if self.resolve(ALL).await.is_ok() {
            ids.insert(ALL.into());
        }
        if self.supervisord {
            ids.insert(SUPERVISOR.into());
        }
        if let Some(name) = &self.name {
            ids.insert(format!("{ALL}@{name}"));
            ids.insert(format!("{SUPERVISOR}@{name}"));
        }
        (ids.into_iter().collect(), failed)
    }

    /// Also finds entities by the `marvin.entity-id` label of containers `docker` lists.
    pub fn with_discovery(mut self, docker: Arc<dyn DockerBackend>) -> Self {
        self.discovery = Some(Arc::new(Discovery {
            docker,
            found: Mutex::new(HashMap::new()),
        }));
        self
    }

    /// The entity Core means by `id`, or why there is none.
    pub async fn resolve(&self, id: &str) -> Result<Entity, ResolveError> {
        let local = self.local(id);
        let mut entity = self.resolve_local(local).await;
        if local != id
            && let Ok(e) = &mut entity
        {
            e.id = id.to_owned();
        }
        entity
    }

    async fn resolve_local(&self, id: &str) -> Result<Entity, ResolveError> {
        match (self.resolve_configured(id), &self.discovery) {
            (Ok(e), _) => Ok(e),
            // No project configured: the one project of the labelled containers.
            (Err(ResolveError::NoDefaultProject { configured, .. }), Some(d)) => {
                match d.only_project().await {
                    Ok(project) => Ok(Entity {
                        id: ALL.into(),
                        kind: EntityKind::Container,
                        target: Target::Compose {
                            project,
                            service: None,
                        },
                    }),
                    Err(discovery) => Err(ResolveError::NoDefaultProject {
                        configured,
                        discovery,
                    }),
                }
            }
            (Err(ResolveError::Unknown { .. }), Some(d)) => d.resolve(id).await,
            (Err(e), _) => Err(e),
        }
    }

    /// Resolves `id` from the config file and the special ids only.
    pub fn resolve_configured(&self, id: &str) -> Result<Entity, ResolveError> {
        match id {
            ALL => Ok(Entity {
                id: ALL.into(),
                kind: EntityKind::Container,
                target: Target::Compose {
                    project: self.default_project.clone().map_err(|configured| {
                        ResolveError::NoDefaultProject {
                            configured,
                            discovery: DiscoveryNote::Off,
                        }
                    })?,
                    service: None,
                },
            }),
            SUPERVISOR => Ok(Entity {
                id: SUPERVISOR.into(),
                kind: EntityKind::Worker,
                target: Target::Supervisord,
            }),
            _ => self
                .entities
                .get(id)
                .cloned()
                .ok_or_else(|| ResolveError::Unknown { id: id.to_owned() }),
        }
    }

    /// Every configured entity, by id.
    pub fn entities(&self) -> impl Iterator<Item = &Entity> {
        self.entities.values()
    }

    /// Every entity discovered now, by id (an engine that cannot be reached: none).
    pub async fn discovered(&self) -> Result<Vec<Entity>, String> {
        let Some(d) = &self.discovery else {
            return Ok(Vec::new());
        };
        let containers = d
            .docker
            .labelled(label::ENTITY_ID, None)
            .await
            .map_err(|e| error_text(&e))?;
        let mut by_id: BTreeMap<String, Entity> = BTreeMap::new();
        for c in containers.iter().filter(|c| !c.oneoff) {
            if let Some((_, id)) = c.labels.iter().find(|(k, _)| k == label::ENTITY_ID)
                && !self.entities.contains_key(id)
            {
                by_id.entry(id.clone()).or_insert_with(|| entity_of(id, c));
            }
        }
        Ok(by_id.into_values().collect())
    }
}

fn entity_of(id: &str, c: &Container) -> Entity {
    Entity {
        id: id.to_owned(),
        kind: EntityKind::Container,
        target: Target::Compose {
            project: c.project.clone(),
            service: Some(c.service.clone()),
        },
    }
}

impl Discovery {
    /// The project of every container labelled `marvin.entity-id`, when there is one.
    async fn only_project(&self) -> Result<String, DiscoveryNote> {
        let containers = self
            .docker
            .labelled(label::ENTITY_ID, None)
            .await
            .map_err(|e| DiscoveryNote::Failed(error_text(&e)))?;
        let projects: BTreeSet<&str> = containers
            .iter()
            .filter(|c| !c.oneoff && !c.project.is_empty())
            .map(|c| c.project.as_str())
            .collect();
        match projects.len() {
            1 => Ok(projects.into_iter().collect()),
            0 => Err(DiscoveryNote::NoneLabelled),
            _ => Err(DiscoveryNote::Span(
                projects.into_iter().map(str::to_owned).collect(),
            )),
        }
    }

    /// The entity of label `marvin.entity-id=id`, or why there is none.
    async fn resolve(&self, id: &str) -> Result<Entity, ResolveError> {
        if let Ok(found) = self.found.lock()
            && let Some((e, at)) = found.get(id)
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(e.clone());
        }
        let listed = self.docker.labelled(label::ENTITY_ID, Some(id)).await;
        let containers = match listed {
            Ok(c) => c,
            Err(e) => {
                // Serve what was found before while the engine is away.
                if let Ok(found) = self.found.lock()
                    && let Some((e, _)) = found.get(id)
                {
                    return Ok(e.clone());
                }
                return Err(ResolveError::DiscoveryFailed {
                    id: id.to_owned(),
                    cause: error_text(&e),
                });
            }
        };
        let services: BTreeSet<(&str, &str)> = containers
            .iter()
            .filter(|c| !c.oneoff && !c.project.is_empty())
            .map(|c| (c.project.as_str(), c.service.as_str()))
            .collect();
        let first = containers
            .iter()
            .find(|c| !c.oneoff && !c.project.is_empty());
        let entity = match (services.len(), first) {
            (1, Some(c)) => entity_of(id, c),
            (0, _) => {
                if let Ok(mut found) = self.found.lock() {
                    found.remove(id);
                }
                return Err(ResolveError::NotLabelled { id: id.to_owned() });
            }
            _ => {
                return Err(ResolveError::Ambiguous {
                    id: id.to_owned(),
                    services: services.iter().map(|(p, s)| format!("{p}/{s}")).collect(),
                });
            }
        };
        if let Ok(mut found) = self.found.lock() {
            found.insert(id.to_owned(), (entity.clone(), Instant::now()));
        }
        Ok(entity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(toml: &str) -> Registry {
        Registry::from_config(&Config::parse(toml).unwrap())
    }

    #[tokio::test]
    async fn a_named_manager_serves_its_ids_and_reads_its_own_at_forms() {
        let r = registry(
            "[entities.c1]\nkind = \"container\"\nproject = \"marvin\"\nservice = \"web\"\n\
             [entities.w1]\nkind = \"worker\"\nprogram = \"consumer\"\n",
        )
        .with_name("host-b");
        let all = r.resolve("all@host-b").await.unwrap();
        assert_eq!(all.id, "all@host-b");
        assert_eq!(
            all.target,
            Target::Compose {
                project: "marvin".into(),
                service: None
            }
        );
        assert_eq!(
            r.resolve("supervisor@host-b").await.unwrap().target,
            Target::Supervisord
        );
        // Another host's: not this manager's.
        assert!(r.resolve("all@host-c").await.is_err());
        let (served, failed) = r.served().await;
        assert_eq!(failed, None);
        assert_eq!(
            served,
            [
                "all",
                "all@host-b",
                "c1",
                "supervisor",
                "supervisor@host-b",
                "w1"
            ]
        );
        // No project for `all`, no worker: neither plain id.
        let r = registry(
            "[entities.a]\nkind = \"container\"\nproject = \"p1\"\nservice = \"web\"\n\
             [entities.b]\nkind = \"container\"\nproject = \"p2\"\nservice = \"web\"\n",
        )
        .with_name("h");
        assert_eq!(r.served().await.0, ["a", "all@h", "b", "supervisor@h"]);
    }

    #[test]
    fn resolves_configured_and_special_ids() {
        let r = registry(
            "[entities.c1]\nkind = \"container\"\nproject = \"marvin\"\nservice = \"web\"\n\
             [entities.w1]\nkind = \"worker\"\nprogram = \"consumer\"\n",
        );
        assert_eq!(
            r.resolve_configured("c1").unwrap().target,
            Target::Compose {
                project: "marvin".into(),
                service: Some("web".into())
            }
        );
        assert_eq!(r.resolve_configured("w1").unwrap().kind, EntityKind::Worker);
        assert_eq!(
            r.resolve_configured("all").unwrap().target,
            Target::Compose {
                project: "marvin".into(),
                service: None
            }
        );
        assert_eq!(
            r.resolve_configured("supervisor").unwrap().target,
            Target::Supervisord
        );
        assert_eq!(
            r.resolve_configured("nope").unwrap_err().to_string(),
            "unknown entity 'nope'"
        );
    }

    #[test]
    fn all_needs_a_project() {
        let r = registry("");
        assert_eq!(
            r.resolve_configured("all").unwrap_err().to_string(),
            "entity 'all' needs [docker] default_project in the config"
        );
        let r = registry(
            "[entities.a]\nkind = \"container\"\nproject = \"p1\"\nservice = \"s\"\n\
             [entities.b]\nkind = \"container\"\nproject = \"p2\"\nservice = \"s\"\n",
        );
        assert_eq!(
            r.resolve_configured("all").unwrap_err().to_string(),
            "entity 'all' needs [docker] default_project in the config (containers span projects p1, p2)"
        );
        let r = registry("[docker]\ndefault_project = \"x\"\n");
        assert!(
            matches!(r.resolve_configured("all").unwrap().target, Target::Compose { project, .. } if project == "x")
        );
    }

    mod discovery {
        use std::sync::Arc;

        use super::*;
        use crate::capabilities::docker::fake::{FakeEngine, container};

        /// A container of `project`/`service` labelled `marvin.entity-id` = `entity`.
        fn c(entity: &str, project: &str, service: &str, oneoff: bool) -> Container {
            Container {
                oneoff,
                labels: vec![(label::ENTITY_ID.into(), entity.into())],
                ..container(&format!("{project}-{service}-{oneoff}"), project, service)
            }
        }

        fn labels(containers: Vec<Container>, down: bool) -> Arc<FakeEngine> {
            Arc::new(if down {
                FakeEngine::down()
            } else {
                FakeEngine::new(containers)
            })
        }

        #[tokio::test]
        async fn labelled_containers_become_entities() {
            let engine = labels(
                vec![
                    c("e1", "marvin", "web", false),
                    c("e1", "marvin", "web", true),
                    c("cfg", "marvin", "labelled", false),
                    c("two", "marvin", "a", false),
                    c("two", "marvin", "b", false),
                    c("oneoff-only", "marvin", "x", true),
                ],
                false,
            );
            let r = registry(
                "[entities.cfg]\nkind = \"container\"\nproject = \"p\"\nservice = \"configured\"\n",
            )
            .with_discovery(engine.clone());
            let e = r.resolve("e1").await.unwrap();
            assert_eq!(
                e.target,
                Target::Compose {
                    project: "marvin".into(),
                    service: Some("web".into())
                }
            );
            assert_eq!(e.kind, EntityKind::Container);
            r.resolve("e1").await.unwrap();
            assert_eq!(engine.calls(), 1, "remembered");
            // The config wins, without asking the engine.
            let e = r.resolve("cfg").await.unwrap();
            assert!(
                matches!(e.target, Target::Compose { service: Some(s), .. } if s == "configured")
            );
            assert_eq!(engine.calls(), 1);
            let err = r.resolve("two").await.unwrap_err().to_string();
            assert!(
                err.contains("several services (marvin/a, marvin/b)"),
                "{err}"
            );
            let err = r.resolve("oneoff-only").await.unwrap_err();
            assert!(matches!(err, ResolveError::NotLabelled { .. }));
            assert!(
                err.to_string()
                    .contains("no compose container has the label"),
                "{err}"
            );
            let all: Vec<String> = r
                .discovered()
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect();
            assert_eq!(all, ["e1", "two"]);
        }

        #[tokio::test]
        async fn an_engine_that_is_down_is_named_in_the_error() {
            let r = registry("").with_discovery(labels(vec![], true));
            let err = r.resolve("x").await.unwrap_err().to_string();
            assert!(
                err.starts_with("unknown entity 'x'") && err.contains("engine down"),
                "{err}"
            );
            // `all` asks discovery for the one project, and says why there is none.
            let err = r.resolve("all").await.unwrap_err().to_string();
            assert!(
                err.starts_with(
                    "entity 'all' needs [docker] default_project in the config (discovery failed:"
                ),
                "{err}"
            );
            assert_eq!(
                r.resolve("supervisor").await.unwrap().target,
                Target::Supervisord
            );
        }
    }
}
