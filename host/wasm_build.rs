//! Building wasm32-wasip2 components from a build script, shared by the host's (which embeds
//! the shipped plugins) and tests/programs' (which builds the test guests too).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds every package of the workspace at `manifest` for wasm32-wasip2, release, into
/// `target` (a target dir of its own: the outer cargo holds the lock on the workspace's).
pub(crate) fn build(manifest: &Path, target: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target=wasm32-wasip2",
        "--workspace",
    ])
    .arg("--manifest-path")
    .arg(manifest)
    .arg("--target-dir")
    .arg(target);
    // Cargo reads `.cargo/config.toml` from where it runs: the workspace's own settings.
    if let Some(dir) = manifest.parent() {
        cmd.current_dir(dir);
    }
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
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for {}: {e}", manifest.display()));
    assert!(
        status.success(),
        "building {} for wasm32-wasip2 failed; `rustup target add wasm32-wasip2` if the target is missing",
        manifest.display()
    );
}

/// Builds the shipped plugins (`<root>/plugins`) into `<root>/target/wasm-plugins` and
/// returns the folder of the `.wasm` files. Reruns when a plugin source changes (not on
/// `plugins/target`, which every plugin build touches).
pub(crate) fn shipped_plugins(root: &Path) -> PathBuf {
    let plugins = root.join("plugins");
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    for entry in std::fs::read_dir(&plugins)
        .unwrap_or_else(|e| panic!("read {}: {e}", plugins.display()))
        .flatten()
    {
        if entry.file_name() != "target" {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
    let target = root.join("target/wasm-plugins");
    build(&plugins.join("Cargo.toml"), &target);
    target.join("wasm32-wasip2/release")
}
