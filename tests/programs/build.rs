//! Builds the test guests (tests/guests) and the example plugin (examples/hello-plugin) for
//! wasm32-wasip2 and writes their paths as constants.
#![allow(clippy::expect_used, clippy::panic)]

use std::env;
use std::path::PathBuf;

const GUESTS: &[(&str, &str)] = &[
    ("NOOP", "noop"),
    ("ECHO", "echo"),
    ("LEGACY", "legacy"),
    ("COUNTER", "counter"),
    ("TWIN", "twin"),
    ("HOSTILE", "hostile"),
    ("BAD_DESCRIBE", "bad_describe"),
    ("RELOAD_V1", "reload_v1"),
    ("RELOAD_V2", "reload_v2"),
    ("WRONG_WORLD", "wrong-world"),
    ("COMPOSE_V2", "compose_v2"),
    ("HELLO_EXAMPLE", "hello_plugin"),
    ("DOCKER_COMPOSE", "docker_compose"),
    ("EXEC_CMD", "exec_cmd"),
    ("SUPERVISOR", "supervisor"),
];

/// Built from `plugins/`, not from the test guests.
const PLUGINS: &[&str] = &["docker_compose", "exec_cmd", "supervisor"];

#[path = "../../host/wasm_build.rs"]
mod wasm_build;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../..");
    let sources = [
        root.join("tests/guests"),
        root.join("examples/hello-plugin"),
    ];
    for dir in sources.iter().chain(&[root.join("wit")]) {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    // A target dir of its own: the outer cargo holds the lock on the workspace's.
    let target = root.join("target/wasm-guests");
    for dir in &sources {
        wasm_build::build(&dir.join("Cargo.toml"), &target);
    }
    // The shipped plugins, where the host's build script builds them (the second build finds
    // them up to date).
    let plugins_release = wasm_build::shipped_plugins(&root);
    let mut consts = String::new();
    for (name, file) in GUESTS {
        let base = if PLUGINS.contains(file) {
            plugins_release.clone()
        } else {
            target.join("wasm32-wasip2/release")
        };
        let path = base.join(format!("{file}.wasm"));
        let path = path
            .canonicalize()
            .unwrap_or_else(|e| panic!("missing guest {}: {e}", path.display()));
        consts.push_str(&format!(
            "/// The `{file}` guest.\npub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("guests.rs"), consts).expect("write guests.rs");
}
