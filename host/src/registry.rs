//! Entity id -> entity: what Core's `containerId` names, and where an action on it lands.
//!
//! Two sources: the config file's `[entities]`, and discovery — a container carrying the
//! label `marvin.entity-id` is the entity of that id, with its compose project and service.
//! The config wins when both name an id. Discovered entities are remembered for
//! [`DISCOVERY_TTL`]; an id nobody knows costs one filtered container listing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::capabilities::DockerBackend;
use crate::capabilities::docker::engine::label;
use crate::config::Config;
use crate::message::EntityKind;

/// How long a discovered entity is trusted before the engine is asked again.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(30);

/// The entity id of `restart_all`: every service of the default compose project.
pub const ALL: &str = "all";
/// The entity id of `reread` and `update`: supervisord itself.
pub const SUPERVISOR: &str = "supervisor";

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

/// The entities the manager knows.
#[derive(Clone)]
pub struct Registry {
    entities: BTreeMap<String, Entity>,
    /// The project of `all`, or why there is none.
    default_project: Result<String, String>,
    discovery: Option<Arc<Discovery>>,
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
                match projects.len() {
                    1 => Ok(projects.into_iter().collect()),
                    0 => Err("entity 'all' needs [docker] default_project in the config".into()),
                    _ => Err(format!(
                        "entity 'all' needs [docker] default_project in the config (containers span projects {})",
                        projects.into_iter().collect::<Vec<_>>().join(", ")
                    )),
                }
            }
        };
        Self {
            entities,
            default_project,
            discovery: None,
        }
    }

    /// Also finds entities by the `marvin.entity-id` label of containers `docker` lists.
    pub fn with_discovery(mut self, docker: Arc<dyn DockerBackend>) -> Self {
        self.discovery = Some(Arc::new(Discovery {
            docker,
            found: Mutex::new(HashMap::new()),
        }));
        self
    }

    /// The entity Core means by `id`, or an error Core can show.
    pub async fn resolve(&self, id: &str) -> Result<Entity, String> {
        match self.resolve_configured(id) {
            Ok(e) => Ok(e),
            Err(e) if id == ALL => match &self.discovery {
                // No project configured: the one project of the labelled containers.
                Some(d) => d
                    .only_project()
                    .await
                    .map(|project| Entity {
                        id: ALL.into(),
                        kind: EntityKind::Container,
                        target: Target::Compose {
                            project,
                            service: None,
                        },
                    })
                    .map_err(|why| format!("{e}{why}")),
                None => Err(e),
            },
            Err(e) if id == SUPERVISOR => Err(e),
            Err(unknown) => match &self.discovery {
                Some(d) => d.resolve(id).await.map_err(|why| format!("{unknown}{why}")),
                None => Err(unknown),
            },
        }
    }

    /// Resolves `id` from the config file and the special ids only.
    pub fn resolve_configured(&self, id: &str) -> Result<Entity, String> {
        match id {
            ALL => Ok(Entity {
                id: ALL.into(),
                kind: EntityKind::Container,
                target: Target::Compose {
                    project: self.default_project.clone()?,
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
                .ok_or_else(|| format!("unknown entity '{id}'")),
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
            .map_err(|e| crate::capabilities::error_text(&e))?;
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

fn entity_of(id: &str, c: &crate::runtime::bindings::docker::Container) -> Entity {
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
    async fn only_project(&self) -> Result<String, String> {
        let containers = self
            .docker
            .labelled(label::ENTITY_ID, None)
            .await
            .map_err(|e| {
                format!(
                    " (discovery failed: {})",
                    crate::capabilities::error_text(&e)
                )
            })?;
        let projects: BTreeSet<&str> = containers
            .iter()
            .filter(|c| !c.oneoff && !c.project.is_empty())
            .map(|c| c.project.as_str())
            .collect();
        match projects.len() {
            1 => Ok(projects.into_iter().collect()),
            0 => Err(", or containers labelled marvin.entity-id in one project".into()),
            _ => Err(format!(
                " (labelled containers span projects {})",
                projects.into_iter().collect::<Vec<_>>().join(", ")
            )),
        }
    }

    /// The entity of label `marvin.entity-id=id`, or why there is none (appended to
    /// "unknown entity").
    async fn resolve(&self, id: &str) -> Result<Entity, String> {
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
                return Err(format!(
                    " (not in the config; discovery by label failed: {})",
                    crate::capabilities::error_text(&e)
                ));
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
                return Err(format!(
                    " (not in the config, and no compose container has the label {}={id})",
                    label::ENTITY_ID
                ));
            }
            _ => {
                let list: Vec<String> = services.iter().map(|(p, s)| format!("{p}/{s}")).collect();
                return Err(format!(
                    ": the label {}={id} is on containers of several services ({})",
                    label::ENTITY_ID,
                    list.join(", ")
                ));
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
            r.resolve_configured("nope").unwrap_err(),
            "unknown entity 'nope'"
        );
    }

    #[test]
    fn all_needs_a_project() {
        let r = registry("");
        assert!(
            r.resolve_configured("all")
                .unwrap_err()
                .contains("default_project")
        );
        let r = registry(
            "[entities.a]\nkind = \"container\"\nproject = \"p1\"\nservice = \"s\"\n\
             [entities.b]\nkind = \"container\"\nproject = \"p2\"\nservice = \"s\"\n",
        );
        assert!(r.resolve_configured("all").unwrap_err().contains("p1, p2"));
        let r = registry("[docker]\ndefault_project = \"x\"\n");
        assert!(
            matches!(r.resolve_configured("all").unwrap().target, Target::Compose { project, .. } if project == "x")
        );
    }

    mod discovery {
        use std::sync::Arc;

        use super::*;
        use crate::capabilities::docker::fake::{FakeEngine, container};
        use crate::runtime::bindings::docker::Container;

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
            let err = r.resolve("two").await.unwrap_err();
            assert!(
                err.contains("several services (marvin/a, marvin/b)"),
                "{err}"
            );
            let err = r.resolve("oneoff-only").await.unwrap_err();
            assert!(err.contains("no compose container has the label"), "{err}");
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
            let err = r.resolve("x").await.unwrap_err();
            assert!(
                err.starts_with("unknown entity 'x'") && err.contains("engine down"),
                "{err}"
            );
            // Special ids never go to discovery.
            assert!(
                r.resolve("all")
                    .await
                    .unwrap_err()
                    .contains("default_project")
            );
        }
    }
}
