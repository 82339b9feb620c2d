//! The capability types as JSON, both ways: how scripts write host-call answers and how
//! traces record them. Reading is lenient — a field left out takes a sensible default — so a
//! script says only what matters (`{ name = "marvin_web_1", status = "exited" }`).

use serde_json::{Map, Value, json};

use crate::bindings::docker::{
    BuildOptions, BuildOutput, Container, ContainerState, ExecOptions, ExecOutput,
};
use crate::bindings::supervisor::{ConfigChanges, Process, ProcessResult, ProcessState};
use crate::bindings::types::Error;

/// A value that has a JSON form.
pub trait Json: Sized {
    /// As JSON.
    fn to_json(&self) -> Value;
    /// From JSON; the error says what is wrong.
    fn from_json(v: &Value) -> Result<Self, String>;
}

/// A field by its snake_case name, or as WIT spells it (kebab-case): scripts may use either.
fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).or_else(|| {
        key.contains('_')
            .then(|| v.get(key.replace('_', "-")))
            .flatten()
    })
}

fn s(v: &Value, key: &str) -> String {
    match get(v, key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// A text field, when present.
fn opt(v: &Value, key: &str) -> Option<String> {
    get(v, key).and_then(Value::as_str).map(str::to_owned)
}

/// A list of texts, empty when absent.
fn strings(v: &Value, key: &str) -> Vec<String> {
    get(v, key)
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn i(v: &Value, key: &str) -> i64 {
    get(v, key).and_then(Value::as_i64).unwrap_or(0)
}

fn pairs(v: Option<&Value>) -> Vec<(String, String)> {
    match v {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|p| match p {
                Value::Array(kv) if kv.len() == 2 => {
                    Some((kv[0].as_str()?.to_owned(), kv[1].as_str()?.to_owned()))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn pairs_json(p: &[(String, String)]) -> Value {
    Value::Object(
        p.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

fn object(v: &Value, what: &str) -> Result<(), String> {
    if v.is_object() {
        Ok(())
    } else {
        Err(format!("{what} must be an object, not {v}"))
    }
}

impl Json for ContainerState {
    fn to_json(&self) -> Value {
        json!({
            "status": self.status,
            "running": self.running,
            "exit_code": self.exit_code,
            "health": self.health,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        })
    }
    fn from_json(v: &Value) -> Result<Self, String> {
        let status = match s(v, "status") {
            st if st.is_empty() => "running".to_owned(),
            st => st,
        };
        Ok(Self {
            running: v
                .get("running")
                .and_then(Value::as_bool)
                .unwrap_or(status == "running"),
            status,
            exit_code: i(v, "exit_code"),
            health: opt(v, "health"),
            started_at: s(v, "started_at"),
            finished_at: s(v, "finished_at"),
        })
    }
}

impl Json for Container {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "project": self.project,
            "service": self.service,
            "number": self.number,
            "oneoff": self.oneoff,
            "state": self.state.to_json(),
            "labels": pairs_json(&self.labels),
        })
    }
    /// `state` may be given whole or as a `status` next to the other fields; `id` defaults to
    /// `name`.
    fn from_json(v: &Value) -> Result<Self, String> {
        object(v, "a container")?;
        let name = s(v, "name");
        let state = match get(v, "state") {
            Some(st) => ContainerState::from_json(st)?,
            None => ContainerState::from_json(v)?,
        };
        Ok(Self {
            id: match s(v, "id") {
                id if id.is_empty() => name.clone(),
                id => id,
            },
            image: s(v, "image"),
            project: s(v, "project"),
            service: s(v, "service"),
            number: u32::try_from(i(v, "number")).unwrap_or(1).max(1),
            oneoff: get(v, "oneoff").and_then(Value::as_bool).unwrap_or(false),
            name,
            state,
            labels: pairs(get(v, "labels")),
        })
    }
}

impl Json for BuildOptions {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "context": self.context,
            "dockerfile": self.dockerfile,
            "tags": self.tags,
            "args": pairs_json(&self.args),
            "target": self.target,
            "project": self.project,
            "service": self.service,
        });
        // The rarer settings appear only when set, so that a script names what the plugin
        // passed.
        if let Value::Object(m) = &mut v {
            let mut set = |k: &str, x: Value| {
                m.insert(k.into(), x);
            };
            if !self.labels.is_empty() {
                set("labels", pairs_json(&self.labels));
            }
            if !self.extra_hosts.is_empty() {
                set("extra_hosts", json!(self.extra_hosts));
            }
            if let Some(n) = &self.network {
                set("network", json!(n));
            }
            if let Some(n) = self.shm_size {
                set("shm_size", json!(n));
            }
            if !self.cache_from.is_empty() {
                set("cache_from", json!(self.cache_from));
            }
            if self.no_cache {
                set("no_cache", json!(true));
            }
        }
        v
    }
    fn from_json(v: &Value) -> Result<Self, String> {
        Ok(Self {
            context: s(v, "context"),
            dockerfile: opt(v, "dockerfile"),
            tags: strings(v, "tags"),
            args: pairs(get(v, "args")),
            target: opt(v, "target"),
            labels: pairs(get(v, "labels")),
            extra_hosts: strings(v, "extra_hosts"),
            network: opt(v, "network"),
            shm_size: get(v, "shm_size").and_then(Value::as_u64),
            cache_from: strings(v, "cache_from"),
            no_cache: get(v, "no_cache").and_then(Value::as_bool).unwrap_or(false),
            project: s(v, "project"),
            service: s(v, "service"),
        })
    }
}

impl Json for BuildOutput {
    fn to_json(&self) -> Value {
        json!({ "image_id": self.image_id, "log": self.log })
    }
    fn from_json(v: &Value) -> Result<Self, String> {
        Ok(Self {
            image_id: s(v, "image_id"),
            log: s(v, "log"),
        })
    }
}

impl Json for ExecOptions {
    fn to_json(&self) -> Value {
        json!({
            "argv": self.argv,
            "env": pairs_json(&self.env),
            "working_dir": self.working_dir,
            "user": self.user,
        })
    }
    fn from_json(v: &Value) -> Result<Self, String> {
        Ok(Self {
            argv: strings(v, "argv"),
            env: pairs(get(v, "env")),
            working_dir: opt(v, "working_dir"),
            user: opt(v, "user"),
            timeout_ms: None,
        })
    }
}

impl Json for ExecOutput {
    fn to_json(&self) -> Value {
        json!({
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "truncated": self.truncated,
        })
    }
    fn from_json(v: &Value) -> Result<Self, String> {
        Ok(Self {
            exit_code: i(v, "exit_code"),
            stdout: s(v, "stdout"),
            stderr: s(v, "stderr"),
            truncated: get(v, "truncated")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

const STATES: [(ProcessState, &str); 8] = [
    (ProcessState::Stopped, "STOPPED"),
    (ProcessState::Starting, "STARTING"),
    (ProcessState::Running, "RUNNING"),
    (ProcessState::Backoff, "BACKOFF"),
    (ProcessState::Stopping, "STOPPING"),
    (ProcessState::Exited, "EXITED"),
    (ProcessState::Fatal, "FATAL"),
    (ProcessState::Unknown, "UNKNOWN"),
];

impl Json for Process {
    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "group": self.group,
            "state": self.state_name,
            "pid": self.pid,
            "exit_status": self.exit_status,
            "description": self.description,
            "start": self.start,
            "stop": self.stop,
            "spawn_error": self.spawn_error,
        })
    }
    /// `state` is supervisord's name (`RUNNING`); `group` defaults to `name`.
    fn from_json(v: &Value) -> Result<Self, String> {
        object(v, "a process")?;
        let name = s(v, "name");
        let state_name = match s(v, "state").to_ascii_uppercase() {
            st if st.is_empty() => "RUNNING".to_owned(),
            st => st,
        };
        let state = STATES
            .iter()
            .find(|(_, n)| *n == state_name)
            .map(|(st, _)| *st)
            .ok_or_else(|| format!("unknown process state '{state_name}'"))?;
        Ok(Self {
            group: match s(v, "group") {
                g if g.is_empty() => name.clone(),
                g => g,
            },
            name,
            state,
            state_name,
            pid: i(v, "pid"),
            exit_status: i(v, "exit_status"),
            description: s(v, "description"),
            start: i(v, "start"),
            stop: i(v, "stop"),
            spawn_error: s(v, "spawn_error"),
        })
    }
}

impl Json for ProcessResult {
    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "group": self.group,
            "status": self.status,
            "description": self.description,
        })
    }
    /// `status` defaults to 80, supervisord's SUCCESS.
    fn from_json(v: &Value) -> Result<Self, String> {
        Ok(Self {
            name: s(v, "name"),
            group: s(v, "group"),
            status: v
                .get("status")
                .and_then(Value::as_i64)
                .and_then(|x| i32::try_from(x).ok())
                .unwrap_or(80),
            description: match s(v, "description") {
                d if d.is_empty() => "OK".to_owned(),
                d => d,
            },
        })
    }
}

impl Json for ConfigChanges {
    fn to_json(&self) -> Value {
        json!({ "added": self.added, "changed": self.changed, "removed": self.removed })
    }
    fn from_json(v: &Value) -> Result<Self, String> {
        Ok(Self {
            added: strings(v, "added"),
            changed: strings(v, "changed"),
            removed: strings(v, "removed"),
        })
    }
}

impl Json for () {
    fn to_json(&self) -> Value {
        Value::Null
    }
    fn from_json(_: &Value) -> Result<Self, String> {
        Ok(())
    }
}

impl Json for String {
    fn to_json(&self) -> Value {
        Value::String(self.clone())
    }
    fn from_json(v: &Value) -> Result<Self, String> {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("expected a string, not {v}"))
    }
}

