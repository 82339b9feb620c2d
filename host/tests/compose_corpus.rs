//! The build cases of the compose corpus (plugins/docker-compose/tests/corpus, `build = true`)
//! built two ways on the real engine: by the real `docker-compose build`, and by the manager's
//! docker-compose plugin finding the same compose files from the containers compose created.
//! Both images must hold the same files with the same contents (listed with `find` and
//! `md5sum` inside each). Cases with `docker_build = "<context>"` are also built by the real
//! `docker build` CLI: the `.dockerignore` corner cases are Docker's own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::docker::{docker, endpoint, image, inspect, sh};

#[derive(Debug, serde::Deserialize)]
struct Case {
    service: String,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    build: bool,
    /// The context to build with `docker build` too.
    #[serde(default)]
    docker_build: Option<String>,
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/docker-compose/tests/corpus")
}

/// A copy of the case, `{image}` in its Dockerfiles replaced by the test's base image.
fn copy(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy(&entry.path(), &target);
        } else if entry
            .file_name()
            .to_string_lossy()
            .starts_with("Dockerfile")
        {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            std::fs::write(&target, text.replace("{image}", &image())).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The files of an image: every path, and a digest of each regular file (the files Docker
/// writes into every container left out).
fn files_of(image: &str) -> Vec<String> {
    let script = "find / -xdev | sort; find / -xdev -type f -exec md5sum {} + | sort";
    docker(&["run", "--rm", "--entrypoint", "sh", image, "-c", script])
        .lines()
        .filter(|l| {
            ![
                "/etc/hosts",
                "/etc/hostname",
                "/etc/resolv.conf",
                "/.dockerenv",
            ]
            .iter()
            .any(|f| l.ends_with(f))
        })
        .map(str::to_owned)
        .collect()
}

/// The difference of two listings, for a failure message.
fn diff(a: &[String], b: &[String]) -> String {
    let only_a: Vec<&String> = a.iter().filter(|l| !b.contains(l)).collect();
    let only_b: Vec<&String> = b.iter().filter(|l| !a.contains(l)).collect();
    format!("only in the first: {only_a:?}\n  only in the second: {only_b:?}")
}

struct Built {
    name: String,
    dir: tempfile::TempDir,
    case: Case,
}

impl Built {
    fn compose(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("-p").arg(&self.name);
        for f in &self.case.files {
            cmd.arg("-f").arg(self.dir.path().join(f));
        }
        sh(cmd
            .args(args)
            .current_dir(self.dir.path())
            .env("DOCKER_HOST", endpoint())
            .envs(&self.case.env))
    }
}

impl Drop for Built {
    fn drop(&mut self) {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("-p").arg(&self.name);
        for f in &self.case.files {
            cmd.arg("-f").arg(self.dir.path().join(f));
        }
        let _ = cmd
            .args(["down", "-t", "0", "--rmi", "all"])
            .current_dir(self.dir.path())
            .envs(&self.case.env)
            .output();
    }
}

/// Builds one case both ways; the failure, if any.
fn check(n: usize, dir: &Path, case: Case) -> Option<String> {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let mut case = case;
    if case.files.is_empty() {
        case.files = vec!["docker-compose.yml".into()];
    }
    let b = Built {
        name: format!("cc{}x{n}", std::process::id()),
        dir: tempfile::Builder::new()
            .prefix("corpus-")
            .tempdir()
            .unwrap(),
        case,
    };
    copy(dir, b.dir.path());
    let service = b.case.service.clone();
    b.compose(&["build", &service]);
    // The containers compose creates carry the labels the plugin finds the files by.
    b.compose(&["up", "--no-start", &service]);
    let container = format!("{}_{service}_1", b.name);
    let by_compose = inspect(&container)["Image"].as_str().unwrap().to_owned();

    let setup = tempfile::tempdir().unwrap();
    let plugins = setup.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for (src, file) in common::docker::plugins() {
        std::fs::copy(src, plugins.join(file)).unwrap();
    }
    let granted: Vec<String> = b.case.env.keys().map(|k| format!("\"{k}\"")).collect();
    let config = format!(
        "[docker]\ndefault_project = \"{p}\"\n[plugins.docker-compose.grants]\nfiles = [\"{d}\"]\nenv = [{e}]\n[plugins.docker-compose.grants.docker]\nprojects = [\"{p}\"]\nbuild_dirs = [\"{d}\"]\n[entities.app]\nkind = \"container\"\nproject = \"{p}\"\nservice = \"{service}\"\n",
        p = b.name,
        d = b.dir.path().display(),
        e = granted.join(", "),
    );
    std::fs::write(setup.path().join("manager.toml"), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_marvin-manager"))
        .args([
            "run",
            "--entity",
            "app",
            "--action",
            "build",
            "--timeout",
            "120",
        ])
        .args(["--args", r#"{"no_cache": true}"#])
        .current_dir(setup.path())
        .env("DOCKER_HOST", endpoint())
        .env_remove("MARVIN_CONFIG")
        .envs(&b.case.env)
        .output()
        .unwrap();
    let response: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(r) => r,
        Err(_) => {
            return Some(format!(
                "{name}: the manager printed no response: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    };
    if response["success"] != true {
        return Some(format!("{name}: the manager's build failed: {response}"));
    }
    let by_manager = response["metadata"]["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    if by_manager == by_compose {
        return Some(format!("{name}: no_cache built nothing new ({by_manager})"));
    }
    let (theirs, ours) = (files_of(&by_compose), files_of(&by_manager));
    let mut failure = None;
    if theirs != ours {
        failure = Some(format!(
            "{name}: the images of docker-compose and the manager differ:\n  {}",
            diff(&theirs, &ours)
        ));
    }
    if let (Some(context), None) = (&b.case.docker_build, &failure) {
        let tag = format!("{}-cli", b.name);
        sh(Command::new("docker")
            .args(["build", "--no-cache", "-q", "-t", &tag])
            .arg(b.dir.path().join(context))
            .env("DOCKER_HOST", endpoint()));
        let cli = files_of(&tag);
        docker(&["rmi", &tag]);
        if cli != ours {
            failure = Some(format!(
                "{name}: the images of `docker build` and the manager differ:\n  {}",
                diff(&cli, &ours)
            ));
        }
    }
    let _ = docker(&["rmi", "-f", &by_manager]);
    failure
}

#[test]
fn the_manager_builds_the_images_docker_compose_builds() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.toml").exists())
        .collect();
    dirs.sort();
    let mut failures = Vec::new();
    let mut built = 0;
    for (n, dir) in dirs.iter().enumerate() {
        let case: Case = toml::from_str(&std::fs::read_to_string(dir.join("case.toml")).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        if !case.build {
            continue;
        }
        built += 1;
        if let Some(f) = check(n, dir, case) {
            failures.push(f);
        }
    }
    assert!(built >= 8, "only {built} build cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
