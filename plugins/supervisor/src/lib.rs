//! The `supervisor` plugin: `start`, `stop`, `restart`, `reread` and `update` on supervisord,
//! with the outcome `supervisorctl <action>` has on the same config.
//!
//! - names: `group:name` is one process, `group:*` (or `group:`) a whole group, and a bare
//!   name is the process of that name in the group of that name (a plain `[program:x]`), as
//!   supervisorctl reads it — else, when it names a group, the whole group;
//! - idempotent: `start` of a running process succeeds and says so, `stop` of a stopped one
//!   too;
//! - `restart` stops what runs, then starts, as `supervisorctl restart` does;
//! - `reread` (entity `supervisor`) reports the groups available, changed and disappeared
//!   (`metadata.groups`);
//! - `update` (entity `supervisor`): removed groups stopped and removed, changed groups
//!   stopped, removed and added again with the new config, new groups added (autostart
//!   programs start) — `supervisorctl update`, also limited to `args.groups` when given.
//!
//! The response's metadata holds each affected process's state after the action.

use marvin_plugin_sdk::supervisor::{self, Process, ProcessResult, ProcessState};
use marvin_plugin_sdk::types::{Capability, EntityKind, Error, HandledAction, Target};
use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response, error_text};
use serde_json::{Value, json};

struct Supervisor;

/// supervisord's per-process success in group results.
const SUCCESS: i32 = 80;
/// supervisord's per-process failure in group results.
const FAILED: i32 = 30;

/// What a name selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One process, `group:name`.
    Process(String),
    /// A whole group.
    Group(String),
}

/// `group:name` of a process.
pub fn full_name(p: &Process) -> String {
    format!("{}:{}", p.group, p.name)
}

/// What `name` selects among `all` (the processes the plugin may see).
pub fn select(name: &str, all: &[(String, String)]) -> Option<Selection> {
    let has_group = |g: &str| all.iter().any(|(group, _)| group == g);
    match name.split_once(':') {
        Some((g, "" | "*")) => has_group(g).then(|| Selection::Group(g.to_owned())),
        Some((g, p)) => all
            .iter()
            .any(|(group, n)| group == g && n == p)
            .then(|| Selection::Process(name.to_owned())),
        None => {
            if all.iter().any(|(group, n)| group == name && n == name) {
                Some(Selection::Process(format!("{name}:{name}")))
            } else if has_group(name) {
                Some(Selection::Group(name.to_owned()))
            } else {
                None
            }
        }
    }
}

fn state_name(s: ProcessState) -> &'static str {
    match s {
        ProcessState::Stopped => "STOPPED",
        ProcessState::Starting => "STARTING",
        ProcessState::Running => "RUNNING",
        ProcessState::Backoff => "BACKOFF",
        ProcessState::Stopping => "STOPPING",
        ProcessState::Exited => "EXITED",
        ProcessState::Fatal => "FATAL",
        ProcessState::Unknown => "UNKNOWN",
    }
}

fn describe(p: &Process) -> Value {
    json!({
        "name": full_name(p),
        "group": p.group,
        "state": state_name(p.state),
        "pid": p.pid,
        "exit_status": p.exit_status,
        "description": p.description,
        "spawn_error": (!p.spawn_error.is_empty()).then_some(&p.spawn_error),
    })
}

fn running(p: &Process) -> bool {
    matches!(
        p.state,
        ProcessState::Running | ProcessState::Starting | ProcessState::Backoff
    )
}

/// The processes `name` selects, with the selection; a clear error when none.
fn resolve(name: &str) -> Result<(Selection, Vec<Process>), String> {
    let all = supervisor::all_process_info().map_err(|e| error_text(&e))?;
    let pairs: Vec<(String, String)> = all
        .iter()
        .map(|p| (p.group.clone(), p.name.clone()))
        .collect();
    match select(name, &pairs) {
        Some(sel) => {
            let chosen = all
                .into_iter()
                .filter(|p| match &sel {
                    Selection::Process(full) => &full_name(p) == full,
                    Selection::Group(g) => &p.group == g,
                })
                .collect();
            Ok((sel, chosen))
        }
        // Not among what the plugin may see: ask supervisord by name, so an ungranted
        // program is told apart from one that does not exist.
        None => Err(match supervisor::process_info(name) {
            Err(Error::NotFound(_)) | Ok(_) => {
                format!("no supervisor program or group '{name}'")
            }
            Err(e) => error_text(&e),
        }),
    }
}

/// The states after an action, of the processes of `group`.
fn group_states(group: &str) -> Value {
    match supervisor::all_process_info() {
        Ok(all) => Value::Array(
            all.iter()
                .filter(|p| p.group == group)
                .map(describe)
                .collect(),
        ),
        Err(e) => Value::String(error_text(&e)),
    }
}

