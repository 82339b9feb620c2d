//! `marvin-manager entities`: what each entity id Core may send names.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use std::collections::BTreeMap;

use crate::message::{ALL, Entity, SUPERVISOR, Target};
use crate::transport::{ManagerInfo, ManagerState};

use super::GlobalArgs;

#[derive(Debug, Args)]
pub(super) struct EntitiesArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn target_text(e: &Entity) -> String {
    match &e.target {
        Target::Compose {
            project,
            service: Some(s),
        } => format!("compose project '{project}' service '{s}'"),
        Target::Compose {
            project,
            service: None,
        } => format!("every service of compose project '{project}'"),
        Target::Program(p) => format!("supervisor program '{p}'"),
        Target::Supervisord => "supervisord itself (reread, update)".into(),
    }
}

fn target_json(e: &Entity) -> serde_json::Value {
    match &e.target {
        Target::Compose { project, service } => json!({"project": project, "service": service}),
        Target::Program(p) => json!({"program": p}),
        Target::Supervisord => json!({"supervisord": true}),
    }
}

/// Which live managers of the queue serve each entity id, when the queue can be read.
fn served_by(managers: &[ManagerInfo]) -> BTreeMap<String, Vec<String>> {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in managers.iter().filter(|m| m.state == ManagerState::Live) {
        for e in &m.entities {
            let names = by.entry(e.clone()).or_default();
            if !names.contains(&m.name) {
                names.push(m.name.clone());
            }
        }
    }
    by
}

pub(super) async fn run(global: &GlobalArgs, args: EntitiesArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    // Several managers share a queue on PostgreSQL only; an SQLite file is not created here.
    let shared = crate::transport::Dsn::parse(&settings.dsn)
        .is_ok_and(|d| d.kind == crate::transport::dsn::Kind::Postgres);
    let queue = if shared {
        match super::managers::list(global).await {
            Ok(m) => Ok(served_by(&m)),
            Err(e) => Err(super::describe(&e)),
        }
    } else {
        Err("the queue is not on PostgreSQL, where several managers can share it".to_owned())
    };
    let registry = settings.registry();
    let configured: Vec<Entity> = registry.entities().cloned().collect();
    let discovered = registry.discovered().await;
    let all = registry.resolve(ALL).await;
    let supervisor = registry.resolve(SUPERVISOR).await;
    if args.json {
        let list = |v: &[Entity], source: &str| -> Vec<serde_json::Value> {
            v.iter()
                .map(|e| json!({"id": e.id, "kind": e.kind, "source": source, "target": target_json(e)}))
                .collect()
        };
        let mut entities = list(&configured, "config");
        if let Ok(d) = &discovered {
            entities.extend(list(d, "label"));
        }
        let out = json!({
            "entities": entities,
            "served_by": queue.as_ref().ok(),
            "queue_error": queue.as_ref().err(),
            "discovery_error": discovered.as_ref().err(),
            "all": all.as_ref().map(target_json).unwrap_or_else(|e| json!({"error": e.to_string()})),
            "supervisor": supervisor.as_ref().map(target_json).ok(),
        });
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    for e in &configured {
        outln!("{}  {}  {}  (config)", e.id, e.kind, target_text(e))?;
    }
    match &discovered {
        Ok(d) => {
            for e in d {
                outln!(
                    "{}  {}  {}  (label marvin.entity-id)",
                    e.id,
                    e.kind,
                    target_text(e)
                )?;
            }
        }
        Err(why) => outln!("(no discovery: {why})")?,
    }
    match &all {
        Ok(e) => outln!("{ALL}  {}  {}", e.kind, target_text(e))?,
        Err(why) => outln!("{ALL}  unavailable: {why}")?,
    }
    if let Ok(e) = &supervisor {
        outln!("{SUPERVISOR}  {}  {}", e.kind, target_text(e))?;
    }
    match &queue {
        Ok(by) if by.is_empty() => outln!("\nno live manager serves anything on the queue")?,
        Ok(by) => {
            outln!("\nserved on the queue by (live managers):")?;
            for (id, names) in by {
                outln!("{id}  {}", names.join(", "))?;
            }
        }
        Err(why) => outln!("\n(which manager serves what: {why})")?,
    }
    Ok(ExitCode::SUCCESS)
}
