//! What ships: the systemd unit (checked by `systemd-analyze verify`), the Debian package
//! (built by `packaging/build-deb`, installed with `dpkg -i`), the man page and completions
//! generated from the command line, and the container image (`packaging/Dockerfile`, the
//! static binary FROM scratch) run against the real Docker engine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::db::TempPg;
use common::docker::{Project, docker, started_at};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `systemd-analyze verify` of a unit: success, and nothing said about it.
fn verify(unit: &Path) {
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .unwrap();
    let said = text(&o);
    let name = unit.file_name().unwrap().to_str().unwrap();
    assert!(o.status.success(), "{said}");
    assert!(
        !said.lines().any(|l| l.contains(name)),
        "systemd-analyze has something to say about {name}:\n{said}"
    );
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("packaging/marvin-manager.service")).unwrap();
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("WatchdogSec="));
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    // As installed, but with this build's binary where the package puts its own.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("marvin-manager.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/bin/marvin-manager",
            env!("CARGO_BIN_EXE_marvin-manager"),
        ),
    )
    .unwrap();
    verify(&path);
}

#[test]
fn the_man_page_and_completions_come_from_the_command_line() {
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_marvin-manager"))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let man = run(&["man"]);
    assert!(man.contains(".TH marvin-manager 1"), "{man}");
    for sub in ["serve", "dispatch", "failed", "stats", "prune", "plugins"] {
        assert!(
            man.contains(&format!("marvin\\-manager\\-{sub}")) || man.contains(sub),
            "{sub}"
        );
    }
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("complete -F _marvin__manager"), "{bash}");
    assert!(bash.contains("--failure-limit"), "{bash}");
    assert!(run(&["completions", "zsh"]).contains("#compdef marvin-manager"));
    assert!(run(&["completions", "fish"]).contains("complete -c marvin-manager"));
}