impl<T: Json> Json for Vec<T> {
    fn to_json(&self) -> Value {
        Value::Array(self.iter().map(Json::to_json).collect())
    }
    fn from_json(v: &Value) -> Result<Self, String> {
        match v {
            Value::Array(items) => items.iter().map(T::from_json).collect(),
            other => Err(format!("expected a list, not {other}")),
        }
    }
}

/// The kinds of capability errors, as scripts name them.
const ERRORS: [&str; 8] = [
    "permission-denied",
    "not-found",
    "unavailable",
    "timed-out",
    "already-started",
    "not-running",
    "spawn-error",
    "failed",
];

/// Whether `k` names a kind of capability error (`not-found`).
pub fn is_error_kind(k: &str) -> bool {
    ERRORS.contains(&k)
}

/// `{ "not-found": "no such container" }`.
pub fn error_to_json(e: &Error) -> Value {
    let (kind, text) = match e {
        Error::PermissionDenied(t) => (ERRORS[0], t),
        Error::NotFound(t) => (ERRORS[1], t),
        Error::Unavailable(t) => (ERRORS[2], t),
        Error::TimedOut(t) => (ERRORS[3], t),
        Error::AlreadyStarted(t) => (ERRORS[4], t),
        Error::NotRunning(t) => (ERRORS[5], t),
        Error::SpawnError(t) => (ERRORS[6], t),
        Error::Failed(t) => (ERRORS[7], t),
    };
    json!({ kind: text })
}

