//! `marvin-manager plugins`.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use crate::capabilities::policy::Capability;
use crate::message::EntityKind;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub(super) struct PluginsArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(global: &GlobalArgs, args: PluginsArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let manager = settings.manager(None).await?;
    let dir = manager.plugins();
    let routing = manager.routing();
    let serving = routing.router().serving();
    // Files that did not load, then plugins the router refused (a name or action taken).
    let skipped: Vec<(String, String)> = routing
        .set()
        .failures()
        .iter()
        .map(|f| (f.path.display().to_string(), f.error.to_string()))
        .chain(
            routing
                .router()
                .refused()
                .iter()
                .map(|r| (r.origin.clone(), r.reason.clone())),
        )
        .collect();
    if args.json {
        let plugins: Vec<_> = serving
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "version": p.version,
                    "path": p.path,
                    "sha256": p.sha256,
                    "max_memory_bytes": p.max_memory_bytes,
                    "handles": pairs_json(&p.handles),
                    "idempotent": pairs_json(&p.idempotent),
                    "unplannable": pairs_json(&p.unplannable),
                    "capabilities": p.policy().requested().iter().map(|c| json!({
                        "name": c.name(),
                        "grant": c.grant_key(),
                        "granted": p.policy().granted(*c),
                        "effective": p.policy().effective(*c),
                    })).collect::<Vec<_>>(),
                    // Names only: values may be secrets.
                    "env": p.policy().environment().iter().map(|(k, _)| k).collect::<Vec<_>>(),
                })
            })
            .collect();
        let errors: Vec<_> = skipped
            .iter()
            .map(|(path, reason)| json!({"path": path, "reason": reason}))
            .collect();
        let overrides: Vec<_> = routing
            .router()
            .overrides()
            .iter()
            .map(|o| {
                json!({
                    "plugin": o.plugin,
                    "path": o.origin,
                    "builtin": o.builtin,
                    "whole": o.whole,
                    "handles": o.pairs.iter().map(|(k, a)| json!({"kind": k, "action": a})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let out =
            json!({"dir": dir.dir(), "plugins": plugins, "overrides": overrides, "errors": errors});
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
        return Ok(ExitCode::SUCCESS);
    }

    outln!("plugins directory: {}", dir.dir().display())?;
    if !dir.dir().is_dir() {
        outln!("  (does not exist yet: plugins dropped there are loaded by `serve`)")?;
    }
    if serving.is_empty() {
        outln!("no plugin loaded")?;
    }
    for p in serving {
        outln!()?;
        outln!("{} {}  ({})", p.name, p.version, p.path.display())?;
        outln!("  handles:      {}", pairs_text(&p.handles))?;
        // Run again when a crash interrupted them (the plugin's word or the operator's), and
        // refused by a dry run.
        if !p.idempotent.is_empty() {
            outln!("  idempotent:   {}", pairs_text(&p.idempotent))?;
        }
        if !p.unplannable.is_empty() {
            outln!("  no dry run:   {}", pairs_text(&p.unplannable))?;
        }
        let caps: Vec<String> = p
            .policy()
            .requested()
            .iter()
            .map(|c| describe_capability(&p.name, *c, p.policy().granted(*c)))
            .collect();
        outln!(
            "  capabilities: {}",
            if caps.is_empty() {
                "none requested".to_owned()
            } else {
                caps.join("; ")
            }
        )?;
        let env: Vec<&str> = p
            .policy()
            .environment()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        if !env.is_empty() {
            outln!("  environment:  {}", env.join(", "))?;
        }
        outln!("  memory cap:   {} MiB", p.max_memory_bytes >> 20)?;
        for o in routing.router().overrides() {
            let pairs = || {
                let list: Vec<String> = o.pairs.iter().map(|(k, a)| format!("{k} {a}")).collect();
                list.join(", ")
            };
            if o.plugin == p.name && !o.whole {
                outln!("  overrides:    built-in {} for {}", o.builtin, pairs())?;
            } else if o.whole && o.origin == p.path.display().to_string() {
                outln!("  overrides:    the built-in plugin of the same name, whole")?;
            } else if o.builtin == p.name && !o.whole && p.path.starts_with("(built-in)") {
                outln!("  overridden:   {} by {} ({})", pairs(), o.plugin, o.origin)?;
            }
        }
    }
    if !skipped.is_empty() {
        outln!()?;
        outln!("{} file(s) skipped:", skipped.len())?;
        for (path, reason) in &skipped {
            outln!("  {path}: {reason}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_capability(plugin: &str, c: Capability, granted: Option<String>) -> String {
    match granted {
        Some(g) => format!("{} (granted: {g})", c.name()),
        None => format!(
            "{} (requested, not granted: add {})",
            c.name(),
            crate::capabilities::policy::grant_place(plugin, c)
        ),
    }
}

/// (kind, action) pairs as `container start, container stop`.
fn pairs_text<'a>(pairs: impl IntoIterator<Item = &'a (EntityKind, String)>) -> String {
    pairs
        .into_iter()
        .map(|(k, a)| format!("{k} {a}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// (kind, action) pairs as `[{"kind": …, "action": …}]`.
fn pairs_json<'a>(
    pairs: impl IntoIterator<Item = &'a (EntityKind, String)>,
) -> Vec<serde_json::Value> {
    pairs
        .into_iter()
        .map(|(k, a)| json!({"kind": k, "action": a}))
        .collect()
}
