//! `marvin-manager plugins`.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use crate::capabilities::policy::Capability;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub(super) struct PluginsArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(global: &GlobalArgs, args: PluginsArgs) -> anyhow::Result<ExitCode> {
    let settings = global.settings()?;
    let manager = settings.manager().await?;
    let dir = manager.plugins();
    let set = dir.snapshot();
    if args.json {
        let plugins: Vec<_> = set
            .plugins()
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "version": p.version,
                    "path": p.path,
                    "sha256": p.sha256,
                    "max_memory_bytes": p.max_memory_bytes,
                    "handles": p.handles.iter().map(|(k, a)| json!({"kind": k, "action": a})).collect::<Vec<_>>(),
                    "capabilities": p.policy.requested().iter().map(|c| json!({
                        "name": c.name(),
                        "grant": c.grant_key(),
                        "granted": p.policy.granted(*c),
                        "effective": p.policy.effective(*c),
                    })).collect::<Vec<_>>(),
                    // Names only: values may be secrets.
                    "env": p.policy.environment().iter().map(|(k, _)| k).collect::<Vec<_>>(),
                })
            })
            .collect();
        let errors: Vec<_> = set
            .failures()
            .iter()
            .map(|f| json!({"path": f.path, "reason": f.reason}))
            .collect();
        let out = json!({"dir": dir.dir(), "plugins": plugins, "errors": errors});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }

    println!("plugins directory: {}", dir.dir().display());
    if !dir.dir().is_dir() {
        println!("  (does not exist yet: plugins dropped there are loaded by `serve`)");
    }
    if set.plugins().is_empty() {
        println!("no plugin loaded");
    }
    for p in set.plugins() {
        println!();
        println!("{} {}  ({})", p.name, p.version, p.path.display());
        let handles: Vec<String> = p.handles.iter().map(|(k, a)| format!("{k} {a}")).collect();
        println!("  handles:      {}", handles.join(", "));
        let caps: Vec<String> = p
            .policy
            .requested()
            .iter()
            .map(|c| describe_capability(*c, p.policy.granted(*c)))
            .collect();
        println!(
            "  capabilities: {}",
            if caps.is_empty() {
                "none requested".to_owned()
            } else {
                caps.join("; ")
            }
        );
        let env: Vec<&str> = p
            .policy
            .environment()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        if !env.is_empty() {
            println!("  environment:  {}", env.join(", "));
        }
        println!("  memory cap:   {} MiB", p.max_memory_bytes >> 20);
    }
    if !set.failures().is_empty() {
        println!();
        println!("{} file(s) skipped:", set.failures().len());
        for f in set.failures() {
            println!("  {}: {}", f.path.display(), f.reason);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_capability(c: Capability, granted: Option<String>) -> String {
    match granted {
        Some(g) => format!("{} (granted: {g})", c.name()),
        None => format!(
            "{} (requested, not granted: add `{}`)",
            c.name(),
            c.grant_key()
        ),
    }
}
