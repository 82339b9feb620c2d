//! Scripting, recording and replaying host calls: `plugin test` runs a plugin in isolation,
//! in the real runtime (same limits, same grant checks) with capability backends answering
//! from a script, no Docker, supervisord or database; `--record` writes what real requests
//! did as traces that replay as scripts.
//!
//! A [`Script`] is a request, the entity it names, the grants, the host calls expected in
//! order with the answer to give each, and what the response must say. The calls are listed
//! as they reach the backends ([`Level::Engine`], the default) or as the plugin made them
//! ([`Level::Plugin`]: a batch call once with its ids). The service writes
//! the same shape when it records (`--record DIR`): a trace replays as a script, so a new
//! version of a plugin can be checked against what the old one did.
//!
//! ```toml
//! [request]
//! entity = "web"
//! action = "start"
//!
//! [entity]
//! kind = "container"
//! project = "marvin"
//! service = "web"
//!
//! [[calls]]
//! call = "docker.list-containers"
//! args = { project = "marvin", service = "web" }
//! ok = [{ name = "marvin_web_1", project = "marvin", service = "web", status = "running" }]
//!
//! [expect]
//! success = true
//! metadata = { already = true }
//! ```

pub mod backends;
pub mod json;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use backends::{Call, Recorder, Recording, Scripted, subset};
use json::Json;

use crate::bindings::docker::Container;
use crate::capabilities::policy::Policy;
use crate::config::Grants;
use crate::message::{
    ALL, DEFAULT_TIMEOUT_SECS, Entity, EntityKind, ManagerRequest, SUPERVISOR, Target,
};
use crate::runtime::{PluginOutcome, Runtime, RuntimeSettings};

/// Metadata keys whose values change from run to run; never compared.
pub const VOLATILE_METADATA: &[&str] = &["timings_ms", "duration_ms"];

/// The request of a script, as Core would send it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRequest {
    /// Core's `containerId`.
    pub entity: String,
    /// The action.
    pub action: String,
    /// The command of `exec_cmd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Core's `args`.
    #[serde(default = "empty_object", skip_serializing_if = "is_empty_object")]
    pub args: Value,
    /// Seconds.
    #[serde(default = "default_timeout")]
    pub timeout: i64,
    /// The correlation id.
    #[serde(default = "default_correlation_id")]
    pub correlation_id: String,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}
fn is_empty_object(v: &Value) -> bool {
    v.as_object().is_some_and(serde_json::Map::is_empty)
}
fn default_timeout() -> i64 {
    DEFAULT_TIMEOUT_SECS
}
fn default_correlation_id() -> String {
    "plugin-test".into()
}

/// What the entity id resolves to (as `[entities.<id>]` says; `all` and `supervisor` need
/// only what they have: a project, nothing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptEntity {
    /// `container` or `worker`; from the entity id and action when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EntityKind>,
    /// A container's compose project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// A container's compose service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// A worker's program, group or `group:name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
}

/// What the response must say; what is left out is not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `success`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// `output`, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// A piece of `output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_contains: Option<String>,
    /// `error`, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A piece of `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_contains: Option<String>,
    /// Fields `metadata` must have, with these values (objects compared field by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// How a script lists the host calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// As they reach Docker and supervisord (what traces record): a batch call shows once per
    /// container, and the host's own inspect before it acts on an id the plugin did not list.
    #[default]
    Engine,
    /// As the plugin made them, like its code reads: `docker.start` once with its `ids`, a
    /// build or exec with the options the plugin gave, no inspect of the host's own.
    Plugin,
}

impl Level {
    fn is_engine(&self) -> bool {
        *self == Self::Engine
    }
}

/// A plugin test, or a recorded trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// The request.
    pub request: ScriptRequest,
    /// What its entity id names.
    #[serde(default)]
    pub entity: ScriptEntity,
    /// What the plugin is granted; absent: everything it asks for, on any name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Grants>,
    /// How `calls` lists the host calls.
    #[serde(default, skip_serializing_if = "Level::is_engine")]
    pub level: Level,
    /// At the plugin level: containers the engine has (`id`, `project`, `service`), which the
    /// host checks the grant of an id against when the plugin acts on one it did not list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Value>,
    /// The host calls expected, in order, with their answers.
    #[serde(default)]
    pub calls: Vec<Call>,
    /// What the response must say.
    #[serde(default)]
    pub expect: Expect,
}

