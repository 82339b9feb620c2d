//! `manager.toml` -> typed [`Config`]. Validation that needs the outside world (opening
//! directories, loading plugins) happens later, where the settings are used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::message::{ALL, EntityKind, SUPERVISOR};

/// The default memory cap of one plugin instance.
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 64 << 20;

/// The whole configuration file. Every section is optional: no file at all is a valid setup.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where plugins are loaded from and how they run.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The queue.
    #[serde(default)]
    pub transport: TransportConfig,
    /// Docker settings shared by the capability and the registry.
    #[serde(default)]
    pub docker: DockerConfig,
    /// Where supervisord listens.
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    /// Per-plugin settings and grants, keyed by the plugin's name (from `describe`).
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Entities, keyed by the id Core sends as `containerId`.
    #[serde(default)]
    pub entities: BTreeMap<String, EntityConfig>,
    /// This manager among those sharing the queue.
    #[serde(default)]
    pub manager: ManagerConfig,
    /// The operator's HTTP listener: metrics and health.
    #[serde(default)]
    pub http: HttpConfig,
    /// How long answers and parked rows are kept.
    #[serde(default)]
    pub ledger: LedgerConfig,
}

/// How long the ledger keeps answers (and the failure queue parked rows) when `keep` is not
/// set.
pub const DEFAULT_LEDGER_KEEP: &str = "30d";

/// `[ledger]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// An age (`30d`, `12h`, `90m`): `serve` deletes ledger rows and parked rows older than
    /// this, hourly; `forever` keeps everything. Default 30d.
    pub keep: Option<String>,
}

impl LedgerConfig {
    /// How long to keep, in seconds; `None`: forever.
    pub fn keep_secs(&self) -> Option<i64> {
        match self.keep.as_deref().unwrap_or(DEFAULT_LEDGER_KEEP) {
            "forever" => None,
            k => age_secs(k),
        }
    }
}

/// `45s`, `30m`, `12h`, `30d` in seconds.
pub fn age_secs(s: &str) -> Option<i64> {
    let unit = match s.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let n: i64 = s[..s.len() - 1].parse().ok()?;
    (n > 0).then(|| n.saturating_mul(unit))
}

/// `[http]`: off unless `listen` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to serve `/metrics`, `/healthz` and `/readyz` on, e.g. `127.0.0.1:9464`.
    pub listen: Option<String>,
}

/// `[manager]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfig {
    /// Its name among the managers sharing the queue, unique to each running manager
    /// (default: the host name). A manager restarted under the same id takes back the
    /// requests its previous process held at once.
    pub id: Option<String>,
    /// How long a manager may stop heart-beating before the requests it held are taken
    /// back by another (default 15); also how long before it counts as dead for the
    /// entities it serves.
    pub takeover_secs: Option<u64>,
    /// With several managers on the queue: how long a request for an entity no live manager
    /// serves waits, from its creation, before it is answered with an error naming the
    /// entity and the live managers (default 15), so a manager restarting causes no error.
    pub unserved_grace_secs: Option<u64>,
    /// A request older than its timeout plus this many seconds is answered "expired" instead
    /// of carried out: Core has given up on it (default 30, as Core's timeout check).
    pub stale_grace_secs: Option<u64>,
    /// Whether stale requests are answered "expired" (default true); false runs them however
    /// late.
    pub expire_stale: Option<bool>,
}

/// `[runtime]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The plugins directory; relative paths are relative to the config file.
    pub plugins_dir: Option<PathBuf>,
    /// Where compiled plugins are cached; relative paths are relative to the config file.
    pub cache_dir: Option<PathBuf>,
    /// The memory cap of a plugin instance unless the plugin has its own.
    pub max_memory_bytes: Option<u64>,
    /// Plugin instances alive at once (the pooling allocator's size).
    pub max_instances: Option<u32>,
}

/// `[transport]`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportConfig {
    /// `postgres://…` or `sqlite://…`, with Symfony's options in the query string. `--dsn`
    /// and `MARVIN_DSN` override it.
    pub dsn: Option<String>,
    /// Requests carried out at once.
    pub concurrency: Option<usize>,
    /// PostgreSQL: how long (ms) the rows of a fetch stay locked in its transaction,
    /// unmarked, while their actions run, so a short action costs one commit (default 50);
    /// rows still running then are marked delivered. 0: mark every row when taken.
    pub hold_ms: Option<u64>,
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("dsn", &self.dsn.as_deref().map(crate::secrets::url))
            .field("concurrency", &self.concurrency)
            .field("hold_ms", &self.hold_ms)
            .finish()
    }
}

/// `[docker]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// The compose project the special entity id `all` (restart_all) acts on.
    pub default_project: Option<String>,
    /// The engine: `unix:///var/run/docker.sock` (the default, or `DOCKER_HOST`),
    /// `tcp://host:2375`.
    pub endpoint: Option<String>,
    /// Whether containers labelled `marvin.entity-id` become entities (default: yes).
    pub discovery: Option<bool>,
}