/// A spawn error with what supervisord knows about it.
fn spawn_failure(full: &str, e: &Error) -> String {
    with_details(format!("{full}: {}", error_text(e)), full)
}

/// `text` about process `full`, with its spawn error (when the text lacks it) and the tail of
/// its log, as a single program's failure says them.
fn with_details(mut text: String, full: &str) -> String {
    if let Ok(p) = supervisor::process_info(full) {
        if !p.spawn_error.is_empty() && !text.contains(&p.spawn_error) {
            text.push_str(&format!(" ({})", p.spawn_error));
        }
        if let Ok(log) = supervisor::tail_log(full, 2048) {
            let log = log.trim();
            if !log.is_empty() {
                text.push_str(&format!("\n{log}"));
            }
        }
    }
    text
}

/// What a group call (`start-group` or `stop-group`) did: the processes it acted on, and
/// each member that failed, with the reason and its log's tail.
struct GroupCall {
    done: Vec<String>,
    failures: Vec<String>,
}

fn group_call(
    call: fn(&str, bool) -> Result<Vec<ProcessResult>, Error>,
    group: &str,
) -> Result<GroupCall, String> {
    let results = call(group, true).map_err(|e| error_text(&e))?;
    let mut outcome = GroupCall {
        done: Vec::new(),
        failures: Vec::new(),
    };
    for r in &results {
        let full = format!("{}:{}", r.group, r.name);
        if r.status == SUCCESS {
            outcome.done.push(full);
        } else {
            let text = format!("{full}: {}", r.description);
            outcome.failures.push(with_details(text, &full));
        }
    }
    Ok(outcome)
}

/// start / stop / restart of a whole group; `chosen` are its processes as they were. A member
/// that fails makes the action fail with its reason and log tail, and the answer still says
/// what the others did (a line per process, as supervisorctl prints them).
fn group_action(action: &str, group: &str, chosen: &[Process]) -> Response {
    let what = format!("group {group}");
    let any_running = chosen
        .iter()
        .any(|p| running(p) || p.state == ProcessState::Stopping);
    let all_running = chosen.iter().all(running);
    match action {
        "start" if all_running => return already_group(group, format!("{what}: already running")),
        "stop" if !any_running => return already_group(group, format!("{what}: already stopped")),
        _ => {}
    }
    let mut lines: Vec<String> = Vec::new();
    let mut acted: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut step =
        |call: fn(&str, bool) -> Result<Vec<ProcessResult>, Error>, verb: &str| match group_call(
            call, group,
        ) {
            Ok(c) => {
                lines.extend(c.done.iter().map(|n| format!("{n}: {verb}")));
                acted = c.done;
                failures.extend(c.failures);
                true
            }
            Err(e) => {
                failures.push(e);
                false
            }
        };
    match action {
        "start" => {
            step(supervisor::start_group, "started");
        }
        "stop" => {
            step(supervisor::stop_group, "stopped");
        }
        // supervisorctl restart: stop what runs, then start everything.
        _ => {
            if !any_running || step(supervisor::stop_group, "stopped") {
                step(supervisor::start_group, "started");
            }
        }
    }
    let outcome = if failures.is_empty() {
        let text = match action {
            "start" => format!("{}: started", acted.join(", ")),
            "stop" => format!("{}: stopped", acted.join(", ")),
            _ => lines.join("\n"),
        };
        let o = Response::ok(text);
        if action == "restart" {
            o
        } else {
            o.with("already", Value::Bool(false))
        }
    } else {
        let failed = Response::fail(format!("{action} {what} failed: {}", failures.join("; ")));
        if lines.is_empty() {
            failed
        } else {
            failed.with_output(lines.join("\n"))
        }
    };
    outcome
        .with("acted_on", json!(acted))
        .with("processes", group_states(group))
}

/// A group already in the state asked for.
fn already_group(group: &str, text: String) -> Response {
    Response::ok(text)
        .with("acted_on", json!([]))
        .with("already", Value::Bool(true))
        .with("processes", group_states(group))
}

/// The process a name means without asking supervisord which groups exist: `group:name`,
/// or a bare `name` read as `name:name` (as supervisorctl reads it). None for `group:*`.
pub fn direct_process(name: &str) -> Option<String> {
    match name.split_once(':') {
        Some((_, "" | "*")) => None,
        Some(_) => Some(name.to_owned()),
        None => Some(format!("{name}:{name}")),
    }
}

