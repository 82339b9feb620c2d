//! Misbehaves on request: each action is one attack the host must contain.
use std::io::Write;

use marvin_plugin_sdk::types::{Capability, EntityKind};
use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response, docker};

/// Requests this instance has served (`remember`).
static SEEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

struct Hostile;

impl Guest for Hostile {
    /// None of its actions may run again after a crash interrupted them.
    fn idempotent_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn unplannable_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn describe() -> PluginInfo {
        marvin_plugin_sdk::info(
            "hostile",
            "0.6.6",
            EntityKind::Container,
            &[
                "loop",
                "membomb",
                "panic",
                "docker",
                "read",
                "write",
                "flood",
                "env",
                "env_values",
                "inspect",
                "remember",
            ],
            &[Capability::Docker, Capability::Files],
        )
    }

    fn handle(req: Request) -> Response {
        let args = marvin_plugin_sdk::args(&req);
        let path = args["path"].as_str().unwrap_or("/").to_owned();
        match req.action.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "membomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![7u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("the hostile plugin gave up on purpose"),
            "docker" => match docker::list_containers("marvin", None) {
                Ok(list) => Response::ok(format!("listed {} containers", list.len())),
                Err(e) => Response::fail(marvin_plugin_sdk::error_text(&e)),
            },
            "inspect" => match docker::inspect(args["id"].as_str().unwrap_or("c1")) {
                Ok(c) => Response::ok(format!("{} of {}/{}", c.name, c.project, c.service)),
                Err(e) => Response::fail(marvin_plugin_sdk::error_text(&e)),
            },
            "read" => match std::fs::read_to_string(&path) {
                Ok(text) => Response::ok(text),
                Err(e) => Response::fail(format!("read {path}: {e}")),
            },
            "write" => match std::fs::write(&path, b"pwned") {
                Ok(()) => Response::ok(format!("wrote {path}")),
                Err(e) => Response::fail(format!("write {path}: {e}")),
            },
            "flood" => {
                let chunk = vec![b'A'; 1 << 20];
                let mut out = std::io::stdout();
                for _ in 0..100 {
                    let _ = out.write_all(&chunk);
                }
                let _ = out.flush();
                Response::ok("flooded 100 MB")
            }
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                let args: Vec<String> = std::env::args().collect();
                Response::ok(format!("env={} args={}", vars.len(), args.len()))
            }
            // Every variable it sees, values included, in its log, its output and its error:
            // the host must keep the secrets among them from leaving.
            "env_values" => {
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                let all = vars.join(" ");
                marvin_plugin_sdk::log::log(marvin_plugin_sdk::log::Level::Warn, &all);
                Response::fail(format!("leaking {all}"))
                    .with_output(all.clone())
                    .with("env", serde_json::json!(all))
            }
            // What an instance keeps from a request before: 1 on a fresh one.
            "remember" => {
                let seen = SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                Response::ok(format!("request {seen} on this instance"))
                    .with("seen", serde_json::json!(seen))
            }
            other => Response::fail(format!("unknown action {other}")),
        }
    }
}

marvin_plugin_sdk::export!(Hostile);
