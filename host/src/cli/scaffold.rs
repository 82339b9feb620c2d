//! `marvin-manager plugin new` and `plugin wit`: a plugin project that builds and passes its
//! own `plugin test` with nothing but this binary and the language's toolchain. The binary
//! carries what the project needs: the WIT package and, for Rust, the SDK crate's source.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The WIT package, file by file (`plugins/sdk/wit/`).
pub(super) const WIT: &[(&str, &str)] = &[
    (
        "types.wit",
        include_str!("../../../plugins/sdk/wit/types.wit"),
    ),
    (
        "docker.wit",
        include_str!("../../../plugins/sdk/wit/docker.wit"),
    ),
    (
        "supervisor.wit",
        include_str!("../../../plugins/sdk/wit/supervisor.wit"),
    ),
    ("log.wit", include_str!("../../../plugins/sdk/wit/log.wit")),
    (
        "world.wit",
        include_str!("../../../plugins/sdk/wit/world.wit"),
    ),
];

/// The Rust SDK crate, written next to a new Rust plugin (it depends on it by path: the
/// crate is not on a registry).
const SDK: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../../plugins/sdk/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../plugins/sdk/src/lib.rs"),
    ),
];

/// What a new plugin acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Kind {
    /// Compose services (Docker containers).
    Container,
    /// Supervisor programs.
    Worker,
}

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Lang {
    /// Rust, built with `cargo build --target wasm32-wasip2`.
    Rust,
}

/// Writes the WIT package into `dir`.
pub(super) fn write_wit(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in WIT {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The WIT package as one text, each file after a `// <file>` line.
pub(super) fn wit_text() -> String {
    WIT.iter()
        .map(|(name, text)| format!("// {name}\n{text}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks a plugin name: it is the crate's name and the plugin's.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!(
            "'{name}' cannot name a plugin: use lowercase letters, digits, '-' and '_', starting \
             with a letter (e.g. my-plugin)"
        );
    }
    Ok(())
}

fn check_action(action: &str) -> anyhow::Result<()> {
    let ok = !action.is_empty()
        && action
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == ':');
    if !ok {
        bail!("'{action}' cannot name an action: use letters, digits, '_', '-' and ':'");
    }
    Ok(())
}

/// What `plugin new` writes; returns the files written, relative to `dir`.
pub(super) fn new_plugin(
    dir: &Path,
    name: &str,
    lang: Lang,
    kind: Kind,
    actions: &[String],
) -> anyhow::Result<Vec<PathBuf>> {
    check_name(name)?;
    for a in actions {
        check_action(a)?;
    }
    if dir.exists() && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{} exists and is not empty: choose another name or --dir",
            dir.display()
        );
    }
    let files = match lang {
        Lang::Rust => rust_files(name, kind, actions),
    };
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(PathBuf::from(rel));
    }
    Ok(written)
}

/// The file name cargo gives the component.
pub(super) fn rust_wasm_name(name: &str) -> String {
    format!("{}.wasm", name.replace('-', "_"))
}

fn rust_files(name: &str, kind: Kind, actions: &[String]) -> Vec<(String, String)> {
    let mut files = vec![
        ("Cargo.toml".to_owned(), rust_cargo_toml(name)),
        (".gitignore".to_owned(), "target/\n".to_owned()),
        ("src/lib.rs".to_owned(), rust_lib(name, kind, actions)),
        ("README.md".to_owned(), readme(name, actions)),
    ];
    for (i, action) in actions.iter().enumerate() {
        files.push((format!("tests/{action}.toml"), script(kind, action, i == 0)));
    }
    for (rel, text) in SDK {
        files.push((format!("marvin-plugin-sdk/{rel}"), (*text).to_owned()));
    }
    for (file, text) in WIT {
        files.push((format!("marvin-plugin-sdk/wit/{file}"), (*text).to_owned()));
    }
    files
}

