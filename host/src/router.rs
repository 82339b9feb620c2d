//! (entity kind, action) -> the plugin that declared it. Pure: the table is built by the
//! runtime when plugins load, and a claim that is already taken never gets here.

use std::collections::HashMap;

use crate::message::EntityKind;

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

/// The route table.
#[derive(Debug, Clone)]
pub struct Routes<T> {
    table: HashMap<(EntityKind, String), T>,
}

impl<T> Default for Routes<T> {
    fn default() -> Self {
        Self {
            table: HashMap::new(),
        }
    }
}

impl<T> Routes<T> {
    /// Claims a pair; gives back the current holder if it is taken.
    pub fn claim(&mut self, kind: EntityKind, action: &str, to: T) -> Result<(), &T> {
        let key = (kind, action.to_owned());
        if self.table.contains_key(&key) {
            return Err(&self.table[&key]);
        }
        self.table.insert(key, to);
        Ok(())
    }

    /// Whoever handles the pair.
    pub fn get(&self, kind: EntityKind, action: &str) -> Option<&T> {
        self.table.get(&(kind, action.to_owned()))
    }

    /// The plugin for (kind, action), or an error Core can show.
    pub fn route(&self, kind: EntityKind, action: &str) -> Result<&T, String> {
        if let Some(to) = self.get(kind, action) {
            return Ok(to);
        }
        let contract = contract_actions(kind);
        if contract.contains(&action) {
            return Err(format!(
                "no plugin handles action '{action}' for {} (add a plugin declaring ({kind}, {action}) to the plugins directory)",
                kind.plural()
            ));
        }
        let mut supported: Vec<&str> = contract.to_vec();
        let mut extra: Vec<&str> = self
            .table
            .keys()
            .filter(|(k, a)| *k == kind && !contract.contains(&a.as_str()))
            .map(|(_, a)| a.as_str())
            .collect();
        extra.sort_unstable();
        supported.extend(extra);
        Err(format!(
            "action '{action}' is not supported for {} (supported: {})",
            kind.plural(),
            supported.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_claimed_pairs_and_explains_the_rest() {
        let mut r = Routes::default();
        r.claim(EntityKind::Worker, "start", "supervisor").unwrap();
        r.claim(EntityKind::Worker, "tail", "logs").unwrap();
        assert_eq!(r.route(EntityKind::Worker, "start"), Ok(&"supervisor"));
        assert_eq!(
            r.claim(EntityKind::Worker, "start", "other"),
            Err(&"supervisor")
        );
        assert_eq!(
            r.route(EntityKind::Worker, "build").unwrap_err(),
            "action 'build' is not supported for workers (supported: start, stop, restart, reread, update, tail)"
        );
        assert!(
            r.route(EntityKind::Worker, "stop")
                .unwrap_err()
                .starts_with("no plugin handles action 'stop' for workers")
        );
        assert_eq!(
            r.route(EntityKind::Container, "reread").unwrap_err(),
            "action 'reread' is not supported for containers (supported: start, stop, restart, restart_all, build, exec_cmd)"
        );
    }
}