/// `[supervisor]`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// `unix:///var/run/supervisor.sock` (the default) or `http://127.0.0.1:9001`
    /// (`inet_http_server`).
    pub url: Option<String>,
    /// Basic-auth user of supervisord's HTTP server.
    pub username: Option<String>,
    /// Its password.
    pub password: Option<String>,
}

impl std::fmt::Debug for SupervisorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorConfig")
            .field("url", &self.url.as_deref().map(crate::secrets::url))
            .field("username", &self.username)
            .field(
                "password",
                &self.password.as_ref().map(|_| crate::secrets::MASK),
            )
            .finish()
    }
}

/// `[plugins.<name>]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// This plugin's memory cap.
    pub max_memory_bytes: Option<u64>,
    /// Its actions that are safe to run again after a crash interrupted them (a `start` of
    /// what already runs changes nothing). Others are answered "interrupted, not run again".
    /// Replaces what the plugin declares (its `idempotent-actions` export; none for a plugin
    /// without it).
    pub idempotent: Option<Vec<String>>,
    /// What the operator grants; nothing by default.
    #[serde(default)]
    pub grants: Grants,
}

/// `[plugins.<name>.grants]`: what a plugin may reach. Everything absent is denied.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// `[plugins.<name>.grants.docker]`.
    pub docker: Option<DockerGrant>,
    /// `[plugins.<name>.grants.supervisor]`.
    pub supervisor: Option<SupervisorGrant>,
    /// Directories preopened read-only, at the same path inside the plugin.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// The environment variables the plugin sees: names of the manager's own (`*` and `?`
    /// match: `COMPOSE_*`), or fixed `NAME=value` pairs, which win. None by default.
    #[serde(default)]
    pub env: Vec<String>,
}

/// The docker part of a grant.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DockerGrant {
    /// Compose projects (`marvin`) or single services (`marvin/web`); `*` and `?` match.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Command lines the plugin may exec (`php bin/console *`); empty: no exec.
    #[serde(default)]
    pub exec: Vec<String>,
    /// Whether exec may go through a shell (`sh -c`).
    #[serde(default)]
    pub exec_shell: bool,
    /// Directories image builds may use as context; empty: no build.
    #[serde(default)]
    pub build_dirs: Vec<PathBuf>,
    /// Whether a build's `RUN` steps may use the host's network (compose's
    /// `build.network: host`).
    #[serde(default)]
    pub build_host_network: bool,
}

/// The supervisor part of a grant.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SupervisorGrant {
    /// Program or group name patterns (`marvin-*`, `workers:*`).
    #[serde(default)]
    pub programs: Vec<String>,
    /// Whether the plugin may reload supervisord's config and add / remove groups.
    #[serde(default)]
    pub config: bool,
}

/// `[entities.<id>]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    /// `container` or `worker`.
    pub kind: EntityKind,
    /// The compose project of a container.
    pub project: Option<String>,
    /// The compose service of a container.
    pub service: Option<String>,
    /// The supervisor program, group or `group:name` of a worker.
    pub program: Option<String>,
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with the line.
        message: String,
    },
    /// The file parses but says something impossible.
    #[error("invalid config file {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Reads and checks a config file; relative paths in it become relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses TOML text.
    ///
    /// The error names the line and column but never quotes the file: the line could hold a
    /// password.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: ")
            });
            format!("{}{}", at.unwrap_or_default(), e.message().trim_end())
        })
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        for (id, entity) in &self.entities {
            if id == ALL || id == SUPERVISOR {
                return Err(format!("entity id '{id}' is reserved"));
            }
            match entity.kind {
                EntityKind::Container => {
                    if entity.project.is_none() || entity.service.is_none() {
                        return Err(format!(
                            "entity '{id}': a container needs `project` and `service`"
                        ));
                    }
                    if entity.program.is_some() {
                        return Err(format!("entity '{id}': `program` is for workers"));
                    }
                }
                EntityKind::Worker => {
                    if entity.program.is_none() {
                        return Err(format!("entity '{id}': a worker needs `program`"));
                    }
                    if entity.project.is_some() || entity.service.is_some() {
                        return Err(format!(
                            "entity '{id}': `project` and `service` are for containers"
                        ));
                    }
                }
            }
        }
        if let Some(keep) = &self.ledger.keep
            && keep != "forever"
            && age_secs(keep).is_none()
        {
            return Err(format!(
                "[ledger] keep = '{keep}': use an age such as 30d, 12h, 90m, or \"forever\""
            ));
        }
        if let Some(url) = &self.supervisor.url
            && !url.starts_with("unix://")
            && !url.starts_with("http://")
        {
            return Err(format!(
                "[supervisor] url = '{}' must start with unix:// or http://",
                crate::secrets::url(url)
            ));
        }
        let caps = std::iter::once(("[runtime]".to_owned(), self.runtime.max_memory_bytes)).chain(
            self.plugins
                .iter()
                .map(|(n, p)| (format!("[plugins.{n}]"), p.max_memory_bytes)),
        );
        for (section, cap) in caps {
            if let Some(cap) = cap
                && !(1 << 20..=4 << 30).contains(&cap)
            {
                return Err(format!(
                    "{section} max_memory_bytes = {cap} is outside 1 MiB ..= 4 GiB"
                ));
            }
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = self.runtime.plugins_dir.as_mut() {
            join(p);
        }
        if let Some(p) = self.runtime.cache_dir.as_mut() {
            join(p);
        }
        if let Some(dsn) = self.transport.dsn.as_mut() {
            *dsn = sqlite_relative_to(dsn, base);
        }
        for plugin in self.plugins.values_mut() {
            plugin.grants.files.iter_mut().for_each(join);
            if let Some(d) = plugin.grants.docker.as_mut() {
                d.build_dirs.iter_mut().for_each(join);
            }
        }
    }
}