impl Script {
    /// Reads a script: TOML, or JSON (a trace) when the file ends in `.json`.
    pub fn load(path: &Path) -> Result<Self, String> {
        serde_json::from_value(load_doc(path)?).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses TOML or JSON text.
    pub fn parse(text: &str, json: bool) -> Result<Self, String> {
        if json {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
        }
    }

    /// The request as Core sends it.
    pub fn manager_request(&self) -> ManagerRequest {
        let r = &self.request;
        ManagerRequest::new(&r.correlation_id, &r.entity, &r.action)
            .with_command(r.command.clone())
            .with_args(r.args.clone())
            .with_timeout(r.timeout)
    }

    /// The entity the request names.
    pub fn resolved_entity(&self) -> Result<Entity, String> {
        let id = self.request.entity.clone();
        let e = &self.entity;
        let kind = e
            .kind
            .unwrap_or(if id == SUPERVISOR || e.program.is_some() {
                EntityKind::Worker
            } else {
                EntityKind::guess(&self.request.action)
            });
        let target = if id == SUPERVISOR {
            Target::Supervisord
        } else if id == ALL {
            Target::Compose {
                project: e
                    .project
                    .clone()
                    .ok_or("[entity] project is needed for 'all'")?,
                service: None,
            }
        } else {
            match kind {
                EntityKind::Container => Target::Compose {
                    project: e
                        .project
                        .clone()
                        .ok_or("[entity] needs project (and service)")?,
                    service: e.service.clone(),
                },
                EntityKind::Worker => {
                    Target::Program(e.program.clone().unwrap_or_else(|| id.clone()))
                }
            }
        };
        Ok(Entity { id, kind, target })
    }

    /// A trace: this request, what the plugin was granted, the calls it made, its response
    /// (without the metadata that changes from run to run).
    pub fn trace(
        request: &ManagerRequest,
        entity: &Entity,
        grants: &Grants,
        calls: Vec<Call>,
        outcome: &PluginOutcome,
    ) -> Self {
        let (kind, project, service, program) = match &entity.target {
            Target::Compose { project, service } => (
                EntityKind::Container,
                Some(project.clone()),
                service.clone(),
                None,
            ),
            Target::Program(p) => (EntityKind::Worker, None, None, Some(p.clone())),
            Target::Supervisord => (EntityKind::Worker, None, None, None),
        };
        let mut metadata = outcome.metadata.clone();
        metadata.retain(|k, _| !VOLATILE_METADATA.contains(&k.as_str()));
        Self {
            request: ScriptRequest {
                entity: request.entity_id.clone(),
                action: request.action.clone(),
                command: request.command.clone(),
                args: request.args.clone(),
                timeout: request.timeout,
                correlation_id: request.correlation_id.clone(),
            },
            entity: ScriptEntity {
                kind: Some(kind),
                project,
                service,
                program,
            },
            grants: Some(grants.clone()),
            level: Level::Engine,
            containers: Vec::new(),
            calls,
            expect: Expect {
                success: Some(outcome.success),
                output: outcome.output.clone(),
                error: outcome.error.clone(),
                metadata: Some(Value::Object(metadata)),
                ..Expect::default()
            },
        }
    }
}

/// A script file as JSON, before it is checked: TOML, or JSON when it ends in `.json`, with
/// `{script_dir}` replaced by the file's folder (for fixtures next to it).
pub fn load_doc(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let dir = path
        .parent()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .and_then(|d| d.canonicalize().ok())
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let text = text.replace("{script_dir}", &dir);
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))
    } else {
        let t: toml::Value = toml::from_str(&text).map_err(|e| {
            format!(
                "{} is not valid TOML: {}",
                path.display(),
                e.to_string().trim_end()
            )
        })?;
        serde_json::to_value(t).map_err(|e| e.to_string())
    }
}

/// Everything a plugin may ask for, on any name: the grants of a script that gives none.
pub fn grant_everything() -> Grants {
    Grants {
        docker: Some(crate::config::DockerGrant {
            projects: vec!["*".into()],
            exec: vec!["*".into()],
            exec_shell: true,
            build_dirs: vec![PathBuf::from("/")],
            build_host_network: true,
        }),
        supervisor: Some(crate::config::SupervisorGrant {
            programs: vec!["*".into()],
            config: true,
        }),
        files: Vec::new(),
        env: Vec::new(),
    }
}

/// What a plugin test found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The plugin's name and version.
    pub plugin: String,
    /// The response.
    pub outcome: PluginOutcome,
    /// The host calls made, with the answers given.
    pub calls: Vec<Call>,
    /// Every difference from the script; empty when it passed.
    pub problems: Vec<String>,
}

impl Report {
    /// Whether the plugin did what the script says.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report as text: response, calls, differences, verdict.
    pub fn render(&self) -> String {
        let mut out = format!("plugin {}\nresponse:\n", self.plugin);
        let o = &self.outcome;
        out.push_str(&format!("  success:  {}\n", o.success));
        let text = |v: &Option<String>| {
            v.as_deref()
                .map_or("-".to_owned(), |s| s.replace('\n', "\n            "))
        };
        out.push_str(&format!("  output:   {}\n", text(&o.output)));
        out.push_str(&format!("  error:    {}\n", text(&o.error)));
        out.push_str(&format!(
            "  metadata: {}\n",
            Value::Object(o.metadata.clone())
        ));
        out.push_str(&format!("host calls ({}):\n", self.calls.len()));
        for (i, c) in self.calls.iter().enumerate() {
            out.push_str(&format!(
                "  {}. {} -> {}\n",
                i + 1,
                c.describe(),
                c.describe_answer()
            ));
        }
        if self.problems.is_empty() {
            out.push_str("PASS\n");
        } else {
            out.push_str(&format!("differences ({}):\n", self.problems.len()));
            for p in &self.problems {
                out.push_str(&format!("  - {p}\n"));
            }
            out.push_str("FAIL\n");
        }
        out
    }
}

