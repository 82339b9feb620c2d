//! Entity id -> entity: what Core's `containerId` names, and where an action on it lands.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;
use crate::message::EntityKind;

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
#[derive(Debug, Clone)]
pub struct Registry {
    entities: BTreeMap<String, Entity>,
    /// The project of `all`, or why there is none.
    default_project: Result<String, String>,
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
        }
    }

    /// The entity Core means by `id`, or an error Core can show.
    pub fn resolve(&self, id: &str) -> Result<Entity, String> {
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
            r.resolve("c1").unwrap().target,
            Target::Compose {
                project: "marvin".into(),
                service: Some("web".into())
            }
        );
        assert_eq!(r.resolve("w1").unwrap().kind, EntityKind::Worker);
        assert_eq!(
            r.resolve("all").unwrap().target,
            Target::Compose {
                project: "marvin".into(),
                service: None
            }
        );
        assert_eq!(r.resolve("supervisor").unwrap().target, Target::Supervisord);
        assert_eq!(r.resolve("nope").unwrap_err(), "unknown entity 'nope'");
    }

    #[test]
    fn all_needs_a_project() {
        let r = registry("");
        assert!(r.resolve("all").unwrap_err().contains("default_project"));
        let r = registry(
            "[entities.a]\nkind = \"container\"\nproject = \"p1\"\nservice = \"s\"\n\
             [entities.b]\nkind = \"container\"\nproject = \"p2\"\nservice = \"s\"\n",
        );
        assert!(r.resolve("all").unwrap_err().contains("p1, p2"));
        let r = registry("[docker]\ndefault_project = \"x\"\n");
        assert!(
            matches!(r.resolve("all").unwrap().target, Target::Compose { project, .. } if project == "x")
        );
    }
}