/// The inverse of [`error_to_json`]; a bare string is `failed`.
pub fn error_from_json(v: &Value) -> Result<Error, String> {
    let (kind, text) = match v {
        Value::String(t) => ("failed", t.clone()),
        Value::Object(m) if m.len() == 1 => {
            let (k, t) = m.iter().next().ok_or("an empty error")?;
            (k.as_str(), t.as_str().unwrap_or_default().to_owned())
        }
        other => return Err(format!("an error is {{ <kind> = \"text\" }}, not {other}")),
    };
    Ok(match kind {
        "permission-denied" => Error::PermissionDenied(text),
        "not-found" => Error::NotFound(text),
        "unavailable" => Error::Unavailable(text),
        "timed-out" => Error::TimedOut(text),
        "already-started" => Error::AlreadyStarted(text),
        "not-running" => Error::NotRunning(text),
        "spawn-error" => Error::SpawnError(text),
        "failed" => Error::Failed(text),
        other => {
            return Err(format!(
                "unknown error kind '{other}' (one of {})",
                ERRORS.join(", ")
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_defaults() {
        let c = Container::from_json(
            &json!({"name": "p_web_1", "status": "exited", "project": "p", "service": "web"}),
        )
        .unwrap();
        assert_eq!(c.id, "p_web_1");
        assert!(!c.state.running);
        assert_eq!(c.number, 1);
        let back = Container::from_json(&c.to_json()).unwrap();
        assert_eq!(back.to_json(), c.to_json());
        let p = Process::from_json(&json!({"name": "web"})).unwrap();
        assert_eq!((p.group.as_str(), p.state), ("web", ProcessState::Running));
        assert_eq!(
            Process::from_json(&p.to_json()).unwrap().to_json(),
            p.to_json()
        );
        assert!(Process::from_json(&json!({"name": "x", "state": "ASLEEP"})).is_err());
        let e = error_from_json(&json!({"not-found": "gone"})).unwrap();
        assert_eq!(error_to_json(&e), json!({"not-found": "gone"}));
        assert!(
            error_from_json(&json!({"oops": "x"}))
                .unwrap_err()
                .contains("one of")
        );
    }
}
