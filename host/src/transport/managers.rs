//! The manager processes sharing a queue (`marvin_manager_managers`): each process's
//! heartbeat, on the database's clock, its version and start, and the entity ids it serves
//! (`marvin_manager_served`); written once for both databases. The claims of a process that
//! stopped beating are taken back by the fetch statements.

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{Database, Decode, Encode, Executor, IntoArguments, Pool, Type};

use super::schema::Names;
use super::{Error, ManagerInfo, ManagerState, gone};

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
/// (`registered` false) also records its version and start, and forgets the earlier processes
/// of this manager id that are gone, so the rows they held come back at once, and processes
/// silent for a day (with what they served).
pub(crate) async fn heartbeat<DB>(
    pool: &Pool<DB>,
    names: &Names,
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
    let managers = &names.managers;
    sqlx::query::<DB>(&format!(
        "INSERT INTO {managers} (instance, manager, beat_at, version, started_at) \
         VALUES ({}, {}, {now}, {}, {now}) \
         ON CONFLICT (instance) DO UPDATE SET beat_at = excluded.beat_at, stopped_at = NULL",
        p(1),
        p(2),
        p(3)
    ))
    .bind(instance.to_owned())
    .bind(manager.to_owned())
    .bind(env!("CARGO_PKG_VERSION").to_owned())
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
    sqlx::query::<DB>(&format!(
        "DELETE FROM {} WHERE instance NOT IN (SELECT instance FROM {managers})",
        names.served
    ))
    .execute(pool)
    .await?;
    registered.store(true, Ordering::Relaxed);
    Ok(())
}

/// Replaces what process `instance` serves with `entities`, in one transaction.
pub(crate) async fn publish<DB>(
    pool: &Pool<DB>,
    names: &Names,
    dialect: &Dialect,
    instance: &str,
    entities: &[String],
) -> Result<(), Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
{
    let p = dialect.param;
    let served = &names.served;
    let values = dialect.json_values.replace("{}", &p(2));
    let mut tx = pool.begin().await?;
    sqlx::query::<DB>(&format!("DELETE FROM {served} WHERE instance = {}", p(1)))
        .bind(instance.to_owned())
        .execute(&mut *tx)
        .await?;
    sqlx::query::<DB>(&format!(
        "INSERT INTO {served} (entity_id, instance) SELECT DISTINCT value, {} FROM ({values}) AS v",
        p(1)
    ))
    .bind(instance.to_owned())
    .bind(serde_json::to_string(entities).unwrap_or_else(|_| "[]".into()))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Process `instance` stops: it serves nothing any more, and is listed as stopped (not dead)
/// until it comes back or a day passes.
pub(crate) async fn deregister<DB>(
    pool: &Pool<DB>,
    names: &Names,
    dialect: &Dialect,
    instance: &str,
) -> Result<(), Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
{
    let (now, p) = (dialect.now, dialect.param);
    let mut tx = pool.begin().await?;
    sqlx::query::<DB>(&format!(
        "DELETE FROM {} WHERE instance = {}",
        names.served,
        p(1)
    ))
    .bind(instance.to_owned())
    .execute(&mut *tx)
    .await?;
    sqlx::query::<DB>(&format!(
        "UPDATE {} SET stopped_at = {now} WHERE instance = {}",
        names.managers,
        p(1)
    ))
    .bind(instance.to_owned())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A row of the managers table as `list` reads it: instance, manager, beat, version, start,
/// stop, the database's now, claims held.
type ManagerRow = (
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
    Option<i64>,
    i64,
    i64,
);

/// Every manager process registered (live, dead or stopped), with what it serves and how
/// many requests it holds; a process silent for more than `dead_after_secs` is dead.
pub(crate) async fn list<DB>(
    pool: &Pool<DB>,
    names: &Names,
    dialect: &Dialect,
    dead_after_secs: u64,
) -> Result<Vec<ManagerInfo>, Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Option<String>: Decode<'r, DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> Option<i64>: Decode<'r, DB>,
    (String, String): for<'r> sqlx::FromRow<'r, DB::Row>,
    ManagerRow: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let Names {
        managers,
        served,
        claims,
        ..
    } = names;
    let now = dialect.now;
    let rows: Vec<ManagerRow> = sqlx::query_as::<DB, _>(&format!(
        "SELECT g.instance, g.manager, g.beat_at, g.version, g.started_at, g.stopped_at, \
               CAST({now} AS BIGINT), \
               (SELECT count(*) FROM {claims} c WHERE c.instance = g.instance) \
             FROM {managers} g ORDER BY g.manager, g.started_at"
    ))
    .fetch_all(pool)
    .await?;
    let entities: Vec<(String, String)> = sqlx::query_as::<DB, _>(&format!(
        "SELECT instance, entity_id FROM {served} ORDER BY entity_id"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(instance, name, beat_at, version, started_at, stopped_at, now, in_flight)| {
                let silent = now.saturating_sub(beat_at);
                let state = if stopped_at.is_some() {
                    ManagerState::Stopped
                } else if u64::try_from(silent).unwrap_or(0) > dead_after_secs {
                    ManagerState::Dead
                } else {
                    ManagerState::Live
                };
                ManagerInfo {
                    entities: entities
                        .iter()
                        .filter(|(i, _)| *i == instance)
                        .map(|(_, e)| e.clone())
                        .collect(),
                    instance,
                    name,
                    version: version.unwrap_or_default(),
                    started_secs_ago: started_at.map(|s| now.saturating_sub(s)),
                    silent_secs: silent,
                    state,
                    in_flight: u64::try_from(in_flight).unwrap_or(0),
                }
            },
        )
        .collect())
}
