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

/// The helper modules of the other languages (`sdk/`), written next to a new plugin.
const PYTHON_HELPER: &str = include_str!("../../../sdk/python/marvin_plugin.py");
const JS_HELPER: &str = include_str!("../../../sdk/js/marvin_plugin.js");

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Lang {
    /// Rust, built with `cargo build --target wasm32-wasip2`.
    Rust,
    /// Python, built with componentize-py (PyPI).
    Python,
    /// JavaScript, built with componentize-js (npm: @bytecodealliance/componentize-js).
    Js,
}

impl Lang {
    /// Where the component lands, relative to the project, and the commands that build it.
    pub(super) fn build(self, name: &str) -> (String, &'static [&'static str]) {
        match self {
            Self::Rust => (
                format!("target/wasm32-wasip2/release/{}", rust_wasm_name(name)),
                &[
                    "rustup target add wasm32-wasip2",
                    "cargo build --target wasm32-wasip2 --release",
                ],
            ),
            Self::Python => (
                format!("{name}.wasm"),
                &[
                    "pip install componentize-py",
                    "componentize-py -d wit -w plugin-with-idempotence componentize app -o NAME.wasm",
                ],
            ),
            Self::Js => (format!("{name}.wasm"), &["npm install", "npm run build"]),
        }
    }
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
    let mut files = match lang {
        Lang::Rust => rust_files(name, kind, actions),
        Lang::Python => vec![
            ("app.py".to_owned(), python_app(name, kind, actions)),
            ("marvin_plugin.py".to_owned(), PYTHON_HELPER.to_owned()),
            (".gitignore".to_owned(), "*.wasm\n__pycache__/\n".to_owned()),
        ],
        Lang::Js => vec![
            ("app.js".to_owned(), js_app(name, kind, actions)),
            ("marvin_plugin.js".to_owned(), JS_HELPER.to_owned()),
            ("package.json".to_owned(), js_package(name)),
            (
                ".gitignore".to_owned(),
                "*.wasm\nnode_modules/\n".to_owned(),
            ),
        ],
    };
    if lang != Lang::Rust {
        for (file, text) in WIT {
            files.push((format!("wit/{file}"), (*text).to_owned()));
        }
        for (i, action) in actions.iter().enumerate() {
            files.push((format!("tests/{action}.toml"), script(kind, action, i == 0)));
        }
        files.push(("README.md".to_owned(), readme(name, lang, actions)));
    }
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
        // The plugin's memory starts at 2 MiB, as the shipped plugins' does.
        (
            ".cargo/config.toml".to_owned(),
            include_str!("../../../plugins/.cargo/config.toml").to_owned(),
        ),
        ("src/lib.rs".to_owned(), rust_lib(name, kind, actions)),
        ("README.md".to_owned(), readme(name, Lang::Rust, actions)),
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
# Speed over size: a request runs faster for a few percent more bytes.
opt-level = 3
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

    /// The actions a dry run (`args.dry_run`) must not run. In a dry run the host makes the
    /// reading host calls and plans the changing ones, answering them as if they had worked:
    /// list an action here only when what it does next depends on a change really made.
    fn unplannable_actions() -> Vec<HandledAction> {{
        Vec::new()
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
         #   marvin-manager plugin test <the .wasm> --script tests\n\
         # The calls are listed as the plugin's code makes them (level = \"plugin\"): a batch\n\
         # docker.start is one call with its ids = [...].\n"
    } else {
        ""
    };
    match kind {
        Kind::Container => format!(
            r#"{intro}level = "plugin"

[request]
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
            r#"{intro}level = "plugin"

[request]
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

fn readme(name: &str, lang: Lang, actions: &[String]) -> String {
    let (wasm, steps) = lang.build(name);
    let steps: Vec<String> = steps
        .iter()
        .map(|c| format!("    {}", c.replace("NAME", name)))
        .collect();
    let sdk = match lang {
        Lang::Rust => "`marvin-plugin-sdk/` is the SDK and its WIT",
        Lang::Python => "`marvin_plugin.py` is the helper module and `wit/` the WIT",
        Lang::Js => "`marvin_plugin.js` is the helper module and `wit/` the WIT",
    };
    format!(
        r#"# {name}

A marvin-manager plugin handling {actions}.

{steps}
    marvin-manager plugin test {wasm} --script tests

Drop `{wasm}` into the manager's plugins directory and grant what it asks for in
manager.toml (`marvin-manager plugins` shows what is missing). {sdk}, as
`marvin-manager plugin new` wrote them.
"#,
        actions = quoted(actions),
        steps = steps.join("\n"),
    )
}

fn js_package(name: &str) -> String {
    format!(
        r#"{{
  "name": "{name}",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "scripts": {{
    "build": "componentize-js app.js --wit wit --world-name plugin-with-idempotence -d http fetch-event -o {name}.wasm"
  }},
  "devDependencies": {{
    "@bytecodealliance/componentize-js": "^0.23",
    "@bytecodealliance/preview2-shim": "^0.25"
  }}
}}
"#
    )
}

/// The kind-specific parts of a new plugin: entity kind, capability, what it acts on.
fn kind_parts(kind: Kind) -> (&'static str, &'static str, &'static str) {
    match kind {
        Kind::Container => ("container", "docker", "compose services"),
        Kind::Worker => ("worker", "supervisor", "supervisor programs"),
    }
}

fn python_app(name: &str, kind: Kind, actions: &[String]) -> String {
    let (kind_name, capability, what) = kind_parts(kind);
    let body = match kind {
        Kind::Container => {
            r#"if not isinstance(request.target, types.Target_Compose):
            return Response.fail("NAME acts on compose services").to_wit()
        target = request.target.value
        try:
            found = docker.list_containers(target.project, target.service)
        except Err as e:
            # The host's error says what went wrong (a missing grant is named there).
            return Response.error(e).to_wit()
        running = sum(1 for c in found if c.state.running)
        states = [{"name": c.name, "status": c.state.status} for c in found]
        return (
            Response.ok(f"{request.action}: {running} of {len(found)} container(s) running")
            .with_("containers", states)
            .to_wit()
        )"#
        }
        Kind::Worker => {
            r#"if not isinstance(request.target, types.Target_Program):
            return Response.fail("NAME acts on supervisor programs").to_wit()
        try:
            p = supervisor.process_info(request.target.value)
        except Err as e:
            # The host's error says what went wrong (a missing grant is named there).
            return Response.error(e).to_wit()
        return (
            Response.ok(f"{request.action}: {p.name} is {p.state_name}")
            .with_("program", p.name)
            .with_("state", p.state_name)
            .to_wit()
        )"#
        }
    }
    .replace("NAME", name);
    format!(
        r#""""The {name} plugin: {list} on {what}."""

from componentize_py_types import Err
from wit_world.imports import {capability}, types

import wit_world
from marvin_plugin import Capability, Kind, Response, handles, info

# The actions this plugin handles (Core's `action`).
ACTIONS = [{list}]


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.PluginInfo:
        """Once, at load: the name, the version, the (kind, action) pairs, the capabilities
        it asks for (the operator grants them in manager.toml)."""
        return info("{name}", "0.1.0", Kind.{kind_upper}, ACTIONS, [Capability.{cap_upper}])

    def idempotent_actions(self):
        """The actions safe to run again after a crash interrupted them. These only read;
        return [] once an action changes something."""
        return handles(Kind.{kind_upper}, ACTIONS)

    def handle(self, request: types.Request) -> types.Response:
        """One request, on a fresh instance: here, a report of what the entity names."""
        {body}
"#,
        list = quoted(actions),
        kind_upper = kind_name.to_uppercase(),
        cap_upper = capability.to_uppercase(),
    )
}

fn js_app(name: &str, kind: Kind, actions: &[String]) -> String {
    let (kind_name, capability, what) = kind_parts(kind);
    let (import, body) = match kind {
        Kind::Container => (
            "import { listContainers } from 'marvin:manager/docker@0.1.0';",
            r#"if (request.target.tag !== 'compose') {
    return Response.fail('NAME acts on compose services').toWit();
  }
  const target = request.target.val;
  let found;
  try {
    found = listContainers(target.project, target.service);
  } catch (e) {
    // The host's error says what went wrong (a missing grant is named there).
    return Response.error(e).toWit();
  }
  const running = found.filter((c) => c.state.running).length;
  const states = found.map((c) => ({ name: c.name, status: c.state.status }));
  return Response.ok(`${request.action}: ${running} of ${found.length} container(s) running`)
    .with('containers', states)
    .toWit();"#,
        ),
        Kind::Worker => (
            "import { processInfo } from 'marvin:manager/supervisor@0.1.0';",
            r#"if (request.target.tag !== 'program') {
    return Response.fail('NAME acts on supervisor programs').toWit();
  }
  let p;
  try {
    p = processInfo(request.target.val);
  } catch (e) {
    // The host's error says what went wrong (a missing grant is named there).
    return Response.error(e).toWit();
  }
  return Response.ok(`${request.action}: ${p.name} is ${p.stateName}`)
    .with('program', p.name)
    .with('state', p.stateName)
    .toWit();"#,
        ),
    };
    let body = body.replace("NAME", name);
    let list: Vec<String> = actions.iter().map(|a| format!("'{a}'")).collect();
    format!(
        r#"// The {name} plugin: {list} on {what}.

{import}
import {{ Response, handles, info }} from './marvin_plugin.js';

// The actions this plugin handles (Core's `action`).
const ACTIONS = [{list}];

// Once, at load: the name, the version, the (kind, action) pairs, the capabilities it asks
// for (the operator grants them in manager.toml).
export function describe() {{
  return info('{name}', '0.1.0', '{kind_name}', ACTIONS, ['{capability}']);
}}

// The actions safe to run again after a crash interrupted them. These only read; return []
// once an action changes something.
export function idempotentActions() {{
  return handles('{kind_name}', ACTIONS);
}}

// One request, on a fresh instance: here, a report of what the entity names.
export function handle(request) {{
  {body}
}}
"#,
        list = list.join(", "),
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
