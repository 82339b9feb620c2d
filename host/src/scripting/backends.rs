//! Two capability backends: [`Scripted`] answers each host call from a script and notes every
//! difference from it (`plugin test`); [`Recorder`] is the runtime's observer for `--record`:
//! each request's calls pass to the real backends and are written down with their answers,
//! then the request, its response and the calls are written as a trace (which replays as a
//! script).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Script;
use super::json::{Json, error_from_json, error_to_json};
use crate::bindings::docker::{BuildOptions, BuildOutput, Container, ExecOptions, ExecOutput};
use crate::bindings::supervisor::{ConfigChanges, Process, ProcessResult};
use crate::bindings::types::Error;
use crate::capabilities::{Backends, Batch, DockerBackend, PluginLevelDocker, SupervisorBackend};
use crate::config::Grants;
use crate::message::{Entity, ManagerRequest};
use crate::runtime::{Observation, Observer, PluginOutcome, RunError};

/// The host calls a script can answer, as WIT names them (`interface.function`).
pub const CALLS: &[&str] = &[
    "docker.list-containers",
    "docker.labelled",
    "docker.inspect",
    "docker.start",
    "docker.stop",
    "docker.restart",
    "docker.build",
    "docker.exec",
    "supervisor.all-process-info",
    "supervisor.process-info",
    "supervisor.start-process",
    "supervisor.stop-process",
    "supervisor.start-group",
    "supervisor.stop-group",
    "supervisor.reload-config",
    "supervisor.add-group",
    "supervisor.remove-group",
    "supervisor.tail-log",
];

/// The calls only the host makes, never a plugin: not in a plugin-level script.
const HOST_ONLY: &[&str] = &["docker.labelled"];

/// Why a script's call name is not one it can list (at the plugin level: not one a plugin
/// makes), with the nearest known name.
pub fn unknown_call(name: &str, plugin_level: bool) -> Option<String> {
    let known: Vec<&str> = CALLS
        .iter()
        .copied()
        .filter(|c| !plugin_level || !HOST_ONLY.contains(c))
        .collect();
    if known.contains(&name) {
        return None;
    }
    let nearest = crate::config::did_you_mean(&name.replace('_', "-"), &known, 4);
    let level = if plugin_level { " a plugin makes" } else { "" };
    Some(format!(
        "unknown host call '{name}'{nearest}; the calls{level} are: {}",
        known.join(", ")
    ))
}

/// One host call — as it reached the backend, or at the plugin level as the plugin made it —:
/// its name (`docker.list-containers`), its arguments, and its answer (`ok`, or `err` as
/// `{ <kind> = "text" }`; a batch call's failures per id: `{ <id> = { <kind> = "text" } }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// `docker.<call>` or `supervisor.<call>`.
    pub call: String,
    /// The arguments, by name; in a script, only those given are compared.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub args: Value,
    /// The answer, when the call succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<Value>,
    /// The answer, when the call fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<Value>,
}

fn is_empty(v: &Value) -> bool {
    v.is_null() || v.as_object().is_some_and(serde_json::Map::is_empty)
}

impl Call {
    /// `docker.inspect {"id":"c1"}`.
    pub fn describe(&self) -> String {
        if is_empty(&self.args) {
            self.call.clone()
        } else {
            format!("{} {}", self.call, self.args)
        }
    }

    /// ` -> ok …` / ` -> not-found: …` / ` -> c2: not-found: …`.
    pub fn describe_answer(&self) -> String {
        let error = |e: &Value| match e.as_object().and_then(|m| m.iter().next()) {
            Some((k, v)) => format!("{k}: {}", v.as_str().unwrap_or_default()),
            None => e.as_str().map_or_else(|| e.to_string(), str::to_owned),
        };
        match (&self.ok, &self.err) {
            (_, Some(Value::Object(m))) if m.values().any(Value::is_object) => m
                .iter()
                .map(|(id, e)| format!("{id}: {}", error(e)))
                .collect::<Vec<_>>()
                .join("; "),
            (_, Some(e)) => error(e),
            (Some(v), None) if !v.is_null() => {
                let text = v.to_string();
                if text.len() > 120 {
                    format!("ok {}…", &text[..text.floor_char_boundary(117)])
                } else {
                    format!("ok {text}")
                }
            }
            _ => "ok".into(),
        }
    }
}

