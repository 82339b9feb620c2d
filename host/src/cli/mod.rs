//! The command line: subcommands, settings from `manager.toml`, flags and the environment,
//! tracing. The one composition root: the parts of the service (transport, registry,
//! runtime, backends, recorder) are built here and handed in; nothing below reads the process
//! environment or the working directory.

/// Runs `$body` with `$t` bound to whichever transport `$opened` holds.
macro_rules! with_transport {
    ($opened:expr, $t:ident => $body:expr) => {
        match $opened {
            $crate::cli::queue::Opened::Pg($t) => $body,
            $crate::cli::queue::Opened::Sqlite($t) => $body,
        }
    };
}

/// Prints a line to stdout like `println!`, for a command returning a `Result`: a reader that
/// went away (`| head`, `| grep -q`) is not an error, any other write error is.
macro_rules! outln {
    () => {
        $crate::cli::out(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!($($arg)*))
    };
}

mod entities;
mod http;
pub mod logging;
mod managers;
mod messenger;
mod plugin_test;
mod plugins;
mod queue;
mod run;
mod scaffold;
mod serve;

pub use queue::DEFAULT_DSN;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::capabilities::Backends;
use crate::capabilities::docker::engine::Engine;
use crate::capabilities::supervisor::rpc::Supervisord;
use crate::config::{Config, DEFAULT_MAX_MEMORY_BYTES};
use crate::message::ManagerRequest;
use crate::registry::Registry;
use crate::runtime::plugins::PluginDir;
use crate::runtime::{Observer, Runtime, RuntimeSettings};
use crate::scripting::Recorder;
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

#[derive(Debug, Clone, Args)]
struct GlobalArgs {
    /// The config file [default: manager.toml in the working directory, when present]
    #[arg(long, global = true, env = "MARVIN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The plugins directory [default: `[runtime] plugins_dir`, else ./plugins]
    #[arg(long, global = true, env = "MARVIN_PLUGINS_DIR", value_name = "DIR")]
    plugins_dir: Option<PathBuf>,
    /// The queue: postgres://… or sqlite://… with Symfony's options [default: `[transport]
    /// dsn`, else sqlite://marvin.db?queue_name=manager_messages]
    #[arg(
        long,
        global = true,
        env = "MARVIN_DSN",
        value_name = "DSN",
        hide_env_values = true
    )]
    dsn: Option<String>,
    /// How log lines are written: text, or JSON lines for log shippers.
    #[arg(
        long,
        global = true,
        env = "MARVIN_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: logging::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consumes requests from the queue and answers them, like `messenger:consume`.
    Serve(serve::ServeArgs),
    /// Creates the queue table (as Symfony does) and the manager's tables.
    Setup(queue::SetupArgs),
    /// Sends a request as Core does; `--wait` prints the answer.
    Dispatch(queue::DispatchArgs),
    /// Shows the history of actions (the ledger).
    Actions(queue::ActionsArgs),
    /// The rows parked in the failure queue: show, retry, remove (`messenger:failed:*`).
    Failed(messenger::FailedArgs),
    /// Rows waiting per queue, the oldest one's age, answers per minute (`messenger:stats`).
    Stats(messenger::StatsArgs),
    /// Deletes ledger rows and parked rows older than `--keep` (or `[ledger] keep`).
    Prune(messenger::PruneArgs),
    /// Lists the plugins: versions, actions, capabilities requested and granted, load errors.
    Plugins(plugins::PluginsArgs),
    /// Carries out one request without any queue and prints the response as JSON.
    Run(run::RunArgs),
    /// Plugin authoring: `plugin new` writes a project, `plugin test` runs a plugin in
    /// isolation against scripts, `plugin wit` gives the WIT package.
    Plugin(plugin_test::PluginArgs),
    /// Lists the entity ids Core may send: configured, discovered by label, `all`,
    /// `supervisor`, and what each names.
    Entities(entities::EntitiesArgs),
    /// Lists the managers sharing the queue (live, dead, stopped), the entities each serves
    /// and the requests each holds.
    Managers(managers::ManagersArgs),
    /// Prints the completion script of a shell (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Prints the manual page (roff), e.g. `marvin-manager man > marvin-manager.1`.
    Man,
}

impl Cli {
    /// The log level when `RUST_LOG` is not set: the service logs what it does.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Serve(_) => "info",
            _ => "warn",
        }
    }
}

impl Cli {
    /// Installs the log subscriber on stderr: `RUST_LOG`, else the command's default level,
    /// in the format asked for.
    pub fn init_tracing(&self) {
        logging::init(self.default_log_level(), self.global.log_format);
    }
}

/// An error for people: its chain of causes, each said once (a cause whose text the message
/// before it already holds is left out), without any known secret.
pub fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let c = cause.to_string();
        if text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    logging::scrub(&text)
}

