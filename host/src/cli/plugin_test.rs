//! `marvin-manager plugin test`: one plugin, scripted requests and host calls; a directory of
//! scripts in one run, JUnit XML for CI, and a watch mode.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::runtime::plugins::Stamp;
use crate::scripting::{self, Script};

use super::{GlobalArgs, environment, scaffold};

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
    /// Writes a new plugin project (code, a `plugin test` script per action, and for Rust the
    /// SDK with its WIT) that builds with the language's toolchain alone.
    New(NewArgs),
    /// Prints the WIT package plugins are written against, or writes its files to a folder
    /// (for componentize-py, jco, wit-bindgen).
    Wit(WitArgs),
}

#[derive(Debug, Args)]
struct NewArgs {
    /// The plugin's name (also its crate's and folder's).
    name: String,
    /// The language.
    #[arg(long, value_enum, default_value = "rust")]
    lang: scaffold::Lang,
    /// What it acts on.
    #[arg(long, value_enum, default_value = "container")]
    kind: scaffold::Kind,
    /// An action it handles; repeatable [default: status].
    #[arg(long = "action", value_name = "NAME")]
    actions: Vec<String>,
    /// Where to write it [default: ./NAME].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct WitArgs {
    /// Writes the files into DIR instead of printing them.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct TestArgs {
    /// The plugin (`.wasm`).
    plugin: PathBuf,
    /// The request, as JSON: `{"containerId": "web", "action": "start", "args": {}}` (Core's
    /// names) or the script's `[request]` names; it replaces each script's `[request]`.
    #[arg(long, value_name = "FILE")]
    request: Option<PathBuf>,
    /// A script (TOML, or JSON: `[entity]`, `[grants]`, `[[calls]]` with answers, `[expect]`),
    /// or a directory whose `*.toml` and `*.json` files are each a script; repeatable.
    #[arg(long, value_name = "FILE|DIR", conflicts_with = "replay")]
    script: Vec<PathBuf>,
    /// A trace recorded with `--record`: the same request against the same answers; any
    /// difference in the calls made or the response fails.
    #[arg(long, value_name = "TRACE")]
    replay: Option<PathBuf>,
    /// Also writes the results as JUnit XML (for CI systems) to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Runs the scripts again whenever the `.wasm` (or a script) changes, until interrupted.
    #[arg(long)]
    watch: bool,
}

/// One script's outcome.
struct Outcome {
    script: PathBuf,
    /// The report, or why the script could not run.
    result: Result<scripting::Report, String>,
    took: Duration,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.result.as_ref().is_ok_and(scripting::Report::passed)
    }
}

