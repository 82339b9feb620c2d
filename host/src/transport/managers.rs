//! The manager processes sharing a queue (`marvin_manager_managers`): each process's
//! heartbeat, on the database's clock, written once for both databases. The claims of a
//! process that stopped beating are taken back by the fetch statements.

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{Database, Decode, Encode, Executor, IntoArguments, Pool, Type};

use super::{Error, gone};

/// What differs between the databases' SQL here.
pub(crate) struct Dialect {
    /// Seconds since the epoch, on the database's clock.
    pub(crate) now: &'static str,
    /// The n-th placeholder.
    pub(crate) param: fn(usize) -> String,
    /// The rows of a JSON array of texts bound at `{}`, as a one-column `value` table.
    pub(crate) json_values: &'static str,
}

/// Beats for process `instance` of manager `manager`. The first beat of a process
/// (`registered` false) also forgets the earlier processes of this manager id that are gone,
/// so the rows they held come back at once, and processes silent for a day.
pub(crate) async fn heartbeat<DB>(
    pool: &Pool<DB>,
    managers: &str,
    dialect: &Dialect,
    instance: &str,
    manager: &str,
    registered: &AtomicBool,
) -> Result<(), Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB>,
    (String,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let (now, p) = (dialect.now, dialect.param);
    sqlx::query::<DB>(&format!(
        "INSERT INTO {managers} (instance, manager, beat_at) VALUES ({}, {}, {now}) \
         ON CONFLICT (instance) DO UPDATE SET beat_at = excluded.beat_at",
        p(1),
        p(2)
    ))
    .bind(instance.to_owned())
    .bind(manager.to_owned())
    .execute(pool)
    .await?;
    if registered.load(Ordering::Relaxed) {
        return Ok(());
    }
    let others: Vec<String> = sqlx::query_scalar::<DB, String>(&format!(
        "SELECT instance FROM {managers} WHERE manager = {} AND instance <> {}",
        p(1),
        p(2)
    ))
    .bind(manager.to_owned())
    .bind(instance.to_owned())
    .fetch_all(pool)
    .await?;
    let gone: Vec<String> = others.into_iter().filter(|o| gone(instance, o)).collect();
    let values = dialect.json_values.replace("{}", &p(1));
    sqlx::query::<DB>(&format!(
        "DELETE FROM {managers} WHERE beat_at < {now} - 86400 OR instance IN ({values})"
    ))
    .bind(serde_json::to_string(&gone).unwrap_or_else(|_| "[]".into()))
    .execute(pool)
    .await?;
    registered.store(true, Ordering::Relaxed);
    Ok(())
}