/// The differences between `expect` and what the plugin answered.
pub fn compare(expect: &Expect, o: &PluginOutcome) -> Vec<String> {
    let mut problems = Vec::new();
    let show = |v: &Option<String>| {
        v.as_deref()
            .map_or("nothing".to_owned(), |s| format!("{s:?}"))
    };
    if let Some(s) = expect.success
        && s != o.success
    {
        problems.push(format!(
            "response success: expected {s}, got {} ({})",
            o.success,
            show(&o.error)
        ));
    }
    for (field, exact, part, got) in [
        ("output", &expect.output, &expect.output_contains, &o.output),
        ("error", &expect.error, &expect.error_contains, &o.error),
    ] {
        if let Some(want) = exact
            && got.as_deref() != Some(want.as_str())
        {
            problems.push(format!(
                "response {field}: expected {want:?}, got {}",
                show(got)
            ));
        }
        if let Some(want) = part
            && !got.as_deref().unwrap_or_default().contains(want.as_str())
        {
            problems.push(format!(
                "response {field}: expected it to contain {want:?}, got {}",
                show(got)
            ));
        }
    }
    if let Some(Value::Object(want)) = &expect.metadata {
        for (k, v) in want {
            if VOLATILE_METADATA.contains(&k.as_str()) {
                continue;
            }
            match o.metadata.get(k) {
                Some(got) if subset(v, got) => {}
                Some(got) => {
                    problems.push(format!("response metadata.{k}: expected {v}, got {got}"))
                }
                None => problems.push(format!(
                    "response metadata.{k}: expected {v}, it is missing"
                )),
            }
        }
    }
    problems
}

/// A plugin-level script's `[[containers]]`; each needs its id, project and service.
fn known_containers(list: &[Value]) -> Result<Vec<Container>, String> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let c = Container::from_json(v).map_err(|e| format!("containers[{i}]: {e}"))?;
            if c.id.is_empty() || c.project.is_empty() || c.service.is_empty() {
                return Err(format!(
                    "containers[{i}] needs id, project and service (compose's labels, which the \
                     grant is checked against), got {v}"
                ));
            }
            Ok(c)
        })
        .collect()
}

/// Runs `script` against the plugin in `wasm`, in the real runtime with scripted backends.
/// `cache_dir` keeps compiled plugins between runs; `environment` is what the script's
/// `grants.env` patterns pick from (the CLI passes the manager's own).
pub async fn run(
    wasm: &Path,
    script: &Script,
    cache_dir: Option<PathBuf>,
    environment: &[(String, String)],
) -> Result<Report, String> {
    let plugin_level = script.level == Level::Plugin;
    for (n, c) in script.calls.iter().enumerate() {
        if let Some(e) = backends::unknown_call(&c.call, plugin_level) {
            return Err(format!("call {}: {e}", n + 1));
        }
    }
    let scripted = if plugin_level {
        Scripted::at_plugin_level(script.calls.clone(), known_containers(&script.containers)?)
    } else if script.containers.is_empty() {
        Scripted::new(script.calls.clone())
    } else {
        return Err(
            "`containers` is for level = \"plugin\"; at the engine level the host's inspects are \
             calls of the script"
                .into(),
        );
    };
    let runtime = Runtime::new(
        RuntimeSettings {
            cache_dir,
            max_instances: 4,
            default_max_memory_bytes: crate::config::DEFAULT_MAX_MEMORY_BYTES,
            plugins: Default::default(),
            environment: environment.to_vec(),
            keep_resident_bytes: None,
        },
        scripted.backends(),
        None,
    )
    .map_err(|e| e.to_string())?;
    let mut plugin = runtime
        .load(wasm)
        .await
        .map_err(|e| format!("{}: {e}", wasm.display()))?;
    let grants = script.grants.clone().unwrap_or_else(grant_everything);
    let policy = Arc::new(Policy::new(
        &plugin.name,
        plugin.policy().requested().iter().copied(),
        grants,
        environment,
    ));
    plugin.set_policy(policy);
    let entity = script.resolved_entity()?;
    let request = script.manager_request();
    let handled = runtime.handle(&plugin, &entity, &request).await;
    let outcome = handled
        .outcome
        .unwrap_or_else(PluginOutcome::from)
        .with_effects(handled.effects);
    let (calls, mut problems) = scripted.finish();
    problems.extend(compare(&script.expect, &outcome));
    Ok(Report {
        plugin: format!("{} {}", plugin.name, plugin.version),
        outcome,
        calls,
        problems,
    })
}