/// One process, straight to supervisord: its faults say whether it was already in the
/// state asked for, so idempotence costs no extra call, and each call answers the state
/// after. A `NotFound` lets a bare name fall back to the group of that name.
fn process_action(action: &str, full: &str) -> Result<(Response, Option<Process>), Error> {
    // Whether it was running; the state after comes from process-info.
    let stop = || match supervisor::stop_process(full, true) {
        Ok(()) => Ok(true),
        Err(Error::NotRunning(_)) => Ok(false),
        Err(e) => Err(e),
    };
    let start = || match supervisor::start_process(full, true) {
        Ok(p) => Ok(Some(p)),
        Err(Error::AlreadyStarted(_)) => Ok(None),
        Err(e) => Err(e),
    };
    let (outcome, after) = match action {
        "start" => {
            let after = start()?;
            let text = match after {
                Some(_) => format!("{full}: started"),
                None => format!("{full}: already running"),
            };
            (
                Response::ok(text).with("already", Value::Bool(after.is_none())),
                after,
            )
        }
        "stop" => {
            let acted = stop()?;
            let text = if acted {
                format!("{full}: stopped")
            } else {
                format!("{full}: already stopped")
            };
            (
                Response::ok(text).with("already", Value::Bool(!acted)),
                None,
            )
        }
        // supervisorctl restart: stop when running, then start.
        _ => {
            let stopped = stop()?;
            let after = start()?;
            let mut text = String::new();
            if stopped {
                text.push_str(&format!("{full}: stopped\n"));
            }
            text.push_str(&format!("{full}: started"));
            (Response::ok(text), after)
        }
    };
    Ok((outcome.with("acted_on", json!([full])), after))
}

/// One process: the outcome with its state after; `None` when a bare `name` is not a
/// process (it may be a group).
fn process_outcome(action: &str, name: &str, full: &str) -> Option<Response> {
    // The state after: from the call itself, else asked.
    let after = |o: Response, known: Option<Process>| {
        let state = match known
            .map(Ok)
            .unwrap_or_else(|| supervisor::process_info(full))
        {
            Ok(p) => json!([describe(&p)]),
            Err(e) => Value::String(error_text(&e)),
        };
        o.with("processes", state)
    };
    Some(match process_action(action, full) {
        Ok((o, known)) => after(o, known),
        Err(Error::NotFound(_)) if !name.contains(':') => return None,
        Err(Error::NotFound(_)) => Response::fail(format!("no supervisor process '{name}'")),
        Err(e @ (Error::SpawnError(_) | Error::Failed(_) | Error::TimedOut(_))) => {
            let what = if full == format!("{name}:{name}") {
                name
            } else {
                full
            };
            after(
                Response::fail(format!(
                    "{action} {what} failed: {}",
                    spawn_failure(full, &e)
                )),
                None,
            )
        }
        Err(e) => Response::fail(error_text(&e)),
    })
}

fn program_action(action: &str, name: &str) -> Response {
    if let Some(outcome) =
        direct_process(name).and_then(|full| process_outcome(action, name, &full))
    {
        return outcome;
    }
    match resolve(name) {
        Err(e) => Response::fail(e),
        Ok((Selection::Group(g), chosen)) => group_action(action, &g, &chosen),
        // The process appeared since supervisord said it did not exist.
        Ok((Selection::Process(full), _)) => process_outcome(action, name, &full)
            .unwrap_or_else(|| Response::fail(format!("no supervisor program or group '{name}'"))),
    }
}

fn reread() -> Response {
    match supervisor::reload_config() {
        Ok(c) => {
            // As supervisorctl prints them: one line per group, sorted by name.
            let mut changes: Vec<(&String, &str)> = Vec::new();
            changes.extend(c.added.iter().map(|g| (g, "available")));
            changes.extend(c.changed.iter().map(|g| (g, "changed")));
            changes.extend(c.removed.iter().map(|g| (g, "disappeared")));
            changes.sort();
            let lines: Vec<String> = changes
                .iter()
                .map(|(g, what)| format!("{g}: {what}"))
                .collect();
            let text = if lines.is_empty() {
                "No config updates to processes".to_owned()
            } else {
                lines.join("\n")
            };
            // The groups, in supervisorctl's words, under a key of their own: `changed` on
            // every answer is the host's (whether the action changed anything).
            Response::ok(text).with(
                "groups",
                json!({"available": c.added, "changed": c.changed, "disappeared": c.removed}),
            )
        }
        Err(e) => Response::fail(format!("reread failed: {}", error_text(&e))),
    }
}

