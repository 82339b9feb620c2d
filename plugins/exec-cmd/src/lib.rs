//! The `exec-cmd` plugin: `exec_cmd` runs the request's `command` in the service's running
//! container, as `docker compose exec <service> <command>` does.
//!
//! - `command` is split into argv with shell quoting rules and run directly: no shell, unless
//!   the command needs one (pipes, redirections, `&&`, `$VAR`, globs …); then it runs as
//!   `sh -c <command>`, which the operator must allow (`exec_shell = true`);
//! - the container is the service's running replica with the lowest number (`args.index`
//!   picks another, as `--index` does);
//! - exit code 0 → success with stdout as output; another exit code → failure with the code
//!   and the tail of stderr; both streams and the code are in the metadata;
//! - the request's timeout is honoured: the command is killed when it runs out.
//!
//! Args (all optional): `env` (object), `workdir`, `user`, `index`.

use std::time::Instant;

use marvin_plugin_sdk::docker::{self, ExecOptions};
use marvin_plugin_sdk::types::{Capability, EntityKind, Target};
use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response, error_text, tail};
use serde_json::{Value, json};

struct ExecCmd;

/// Whether `command` means something only a shell gives: operators, redirections,
/// expansions, globs, outside single quotes.
pub fn needs_shell(command: &str) -> bool {
    let mut single = false;
    let mut double = false;
    let mut escaped = false;
    for ch in command.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match ch {
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '$' | '`' if !single => return true,
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '*' | '?' | '~' | '\n' | '#'
                if !single && !double =>
            {
                return true;
            }
            _ => {}
        }
    }
    false
}

/// argv for `command`.
pub fn argv(command: &str) -> Result<Vec<String>, String> {
    if needs_shell(command) {
        return Ok(vec!["sh".into(), "-c".into(), command.into()]);
    }
    match shlex::split(command) {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err("the command is empty".into()),
        None => Err(format!(
            "cannot split the command into arguments (unbalanced quotes?): {command}"
        )),
    }
}

fn string_arg(args: &Value, key: &str) -> Option<String> {
    args.get(key).and_then(|v| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn run(req: &Request) -> Result<Response, String> {
    let Target::Compose(target) = &req.target else {
        return Err("exec_cmd runs in compose containers only".into());
    };
    let Some(service) = target.service.as_deref() else {
        return Err(format!(
            "exec_cmd needs a service; the entity '{}' is the whole project",
            req.entity_id
        ));
    };
    let command = req
        .command
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or("exec_cmd needs a `command`")?;
    let argv = argv(command)?;
    let args = marvin_plugin_sdk::args(req);
    let index: Option<u32> = string_arg(&args, "index").and_then(|i| i.parse().ok());
    let started = Instant::now();
    let list =
        docker::list_containers(&target.project, Some(service)).map_err(|e| error_text(&e))?;
    let mut running: Vec<_> = list
        .iter()
        .filter(|c| !c.oneoff && c.state.running)
        .collect();
    running.sort_by_key(|c| c.number);
    let container = match index {
        Some(i) => running.iter().find(|c| c.number == i),
        None => running.first(),
    };
    let Some(container) = container else {
        let which = index
            .map(|i| format!(" with index {i}"))
            .unwrap_or_default();
        return Err(format!(
            "service '{service}' of project '{}' has no running container{which} ({} container{} in all)",
            target.project,
            list.len(),
            if list.len() == 1 { "" } else { "s" }
        ));
    };
    let env: Vec<(String, String)> = args
        .get("env")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Null => return None,
                        other => other.to_string(),
                    };
                    Some((k.clone(), v))
                })
                .collect()
        })
        .unwrap_or_default();
    let options = ExecOptions {
        argv: argv.clone(),
        env,
        working_dir: string_arg(&args, "workdir"),
        user: string_arg(&args, "user"),
        timeout_ms: Some(req.timeout_ms),
    };
    let out = docker::exec(&container.id, &options).map_err(|e| error_text(&e))?;
    let duration_ms = started.elapsed().as_millis() as u64;
    let response = if out.exit_code == 0 {
        Response::ok(out.stdout.clone())
    } else {
        let stderr = tail(&out.stderr, 20);
        let why = if stderr.is_empty() {
            tail(&out.stdout, 5)
        } else {
            stderr
        };
        Response::fail(if why.is_empty() {
            format!("'{command}' exited with code {}", out.exit_code)
        } else {
            format!("'{command}' exited with code {}: {why}", out.exit_code)
        })
        .with_output(out.stdout.clone())
    };
    Ok(response
        .with("container", json!(container.name))
        .with("argv", json!(argv))
        .with("shell", json!(needs_shell(command)))
        .with("exit_code", json!(out.exit_code))
        .with("stdout", json!(out.stdout))
        .with("stderr", json!(out.stderr))
        .with("truncated", json!(out.truncated))
        .with("duration_ms", json!(duration_ms)))
}

impl Guest for ExecCmd {
    /// None of its actions may run again after a crash interrupted them.
    fn idempotent_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    /// `exec_cmd` cannot be planned: what a command does is known only by running it.
    fn unplannable_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        marvin_plugin_sdk::handles(
            marvin_plugin_sdk::types::EntityKind::Container,
            &["exec_cmd"],
        )
    }

    fn describe() -> PluginInfo {
        marvin_plugin_sdk::info(
            "exec-cmd",
            env!("CARGO_PKG_VERSION"),
            EntityKind::Container,
            &["exec_cmd"],
            &[Capability::Docker, Capability::DockerExec],
        )
    }

    fn handle(req: Request) -> Response {
        run(&req).unwrap_or_else(Response::fail)
    }
}

marvin_plugin_sdk::export!(ExecCmd);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell_and_asks_for_one_only_when_needed() {
        assert_eq!(
            argv("php bin/console cache:clear --env='prod x'").unwrap(),
            ["php", "bin/console", "cache:clear", "--env=prod x"]
        );
        assert_eq!(argv(r#"echo "a b" 'c'"#).unwrap(), ["echo", "a b", "c"]);
        assert_eq!(argv("echo '$HOME | x'").unwrap(), ["echo", "$HOME | x"]);
        for cmd in [
            "ls | wc -l",
            "a && b",
            "echo $HOME",
            "ls *.log",
            "x > y",
            "echo \"$A\"",
        ] {
            assert_eq!(argv(cmd).unwrap()[..2], ["sh", "-c"], "{cmd}");
        }
        assert!(argv("echo 'unbalanced").is_err());
        assert!(argv("   ").is_err());
        assert_eq!(argv(r"echo a\ b").unwrap(), ["echo", "a b"]);
    }
}
