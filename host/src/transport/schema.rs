//! DDL: the messenger table exactly as Symfony's Doctrine transport creates it, and the
//! manager's own tables.

/// DBAL's generated index name: `IDX_` + hex CRC32 of the table and column names (no zero
/// padding, as PHP's `dechex`), upper-cased, cut to 30 characters.
pub(crate) fn dbal_index_name(table: &str, columns: &[&str]) -> String {
    let hash: String = std::iter::once(&table)
        .chain(columns)
        .map(|s| format!("{:x}", crc32fast::hash(s.as_bytes())))
        .collect();
    let mut name = format!("IDX_{hash}").to_uppercase();
    // DBAL cuts names at the platform's longest identifier (63 on PostgreSQL and SQLite).
    name.truncate(63);
    name
}

/// The columns of the messenger table's indexes: Symfony 5.4's three single-column indexes,
/// and (with `composite_index`) the composite index Symfony 7.4 creates (`queue_name,
/// available_at, delivered_at, id`), which lets a fetch walk one queue's rows in
/// `available_at` order without stepping over the other queues' rows (the answers Core has not
/// read yet, the parked failures). Created with DBAL's names, so the schema is the one either
/// version makes; off by default because Doctrine of Symfony 5.4–7.3 lists that index in its
/// schema diff as one to drop.
const MESSENGER_INDEXES: [&[&str]; 4] = [
    &["queue_name"],
    &["available_at"],
    &["delivered_at"],
    &["queue_name", "available_at", "delivered_at", "id"],
];

fn messenger_indexes(table: &str, composite: bool) -> impl Iterator<Item = String> + '_ {
    let n = if composite { 4 } else { 3 };
    MESSENGER_INDEXES[..n].iter().map(move |cols| {
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {table} ({})",
            dbal_index_name(table, cols),
            cols.join(", ")
        )
    })
}

/// The columns of the ledger, in the order the transports read and write them.
pub(crate) const LEDGER_COLUMNS: &str = "correlation_id, entity_id, action, plugin, success, error, response, received_at, finished_at, duration_ms, manager";

/// The manager's own tables, in the messenger table's schema.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) ledger: String,
    pub(crate) failures: String,
    /// Requests taken and not finished: which manager (and process) holds each, and when its
    /// action started (none while it waits for its turn).
    pub(crate) claims: String,
    /// The manager processes sharing the queue and their last heartbeat.
    pub(crate) managers: String,
    /// The entity ids each manager process serves (published by `serve`).
    pub(crate) served: String,
    /// The entity of each request row seen by a manager that does not serve it, so only the
    /// managers that do take it (filled once per row, deleted with it).
    pub(crate) routes: String,
}

impl Names {
    pub(crate) fn for_table(table: &str) -> Self {
        let (_, schema) = split(table);
        Self {
            ledger: format!("{schema}marvin_manager_ledger"),
            failures: format!("{schema}marvin_manager_failures"),
            claims: format!("{schema}marvin_manager_claims"),
            managers: format!("{schema}marvin_manager_managers"),
            served: format!("{schema}marvin_manager_served"),
            routes: format!("{schema}marvin_manager_routes"),
        }
    }
}

/// The bare table name (without schema) and the schema prefix (`schema.` or empty).
fn split(table: &str) -> (&str, &str) {
    match table.rsplit_once('.') {
        Some((schema, t)) => (t, &table[..schema.len() + 1]),
        None => (table, ""),
    }
}

/// The tables and indexes `statements` create, as names to look up (indexes qualified with
/// the schema of `table`, where PostgreSQL puts them): when all exist (and the trigger, on
/// PostgreSQL), setup has nothing to do and runs no DDL.
pub(crate) fn relations(statements: &[String], table: &str) -> Vec<String> {
    let (_, schema) = split(table);
    statements
        .iter()
        .filter_map(|stmt| {
            if let Some(rest) = stmt.strip_prefix("CREATE TABLE IF NOT EXISTS ") {
                rest.split_whitespace().next().map(str::to_owned)
            } else {
                let rest = stmt.strip_prefix("CREATE INDEX IF NOT EXISTS ")?;
                rest.split_whitespace()
                    .next()
                    .map(|i| format!("{schema}{i}"))
            }
        })
        .collect()
}

/// PostgreSQL: table, indexes, and (with `use_notify`) Symfony's NOTIFY trigger.
pub(crate) fn postgres(table: &str, use_notify: bool, composite_index: bool) -> Vec<String> {
    let mut sql = vec![format!(
        "CREATE TABLE IF NOT EXISTS {table} (id BIGSERIAL NOT NULL, body TEXT NOT NULL, headers TEXT NOT NULL, queue_name VARCHAR(190) NOT NULL, created_at TIMESTAMP(0) WITHOUT TIME ZONE NOT NULL, available_at TIMESTAMP(0) WITHOUT TIME ZONE NOT NULL, delivered_at TIMESTAMP(0) WITHOUT TIME ZONE DEFAULT NULL, PRIMARY KEY(id))"
    )];
    sql.extend(messenger_indexes(table, composite_index));
    if use_notify {
        let (bare, schema) = split(table);
        let function = format!("{schema}notify_{bare}");
        sql.push(format!(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS TRIGGER AS $$\n    BEGIN\n        PERFORM pg_notify('{table}', NEW.queue_name::text);\n        RETURN NEW;\n    END;\n$$ LANGUAGE plpgsql"
        ));
        sql.push(format!("DROP TRIGGER IF EXISTS notify_trigger ON {table}"));
        sql.push(format!(
            "CREATE TRIGGER notify_trigger AFTER INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE PROCEDURE {function}()"
        ));
    }
    sql.extend(own_tables(&Names::for_table(table)));
    sql
}