pub(super) async fn run(global: &GlobalArgs, args: PluginArgs) -> anyhow::Result<ExitCode> {
    let args = match args.command {
        PluginCommand::Test(args) => args,
        PluginCommand::New(args) => return new(&args),
        PluginCommand::Wit(args) => {
            match &args.out {
                Some(dir) => {
                    scaffold::write_wit(dir)?;
                    eprintln!("wrote the WIT package into {}", dir.display());
                }
                None => super::write_out(scaffold::wit_text().as_bytes())?,
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let cache_dir = global.settings()?.cache_dir;
    let scripts = scripts(&args)?;
    if !args.watch {
        check_plugin_file(&args.plugin)?;
        let outcomes = run_all(&args, &scripts, cache_dir.clone()).await;
        return finish(&args, &outcomes);
    }
    let mut seen = None;
    loop {
        let now = stamps(&args.plugin, &scripts);
        if seen.as_ref() != Some(&now) {
            seen = Some(now);
            match check_plugin_file(&args.plugin) {
                Ok(()) => {
                    let outcomes = run_all(&args, &scripts, cache_dir.clone()).await;
                    finish(&args, &outcomes)?;
                }
                Err(e) => eprintln!("{e:#}"),
            }
            eprintln!(
                "watching {} for changes (Ctrl-C to stop)",
                args.plugin.display()
            );
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }
}

fn new(args: &NewArgs) -> anyhow::Result<ExitCode> {
    let actions = if args.actions.is_empty() {
        vec!["status".to_owned()]
    } else {
        args.actions.clone()
    };
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let files = scaffold::new_plugin(&dir, &args.name, args.lang, args.kind, &actions)?;
    outln!("wrote {} ({} files)", dir.display(), files.len())?;
    let (wasm, steps) = args.lang.build(&args.name);
    outln!("next:\n  cd {}", dir.display())?;
    for step in steps {
        outln!("  {}", step.replace("NAME", &args.name))?;
    }
    outln!("  marvin-manager plugin test {wasm} --script tests")?;
    Ok(ExitCode::SUCCESS)
}

/// What identifies the current versions of the plugin and the scripts (as the plugins
/// directory tells a new version of a file).
fn stamps(plugin: &Path, scripts: &[PathBuf]) -> Vec<Option<Stamp>> {
    std::iter::once(plugin)
        .chain(scripts.iter().map(PathBuf::as_path))
        .map(Stamp::of_path)
        .collect()
}

/// A plugin file that is not there gets told what to build.
fn check_plugin_file(plugin: &Path) -> anyhow::Result<()> {
    if plugin.is_file() {
        return Ok(());
    }
    let dir = plugin.parent().unwrap_or(Path::new("."));
    let stem = plugin
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rlib = dir.join(format!("lib{stem}.rlib"));
    let hint = if rlib.exists() {
        format!(
            "{} exists: the crate was built as a Rust library, not a component. Add\n  [lib]\n  crate-type = [\"cdylib\"]\nto its Cargo.toml and build again",
            rlib.display()
        )
    } else {
        "build the plugin first: Rust, `cargo build --target wasm32-wasip2 --release` (with \
         crate-type = [\"cdylib\"] in Cargo.toml) gives target/wasm32-wasip2/release/<crate>.wasm; \
         Python, `componentize-py … componentize`; JavaScript, `jco componentize …`"
            .to_owned()
    };
    bail!("no plugin file {}: {hint}", plugin.display())
}

/// The scripts to run, in order: files as given, a directory's `*.toml` / `*.json` sorted.
fn scripts(args: &TestArgs) -> anyhow::Result<Vec<PathBuf>> {
    if let Some(trace) = &args.replay {
        return Ok(vec![trace.clone()]);
    }
    if args.script.is_empty() {
        bail!("plugin test needs --script FILE|DIR or --replay TRACE");
    }
    let mut out = Vec::new();
    for path in &args.script {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file() && p.extension().is_some_and(|e| e == "toml" || e == "json")
                })
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("no scripts (*.toml, *.json) in {}", path.display());
            }
            out.extend(found);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

async fn run_all(args: &TestArgs, scripts: &[PathBuf], cache_dir: Option<PathBuf>) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(scripts.len());
    for script in scripts {
        let started = Instant::now();
        let result = run_one(args, script, cache_dir.clone()).await;
        out.push(Outcome {
            script: script.clone(),
            result,
            took: started.elapsed(),
        });
    }
    out
}

async fn run_one(
    args: &TestArgs,
    path: &Path,
    cache_dir: Option<PathBuf>,
) -> Result<scripting::Report, String> {
    // The same reader as `scripting::Script::load` (`{script_dir}` included).
    let mut doc = scripting::load_doc(path)?;
    if let Some(req) = &args.request {
        let text = std::fs::read_to_string(req)
            .map_err(|e| format!("cannot read {}: {e}", req.display()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", req.display()))?;
        doc["request"] = request_section(&v);
    }
    if doc.get("request").is_none() {
        return Err(format!(
            "no request: give --request FILE or a [request] section in {}",
            path.display()
        ));
    }
    let script: Script =
        serde_json::from_value(doc).map_err(|e| format!("{}: {e}", path.display()))?;
    scripting::run(&args.plugin, &script, cache_dir, &environment()).await
}

/// Prints every outcome and the summary, writes the JUnit file; fails when one failed.
fn finish(args: &TestArgs, outcomes: &[Outcome]) -> anyhow::Result<ExitCode> {
    let several = outcomes.len() > 1;
    for o in outcomes {
        if several {
            outln!(
                "== {} ({})",
                o.script.display(),
                if o.passed() { "passed" } else { "FAILED" }
            )?;
        }
        match &o.result {
            Ok(report) => super::write_out(report.render().as_bytes())?,
            Err(e) => {
                eprintln!("error: {e}");
                outln!("FAILED")?;
            }
        }
        if several {
            outln!()?;
        }
    }
    let failed = outcomes.iter().filter(|o| !o.passed()).count();
    if several {
        outln!(
            "{} script(s): {} passed, {failed} failed",
            outcomes.len(),
            outcomes.len() - failed
        )?;
    }
    if let Some(file) = &args.junit {
        std::fs::write(file, junit(&args.plugin, outcomes)?)
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The outcomes as a JUnit XML report: a suite for the plugin, a case per script.
fn junit(plugin: &Path, outcomes: &[Outcome]) -> anyhow::Result<String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let name = plugin.file_name().map_or_else(
        || plugin.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut suite = TestSuite::new(format!("plugin test {name}"));
    for o in outcomes {
        let status = match &o.result {
            Ok(r) if r.passed() => TestCaseStatus::success(),
            Ok(r) => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(r.problems.join("; "));
                s.set_description(r.render());
                s
            }
            Err(e) => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                s.set_message(e.clone());
                s
            }
        };
        let case_name = o.script.file_stem().map_or_else(
            || o.script.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut case = TestCase::new(case_name, status);
        case.set_classname(name.clone());
        case.set_time(o.took);
        if let Ok(r) = &o.result {
            case.set_system_out(r.render());
        }
        suite.add_test_case(case);
    }
    let mut report = Report::new("marvin-manager plugin test");
    report.add_test_suite(suite);
    report.to_string().context("cannot write the JUnit report")
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
