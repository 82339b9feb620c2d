//! The `docker-compose` plugin: `start`, `stop`, `restart`, `restart_all` and `build` on a
//! compose service, with the outcome `docker compose <action> <service>` has.
//!
//! - every replica of the service is acted on at once (one-off `run` containers are left
//!   alone, as compose does);
//! - idempotent: `start` on a running service succeeds and says so, `stop` on a stopped one
//!   too;
//! - `restart_all` restarts every service of the project (the entity `all`);
//! - `build` reads the compose file through a read-only preopen (`files` grant): found from
//!   the containers' compose labels, or `args.compose_file`; it builds the service's image
//!   and tags it as compose does, without recreating containers (as `compose build`).
//!
//! The response's metadata holds each container's state after the action and the timings.
//!
//! Args (all optional): `stop_timeout` (seconds before SIGKILL; Docker's 10 s by default,
//! shortened to fit the request's timeout), `compose_file` (for `build`), `no_cache`.

mod compose;
#[cfg(test)]
mod corpus_tests;
mod interpolate;

use std::time::Instant;

use marvin_plugin_sdk::docker::{self, BuildOptions, Container};
use marvin_plugin_sdk::types::{Capability, EntityKind, HandledAction, Target};
use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response, error_text, log};
use serde_json::{Value, json};

struct DockerCompose;

/// Timings of one request, in milliseconds.
struct Clock {
    started: Instant,
    steps: serde_json::Map<String, Value>,
}

impl Clock {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            steps: serde_json::Map::new(),
        }
    }
    fn time<T>(&mut self, step: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.steps.insert(step.into(), ms(t).into());
        r
    }
    fn finish(mut self) -> Value {
        self.steps.insert("total".into(), ms(self.started).into());
        Value::Object(self.steps)
    }
}

fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e5).round() / 100.0
}

fn state(c: &Container) -> Value {
    json!({
        "id": c.id.get(..12).unwrap_or(&c.id),
        "name": c.name,
        "service": c.service,
        "number": c.number,
        "status": c.state.status,
        "running": c.state.running,
        "exit_code": c.state.exit_code,
        "health": c.state.health,
    })
}

/// The answers of the common actions (start, stop, restart) are joined with `[..].concat()`,
/// not `format!`: in a fresh instance the formatting machinery's first use (its indirect calls
/// resolved one by one) took 5.2–6.1 µs of the ~20 µs an idempotent `start` spends in the
/// plugin, the same text formatted a second time in that instance 1.1 µs.
fn describe_target(project: &str, service: Option<&str>) -> String {
    match service {
        Some(s) => ["service '", s, "' of project '", project, "'"].concat(),
        None => ["project '", project, "'"].concat(),
    }
}

/// "1 container", "3 containers".
fn containers_count(n: usize) -> String {
    let mut digits = itoa::Buffer::new();
    [
        digits.format(n),
        if n == 1 { " container" } else { " containers" },
    ]
    .concat()
}

/// The service's containers (one-offs left out), or why there are none.
fn containers(project: &str, service: Option<&str>) -> Result<Vec<Container>, String> {
    let all = docker::list_containers(project, service).map_err(|e| error_text(&e))?;
    let list: Vec<Container> = all.into_iter().filter(|c| !c.oneoff).collect();
    if list.is_empty() {
        return Err(format!(
            "no containers for {}: create them with `docker compose up`",
            describe_target(project, service)
        ));
    }
    Ok(list)
}

/// Seconds to give containers to stop: asked for, else Docker's 10, always inside the
/// request's time (a second kept for the rest of the request).
fn stop_timeout(req: &Request, args: &Value) -> u32 {
    let asked = args
        .get("stop_timeout")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or(10);
    let room = u64::from(req.timeout_ms / 1000).saturating_sub(1);
    u32::try_from(asked.min(room)).unwrap_or(0)
}