/// Builds the package from this build's binary; installs it with `dpkg -i` when root (as in
/// CI), else unpacks it with `dpkg-deb -x`; checks the files, the unit, the man page, the
/// binary; purges it.
#[test]
fn the_debian_package_installs_the_binary_the_unit_and_the_man_page() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new("bash")
        .arg(repo().join("packaging/build-deb"))
        .args(["--binary", env!("CARGO_BIN_EXE_marvin-manager"), "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let deb = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(deb.ends_with(".deb"), "{deb}");
    let info = Command::new("dpkg-deb")
        .args(["-I", &deb])
        .output()
        .unwrap();
    assert!(
        text(&info).contains("Package: marvin-manager"),
        "{}",
        text(&info)
    );

    let root = rustix::process::geteuid().is_root();
    let unpacked = tempfile::tempdir().unwrap();
    let base = if root {
        let o = Command::new("dpkg").args(["-i", &deb]).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        PathBuf::from("/")
    } else {
        let o = Command::new("dpkg-deb")
            .args(["-x", &deb])
            .arg(unpacked.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        unpacked.path().to_owned()
    };
    let result = std::panic::catch_unwind(|| {
        let bin = base.join("usr/bin/marvin-manager");
        let o = Command::new(&bin).arg("--version").output().unwrap();
        assert!(text(&o).starts_with("marvin-manager "), "{}", text(&o));
        let unit = base.join("lib/systemd/system/marvin-manager.service");
        assert!(unit.exists());
        if root {
            verify(&unit);
            let listed = Command::new("dpkg")
                .args(["-L", "marvin-manager"])
                .output()
                .unwrap();
            let listed = text(&listed);
            for f in [
                "/usr/bin/marvin-manager",
                "/lib/systemd/system/marvin-manager.service",
                "/usr/share/man/man1/marvin-manager.1.gz",
                "/etc/marvin-manager/manager.toml",
                "/usr/share/bash-completion/completions/marvin-manager",
            ] {
                assert!(
                    listed.lines().any(|l| l == f),
                    "{f} not installed:\n{listed}"
                );
            }
            let user = Command::new("getent")
                .args(["passwd", "marvin-manager"])
                .output()
                .unwrap();
            assert!(user.status.success(), "postinst creates the service user");
        }
        let man = base.join("usr/share/man/man1/marvin-manager.1.gz");
        let o = Command::new("gzip").arg("-dc").arg(&man).output().unwrap();
        assert!(text(&o).contains(".TH marvin-manager 1"), "{}", text(&o));
        // The packaged configuration parses.
        let o = Command::new(&bin)
            .arg("--config")
            .arg(base.join("etc/marvin-manager/manager.toml"))
            .args(["plugins", "--json"])
            .env("MARVIN_CACHE_DIR", unpacked.path().join("cache"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    });
    if root {
        let o = Command::new("dpkg")
            .args(["--purge", "marvin-manager"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        assert!(!Path::new("/usr/bin/marvin-manager").exists());
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The static binary for the image: built by `scripts/test` (and CI) before the tests with the
/// `image-test` profile, or a release build; the newer of the two.
fn static_binary() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("x86_64-unknown-linux-musl");
    ["image-test", "release"]
        .iter()
        .map(|profile| dir.join(profile).join("marvin-manager"))
        .filter_map(|bin| Some((std::fs::metadata(&bin).ok()?.modified().ok()?, bin)))
        .max()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| {
            panic!(
                "no static binary under {}: `cargo build --profile image-test --target \
                 x86_64-unknown-linux-musl -p marvin-manager` (scripts/test does it)",
                dir.display()
            )
        })
}

/// The image, built FROM scratch with the static binary, serves against the real engine: not
/// ready while its queue is away, ready once it is; a request sent through the queue restarts
/// a compose container (its StartedAt moves), and `/metrics` counts it.
#[test]
fn the_container_image_restarts_a_container_through_the_queue() {
    let bin = static_binary();
    let context = tempfile::tempdir().unwrap();
    std::fs::copy(&bin, context.path().join("marvin-manager")).unwrap();
    let tag = format!("marvin-manager-test:{}", std::process::id());
    let o = Command::new("docker")
        .args(["build", "-q", "-t", &tag, "-f"])
        .arg(repo().join("packaging/Dockerfile"))
        .arg(context.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", &tag])
        .trim()
        .parse()
        .unwrap();

    let project = Project::up("  web:\n    image: {image}\n");
    let web = project.container("web", 1);
    let before = started_at(&web);
    let pg = TempPg::new();
    pg.stop();
    let dsn = format!("{}?queue_name=img", pg.url());
    let config = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        config.path().join("manager.toml"),
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [plugins.docker-compose.grants.docker]\nprojects = [\"{}\"]\n\n\
             [entities.web]\nkind = \"container\"\nproject = \"{}\"\nservice = \"web\"\n",
            project.name, project.name
        ),
    )
    .unwrap();
    let name = format!("marvin-manager-test-{}", std::process::id());
    let o = Command::new("docker")
        .args(["run", "-d", "--name", &name, "--network", "host"])
        .args(["-v", "/var/run/docker.sock:/var/run/docker.sock"])
        .arg("-v")
        .arg(format!(
            "{}:/etc/marvin-manager:ro",
            config.path().display()
        ))
        .args(["-e", "MARVIN_CONFIG=/etc/marvin-manager/manager.toml"])
        .args(["-e", &format!("MARVIN_DSN={dsn}")])
        .arg(&tag)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let logs = || {
        let o = Command::new("docker")
            .args(["logs", &name])
            .output()
            .unwrap();
        text(&o)
    };
    let result = std::panic::catch_unwind(|| {
        let why = common::wait_http(port, "/readyz", 503, Duration::from_secs(60), &logs);
        assert!(why.starts_with("not ready"), "{why}");
        pg.start();
        common::wait_http(port, "/readyz", 200, Duration::from_secs(90), &logs);
        let o = Command::new(env!("CARGO_BIN_EXE_marvin-manager"))
            .args([
                "--config",
                "/dev/null",
                "dispatch",
                "--entity",
                "web",
                "--action",
                "restart",
                "--wait",
            ])
            .env("MARVIN_DSN", &dsn)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}\n{}", text(&o), logs());
        assert_ne!(started_at(&web), before, "the container was restarted");
        let metrics = common::wait_http(port, "/metrics", 200, Duration::from_secs(10), &logs);
        assert!(
            metrics.contains(
                "marvin_manager_requests_answered_total{plugin=\"docker-compose\",action=\"restart\",outcome=\"success\"} 1"
            ),
            "{metrics}"
        );
        eprintln!("image {tag}: {:.1} MB", size as f64 / 1e6);
    });
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