/// The answers of a batch call to `ids` from a script's `err`: none, every id fails, or
/// `{ <id> = <error> }` for those that fail.
fn batch_answers(err: Option<&Value>, ids: &[String]) -> Result<Vec<Result<(), Error>>, String> {
    let Some(err) = err else {
        return Ok(vec![Ok(()); ids.len()]);
    };
    let per_id = match err {
        Value::Object(m) => !(m.len() == 1 && m.keys().all(|k| super::json::is_error_kind(k))),
        _ => false,
    };
    if !per_id {
        let e = error_from_json(err)?;
        return Ok(vec![Err(e); ids.len()]);
    }
    let mut by_id = err.as_object().cloned().unwrap_or_default();
    let answers = ids
        .iter()
        .map(|id| match by_id.remove(id) {
            Some(e) => error_from_json(&e).map(Err),
            None => Ok(Ok(())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    match by_id.keys().next() {
        Some(other) => Err(format!(
            "`err` names container '{other}', which the call does not (ids: {})",
            ids.join(", ")
        )),
        None => Ok(answers),
    }
}

/// A batch call's answers as a script writes them: nothing when all succeeded, else the
/// failures by id.
fn batch_err(ids: &[String], answers: &[Result<(), Error>]) -> Option<Value> {
    let failed: serde_json::Map<String, Value> = ids
        .iter()
        .zip(answers)
        .filter_map(|(id, r)| r.as_ref().err().map(|e| (id.clone(), error_to_json(e))))
        .collect();
    (!failed.is_empty()).then_some(Value::Object(failed))
}

/// Whether every field `want` gives is in `got`, recursively (lists must match in length
/// and order).
pub fn subset(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, wv)| g.get(k).is_some_and(|gv| subset(wv, gv))),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| subset(a, b))
        }
        (w, g) => w == g,
    }
}

#[derive(Debug, Default)]
struct ScriptState {
    expected: VecDeque<Call>,
    made: Vec<Call>,
    problems: Vec<String>,
    /// At the plugin level: the containers the host's own inspects are answered from.
    plugin_level: Option<Vec<Container>>,
}

/// Answers host calls from a script, in order: as they reach the backends (the engine level,
/// what traces record), or as the plugin made them (the plugin level).
#[derive(Debug, Clone, Default)]
pub struct Scripted(Arc<Mutex<ScriptState>>);

impl Scripted {
    /// A backend that expects `calls`, in this order, as they reach the backends.
    pub fn new(calls: Vec<Call>) -> Self {
        Self(Arc::new(Mutex::new(ScriptState {
            expected: calls.into(),
            ..Default::default()
        })))
    }