/// Runs a batch call on `todo`, lists again, and reports the states after. `verb` is the
/// action (`start`), `done` its past (`started`).
fn act(
    clock: &mut Clock,
    (verb, done): (&str, &str),
    project: &str,
    service: Option<&str>,
    todo: &[&Container],
    call: impl FnOnce(&[String]) -> Vec<Result<(), docker::Error>>,
) -> Response {
    let ids: Vec<String> = todo.iter().map(|c| c.id.clone()).collect();
    let results = clock.time(verb, || call(&ids));
    let mut failures: Vec<String> = todo
        .iter()
        .zip(&results)
        .filter_map(|(c, r)| {
            r.as_ref()
                .err()
                .map(|e| format!("{}: {}", c.name, error_text(e)))
        })
        .collect();
    let after = clock.time("list_after", || {
        docker::list_containers(project, service).map_err(|e| error_text(&e))
    });
    let names: Vec<&str> = todo.iter().map(|c| c.name.as_str()).collect();
    // A container that disappeared meanwhile (`docker rm`): stopping it reached its goal,
    // starting it did not.
    let removed: Vec<&str> = match &after {
        Ok(list) => todo
            .iter()
            .filter(|c| !list.iter().any(|a| a.id == c.id))
            .map(|c| c.name.as_str())
            .collect(),
        Err(_) => Vec::new(),
    };
    if verb != "stop" {
        for name in &removed {
            if !failures.iter().any(|f| f.starts_with(&format!("{name}: "))) {
                failures.push(format!("{name}: removed during the action"));
            }
        }
    }
    let target = describe_target(project, service);
    let count = containers_count(todo.len());
    let mut outcome = if failures.is_empty() {
        let mut text = [done, " ", &count, " of ", &target, ": ", &names.join(", ")].concat();
        if !removed.is_empty() {
            text.push_str(&format!(" ({} removed meanwhile)", removed.join(", ")));
        }
        Response::ok(text)
    } else {
        Response::fail(format!(
            "{verb} failed for {} of the {count} of {target}: {}",
            failures.len(),
            failures.join("; ")
        ))
    };
    outcome = outcome.with("acted_on", json!(names));
    if !removed.is_empty() {
        outcome = outcome.with("removed", json!(removed));
    }
    match after {
        Ok(list) => {
            let states: Vec<Value> = list.iter().filter(|c| !c.oneoff).map(state).collect();
            outcome.with("containers", Value::Array(states))
        }
        Err(e) => outcome.with("containers_error", Value::String(e)),
    }
}

fn start(clock: &mut Clock, project: &str, service: Option<&str>) -> Response {
    let list = match clock.time("list", || containers(project, service)) {
        Ok(l) => l,
        Err(e) => return Response::fail(e),
    };
    // compose start starts what is not running; a paused container stays paused.
    let todo: Vec<&Container> = list
        .iter()
        .filter(|c| matches!(c.state.status.as_str(), "created" | "exited" | "dead"))
        .collect();
    if todo.is_empty() {
        let states: Vec<Value> = list.iter().map(state).collect();
        return Response::ok(
            [
                &describe_target(project, service),
                " is already running (",
                &containers_count(list.len()),
                ")",
            ]
            .concat(),
        )
        .with("already", Value::Bool(true))
        .with("containers", Value::Array(states));
    }
    act(
        clock,
        ("start", "started"),
        project,
        service,
        &todo,
        docker::start,
    )
    .with("already", Value::Bool(false))
}

fn stop(clock: &mut Clock, project: &str, service: Option<&str>, timeout: u32) -> Response {
    let list = match clock.time("list", || containers(project, service)) {
        Ok(l) => l,
        Err(e) => return Response::fail(e),
    };
    let todo: Vec<&Container> = list
        .iter()
        .filter(|c| matches!(c.state.status.as_str(), "running" | "restarting" | "paused"))
        .collect();
    if todo.is_empty() {
        let states: Vec<Value> = list.iter().map(state).collect();
        return Response::ok([&describe_target(project, service), " is already stopped"].concat())
            .with("already", Value::Bool(true))
            .with("containers", Value::Array(states));
    }
    act(clock, ("stop", "stopped"), project, service, &todo, |ids| {
        docker::stop(ids, Some(timeout))
    })
    .with("already", Value::Bool(false))
}

fn restart(clock: &mut Clock, project: &str, service: Option<&str>, timeout: u32) -> Response {
    let list = match clock.time("list", || containers(project, service)) {
        Ok(l) => l,
        Err(e) => return Response::fail(e),
    };
    let todo: Vec<&Container> = list.iter().collect();
    act(
        clock,
        ("restart", "restarted"),
        project,
        service,
        &todo,
        |ids| docker::restart(ids, Some(timeout)),
    )
}

