//! Real supervisord instances for tests: each with its own temp config, socket and logs,
//! stopped on drop. `supervisorctl` against the same config checks the effects.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A supervisord running `programs` (ini sections), in a temp dir.
pub struct Supervisord {
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Supervisord {
    /// `programs` may use `{dir}` for the temp dir.
    pub fn start(programs: &str) -> Self {
        Self::start_with(programs, "")
    }

    /// Also with `extra` config sections (e.g. `[inet_http_server]`).
    pub fn start_with(programs: &str, extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("supervisord-")
            .tempdir()
            .unwrap();
        let d = dir.path().display().to_string();
        let conf = format!(
            "[unix_http_server]\nfile={d}/supervisor.sock\n\n\
             [supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\n\
             childlogdir={d}\nloglevel=info\n\n\
             [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
             [supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n\n\
             [include]\nfiles = {d}/programs.conf\n\n{extra}\n"
        );
        std::fs::write(dir.path().join("supervisord.conf"), conf).unwrap();
        std::fs::write(
            dir.path().join("programs.conf"),
            programs.replace("{dir}", &d),
        )
        .unwrap();
        let child = Command::new("supervisord")
            .arg("-c")
            .arg(dir.path().join("supervisord.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run supervisord ({e}): run the tests with `bash scripts/test`")
            });
        let s = Self { dir, child };
        let t = Instant::now();
        while !s.answers() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "supervisord did not start: {}",
                std::fs::read_to_string(s.dir.path().join("supervisord.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn answers(&self) -> bool {
        self.sock().exists()
            && Command::new("supervisorctl")
                .arg("-c")
                .arg(self.conf())
                .arg("pid")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("supervisord.conf")
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("supervisor.sock")
    }

    /// The URL the manager uses.
    pub fn url(&self) -> String {
        format!("unix://{}", self.sock().display())
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Rewrites the programs (for reread / update).
    pub fn set_programs(&self, programs: &str) {
        let d = self.dir.path().display().to_string();
        std::fs::write(
            self.dir.path().join("programs.conf"),
            programs.replace("{dir}", &d),
        )
        .unwrap();
    }

    /// `supervisorctl <args>`'s output (its exit code says little: `status` is 3 when a
    /// program is stopped).
    pub fn ctl(&self, args: &[&str]) -> String {
        let o = Command::new("supervisorctl")
            .arg("-c")
            .arg(self.conf())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `supervisorctl status`: `group:name` (or `name`) -> state.
    pub fn status(&self) -> BTreeMap<String, String> {
        self.ctl(&["status"])
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
            })
            .collect()
    }

    /// The state `supervisorctl status` shows for `name`.
    pub fn state(&self, name: &str) -> String {
        self.status()
            .get(name)
            .cloned()
            .unwrap_or_else(|| "ABSENT".into())
    }

    /// The pid `supervisorctl pid <name>` shows.
    pub fn pid(&self, name: &str) -> String {
        self.ctl(&["pid", name]).trim().to_owned()
    }

    /// Stops supervisord (and its programs) now.
    pub fn kill(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        self.kill();
    }
}
