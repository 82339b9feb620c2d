//! (entity kind, action) -> the plugin that declared it. Pure: the runtime hands over the
//! plugins it loaded, in precedence order; the router decides who serves which pair, refuses
//! a plugin whose name or pair is already taken (naming both), lets a plugin of the directory
//! shadow a built-in one, and explains a pair nobody serves in terms Core can show.

use std::collections::HashMap;

use crate::message::{EntityKind, contract_actions};

/// What the router needs to know of a plugin.
pub trait Routable {
    /// Its name, from `describe()`.
    fn name(&self) -> &str;
    /// The (kind, action) pairs it declares.
    fn handles(&self) -> &[(EntityKind, String)];
    /// Where it comes from, for messages (a file, or `(built-in)/…`).
    fn origin(&self) -> String;
}

/// Why no plugin serves a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// An action of Core's contract that no loaded plugin declares.
    #[error(
        "no plugin handles action '{action}' for {} (add a plugin declaring ({kind}, {action}) to the plugins directory)",
        kind.plural()
    )]
    NoPlugin {
        /// The entity's kind.
        kind: EntityKind,
        /// The action.
        action: String,
    },
    /// An action neither Core's contract nor any plugin knows for this kind.
    #[error(
        "action '{action}' is not supported for {} (supported: {})",
        kind.plural(),
        supported.join(", ")
    )]
    Unsupported {
        /// The entity's kind.
        kind: EntityKind,
        /// The action.
        action: String,
        /// Core's actions for the kind, then the ones plugins add, sorted.
        supported: Vec<String>,
    },
}

/// A plugin the router refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Where the refused plugin comes from.
    pub origin: String,
    /// Why it does not serve.
    pub reason: String,
}

/// A plugin of the directory taking over actions of a built-in one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The directory's plugin, and where it comes from.
    pub plugin: String,
    pub origin: String,
    /// The built-in plugin.
    pub builtin: String,
    /// The pairs taken over; the built-in keeps serving its others.
    pub pairs: Vec<(EntityKind, String)>,
    /// Whether the built-in is replaced whole (a plugin of the same name: a newer version).
    pub whole: bool,
}

impl std::fmt::Display for Override {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs: Vec<String> = self
            .pairs
            .iter()
            .map(|(k, a)| format!("({k}, {a})"))
            .collect();
        if self.whole {
            write!(
                f,
                "plugin '{}' ({}) replaces the built-in plugin of the same name",
                self.plugin, self.origin
            )
        } else {
            write!(
                f,
                "plugin '{}' ({}) overrides the built-in '{}' for {}; the built-in keeps its other actions",
                self.plugin,
                self.origin,
                self.builtin,
                pairs.join(", ")
            )
        }
    }
}

/// Who serves what, built from the plugins loaded at one moment.
#[derive(Debug)]
pub struct Router<P> {
    serving: Vec<P>,
    table: HashMap<(EntityKind, String), usize>,
    refused: Vec<Refusal>,
    overrides: Vec<Override>,
}

impl<P> Default for Router<P> {
    fn default() -> Self {
        Self {
            serving: Vec::new(),
            table: HashMap::new(),
            refused: Vec::new(),
            overrides: Vec::new(),
        }
    }
}