fn build(clock: &mut Clock, args: &Value, project: &str, service: &str) -> Response {
    // The compose file: from the containers' labels, else args.compose_file.
    let listed = clock.time("list", || docker::list_containers(project, Some(service)));
    let existing = match listed {
        Ok(l) => l,
        Err(e) => return Response::fail(error_text(&e)),
    };
    let asked = args.get("compose_file").and_then(Value::as_str);
    let files = match compose::files(existing.first().map(|c| c.labels.as_slice()), asked) {
        Ok(f) => f,
        Err(e) => return Response::fail(e),
    };
    let plan = match clock.time("read_compose", || {
        // The environment the operator granted this plugin (`grants.env`).
        let shell: compose::Env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        // compose warns about a variable used without a value, once each.
        let mut warned: Vec<String> = Vec::new();
        let flavor = compose::Flavor::of(&existing);
        compose::build_plan(&files, service, &shell, flavor, &mut |name| {
            if !warned.iter().any(|w| w == name) {
                warned.push(name.to_owned());
                log::log(
                    log::Level::Warn,
                    &format!("the {name} variable is not set: defaulting to a blank string"),
                );
            }
        })
    }) {
        Ok(p) => p,
        Err(e) => return Response::fail(e),
    };
    let Some(plan) = plan else {
        return Response::ok(format!(
            "service '{service}' of project '{project}' uses an image and has nothing to build"
        ))
        .with("built", Value::Bool(false));
    };
    let tag = compose::image_tag(&plan, project, service, &existing);
    log::log(
        log::Level::Info,
        &format!(
            "building {tag} from {} ({})",
            plan.context.display(),
            plan.dockerfile
        ),
    );
    let options = BuildOptions {
        context: plan.context.display().to_string(),
        dockerfile: Some(plan.dockerfile.clone()),
        tags: vec![tag.clone()],
        args: plan.args.clone(),
        target: plan.target.clone(),
        labels: plan.labels.clone(),
        extra_hosts: plan.extra_hosts.clone(),
        network: plan.network.clone(),
        shm_size: plan.shm_size,
        cache_from: plan.cache_from.clone(),
        no_cache: args
            .get("no_cache")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        project: project.into(),
        service: service.into(),
    };
    match clock.time("build", || docker::build(&options)) {
        Ok(out) => Response::ok(format!(
            "built {tag} ({})",
            out.image_id.get(..19).unwrap_or(&out.image_id)
        ))
        .with("built", Value::Bool(true))
        .with("image", Value::String(tag))
        .with("image_id", Value::String(out.image_id))
        .with("context", Value::String(options.context))
        .with(
            "log_tail",
            Value::String(marvin_plugin_sdk::tail(&out.log, 20)),
        ),
        Err(e) => Response::fail(format!("building {tag} failed: {}", error_text(&e)))
            .with("image", Value::String(tag)),
    }
}

impl Guest for DockerCompose {
    /// Starting what runs or stopping what is stopped changes nothing: safe to run again.
    fn idempotent_actions() -> Vec<HandledAction> {
        marvin_plugin_sdk::handles(EntityKind::Container, &["start", "stop"])
    }

    fn unplannable_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn describe() -> PluginInfo {
        marvin_plugin_sdk::info(
            "docker-compose",
            env!("CARGO_PKG_VERSION"),
            EntityKind::Container,
            &["start", "stop", "restart", "restart_all", "build"],
            &[
                Capability::Docker,
                Capability::DockerBuild,
                Capability::Files,
            ],
        )
    }

    fn handle(req: Request) -> Response {
        let Target::Compose(target) = &req.target else {
            return Response::fail("docker-compose acts on compose containers only");
        };
        let args = marvin_plugin_sdk::args(&req);
        let project = target.project.as_str();
        let service = target.service.as_deref();
        let mut clock = Clock::new();
        let timeout = stop_timeout(&req, &args);
        let outcome = match (req.action.as_str(), service) {
            ("restart_all", _) => restart(&mut clock, project, None, timeout),
            (_, None) => Response::fail(format!(
                "'{}' needs a service; the entity '{}' is the whole project '{project}'",
                req.action, req.entity_id
            )),
            ("start", s) => start(&mut clock, project, s),
            ("stop", s) => stop(&mut clock, project, s, timeout),
            ("restart", s) => restart(&mut clock, project, s, timeout),
            ("build", Some(s)) => build(&mut clock, &args, project, s),
            (other, _) => Response::fail(format!("docker-compose does not handle '{other}'")),
        };
        let mut outcome = outcome.with("project", project.into());
        if let Some(s) = service {
            outcome = outcome.with("service", s.into());
        }
        outcome.with("timings_ms", clock.finish())
    }
}

marvin_plugin_sdk::export!(DockerCompose);

#[cfg(test)]
mod texts {
    use super::{containers_count, describe_target};

    #[test]
    fn the_answers_read_as_before_they_were_built_without_format() {
        assert_eq!(
            describe_target("p", Some("web")),
            "service 'web' of project 'p'"
        );
        assert_eq!(describe_target("p", None), "project 'p'");
        assert_eq!(containers_count(0), "0 containers");
        assert_eq!(containers_count(1), "1 container");
        assert_eq!(containers_count(12), "12 containers");
    }
}