/// " (did you mean X?)" for the known name nearest to `name`, when one is within `max_edits`
/// (Damerau-Levenshtein); empty otherwise. For errors about a misspelt option or name.
pub fn did_you_mean(name: &str, known: &[&str], max_edits: usize) -> String {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .min()
        .filter(|(d, _)| *d <= max_edits)
        .map(|(_, k)| format!(" (did you mean {k}?)"))
        .unwrap_or_default()
}

/// `sqlite://relative.db…` with the path joined to `base`; any other DSN as is. `sqlite:///abs`
/// and in-memory databases (`sqlite::memory:`, `mode=memory`) are left alone.
pub fn sqlite_relative_to(dsn: &str, base: &Path) -> String {
    let Some(rest) = dsn.strip_prefix("sqlite://") else {
        return dsn.to_owned();
    };
    let (path, query) = rest
        .split_once('?')
        .map_or((rest, None), |(p, q)| (p, Some(q)));
    if path.is_empty() || path.starts_with('/') || path.starts_with(":memory:") {
        return dsn.to_owned();
    }
    let joined = base.join(path);
    match query {
        Some(q) => format!("sqlite://{}?{q}", joined.display()),
        None => format!("sqlite://{}", joined.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_a_valid_config() {
        let c = Config::parse("").unwrap();
        c.validate().unwrap();
        assert!(c.plugins.is_empty() && c.entities.is_empty());
        assert_eq!(c.runtime.max_memory_bytes, None);
    }

    #[test]
    fn full_config_parses() {
        let c = Config::parse(
            r#"
            [runtime]
            plugins_dir = "plugins"
            max_memory_bytes = 33554432
            [docker]
            default_project = "marvin"
            endpoint = "unix:///run/docker.sock"
            [supervisor]
            url = "http://127.0.0.1:9001"
            username = "marvin"
            password = "secret"
            [plugins.docker-compose]
            max_memory_bytes = 134217728
            [plugins.docker-compose.grants]
            files = ["/srv/marvin"]
            [plugins.docker-compose.grants.docker]
            projects = ["marvin", "other/web"]
            [plugins.supervisor.grants.supervisor]
            programs = ["marvin-*"]
            config = true
            [entities.0b7d]
            kind = "container"
            project = "marvin"
            service = "web"
            [entities.w1]
            kind = "worker"
            program = "workers:consumer"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.plugins["docker-compose"].max_memory_bytes,
            Some(128 << 20)
        );
        assert_eq!(c.runtime.max_memory_bytes, Some(32 << 20));
        let sv = c.plugins["supervisor"].grants.supervisor.as_ref().unwrap();
        assert!(sv.config);
    }

    #[test]
    fn the_annotated_example_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/manager.toml");
        let c = Config::load(Path::new(path)).unwrap();
        assert_eq!(c.entities.len(), 2);
        assert!(c.transport.dsn.is_some());
        assert!(c.runtime.plugins_dir.unwrap().ends_with("examples/plugins"));
    }

    #[test]
    fn unknown_keys_and_bad_entities_are_refused() {
        let e = Config::parse("[plugins.x]\ngrant = 1\n").unwrap_err();
        assert!(e.contains("unknown field `grant`"), "{e}");
        let c = Config::parse("[entities.a]\nkind = \"worker\"\n").unwrap();
        assert_eq!(
            c.validate().unwrap_err(),
            "entity 'a': a worker needs `program`"
        );
        let c = Config::parse("[entities.all]\nkind = \"worker\"\nprogram = \"x\"\n").unwrap();
        assert_eq!(c.validate().unwrap_err(), "entity id 'all' is reserved");
        let c = Config::parse("[runtime]\nmax_memory_bytes = 10\n").unwrap();
        assert!(c.validate().unwrap_err().contains("outside 1 MiB"));
        let c = Config::parse("[supervisor]\nurl = \"/run/supervisor.sock\"\n").unwrap();
        assert!(c.validate().unwrap_err().contains("unix:// or http://"));
    }
}
