//! The real Docker engine for tests: compose projects made by the real `docker-compose`
//! from the busybox image `scripts/services` builds FROM scratch, and `docker inspect`.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

pub fn endpoint() -> String {
    std::env::var("MARVIN_TEST_DOCKER").unwrap_or_else(|_| {
        panic!(
            "MARVIN_TEST_DOCKER is not set: these tests need a real Docker engine. \
             Run them with `bash scripts/test`, or `. scripts/services` first."
        )
    })
}

pub fn image() -> String {
    std::env::var("MARVIN_TEST_IMAGE").unwrap_or_else(|_| "marvin-test/busybox:1".into())
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn docker(args: &[&str]) -> String {
    sh(Command::new("docker").args(args))
}

/// `docker inspect` of a container or image, as JSON.
pub fn inspect(what: &str) -> Value {
    let v: Value = serde_json::from_str(&docker(&["inspect", what])).unwrap();
    v[0].clone()
}

/// Whether `docker inspect` finds `what`.
pub fn exists(what: &str) -> bool {
    Command::new("docker")
        .args(["inspect", what])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `State.Status` of a container, per `docker inspect`.
pub fn status(container: &str) -> String {
    inspect(container)["State"]["Status"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub fn started_at(container: &str) -> String {
    inspect(container)["State"]["StartedAt"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A compose project brought up by `docker-compose up -d`, taken down on drop.
pub struct Project {
    pub name: String,
    pub dir: tempfile::TempDir,
}

impl Project {
    /// `services` is the YAML under `services:`; `{image}` stands for the test image.
    pub fn up(services: &str) -> Self {
        Self::with_files(services, &[])
    }

    /// Also writes `files` (relative path, content) next to the compose file.
    pub fn with_files(services: &str, files: &[(&str, &str)]) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mt{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::Builder::new()
            .prefix("compose-")
            .tempdir()
            .unwrap();
        let body = format!(
            "version: \"3.7\"\nservices:\n{}",
            services.replace("{image}", &image())
        );
        std::fs::write(dir.path().join("docker-compose.yml"), body).unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content.replace("{image}", &image())).unwrap();
        }
        let p = Self { name, dir };
        p.compose(&["up", "-d"]);
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn compose(&self, args: &[&str]) -> String {
        sh(Command::new("docker-compose")
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(self.path().join("docker-compose.yml"))
            .args(args))
    }

    /// compose v1's container name.
    pub fn container(&self, service: &str, n: u32) -> String {
        format!("{}_{service}_{n}", self.name)
    }

    /// `docker-compose ps -q <service>`: the ids compose sees.
    pub fn ps(&self, service: &str) -> Vec<String> {
        self.compose(&["ps", "-q", service])
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = Command::new("docker-compose")
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(self.path().join("docker-compose.yml"))
            .args(["down", "-t", "0", "--remove-orphans", "--rmi", "local"])
            .output();
    }
}

/// The shipped plugins, as files of a plugins directory.
pub fn plugins() -> [(&'static str, &'static str); 2] {
    [
        (test_programs::DOCKER_COMPOSE, "docker-compose.wasm"),
        (test_programs::EXEC_CMD, "exec-cmd.wasm"),
    ]
}
