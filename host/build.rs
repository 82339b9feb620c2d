//! Builds the shipped plugins (`plugins/`) for wasm32-wasip2 and embeds them in the binary,
//! so `marvin-manager serve` has docker-compose, exec-cmd and supervisor with no plugins
//! directory.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::env;
use std::path::PathBuf;

/// (file name the plugin is known by, cargo's artifact name).
const BUILTIN: &[(&str, &str)] = &[
    ("docker-compose.wasm", "docker_compose"),
    ("exec-cmd.wasm", "exec_cmd"),
    ("supervisor.wasm", "supervisor"),
];

#[path = "wasm_build.rs"]
mod wasm_build;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let release = wasm_build::shipped_plugins(&manifest.join(".."));
    let mut out = String::from(
        "/// The shipped plugins: (file name, component).\npub const BUILTIN: &[(&str, &[u8])] = &[\n",
    );
    for (file, artifact) in BUILTIN {
        let path = release.join(format!("{artifact}.wasm"));
        let path = path
            .canonicalize()
            .unwrap_or_else(|e| panic!("missing plugin {}: {e}", path.display()));
        out.push_str(&format!(
            "    ({file:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("builtin_plugins.rs");
    std::fs::write(dest, out).expect("write builtin_plugins.rs");
}