impl<P: Routable> Router<P> {
    /// Routes `plugins` (in precedence order: an earlier plugin keeps a name or pair a later
    /// one claims, and the later one is refused), then the `builtins`: a plugin of the same
    /// name replaces a built-in whole (a newer version of it); a plugin claiming some of a
    /// built-in's pairs takes over those only, and the built-in serves the rest. Every
    /// override is recorded ([`Router::overrides`]).
    pub fn build(
        plugins: impl IntoIterator<Item = P>,
        builtins: impl IntoIterator<Item = P>,
    ) -> Self {
        let mut router = Self::default();
        for plugin in plugins {
            if let Some(other) = router.serving.iter().find(|p| p.name() == plugin.name()) {
                router.refused.push(Refusal {
                    origin: plugin.origin(),
                    reason: format!(
                        "plugin name '{}' is already taken by {}",
                        plugin.name(),
                        other.origin()
                    ),
                });
                continue;
            }
            let taken = plugin
                .handles()
                .iter()
                .find_map(|(kind, action)| router.get(*kind, action).map(|o| (kind, action, o)));
            if let Some((kind, action, other)) = taken {
                let reason = format!(
                    "plugin '{}' claims ({kind}, {action}), already handled by plugin '{}' ({})",
                    plugin.name(),
                    other.name(),
                    other.origin()
                );
                router.refused.push(Refusal {
                    origin: plugin.origin(),
                    reason,
                });
                continue;
            }
            router.serve(plugin);
        }
        for plugin in builtins {
            if let Some(newer) = router.serving.iter().find(|p| p.name() == plugin.name()) {
                router.overrides.push(Override {
                    plugin: newer.name().to_owned(),
                    origin: newer.origin(),
                    builtin: plugin.name().to_owned(),
                    pairs: plugin.handles().to_vec(),
                    whole: true,
                });
                continue;
            }
            // The pairs taken, by the plugin taking them (in the order they are met).
            let mut taken: Vec<(usize, Vec<(EntityKind, String)>)> = Vec::new();
            for (kind, action) in plugin.handles() {
                if let Some(&at) = router.table.get(&(*kind, action.clone())) {
                    match taken.iter_mut().find(|(i, _)| *i == at) {
                        Some((_, pairs)) => pairs.push((*kind, action.clone())),
                        None => taken.push((at, vec![(*kind, action.clone())])),
                    }
                }
            }
            let all_taken =
                taken.iter().map(|(_, p)| p.len()).sum::<usize>() == plugin.handles().len();
            for (at, pairs) in taken {
                let Some(by) = router.serving.get(at) else {
                    continue;
                };
                router.overrides.push(Override {
                    plugin: by.name().to_owned(),
                    origin: by.origin(),
                    builtin: plugin.name().to_owned(),
                    pairs,
                    whole: false,
                });
            }
            // `serve` keeps the first claim of a pair: the overriding plugin's.
            if !all_taken {
                router.serve(plugin);
            }
        }
        router
    }

    /// The built-ins' actions the directory's plugins took over.
    pub fn overrides(&self) -> &[Override] {
        &self.overrides
    }

    /// Serves every pair of `plugin` (all checked free; a pair declared twice by one plugin
    /// keeps the first claim).
    fn serve(&mut self, plugin: P) {
        let at = self.serving.len();
        for (kind, action) in plugin.handles() {
            self.table.entry((*kind, action.clone())).or_insert(at);
        }
        self.serving.push(plugin);
    }

    /// Whoever serves the pair.
    pub fn get(&self, kind: EntityKind, action: &str) -> Option<&P> {
        self.table
            .get(&(kind, action.to_owned()))
            .and_then(|&i| self.serving.get(i))
    }

    /// The plugin for (kind, action), or why there is none.
    pub fn route(&self, kind: EntityKind, action: &str) -> Result<&P, RouteError> {
        if let Some(to) = self.get(kind, action) {
            return Ok(to);
        }
        let contract = contract_actions(kind);
        if contract.contains(&action) {
            return Err(RouteError::NoPlugin {
                kind,
                action: action.to_owned(),
            });
        }
        let mut extra: Vec<&str> = self
            .table
            .keys()
            .filter(|(k, a)| *k == kind && !contract.contains(&a.as_str()))
            .map(|(_, a)| a.as_str())
            .collect();
        extra.sort_unstable();
        Err(RouteError::Unsupported {
            kind,
            action: action.to_owned(),
            supported: contract
                .iter()
                .chain(&extra)
                .map(|a| (*a).to_owned())
                .collect(),
        })
    }

    /// The plugins serving, in precedence order (built-ins last).
    pub fn serving(&self) -> &[P] {
        &self.serving
    }

    /// The plugins refused, with the reason.
    pub fn refused(&self) -> &[Refusal] {
        &self.refused
    }