/// mimalloc's number for its purge delay option (`mi_option_purge_delay` in its `mimalloc.h`,
/// the same in its v2 and v3); `libmimalloc-sys` names no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long memory freed stays with the allocator before it goes back to the system.
const PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// Tunes the allocator the binary installs (mimalloc): memory freed goes back to the system
/// after a second unused instead of 10 ms, so the buffers each batch of requests allocates
/// and frees are reused rather than given back and faulted in again (page faults were 4% of
/// the queue bench's samples; alternating drains read 41–42 µs of manager CPU per action
/// against 44–45 µs with the default).
/// An idle service still gives its memory back.
pub fn tune_allocator() {
    // SAFETY: sets one of mimalloc's process-wide options, which it reads at each purge; any
    // value is valid for it.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
    }
}

/// The binary's async runtime. Its main thread runs the consume loop (`block_on`) beside the
/// workers that run requests, so the workers are one fewer than the cores (at least one)
/// rather than tokio's one per core: on 2 cores, three busy threads beside PostgreSQL's
/// preempted and woke each other, and alternating drains read 35–38 µs of manager CPU per
/// no-op action with one worker against 40–44 µs with two (and 14,300 against 13,700
/// actions/s). `TOKIO_WORKER_THREADS` still sets the number.
pub fn async_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder.enable_all().build()
}

/// Writes one line to stdout in one write. A closed pipe is the reader's choice (`| head`,
/// `| grep -q`): the rest of the output is dropped and the command's own exit code stands.
pub(crate) fn out(line: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut text = line.to_string();
    text.push('\n');
    write_out(text.as_bytes())
}

/// Writes bytes to stdout and flushes them; a closed pipe is not an error (see [`out`]).
pub(crate) fn write_out(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Runs the command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugins(args) => plugins::run(&cli.global, args).await,
        Command::Serve(args) => serve::serve(&cli.global, args).await,
        Command::Setup(args) => queue::setup(&cli.global, args).await,
        Command::Dispatch(args) => queue::dispatch(&cli.global, args).await,
        Command::Actions(args) => queue::actions(&cli.global, args).await,
        Command::Failed(args) => messenger::failed(&cli.global, args).await,
        Command::Stats(args) => messenger::stats(&cli.global, args).await,
        Command::Prune(args) => messenger::prune(&cli.global, args).await,
        Command::Run(args) => run::run(&cli.global, args).await,
        Command::Plugin(args) => plugin_test::run(&cli.global, args).await,
        Command::Entities(args) => entities::run(&cli.global, args).await,
        Command::Managers(args) => managers::run(&cli.global, args).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into memory first: clap_complete panics on a failed write.
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "marvin-manager", &mut out);
            write_out(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("cannot render the manual page")?;
            write_out(&out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The request flags of `dispatch` and `run`: Core's `ManagerRequestCommand`, field by field.
#[derive(Debug, Args)]
struct RequestArgs {
    /// The entity id (as Core's `containerId`), or `all` / `supervisor`.
    #[arg(long)]
    entity: String,
    /// The action, e.g. start.
    #[arg(long)]
    action: String,
    /// The command of exec_cmd.
    #[arg(long)]
    command: Option<String>,
    /// The timeout in seconds.
    #[arg(long, default_value_t = crate::message::DEFAULT_TIMEOUT_SECS)]
    timeout: i64,
    /// Core's `args`, as JSON (Core sends `[]` when there are none).
    #[arg(long, default_value = "[]")]
    args: String,
    /// The correlation id [default: a new UUID].
    #[arg(long)]
    correlation_id: Option<String>,
    /// Plan the action instead of doing it (`args.dry_run = true`): the answer lists the
    /// changing calls the plugin would make (`metadata.plan`), none is made.
    #[arg(long)]
    dry_run: bool,
}

impl RequestArgs {
    fn into_request(self) -> anyhow::Result<ManagerRequest> {
        let args = serde_json::from_str(&self.args).context("--args is not valid JSON")?;
        let id = self.correlation_id.unwrap_or_else(new_correlation_id);
        let req = ManagerRequest::new(id, self.entity, self.action)
            .with_command(self.command)
            .with_args(args)
            .with_timeout(self.timeout);
        Ok(if self.dry_run { req.planned() } else { req })
    }
}

/// The configuration and the paths, after flags, environment and defaults.
struct Settings {
    config: Config,
    /// The DSN in force: `--dsn`, `MARVIN_DSN`, `[transport] dsn`, else the default.
    dsn: String,
    plugins_dir: PathBuf,
    cache_dir: Option<PathBuf>,
    backends: std::sync::OnceLock<Backends>,
}

impl GlobalArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        // The DSN given outside the file is a secret before the file is read.
        if let Some(dsn) = &self.dsn {
            logging::set_redactor(crate::secrets::Redactor::new(crate::secrets::of_url(dsn)));
        }
        let config = match &self.config {
            Some(path) => Config::load(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG))?,
            None => Config::default(),
        };
        let dsn = self.dsn(config.transport.dsn.as_deref());
        logging::set_redactor(redactor(&config, &dsn));
        let plugins_dir = self
            .plugins_dir
            .clone()
            .or_else(|| config.runtime.plugins_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PLUGINS_DIR));
        let cache_dir = config.runtime.cache_dir.clone().or_else(default_cache_dir);
        Ok(Settings {
            config,
            dsn,
            plugins_dir,
            cache_dir,
            backends: std::sync::OnceLock::new(),
        })
    }
}

