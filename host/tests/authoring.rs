//! Plugin authors outside this repository: `plugin new` in an empty temporary folder, with only
//! the `marvin-manager` binary and cargo, builds a plugin that passes its own scripts; a
//! changed script fails with exit 1. The SDK crate packages on its own (`cargo package`),
//! WIT included.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn marvin(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_marvin-manager"))
        .args(args)
        .current_dir(cwd)
        .env("MARVIN_CACHE_DIR", cwd.join(".cache"))
        .env_remove("MARVIN_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `cargo build` of a new project, as its README says, in `dir` only.
fn build(dir: &Path, target_dir: &Path) {
    let o = Command::new(env!("CARGO"))
        .args(["build", "--target", "wasm32-wasip2", "--release", "--quiet"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("CARGO_MANIFEST_DIR")
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cargo build in {}: {}",
        dir.display(),
        text(&o)
    );
}

/// The project's scripts pass on `wasm`; with the first one changed, the run exits 1 and
/// names the difference. The output of the passing run.
fn passes_then_fails(dir: &Path, wasm: &Path, first_action: &str) -> String {
    let run = || {
        marvin(
            dir,
            &[
                "plugin",
                "test",
                wasm.to_str().unwrap(),
                "--script",
                "tests",
            ],
        )
    };
    let o = run();
    let passed = text(&o);
    assert_eq!(o.status.code(), Some(0), "{}: {passed}", dir.display());
    let first = dir.join(format!("tests/{first_action}.toml"));
    let script = std::fs::read_to_string(&first).unwrap();
    std::fs::write(&first, script.replace("success = true", "success = false")).unwrap();
    let o = run();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{}: {out}", dir.display());
    assert!(
        out.contains("response success: expected false, got true"),
        "{out}"
    );
    std::fs::write(&first, script).unwrap();
    passed
}

#[test]
fn plugin_new_builds_and_passes_its_own_scripts_outside_the_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    for (name, kind, actions) in [
        ("my-status", "container", vec!["status", "check"]),
        ("worker-state", "worker", vec!["state"]),
    ] {
        let mut args = vec!["plugin", "new", name, "--kind", kind];
        for a in &actions {
            args.extend(["--action", a]);
        }
        let o = marvin(tmp.path(), &args);
        assert!(o.status.success(), "{}", text(&o));
        let dir = tmp.path().join(name);
        // Nothing points back at this repository.
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("crate-type = [\"cdylib\"]"), "{manifest}");
        assert!(!manifest.contains("../"), "{manifest}");
        build(&dir, &target);
        let wasm = target.join(format!(
            "wasm32-wasip2/release/{}.wasm",
            name.replace('-', "_")
        ));
        assert_eq!(
            initial_memories(&wasm),
            [2 << 20],
            "the plugin's memory starts at 2 MiB"
        );
        let out = passes_then_fails(&dir, &wasm, actions[0]);
        if actions.len() > 1 {
            assert!(out.contains("2 script(s): 2 passed, 0 failed"), "{out}");
        }
        // The plugin loads where a manager would take it: `plugins` lists it.
        let plugins = dir.join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        std::fs::copy(&wasm, plugins.join(format!("{name}.wasm"))).unwrap();
        let o = marvin(&dir, &["plugins"]);
        assert!(text(&o).contains(&format!("{name} 0.1.0")), "{}", text(&o));
    }
    // An existing folder is not overwritten.
    let o = marvin(tmp.path(), &["plugin", "new", "my-status"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("exists and is not empty"), "{}", text(&o));
}

/// The initial sizes, in bytes, of the memories the component's modules define.
fn initial_memories(wasm: &Path) -> Vec<u64> {
    let bytes = std::fs::read(wasm).unwrap();
    let mut sizes = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        if let wasmparser::Payload::MemorySection(memories) = payload.unwrap() {
            for m in memories {
                sizes.push(m.unwrap().initial << 16);
            }
        }
    }
    sizes
}

/// A toolchain `scripts/services` installs.
fn tool(var: &str) -> PathBuf {
    PathBuf::from(std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with `bash scripts/test`, or `. scripts/services` first")
    }))
}

/// Builds a new Python or JavaScript project as its README says; the component's path.
fn build_other(dir: &Path, lang: &str, name: &str) -> PathBuf {
    let o = match lang {
        "python" => Command::new(tool("MARVIN_COMPONENTIZE_PY"))
            .args([
                "-d",
                "wit",
                "-w",
                "plugin-with-idempotence",
                "componentize",
                "app",
                "-o",
            ])
            .arg(format!("{name}.wasm"))
            .current_dir(dir)
            .output()
            .unwrap(),
        _ => {
            // `npm install` once for every project: the toolchain scripts/services installed.
            std::os::unix::fs::symlink(tool("MARVIN_JS_NODE_MODULES"), dir.join("node_modules"))
                .unwrap();
            Command::new("npm")
                .args(["run", "-s", "build"])
                .current_dir(dir)
                .output()
                .unwrap()
        }
    };
    assert!(o.status.success(), "building {name}: {}", text(&o));
    dir.join(format!("{name}.wasm"))
}

#[test]
fn plugin_new_in_python_and_javascript_builds_and_passes_its_own_scripts() {
    let tmp = tempfile::tempdir().unwrap();
    for lang in ["python", "js"] {
        for (kind, actions) in [
            ("container", vec!["status", "check"]),
            ("worker", vec!["state"]),
        ] {
            let name = format!("{kind}-{lang}");
            let mut args = vec![
                "plugin",
                "new",
                name.as_str(),
                "--lang",
                lang,
                "--kind",
                kind,
            ];
            for a in &actions {
                args.extend(["--action", a]);
            }
            let o = marvin(tmp.path(), &args);
            assert!(o.status.success(), "{}", text(&o));
            let dir = tmp.path().join(&name);
            let wasm = build_other(&dir, lang, &name);
            let out = passes_then_fails(&dir, &wasm, actions[0]);
            assert!(out.contains(&format!("plugin {name} 0.1.0")), "{out}");
        }
    }
}

#[test]
fn plugin_wit_gives_the_package_the_sdk_binds() {
    let tmp = tempfile::tempdir().unwrap();
    let o = marvin(tmp.path(), &["plugin", "wit", "--out", "wit"]);
    assert!(o.status.success(), "{}", text(&o));
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk/wit");
    for entry in std::fs::read_dir(&sdk).unwrap() {
        let entry = entry.unwrap();
        let written = std::fs::read_to_string(tmp.path().join("wit").join(entry.file_name()))
            .unwrap_or_else(|e| panic!("{:?}: {e}", entry.file_name()));
        assert_eq!(written, std::fs::read_to_string(entry.path()).unwrap());
    }
    let o = marvin(tmp.path(), &["plugin", "wit"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("// docker.wit\npackage marvin:manager@"),
        "{out}"
    );
}

#[test]
fn the_sdk_crate_packages_with_its_wit() {
    let tmp = tempfile::tempdir().unwrap();
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk/Cargo.toml");
    let o = Command::new(env!("CARGO"))
        .args(["package", "--allow-dirty", "--manifest-path"])
        .arg(&sdk)
        .arg("--target-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "cargo package: {}", text(&o));
    let o = Command::new(env!("CARGO"))
        .args(["package", "--allow-dirty", "--list", "--manifest-path"])
        .arg(&sdk)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&o.stdout);
    for f in ["wit/docker.wit", "wit/world.wit", "src/lib.rs"] {
        assert!(list.lines().any(|l| l == f), "{f} not packaged:\n{list}");
    }
}