    /// A serving plugin by name.
    pub fn plugin(&self, name: &str) -> Option<&P> {
        self.serving.iter().find(|p| p.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct P(&'static str, Vec<(EntityKind, String)>);

    impl Routable for P {
        fn name(&self) -> &str {
            self.0
        }
        fn handles(&self) -> &[(EntityKind, String)] {
            &self.1
        }
        fn origin(&self) -> String {
            format!("{}.wasm", self.0)
        }
    }

    fn p(name: &'static str, pairs: &[(EntityKind, &str)]) -> P {
        P(
            name,
            pairs.iter().map(|(k, a)| (*k, (*a).to_owned())).collect(),
        )
    }

    const W: EntityKind = EntityKind::Worker;
    const C: EntityKind = EntityKind::Container;

    #[test]
    fn routes_claimed_pairs_and_explains_the_rest() {
        let r = Router::build(
            [p("supervisor", &[(W, "start")]), p("logs", &[(W, "tail")])],
            [],
        );
        assert_eq!(r.route(W, "start").unwrap().0, "supervisor");
        assert_eq!(
            r.route(W, "build").unwrap_err().to_string(),
            "action 'build' is not supported for workers (supported: start, stop, restart, reread, update, tail)"
        );
        assert!(
            r.route(W, "stop")
                .unwrap_err()
                .to_string()
                .starts_with("no plugin handles action 'stop' for workers")
        );
        assert!(matches!(
            r.route(W, "stop"),
            Err(RouteError::NoPlugin { kind: W, .. })
        ));
        assert_eq!(
            r.route(C, "reread").unwrap_err().to_string(),
            "action 'reread' is not supported for containers (supported: start, stop, restart, restart_all, build, exec_cmd)"
        );
    }

    #[test]
    fn an_earlier_plugin_keeps_its_name_and_pairs() {
        let r = Router::build(
            [
                p("a", &[(W, "start"), (W, "start")]),
                p("a", &[(W, "stop")]),
                p("b", &[(W, "stop"), (W, "start")]),
                p("c", &[(W, "stop")]),
            ],
            [],
        );
        let names: Vec<&str> = r.serving().iter().map(|p| p.0).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(
            r.refused(),
            [
                Refusal {
                    origin: "a.wasm".into(),
                    reason: "plugin name 'a' is already taken by a.wasm".into()
                },
                Refusal {
                    origin: "b.wasm".into(),
                    reason:
                        "plugin 'b' claims (worker, start), already handled by plugin 'a' (a.wasm)"
                            .into()
                },
            ]
        );
        assert_eq!(r.route(W, "stop").unwrap().0, "c");
    }

    #[test]
    fn a_plugin_overrides_only_the_builtin_pairs_it_claims() {
        let builtins = [
            p("docker-compose", &[(C, "start"), (C, "stop"), (C, "build")]),
            p("supervisor", &[(W, "start")]),
            p("exec-cmd", &[(C, "exec_cmd")]),
        ];
        let r = Router::build(
            [
                p("fast-start", &[(C, "start")]),
                p("supervisor", &[(W, "start"), (W, "logs")]),
                p("mine", &[(C, "exec_cmd")]),
            ],
            builtins,
        );
        let names: Vec<&str> = r.serving().iter().map(|p| p.0).collect();
        // exec-cmd had one pair, taken: it serves nothing and is left out.
        assert_eq!(
            names,
            ["fast-start", "supervisor", "mine", "docker-compose"]
        );
        assert!(r.refused().is_empty());
        assert_eq!(r.route(C, "start").unwrap().0, "fast-start");
        assert_eq!(r.route(C, "stop").unwrap().0, "docker-compose");
        assert_eq!(r.route(C, "build").unwrap().0, "docker-compose");
        assert_eq!(r.route(W, "logs").unwrap().0, "supervisor");
        assert_eq!(r.overrides().len(), 3);
        let o = &r.overrides()[0];
        assert_eq!(
            (o.plugin.as_str(), o.builtin.as_str(), o.whole),
            ("fast-start", "docker-compose", false)
        );
        assert_eq!(o.pairs, [(C, "start".to_owned())]);
        assert_eq!(
            o.to_string(),
            "plugin 'fast-start' (fast-start.wasm) overrides the built-in 'docker-compose' for (container, start); the built-in keeps its other actions"
        );
        assert!(r.overrides()[1].whole, "same name: a newer version");
        assert!(
            r.overrides()[1]
                .to_string()
                .contains("replaces the built-in")
        );
        assert_eq!(r.overrides()[2].plugin, "mine");
    }
}