/// The secrets of these settings: the DSN's password, supervisord's, and the granted
/// environment values whose names (or URL values) say they are secrets.
fn redactor(config: &Config, dsn: &str) -> crate::secrets::Redactor {
    let mut secrets = crate::secrets::of_url(dsn);
    let sv = &config.supervisor;
    secrets.extend(sv.password.clone());
    secrets.extend(
        sv.url
            .as_deref()
            .map(crate::secrets::of_url)
            .unwrap_or_default(),
    );
    let own = environment();
    for plugin in config.plugins.values() {
        let env = crate::capabilities::policy::environment(&plugin.grants.env, own.iter().cloned());
        secrets.extend(
            env.into_iter()
                .filter(|(k, v)| crate::secrets::secret_env(k, v))
                .map(|(_, v)| v),
        );
    }
    crate::secrets::Redactor::new(secrets)
}

/// The manager's environment, as far as it is UTF-8: what `grants.env` picks from.
pub(crate) fn environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

pub(crate) fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MARVIN_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("marvin-manager").join("plugins"))
}

impl Settings {
    /// The runtime; with `record`, every request's host calls and response are written there
    /// as traces.
    fn runtime(&self, record: Option<PathBuf>) -> anyhow::Result<Arc<Runtime>> {
        let settings = RuntimeSettings {
            cache_dir: self.cache_dir.clone(),
            max_instances: self.config.runtime.max_instances.unwrap_or(0),
            default_max_memory_bytes: self
                .config
                .runtime
                .max_memory_bytes
                .unwrap_or(DEFAULT_MAX_MEMORY_BYTES),
            plugins: self.config.plugins.clone(),
            environment: environment(),
            keep_resident_bytes: None,
        };
        let observer = record.map(|dir| Arc::new(Recorder::new(dir)) as Arc<dyn Observer>);
        Ok(Arc::new(
            Runtime::new(settings, self.backends(), observer)
                .context("cannot start the plugin runtime")?,
        ))
    }

    /// The engines capability calls reach; built once, shared by the runtime and discovery.
    fn backends(&self) -> Backends {
        self.backends
            .get_or_init(|| {
                let endpoint = self
                    .config
                    .docker
                    .endpoint
                    .clone()
                    .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
                    .unwrap_or_else(|| Engine::DEFAULT_ENDPOINT.to_owned());
                let sv = &self.config.supervisor;
                let supervisor: Arc<dyn crate::capabilities::SupervisorBackend> =
                    match Supervisord::new(
                        sv.url.as_deref().unwrap_or(Supervisord::DEFAULT_URL),
                        sv.username.as_deref(),
                        sv.password.as_deref(),
                    ) {
                        Ok(s) => Arc::new(s),
                        // validate() refused such a url already.
                        Err(_) => Arc::new(crate::capabilities::supervisor::Unconfigured),
                    };
                Backends {
                    docker: Arc::new(Engine::new(endpoint)),
                    supervisor,
                    plugin_level: None,
                }
            })
            .clone()
    }

    fn registry(&self) -> Registry {
        let options = crate::transport::Dsn::parse(&self.dsn)
            .map(|d| d.options)
            .unwrap_or_default();
        let name = queue::manager_name(&options, &self.config.manager);
        let registry = Registry::from_config(&self.config).with_name(&name);
        if self.config.docker.discovery.unwrap_or(true) {
            registry.with_discovery(self.backends().docker)
        } else {
            registry
        }
    }

    async fn manager(&self, record: Option<PathBuf>) -> anyhow::Result<Manager> {
        let runtime = self.runtime(record)?;
        let dir = PluginDir::open_with(
            runtime.clone(),
            self.plugins_dir.clone(),
            crate::runtime::plugins::BUILTIN,
        )
        .await;
        let redactor = redactor(&self.config, &self.dsn);
        Ok(Manager::new(self.registry(), runtime, dir).with_redactor(redactor))
    }
}

/// A random (version 4) UUID.
pub(crate) fn new_correlation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_is_the_option_tuned() {
        // SAFETY: reads one of mimalloc's process-wide options.
        #[allow(unsafe_code)]
        let get = || unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        let before = get();
        assert!(
            before == 10 || before == super::PURGE_DELAY_MS,
            "option {} is not mimalloc's purge delay (10 ms by default): {before}",
            super::MI_OPTION_PURGE_DELAY
        );
        super::tune_allocator();
        assert_eq!(get(), super::PURGE_DELAY_MS);
    }
}