/// SQLite: the DDL Symfony's transport runs.
pub(crate) fn sqlite(table: &str, composite_index: bool) -> Vec<String> {
    let mut sql = vec![format!(
        "CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, body CLOB NOT NULL, headers CLOB NOT NULL, queue_name VARCHAR(190) NOT NULL, created_at DATETIME NOT NULL, available_at DATETIME NOT NULL, delivered_at DATETIME DEFAULT NULL)"
    )];
    sql.extend(messenger_indexes(table, composite_index));
    sql.extend(own_tables(&Names::for_table(table)));
    sql
}

/// Columns added to the manager's tables after they were first created: (table, column,
/// type). `setup` adds those an older database lacks; the CREATE TABLEs have them already.
pub(crate) fn added_columns(n: &Names) -> Vec<(String, &'static str, &'static str)> {
    vec![
        (n.ledger.clone(), "manager", "VARCHAR(190) DEFAULT NULL"),
        (n.managers.clone(), "version", "VARCHAR(64) DEFAULT NULL"),
        (n.managers.clone(), "started_at", "BIGINT DEFAULT NULL"),
        (n.managers.clone(), "stopped_at", "BIGINT DEFAULT NULL"),
    ]
}

fn own_tables(n: &Names) -> Vec<String> {
    let Names {
        ledger,
        failures,
        claims,
        managers,
        served,
        routes,
    } = n;
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {ledger} (correlation_id VARCHAR(190) NOT NULL PRIMARY KEY, entity_id TEXT NOT NULL, action TEXT NOT NULL, plugin TEXT DEFAULT NULL, success BOOLEAN NOT NULL, error TEXT DEFAULT NULL, response TEXT NOT NULL, received_at VARCHAR(32) NOT NULL, finished_at VARCHAR(32) NOT NULL, duration_ms BIGINT NOT NULL, manager VARCHAR(190) DEFAULT NULL)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS marvin_manager_ledger_received ON {ledger} (received_at)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS marvin_manager_ledger_entity ON {ledger} (entity_id, received_at)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {failures} (row_id BIGINT NOT NULL PRIMARY KEY, original_queue VARCHAR(190) NOT NULL, reason TEXT NOT NULL, failed_at VARCHAR(32) NOT NULL)"
        ),
        // beat_at: seconds since the epoch on the database's clock (one clock for all).
        format!(
            "CREATE TABLE IF NOT EXISTS {claims} (row_id BIGINT NOT NULL PRIMARY KEY, manager VARCHAR(190) NOT NULL, instance VARCHAR(64) NOT NULL, started_at VARCHAR(32) DEFAULT NULL)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {managers} (instance VARCHAR(64) NOT NULL PRIMARY KEY, manager VARCHAR(190) NOT NULL, beat_at BIGINT NOT NULL, version VARCHAR(64) DEFAULT NULL, started_at BIGINT DEFAULT NULL, stopped_at BIGINT DEFAULT NULL)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {served} (entity_id VARCHAR(190) NOT NULL, instance VARCHAR(64) NOT NULL, PRIMARY KEY (entity_id, instance))"
        ),
        format!("CREATE INDEX IF NOT EXISTS marvin_manager_served_instance ON {served} (instance)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {routes} (row_id BIGINT NOT NULL PRIMARY KEY, entity_id VARCHAR(190) NOT NULL)"
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_match_dbal() {
        // From the DDL real Symfony 5.4 ran (tests/fixtures/codec/pg-ddl.sql).
        assert_eq!(
            dbal_index_name("messenger_messages", &["queue_name"]),
            "IDX_75EA56E0FB7336F0"
        );
        assert_eq!(
            dbal_index_name("messenger_messages", &["available_at"]),
            "IDX_75EA56E0E3BD61CE"
        );
        assert_eq!(
            dbal_index_name("messenger_messages", &["delivered_at"]),
            "IDX_75EA56E016BA31DB"
        );
        // Symfony 7.4's composite index, as its migrations name it.
        assert_eq!(
            dbal_index_name(
                "messenger_messages",
                &["queue_name", "available_at", "delivered_at", "id"]
            ),
            "IDX_75EA56E0FB7336F0E3BD61CE16BA31DBBF396750"
        );
    }

    #[test]
    fn relations_are_every_table_and_index_created() {
        let r = relations(&postgres("app.queue", true, false), "app.queue");
        assert_eq!(r.len(), 13, "{r:?}");
        let r = relations(&postgres("app.queue", true, true), "app.queue");
        assert_eq!(r.len(), 14, "{r:?}");
        assert!(r.contains(&"app.queue".to_owned()));
        assert!(r.contains(&"app.marvin_manager_routes".to_owned()));
        assert!(r.contains(&"app.marvin_manager_claims".to_owned()));
        assert!(r.contains(&"app.marvin_manager_ledger_received".to_owned()));
        assert!(r.iter().any(|n| n.starts_with("app.IDX_")));
        let r = relations(&sqlite("messenger_messages", false), "messenger_messages");
        assert_eq!(r.len(), 13, "{r:?}");
    }

    #[test]
    fn notify_trigger_as_symfony_writes_it() {
        let sql = postgres("messenger_messages", true, false);
        assert!(
            sql.iter()
                .any(|s| s
                    .contains("PERFORM pg_notify('messenger_messages', NEW.queue_name::text);"))
        );
        assert!(sql.iter().any(|s| s == "CREATE TRIGGER notify_trigger AFTER INSERT OR UPDATE ON messenger_messages FOR EACH ROW EXECUTE PROCEDURE notify_messenger_messages()"));
        let sql = postgres("app.queue", true, false);
        assert!(
            sql.iter()
                .any(|s| s.contains("FUNCTION app.notify_queue()"))
        );
    }
}