    /// A backend that expects `calls` as the plugin makes them: a batch call once with its
    /// ids, a build or exec with the options the plugin gave, no inspect of the host's own —
    /// the host checks an id the plugin did not list against `containers`.
    pub fn at_plugin_level(calls: Vec<Call>, containers: Vec<Container>) -> Self {
        Self(Arc::new(Mutex::new(ScriptState {
            expected: calls.into(),
            plugin_level: Some(containers),
            ..Default::default()
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ScriptState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Both capability backends, answering from this script.
    pub fn backends(&self) -> Backends {
        let plugin_level = self.state().plugin_level.is_some();
        Backends {
            docker: Arc::new(self.clone()),
            supervisor: Arc::new(self.clone()),
            plugin_level: plugin_level
                .then(|| Arc::new(self.clone()) as Arc<dyn PluginLevelDocker>),
        }
    }

    /// The calls the plugin made (with the answers it got), and every difference from the
    /// script, including expected calls it never made.
    pub fn finish(&self) -> (Vec<Call>, Vec<String>) {
        let mut st = self.state();
        let n = st.made.len();
        let left: Vec<String> = st
            .expected
            .iter()
            .enumerate()
            .map(|(i, c)| {
                format!(
                    "call {}: expected {}, but the plugin made no more calls",
                    n + i + 1,
                    c.describe()
                )
            })
            .collect();
        st.problems.extend(left);
        st.expected.clear();
        (st.made.clone(), st.problems.clone())
    }

    /// The script's next call when it is `made` (the arguments it gives are compared), or
    /// the error the plugin gets; differences are noted.
    fn next(st: &mut ScriptState, made: &Call) -> Result<Call, Error> {
        let n = st.made.len() + 1;
        match st.expected.pop_front() {
            Some(exp) if exp.call == made.call => {
                // No args in the script: any args.
                if !exp.args.is_null() && !subset(&exp.args, &made.args) {
                    st.problems.push(format!(
                        "call {n}: expected {}, got {}",
                        exp.describe(),
                        made.describe()
                    ));
                }
                Ok(exp)
            }
            Some(exp) => {
                st.problems.push(format!(
                    "call {n}: expected {}, got {}",
                    exp.describe(),
                    made.describe()
                ));
                // Keep the expected call for the next one: an extra call shows once.
                st.expected.push_front(exp);
                Err(Error::Failed(format!(
                    "plugin test: unexpected host call {}",
                    made.describe()
                )))
            }
            None => {
                st.problems.push(format!(
                    "call {n}: the script expects no more calls, got {}",
                    made.describe()
                ));
                Err(Error::Failed(format!(
                    "plugin test: unexpected host call {}",
                    made.describe()
                )))
            }
        }
    }

    /// Matches the call made against the script's next one, gives the plugin `answer`'s
    /// result for it (or the error of a mismatch), and notes the call with what it got.
    fn exchange<R>(
        &self,
        call: &str,
        args: Value,
        answer: impl FnOnce(&Call, usize) -> Result<R, Error>,
        note: impl FnOnce(&Result<R, Error>, &mut Call),
    ) -> Result<R, Error> {
        let mut st = self.state();
        let n = st.made.len() + 1;
        let mut made = Call {
            call: call.into(),
            args,
            ok: None,
            err: None,
        };
        let result = Self::next(&mut st, &made).and_then(|exp| answer(&exp, n));
        note(&result, &mut made);
        st.made.push(made);
        result
    }

    fn answer<T: Json>(&self, call: &str, args: Value) -> Result<T, Error> {
        self.exchange(
            call,
            args,
            |exp, n| match (&exp.ok, &exp.err) {
                (_, Some(e)) => Err(error_from_json(e).map_err(|m| {
                    Error::Failed(format!("plugin test: call {n} has a bad `err`: {m}"))
                })?),
                (ok, None) => T::from_json(ok.as_ref().unwrap_or(&Value::Null)).map_err(|m| {
                    Error::Failed(format!("plugin test: call {n} has a bad `ok`: {m}"))
                }),
            },
            |result, made| match result {
                Ok(v) => made.ok = Some(v.to_json()),
                Err(e) => made.err = Some(error_to_json(e)),
            },
        )
    }

    /// A batch call at the plugin level: one call for all `ids`, one answer each.
    fn answer_batch(&self, call: &str, args: Value, ids: &[String]) -> Vec<Result<(), Error>> {
        let all = |r: &Result<Vec<Result<(), Error>>, Error>| {
            r.clone().unwrap_or_else(|e| vec![Err(e); ids.len()])
        };
        let result = self.exchange(
            call,
            args,
            |exp, n| {
                if exp.ok.as_ref().is_some_and(|v| !v.is_null()) {
                    return Err(Error::Failed(format!(
                        "plugin test: call {n} has an `ok`, which {call} does not answer: its \
                         answer is `err` (for every id, or by id: {{ <id> = {{ not-found = \"…\" }} }}) \
                         or nothing when every id succeeds"
                    )));
                }
                batch_answers(exp.err.as_ref(), ids).map_err(|m| {
                    Error::Failed(format!("plugin test: call {n} has a bad `err`: {m}"))
                })
            },
            |r, made| made.err = batch_err(ids, &all(r)),
        );
        all(&result)
    }

    /// `docker.inspect` as the script answers it.
    fn inspect_answer(&self, id: &str) -> Result<Container, Error> {
        let c: Container = self.answer("docker.inspect", json!({"id": id}))?;
        if c.project.is_empty() || c.service.is_empty() {
            // Without them the grant check would say "no grant for docker project ''".
            return Err(Error::Failed(format!(
                "plugin test: the scripted answer of docker.inspect for '{id}' has no `project` \
                 and `service` (compose's labels, which the grant is checked against): add \
                 them, e.g. ok = {{ name = \"{id}\", project = \"marvin\", service = \"web\" }}"
            )));
        }
        Ok(c)
    }

    /// The host's own inspect at the plugin level, before it acts on an id the plugin did
    /// not list: answered from the script's `[[containers]]`, not a call of the script.
    fn known_container(&self, id: &str) -> Option<Result<Container, Error>> {
        let mut st = self.state();
        let known = st.plugin_level.as_ref()?;
        if let Some(c) = known.iter().find(|c| c.id == id || c.name == id) {
            return Some(Ok(c.clone()));
        }
        let text = format!(
            "the host checks the grant of container '{id}' against its compose project and \
             service before acting on it, and the script does not say them: add it to \
             `[[containers]]` (id, project, service), or script the list-containers or \
             inspect call the plugin got it from"
        );
        st.problems.push(text.clone());
        Some(Err(Error::Failed(format!("plugin test: {text}"))))
    }
}

#[async_trait]
impl PluginLevelDocker for Scripted {
    async fn inspect(&self, id: &str) -> Result<Container, Error> {
        self.inspect_answer(id)
    }
    async fn batch(
        &self,
        call: Batch,
        ids: &[String],
        timeout_secs: Option<u32>,
    ) -> Vec<Result<(), Error>> {
        let args = match call {
            Batch::Start => json!({ "ids": ids }),
            Batch::Stop | Batch::Restart => json!({ "ids": ids, "timeout_secs": timeout_secs }),
        };
        self.answer_batch(call.call(), args, ids)
    }
    async fn build(&self, options: &BuildOptions) -> Result<BuildOutput, Error> {
        self.answer("docker.build", options.to_json())
    }
    async fn exec(&self, id: &str, options: &ExecOptions) -> Result<ExecOutput, Error> {
        let mut args = options.to_json();
        args["id"] = json!(id);
        // The plugin's own bound (the engine level leaves out the host's, which varies).
        if let Some(t) = options.timeout_ms {
            args["timeout_ms"] = json!(t);
        }
        self.answer("docker.exec", args)
    }
}

/// Records every request into a folder: `<correlation id>.json`, a trace `plugin test
/// --replay` runs again.
#[derive(Debug, Clone)]
pub struct Recorder {
    dir: PathBuf,
}

impl Recorder {
    /// Traces go to `dir` (created when missing).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

impl Observer for Recorder {
    fn begin(&self, backends: &Backends) -> Box<dyn Observation> {
        Box::new(Recording {
            inner: backends.clone(),
            calls: Arc::default(),
            dir: self.dir.clone(),
        })
    }
}

/// One request being recorded: its host calls pass on to the real backends and are written
/// down with their answers.
#[derive(Clone)]
pub struct Recording {
    inner: Backends,
    calls: Arc<Mutex<Vec<Call>>>,
    dir: PathBuf,
}

impl Observation for Recording {
    fn backends(&self) -> Backends {
        Backends {
            docker: Arc::new(self.clone()),
            supervisor: Arc::new(self.clone()),
            plugin_level: None,
        }
    }

    fn end(
        self: Box<Self>,
        request: &ManagerRequest,
        entity: &Entity,
        grants: &Grants,
        outcome: &Result<PluginOutcome, RunError>,
    ) {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let outcome = match outcome {
            Ok(o) => o.clone(),
            Err(e) => PluginOutcome::from(e.clone()),
        };
        let trace = Script::trace(request, entity, grants, calls, &outcome);
        write_trace(&self.dir, &request.correlation_id, &trace);
    }
}

/// Writes a trace; a failure is logged, the request is not affected.
fn write_trace(dir: &Path, correlation_id: &str, trace: &Script) {
    let name: String = correlation_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{name}.json"));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| serde_json::to_vec_pretty(trace).map_err(std::io::Error::other))
        .and_then(|bytes| std::fs::write(&path, bytes));
    match written {
        Ok(()) => tracing::debug!(path = %path.display(), "trace recorded"),
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot write the trace"),
    }
}

impl Recording {
    /// Runs `f` and writes the call down in the order calls were made (calls made at once,
    /// like the starts of a service's replicas, finish in any order).
    async fn record<T: Json>(
        &self,
        call: &str,
        args: Value,
        f: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let slot = {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            calls.push(Call {
                call: call.into(),
                args,
                ok: None,
                err: None,
            });
            calls.len() - 1
        };
        let result = f.await;
        if let Some(c) = self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(slot)
        {
            match &result {
                Ok(v) => c.ok = Some(v.to_json()),
                Err(e) => c.err = Some(error_to_json(e)),
            }
        }
        result
    }
}

#[async_trait]
impl DockerBackend for Scripted {
    async fn list_containers(
        &self,
        project: &str,
        service: Option<&str>,
    ) -> Result<Vec<Container>, Error> {
        let mut list: Vec<Container> = self.answer(
            "docker.list-containers",
            json!({"project": project, "service": service}),
        )?;
        // A scripted container listed for a project is of that project (and service) unless
        // the script says otherwise.
        for c in &mut list {
            if c.project.is_empty() {
                c.project = project.to_owned();
            }
            if let (true, Some(s)) = (c.service.is_empty(), service) {
                c.service = s.to_owned();
            }
        }
        Ok(list)
    }
    async fn labelled(&self, key: &str, value: Option<&str>) -> Result<Vec<Container>, Error> {
        self.answer("docker.labelled", json!({"key": key, "value": value}))
    }
    async fn inspect(&self, id: &str) -> Result<Container, Error> {
        match self.known_container(id) {
            Some(known) => known,
            None => self.inspect_answer(id),
        }
    }
    async fn start(&self, id: &str) -> Result<(), Error> {
        self.answer("docker.start", json!({"id": id}))
    }
    async fn stop(&self, id: &str, timeout_secs: Option<u32>) -> Result<(), Error> {
        self.answer(
            "docker.stop",
            json!({"id": id, "timeout_secs": timeout_secs}),
        )
    }
    async fn restart(&self, id: &str, timeout_secs: Option<u32>) -> Result<(), Error> {
        self.answer(
            "docker.restart",
            json!({"id": id, "timeout_secs": timeout_secs}),
        )
    }
    async fn build(&self, root: PathBuf, options: BuildOptions) -> Result<BuildOutput, Error> {
        let mut args = options.to_json();
        args["root"] = json!(root.display().to_string());
        self.answer("docker.build", args)
    }
    async fn exec(&self, id: &str, options: ExecOptions) -> Result<ExecOutput, Error> {
        let mut args = options.to_json();
        args["id"] = json!(id);
        self.answer("docker.exec", args)
    }
}

#[async_trait]
impl DockerBackend for Recording {
    async fn list_containers(
        &self,
        project: &str,
        service: Option<&str>,
    ) -> Result<Vec<Container>, Error> {
        let args = json!({"project": project, "service": service});
        self.record(
            "docker.list-containers",
            args,
            self.inner.docker.list_containers(project, service),
        )
        .await
    }
    async fn labelled(&self, key: &str, value: Option<&str>) -> Result<Vec<Container>, Error> {
        let args = json!({"key": key, "value": value});
        self.record(
            "docker.labelled",
            args,
            self.inner.docker.labelled(key, value),
        )
        .await
    }
    async fn inspect(&self, id: &str) -> Result<Container, Error> {
        self.record(
            "docker.inspect",
            json!({"id": id}),
            self.inner.docker.inspect(id),
        )
        .await
    }
    async fn start(&self, id: &str) -> Result<(), Error> {
        self.record(
            "docker.start",
            json!({"id": id}),
            self.inner.docker.start(id),
        )
        .await
    }
    async fn stop(&self, id: &str, timeout_secs: Option<u32>) -> Result<(), Error> {
        let args = json!({"id": id, "timeout_secs": timeout_secs});
        self.record(
            "docker.stop",
            args,
            self.inner.docker.stop(id, timeout_secs),
        )
        .await
    }
    async fn restart(&self, id: &str, timeout_secs: Option<u32>) -> Result<(), Error> {
        let args = json!({"id": id, "timeout_secs": timeout_secs});
        self.record(
            "docker.restart",
            args,
            self.inner.docker.restart(id, timeout_secs),
        )
        .await
    }
    async fn build(&self, root: PathBuf, options: BuildOptions) -> Result<BuildOutput, Error> {
        let mut args = options.to_json();
        args["root"] = json!(root.display().to_string());
        self.record("docker.build", args, self.inner.docker.build(root, options))
            .await
    }
    async fn exec(&self, id: &str, options: ExecOptions) -> Result<ExecOutput, Error> {
        let mut args = options.to_json();
        args["id"] = json!(id);
        self.record("docker.exec", args, self.inner.docker.exec(id, options))
            .await
    }
}

#[async_trait]
impl SupervisorBackend for Scripted {
    async fn process_info(&self, name: &str) -> Result<Process, Error> {
        self.answer("supervisor.process-info", json!({"name": name}))
    }
    async fn all_process_info(&self) -> Result<Vec<Process>, Error> {
        self.answer("supervisor.all-process-info", Value::Null)
    }
    async fn start_process(&self, name: &str, wait: bool) -> Result<Process, Error> {
        self.answer(
            "supervisor.start-process",
            json!({"name": name, "wait": wait}),
        )
    }
    async fn stop_process(&self, name: &str, wait: bool) -> Result<(), Error> {
        self.answer(
            "supervisor.stop-process",
            json!({"name": name, "wait": wait}),
        )
    }
    async fn start_group(&self, group: &str, wait: bool) -> Result<Vec<ProcessResult>, Error> {
        self.answer(
            "supervisor.start-group",
            json!({"group": group, "wait": wait}),
        )
    }
    async fn stop_group(&self, group: &str, wait: bool) -> Result<Vec<ProcessResult>, Error> {
        self.answer(
            "supervisor.stop-group",
            json!({"group": group, "wait": wait}),
        )
    }
    async fn reload_config(&self) -> Result<ConfigChanges, Error> {
        self.answer("supervisor.reload-config", Value::Null)
    }
    async fn add_group(&self, group: &str) -> Result<(), Error> {
        self.answer("supervisor.add-group", json!({"group": group}))
    }
    async fn remove_group(&self, group: &str) -> Result<(), Error> {
        self.answer("supervisor.remove-group", json!({"group": group}))
    }
    async fn tail_log(&self, name: &str, bytes: u32) -> Result<String, Error> {
        self.answer("supervisor.tail-log", json!({"name": name, "bytes": bytes}))
    }
}

#[async_trait]
impl SupervisorBackend for Recording {
    async fn process_info(&self, name: &str) -> Result<Process, Error> {
        let s = &self.inner.supervisor;
        self.record(
            "supervisor.process-info",
            json!({"name": name}),
            s.process_info(name),
        )
        .await
    }
    async fn all_process_info(&self) -> Result<Vec<Process>, Error> {
        let s = &self.inner.supervisor;
        self.record(
            "supervisor.all-process-info",
            Value::Null,
            s.all_process_info(),
        )
        .await
    }
    async fn start_process(&self, name: &str, wait: bool) -> Result<Process, Error> {
        let s = &self.inner.supervisor;
        let args = json!({"name": name, "wait": wait});
        self.record(
            "supervisor.start-process",
            args,
            s.start_process(name, wait),
        )
        .await
    }
    async fn stop_process(&self, name: &str, wait: bool) -> Result<(), Error> {
        let s = &self.inner.supervisor;
        let args = json!({"name": name, "wait": wait});
        self.record("supervisor.stop-process", args, s.stop_process(name, wait))
            .await
    }
    async fn start_group(&self, group: &str, wait: bool) -> Result<Vec<ProcessResult>, Error> {
        let s = &self.inner.supervisor;
        let args = json!({"group": group, "wait": wait});
        self.record("supervisor.start-group", args, s.start_group(group, wait))
            .await
    }
    async fn stop_group(&self, group: &str, wait: bool) -> Result<Vec<ProcessResult>, Error> {
        let s = &self.inner.supervisor;
        let args = json!({"group": group, "wait": wait});
        self.record("supervisor.stop-group", args, s.stop_group(group, wait))
            .await
    }
    async fn reload_config(&self) -> Result<ConfigChanges, Error> {
        let s = &self.inner.supervisor;
        self.record("supervisor.reload-config", Value::Null, s.reload_config())
            .await
    }
    async fn add_group(&self, group: &str) -> Result<(), Error> {
        let s = &self.inner.supervisor;
        self.record(
            "supervisor.add-group",
            json!({"group": group}),
            s.add_group(group),
        )
        .await
    }
    async fn remove_group(&self, group: &str) -> Result<(), Error> {
        let s = &self.inner.supervisor;
        self.record(
            "supervisor.remove-group",
            json!({"group": group}),
            s.remove_group(group),
        )
        .await
    }
    async fn tail_log(&self, name: &str, bytes: u32) -> Result<String, Error> {
        let s = &self.inner.supervisor;
        let args = json!({"name": name, "bytes": bytes});
        self.record("supervisor.tail-log", args, s.tail_log(name, bytes))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: Value, ok: Option<Value>) -> Call {
        Call {
            call: name.into(),
            args,
            ok,
            err: None,
        }
    }

    #[tokio::test]
    async fn differences_are_noted_and_the_plugin_gets_clear_errors() {
        let s = Scripted::new(vec![
            call(
                "docker.inspect",
                json!({"id": "c1"}),
                Some(json!({"name": "c1", "project": "marvin", "service": "web"})),
            ),
            call("docker.start", json!({"id": "c1"}), None),
            call("docker.stop", Value::Null, None),
        ]);
        // Right call, other args: answered, noted.
        let c = DockerBackend::inspect(&s, "c2").await.unwrap();
        assert_eq!(c.name, "c1");
        // A call the script does not expect here: refused, noted, the expected one kept.
        let e = DockerBackend::restart(&s, "c1", None).await.unwrap_err();
        assert!(
            matches!(&e, Error::Failed(m) if m.contains("unexpected host call docker.restart"))
        );
        DockerBackend::start(&s, "c1").await.unwrap();
        let (made, problems) = s.finish();
        assert_eq!(made.len(), 3);
        assert_eq!(
            problems,
            [
                "call 1: expected docker.inspect {\"id\":\"c1\"}, got docker.inspect {\"id\":\"c2\"}",
                "call 2: expected docker.start {\"id\":\"c1\"}, got docker.restart {\"id\":\"c1\",\"timeout_secs\":null}",
                "call 4: expected docker.stop, but the plugin made no more calls",
            ]
        );
        // A bad answer in the script is the plugin's error, naming the call.
        let s = Scripted::new(vec![call(
            "docker.list-containers",
            Value::Null,
            Some(json!(7)),
        )]);
        let e = DockerBackend::list_containers(&s, "p", None)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Failed(m) if m.contains("call 1 has a bad `ok`")),
            "{e:?}"
        );
    }

    /// Capabilities granted docker project `marvin` only, answering from `s`.
    fn caps(s: &Scripted) -> crate::capabilities::Capabilities {
        use crate::capabilities::policy::{Capability, Policy};
        let grants = Grants {
            docker: Some(crate::config::DockerGrant {
                projects: vec!["marvin".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        crate::capabilities::Capabilities::new(
            Arc::new(Policy::new("p", [Capability::Docker], grants, &[])),
            "corr-1".into(),
            s.backends(),
            std::time::Instant::now() + std::time::Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn plugin_level_scripts_list_calls_as_the_plugin_made_them() {
        use crate::bindings::docker::Host;
        let listed = json!([
            {"id": "a", "name": "marvin_web_1", "project": "marvin", "service": "web"},
            {"id": "b", "name": "marvin_web_2", "project": "marvin", "service": "web"},
        ]);
        let s = Scripted::at_plugin_level(
            vec![
                call(
                    "docker.list-containers",
                    json!({"project": "marvin"}),
                    Some(listed),
                ),
                Call {
                    err: Some(json!({"b": {"not-found": "gone"}})),
                    ..call("docker.start", json!({"ids": ["a", "b", "k"]}), None)
                },
                call(
                    "docker.stop",
                    json!({"ids": ["a"], "timeout_secs": 3}),
                    None,
                ),
            ],
            vec![
                Container::from_json(&json!({"id": "x", "project": "secret", "service": "db"}))
                    .unwrap(),
                Container::from_json(&json!({"id": "k", "project": "marvin", "service": "db"}))
                    .unwrap(),
            ],
        );
        let mut c = caps(&s);
        c.list_containers("marvin".into(), None)
            .await
            .unwrap()
            .unwrap();
        // One call for the batch: the granted ids (k from [[containers]], not listed), the
        // ungranted one answered by its denial without a call of the script.
        let r = c
            .start(vec!["a".into(), "b".into(), "x".into(), "k".into()])
            .await
            .unwrap();
        assert!(r[0].is_ok(), "{r:?}");
        assert!(
            matches!(&r[1], Err(Error::NotFound(m)) if m == "gone"),
            "{r:?}"
        );
        assert!(matches!(&r[2], Err(Error::PermissionDenied(_))), "{r:?}");
        assert!(r[3].is_ok(), "{r:?}");
        // An id nobody said anything of: the plugin gets an error, the test a difference.
        let r = c
            .stop(vec!["a".into(), "zz".into()], Some(3))
            .await
            .unwrap();
        assert!(r[0].is_ok(), "{r:?}");
        assert!(
            matches!(&r[1], Err(Error::Failed(m)) if m.contains("'zz'") && m.contains("[[containers]]")),
            "{r:?}"
        );
        let (made, problems) = s.finish();
        let described: Vec<String> = made
            .iter()
            .map(|c| format!("{} -> {}", c.describe(), c.describe_answer()))
            .collect();
        assert_eq!(
            described[1..],
            [
                "docker.start {\"ids\":[\"a\",\"b\",\"k\"]} -> b: not-found: gone",
                "docker.stop {\"ids\":[\"a\"],\"timeout_secs\":3} -> ok",
            ]
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("container 'zz'"), "{problems:?}");
    }

    #[tokio::test]
    async fn a_batch_answer_names_only_ids_of_the_call() {
        let s = Scripted::at_plugin_level(
            vec![Call {
                err: Some(json!({"c9": "gone"})),
                ..call("docker.restart", Value::Null, None)
            }],
            vec![],
        );
        let r = PluginLevelDocker::batch(&s, Batch::Restart, &["c1".into()], None).await;
        assert!(
            matches!(&r[0], Err(Error::Failed(m)) if m.contains("names container 'c9'")),
            "{r:?}"
        );
        // One error for every id.
        let s = Scripted::at_plugin_level(
            vec![Call {
                err: Some(json!({"unavailable": "engine down"})),
                ..call("docker.restart", Value::Null, None)
            }],
            vec![],
        );
        let ids = ["c1".to_owned(), "c2".to_owned()];
        let r = PluginLevelDocker::batch(&s, Batch::Restart, &ids, None).await;
        assert!(
            r.iter().all(|r| matches!(r, Err(Error::Unavailable(_)))),
            "{r:?}"
        );
    }

    /// The WIT's host functions, as `interface.function`.
    fn wit_calls() -> Vec<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut calls = Vec::new();
        for interface in ["docker", "supervisor"] {
            let text = std::fs::read_to_string(dir.join(format!("{interface}.wit"))).unwrap();
            for line in text.lines() {
                if let Some((name, _)) = line.trim().split_once(": func(") {
                    calls.push(format!("{interface}.{name}"));
                }
            }
        }
        calls
    }

    #[tokio::test]
    async fn the_call_names_are_the_wit_functions() {
        // Every call a script can list is a WIT host function (or the host's own labelled),
        // and every function is one.
        let mut names: Vec<String> = CALLS.iter().map(|c| c.to_string()).collect();
        names.retain(|c| !HOST_ONLY.contains(&c.as_str()));
        let mut wit = wit_calls();
        names.sort();
        wit.sort();
        assert_eq!(names, wit);
        // And the scripted backends answer under those names: with an empty script each call
        // is made once and noted under its name.
        let s = Scripted::new(vec![]);
        let d: &dyn DockerBackend = &s;
        let _ = d.list_containers("p", None).await;
        let _ = d.labelled("k", None).await;
        let _ = d.inspect("c").await;
        let _ = d.start("c").await;
        let _ = d.stop("c", None).await;
        let _ = d.restart("c", None).await;
        let _ = d
            .build(
                PathBuf::from("/"),
                BuildOptions::from_json(&json!({})).unwrap(),
            )
            .await;
        let _ = d
            .exec("c", ExecOptions::from_json(&json!({})).unwrap())
            .await;
        let v: &dyn SupervisorBackend = &s;
        let _ = v.process_info("w").await;
        let _ = v.all_process_info().await;
        let _ = v.start_process("w", true).await;
        let _ = v.stop_process("w", true).await;
        let _ = v.start_group("g", true).await;
        let _ = v.stop_group("g", true).await;
        let _ = v.reload_config().await;
        let _ = v.add_group("g").await;
        let _ = v.remove_group("g").await;
        let _ = v.tail_log("w", 10).await;
        let (made, _) = s.finish();
        let mut made: Vec<String> = made.into_iter().map(|c| c.call).collect();
        made.sort();
        let mut all: Vec<String> = CALLS.iter().map(|c| c.to_string()).collect();
        all.sort();
        assert_eq!(made, all);
        assert!(unknown_call("docker.labelled", true).is_some());
        assert!(unknown_call("docker.labelled", false).is_none());
    }
}
