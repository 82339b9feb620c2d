//! `marvin-manager plugin test`: one plugin, one request, scripted host calls.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::scripting::{self, Script};

use super::{GlobalArgs, default_cache_dir, environment};

#[derive(Debug, Args)]
pub(super) struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Runs a plugin on one request in the real runtime (same limits, same grant checks)
    /// with host calls answered from a script, prints the response and the calls made, and
    /// exits 1 with the differences when they are not what the script expects. Needs no
    /// Docker, supervisord or database.
    Test(TestArgs),
}

#[derive(Debug, Args)]
struct TestArgs {
    /// The plugin (`.wasm`).
    plugin: PathBuf,
    /// The request, as JSON: `{"containerId": "web", "action": "start", "args": {}}` (Core's
    /// names) or the script's `[request]` names; it replaces the script's `[request]`.
    #[arg(long, value_name = "FILE")]
    request: Option<PathBuf>,
    /// The script (TOML, or JSON): `[entity]`, `[grants]`, `[[calls]]` with answers,
    /// `[expect]`.
    #[arg(long, value_name = "FILE", conflicts_with = "replay")]
    script: Option<PathBuf>,
    /// A trace recorded with `--record`: the same request against the same answers; any
    /// difference in the calls made or the response fails.
    #[arg(long, value_name = "TRACE")]
    replay: Option<PathBuf>,
}

pub(super) async fn run(_global: &GlobalArgs, args: PluginArgs) -> anyhow::Result<ExitCode> {
    let PluginCommand::Test(args) = args.command;
    let Some(path) = args.script.as_ref().or(args.replay.as_ref()) else {
        bail!("plugin test needs --script FILE or --replay TRACE");
    };
    // The same reader as `scripting::Script::load` (`{script_dir}` included).
    let mut doc = scripting::load_doc(path).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(req) = &args.request {
        let text = std::fs::read_to_string(req)
            .with_context(|| format!("cannot read {}", req.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", req.display()))?;
        doc["request"] = request_section(&v);
    }
    if doc.get("request").is_none() {
        bail!(
            "no request: give --request FILE or a [request] section in {}",
            path.display()
        );
    }
    let script: Script =
        serde_json::from_value(doc).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let report = scripting::run(&args.plugin, &script, default_cache_dir(), &environment())
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    print!("{}", report.render());
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A request in Core's names (`containerId`, `correlationId`) or the script's.
fn request_section(v: &Value) -> Value {
    let mut out = serde_json::Map::new();
    let Some(m) = v.as_object() else {
        return v.clone();
    };
    for (k, val) in m {
        let key = match k.as_str() {
            "containerId" => "entity",
            "correlationId" => "correlation_id",
            other => other,
        };
        out.insert(key.to_owned(), val.clone());
    }
    Value::Object(out)
}