fn rust_cargo_toml(name: &str) -> String {
    format!(
        r#"# The {name} plugin for marvin-manager.
#   build: cargo build --target wasm32-wasip2 --release
#          (-> target/wasm32-wasip2/release/{wasm})
#   test:  marvin-manager plugin test target/wasm32-wasip2/release/{wasm} --script tests
[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A plugin is a component: without this, cargo builds an .rlib and no .wasm.
[lib]
crate-type = ["cdylib"]

[dependencies]
# The SDK, written here by `marvin-manager plugin new` (with the WIT it binds).
marvin-plugin-sdk = {{ path = "marvin-plugin-sdk" }}
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = "debuginfo"

# Its own workspace, wherever it is copied.
[workspace]
"#,
        wasm = rust_wasm_name(name)
    )
}

fn quoted(actions: &[String]) -> String {
    actions
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rust_lib(name: &str, kind: Kind, actions: &[String]) -> String {
    let list = quoted(actions);
    // What differs between the kinds: the host interface, the entity kind, the capability,
    // the target and the one host call the example makes.
    let (interface, entity_kind, capability, what, body) = match kind {
        Kind::Container => (
            "docker",
            "Container",
            "Docker",
            "compose services",
            r#"let Target::Compose(target) = &req.target else {
            return Response::fail("{name} acts on compose services");
        };
        match docker::list_containers(&target.project, target.service.as_deref()) {
            Ok(list) => {
                let running = list.iter().filter(|c| c.state.running).count();
                let states: Vec<_> = list
                    .iter()
                    .map(|c| json!({ "name": c.name, "status": c.state.status }))
                    .collect();
                Response::ok(format!(
                    "{}: {running} of {} container(s) running",
                    req.action,
                    list.len()
                ))
                .with("containers", json!(states))
            }
            // The host's error says what went wrong (a missing grant is named there).
            Err(e) => Response::error(&e),
        }"#,
        ),
        Kind::Worker => (
            "supervisor",
            "Worker",
            "Supervisor",
            "supervisor programs",
            r#"let Target::Program(program) = &req.target else {
            return Response::fail("{name} acts on supervisor programs");
        };
        match supervisor::process_info(program) {
            Ok(p) => Response::ok(format!("{}: {} is {}", req.action, p.name, p.state_name))
                .with("program", json!(p.name))
                .with("state", json!(p.state_name)),
            // The host's error says what went wrong (a missing grant is named there).
            Err(e) => Response::error(&e),
        }"#,
        ),
    };
    let body = body.replace("{name}", name);
    format!(
        r#"//! The {name} plugin: {list} on {what}.

use marvin_plugin_sdk::{interface};
use marvin_plugin_sdk::types::{{Capability, EntityKind, HandledAction, Target}};
use marvin_plugin_sdk::{{Guest, PluginInfo, Request, Response}};
use serde_json::json;

struct Plugin;

/// The actions this plugin handles (Core's `action`).
const ACTIONS: &[&str] = &[{list}];

impl Guest for Plugin {{
    /// Once, at load: the name, the version, the (kind, action) pairs, the capabilities it
    /// asks for (the operator grants them in manager.toml).
    fn describe() -> PluginInfo {{
        marvin_plugin_sdk::info(
            "{name}",
            env!("CARGO_PKG_VERSION"),
            EntityKind::{entity_kind},
            ACTIONS,
            &[Capability::{capability}],
        )
    }}

    /// The actions safe to run again after a crash interrupted them. These only read; list
    /// none (`Vec::new()`) once an action changes something.
    fn idempotent_actions() -> Vec<HandledAction> {{
        marvin_plugin_sdk::handles(EntityKind::{entity_kind}, ACTIONS)
    }}

    /// One request, on a fresh instance: here, a report of what the entity names.
    fn handle(req: Request) -> Response {{
        {body}
    }}
}}

marvin_plugin_sdk::export!(Plugin);
"#
    )
}

/// A `plugin test` script for `action`: the request, the grants, the host call and its
/// answer, what the response must say.
fn script(kind: Kind, action: &str, first: bool) -> String {
    let intro = if first {
        "# A test in isolation: the host calls are answered from here, no Docker or supervisord\n\
         # is needed. Run every script of this folder with\n\
         #   marvin-manager plugin test <the .wasm> --script tests\n"
    } else {
        ""
    };
    match kind {
        Kind::Container => format!(
            r#"{intro}[request]
entity = "web"
action = "{action}"

# What the entity id names (manager.toml's [entities.web]).
[entity]
kind = "container"
project = "marvin"
service = "web"

[grants.docker]
projects = ["marvin"]

[[calls]]
call = "docker.list-containers"
args = {{ project = "marvin", service = "web" }}
ok = [
  {{ id = "c1", name = "marvin_web_1", state = {{ status = "running", running = true }} }},
  {{ id = "c2", name = "marvin_web_2", state = {{ status = "exited", running = false }} }},
]

[expect]
success = true
output = "{action}: 1 of 2 container(s) running"
metadata = {{ containers = [{{ name = "marvin_web_1", status = "running" }}, {{ name = "marvin_web_2", status = "exited" }}] }}
"#
        ),
        Kind::Worker => format!(
            r#"{intro}[request]
entity = "consumer"
action = "{action}"

# What the entity id names (manager.toml's [entities.consumer]).
[entity]
kind = "worker"
program = "consumer"

[grants.supervisor]
programs = ["consumer"]

[[calls]]
call = "supervisor.process-info"
args = {{ name = "consumer" }}
ok = {{ name = "consumer", state = "RUNNING", pid = 42 }}

[expect]
success = true
output = "{action}: consumer is RUNNING"
metadata = {{ program = "consumer", state = "RUNNING" }}
"#
        ),
    }
}

fn readme(name: &str, actions: &[String]) -> String {
    let wasm = rust_wasm_name(name);
    format!(
        r#"# {name}

A marvin-manager plugin handling {actions}.

    rustup target add wasm32-wasip2
    cargo build --target wasm32-wasip2 --release
    marvin-manager plugin test target/wasm32-wasip2/release/{wasm} --script tests

Drop `target/wasm32-wasip2/release/{wasm}` into the manager's plugins directory and grant
what it asks for in manager.toml (`marvin-manager plugins` shows what is missing).
`marvin-plugin-sdk/` is the SDK and its WIT, as `marvin-manager plugin new` wrote them.
"#,
        actions = quoted(actions)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("my-plugin").is_ok());
        assert!(check_name("My").is_err());
        assert!(check_name("1x").is_err());
        assert!(check_action("exec_cmd").is_ok());
        assert!(check_action("a b").is_err());
        assert_eq!(rust_wasm_name("my-plugin"), "my_plugin.wasm");
    }

    #[test]
    fn the_embedded_wit_is_the_sdks() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk/wit");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut embedded: Vec<String> = WIT.iter().map(|(n, _)| (*n).to_owned()).collect();
        embedded.sort();
        assert_eq!(files, embedded, "every WIT file is embedded");
    }
}
