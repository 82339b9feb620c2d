//! Builds the shipped plugins (`plugins/`) for wasm32-wasip2 and embeds them in the binary,
//! so `marvin-manager serve` has docker-compose, exec-cmd and supervisor with no plugins
//! directory.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// (file name the plugin is known by, cargo's artifact name).
const BUILTIN: &[(&str, &str)] = &[
    ("docker-compose.wasm", "docker_compose"),
    ("exec-cmd.wasm", "exec_cmd"),
    ("supervisor.wasm", "supervisor"),
];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.join("..");
    let plugins = root.join("plugins");
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    // Not the whole folder: its `target/` changes on every plugin build.
    for entry in std::fs::read_dir(&plugins)
        .expect("read plugins/")
        .flatten()
    {
        if entry.file_name() != "target" {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
    let target = root.join("target/wasm-plugins");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target=wasm32-wasip2",
        "--workspace",
    ])
    .arg("--manifest-path")
    .arg(plugins.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target);
    // The outer build's settings are for the host, not for wasm.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_PROFILE_RELEASE_LTO",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the plugins");
    assert!(
        status.success(),
        "building the shipped plugins (plugins/) for wasm32-wasip2 failed; \
         `rustup target add wasm32-wasip2` if the target is missing"
    );
    let mut out = String::from(
        "/// The shipped plugins: (file name, component).\npub const BUILTIN: &[(&str, &[u8])] = &[\n",
    );
    for (file, artifact) in BUILTIN {
        let path = target
            .join("wasm32-wasip2/release")
            .join(format!("{artifact}.wasm"));
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
