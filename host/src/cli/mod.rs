//! The command line: subcommands, settings from `manager.toml` and flags, tracing.

mod plugins;
mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::capabilities::Backends;
use crate::config::Config;
use crate::registry::Registry;
use crate::runtime::plugins::PluginDir;
use crate::runtime::{Runtime, RuntimeSettings};
use crate::service::Manager;

/// The config file read when `--config` is not given and it exists.
pub const DEFAULT_CONFIG: &str = "manager.toml";
/// The plugins directory when neither a flag nor the config names one.
pub const DEFAULT_PLUGINS_DIR: &str = "plugins";

/// marvin-manager: carries out Marvin Core's actions on Docker compose containers and
/// Supervisor workers through sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "marvin-manager", version)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// The config file [default: manager.toml in the working directory, when present]
    #[arg(long, global = true, env = "MARVIN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The plugins directory [default: `[runtime] plugins_dir`, else ./plugins]
    #[arg(long, global = true, env = "MARVIN_PLUGINS_DIR", value_name = "DIR")]
    plugins_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lists the plugins: versions, actions, capabilities requested and granted, load errors.
    Plugins(plugins::PluginsArgs),
    /// Carries out one request without any queue and prints the response as JSON.
    Run(run::RunArgs),
}

/// Installs the log subscriber: `RUST_LOG`, else warnings and errors, on stderr.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs the command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugins(args) => plugins::run(&cli.global, args).await,
        Command::Run(args) => run::run(&cli.global, args).await,
    }
}

/// The configuration and the paths, after flags, environment and defaults.
struct Settings {
    config: Config,
    plugins_dir: PathBuf,
    cache_dir: Option<PathBuf>,
}

impl GlobalArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let config = match &self.config {
            Some(path) => Config::load(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG))?,
            None => Config::default(),
        };
        let plugins_dir = self
            .plugins_dir
            .clone()
            .or_else(|| config.runtime.plugins_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PLUGINS_DIR));
        let cache_dir = config.runtime.cache_dir.clone().or_else(default_cache_dir);
        Ok(Settings {
            config,
            plugins_dir,
            cache_dir,
        })
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MARVIN_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("marvin-manager").join("plugins"))
}

impl Settings {
    fn runtime(&self) -> anyhow::Result<Arc<Runtime>> {
        let settings = RuntimeSettings {
            cache_dir: self.cache_dir.clone(),
            max_instances: self.config.runtime.max_instances.unwrap_or(0),
            default_max_memory_bytes: self.config.max_memory_bytes(""),
            plugins: self.config.plugins.clone(),
        };
        Ok(Arc::new(
            Runtime::new(settings, Backends::default())
                .context("cannot start the plugin runtime")?,
        ))
    }

    async fn manager(&self) -> anyhow::Result<Manager> {
        let runtime = self.runtime()?;
        let dir = PluginDir::open(runtime.clone(), self.plugins_dir.clone()).await;
        Ok(Manager::new(
            Registry::from_config(&self.config),
            runtime,
            dir,
        ))
    }
}
