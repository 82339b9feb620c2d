//! `restart` of a supervisord program through the host, request to response without a
//! queue, against the raw XML-RPC calls a restart needs and against `supervisorctl restart`,
//! all measured in the same run on the same supervisord. Prints numbers and ratios; asserts
//! nothing.
//!
//!   cargo bench -p marvin-manager --bench supervisor
//!
//! - host: `Manager::execute` of `restart` on program `web`: registry, router, a fresh
//!   supervisor plugin instance, its host calls (`stop-process`: stopProcess;
//!   `start-process`: a multicall of startProcess and getProcessInfo for the state after).
//! - raw: `supervisor.stopProcess` + `supervisor.startProcess` (both waiting, as
//!   supervisorctl does) through the host's XML-RPC client, nothing else.
//! - supervisorctl: `supervisorctl -c … restart web`, the real client.
//!
//! Rounds interleave the three so a noisy neighbour hits all of them alike. Samples are
//! 30 ms apart (not timed): a SIGTERM that reaches a child supervisord has forked but not yet
//! exec'd is lost, and the stop then waits out `stopwaitsecs` — a supervisord race that
//! back-to-back restarts within a few milliseconds would measure instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
#[path = "../tests/common/mod.rs"]
mod test_common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{line, ratio};
use marvin_manager::capabilities::supervisor::rpc::Supervisord as Rpc;
use marvin_manager::capabilities::supervisor::xmlrpc::Value;
use test_common::Setup;
use test_common::supervisor::Supervisord;

const ROUNDS: usize = 30;
const PER_ROUND: usize = 5;

fn main() {
    if std::env::var_os("BENCH_TRACE").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter("marvin_manager=debug")
            .init();
    }
    let s = Supervisord::start("[program:web]\ncommand=/bin/sleep 3600\nstartsecs=0\n");
    let rt = common::tokio();
    let setup = Setup::new(&[(test_programs::SUPERVISOR, "supervisor.wasm")]);
    let manager = rt.block_on(setup.manager_with_supervisor(
        "[plugins.supervisor.grants.supervisor]\nprograms = [\"web\"]\n\
         [entities.web]\nkind = \"worker\"\nprogram = \"web\"\n",
        &s.url(),
    ));
    let raw = Rpc::new(&s.url(), None, None).unwrap();
    let request = common::request("web", "restart");
    let gap = || std::thread::sleep(Duration::from_millis(30));
    let host_once = || {
        gap();
        let t = Instant::now();
        let r = rt.block_on(manager.execute(&request));
        assert!(r.success, "{r:?}");
        t.elapsed()
    };
    let raw_once = || {
        gap();
        let t = Instant::now();
        rt.block_on(async {
            let args = [Value::Str("web:web".into()), Value::Bool(true)];
            raw.call("supervisor.stopProcess", &args).await.unwrap();
            raw.call("supervisor.startProcess", &args).await.unwrap();
        });
        t.elapsed()
    };
    let ctl_once = || {
        gap();
        let t = Instant::now();
        let out = Command::new("supervisorctl")
            .arg("-c")
            .arg(s.conf())
            .args(["restart", "web"])
            .output()
            .unwrap();
        assert!(out.status.success());
        t.elapsed()
    };
    for _ in 0..5 {
        host_once();
        raw_once();
    }
    ctl_once();
    let (mut host, mut raw_t, mut ctl) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            host.push(host_once());
            raw_t.push(raw_once());
        }
        ctl.push(ctl_once());
    }
    assert!(s.ctl(&["status", "web"]).contains("RUNNING"));
    println!(
        "restart of a running program ({} samples each, supervisorctl {}):",
        host.len(),
        ctl.len()
    );
    println!("{}", line("host (request -> response)", &host));
    println!("{}", line("raw XML-RPC stop + start", &raw_t));
    println!("{}", line("supervisorctl restart", &ctl));
    println!(
        "  host / raw = {:.2}x (bar <= 1.5x)   supervisorctl / host = {:.1}x (bar >= 5x)",
        ratio(&host, &raw_t),
        ratio(&ctl, &host)
    );
}