fn update(only: &[String]) -> Response {
    let c = match supervisor::reload_config() {
        Ok(c) => c,
        Err(e) => return Response::fail(format!("update failed: {}", error_text(&e))),
    };
    let wanted = |g: &String| only.is_empty() || only.contains(g);
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut touched = Vec::new();
    for g in c.removed.iter().filter(|g| wanted(g)) {
        match supervisor::stop_group(g, true) {
            Ok(results) => {
                lines.push(format!("{g}: stopped"));
                if results.iter().any(|r| r.status == FAILED) {
                    lines.push(format!("{g}: has problems; not removing"));
                    errors.push(format!("{g}: has problems; not removing"));
                    continue;
                }
            }
            Err(e) => {
                errors.push(format!("{g}: {}", error_text(&e)));
                continue;
            }
        }
        match supervisor::remove_group(g) {
            Ok(()) => lines.push(format!("{g}: removed process group")),
            Err(e) => errors.push(format!("{g}: {}", error_text(&e))),
        }
    }
    for g in c.changed.iter().filter(|g| wanted(g)) {
        touched.push(g.clone());
        let r = supervisor::stop_group(g, true)
            .map(|_| lines.push(format!("{g}: stopped")))
            .and_then(|()| supervisor::remove_group(g))
            .and_then(|()| supervisor::add_group(g));
        match r {
            Ok(()) => lines.push(format!("{g}: updated process group")),
            Err(e) => errors.push(format!("{g}: {}", error_text(&e))),
        }
    }
    for g in c.added.iter().filter(|g| wanted(g)) {
        touched.push(g.clone());
        match supervisor::add_group(g) {
            Ok(()) => lines.push(format!("{g}: added process group")),
            Err(e) => errors.push(format!("{g}: {}", error_text(&e))),
        }
    }
    let processes = match supervisor::all_process_info() {
        Ok(all) => Value::Array(
            all.iter()
                .filter(|p| touched.contains(&p.group))
                .map(describe)
                .collect(),
        ),
        Err(e) => Value::String(error_text(&e)),
    };
    let outcome = if errors.is_empty() {
        Response::ok(if lines.is_empty() {
            "No config updates to processes".to_owned()
        } else {
            lines.join("\n")
        })
    } else {
        let failed = Response::fail(format!("update failed: {}", errors.join("; ")));
        if lines.is_empty() {
            failed
        } else {
            failed.with_output(lines.join("\n"))
        }
    };
    // Only the groups this update was about (`args.groups`), as supervisorctl reports them.
    let only_wanted = |v: &[String]| json!(v.iter().filter(|g| wanted(g)).collect::<Vec<_>>());
    outcome
        .with(
            "groups",
            json!({
                "added": only_wanted(&c.added),
                "changed": only_wanted(&c.changed),
                "removed": only_wanted(&c.removed),
            }),
        )
        .with("processes", processes)
}

impl Guest for Supervisor {
    /// `start`/`stop` end in the same state however often they run; `reread` only reads;
    /// `update` brings the groups to the configuration, so a second run does what is left.
    fn idempotent_actions() -> Vec<HandledAction> {
        marvin_plugin_sdk::handles(EntityKind::Worker, &["start", "stop", "reread", "update"])
    }

    fn unplannable_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn describe() -> PluginInfo {
        marvin_plugin_sdk::info(
            "supervisor",
            env!("CARGO_PKG_VERSION"),
            EntityKind::Worker,
            &["start", "stop", "restart", "reread", "update"],
            &[Capability::Supervisor, Capability::SupervisorConfig],
        )
    }

    fn handle(req: Request) -> Response {
        match (&req.target, req.action.as_str()) {
            (Target::Supervisord, "reread") => reread(),
            (Target::Supervisord, "update") => {
                let args = marvin_plugin_sdk::args(&req);
                let only: Vec<String> = args
                    .get("groups")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|g| g.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                update(&only)
            }
            (Target::Program(name), "start" | "stop" | "restart") => {
                program_action(&req.action, name)
            }
            (Target::Supervisord, other) => Response::fail(format!(
                "'{other}' needs a program or group; the entity 'supervisor' takes reread and update"
            )),
            (Target::Program(name), other) => Response::fail(format!(
                "'{other}' acts on supervisord itself: send it to the entity 'supervisor', not '{name}'"
            )),
            (Target::Compose(_), _) => Response::fail("the supervisor plugin acts on workers"),
        }
    }
}

marvin_plugin_sdk::export!(Supervisor);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_as_supervisorctl_reads_them() {
        let all: Vec<(String, String)> = [
            ("web", "web"),
            ("workers", "a"),
            ("workers", "b"),
            ("pool", "pool_00"),
            ("pool", "pool_01"),
        ]
        .iter()
        .map(|(g, n)| (g.to_string(), n.to_string()))
        .collect();
        let p = |s: &str| Some(Selection::Process(s.into()));
        let g = |s: &str| Some(Selection::Group(s.into()));
        assert_eq!(select("web", &all), p("web:web"));
        assert_eq!(select("web:web", &all), p("web:web"));
        assert_eq!(select("workers:a", &all), p("workers:a"));
        assert_eq!(select("workers:*", &all), g("workers"));
        assert_eq!(select("workers:", &all), g("workers"));
        assert_eq!(select("workers", &all), g("workers"));
        assert_eq!(select("pool", &all), g("pool"));
        assert_eq!(select("workers:c", &all), None);
        assert_eq!(select("nope", &all), None);
        assert_eq!(select("nope:*", &all), None);
    }
}
