//! `logs`: the end of a supervisor program's log, for Core to show next to a worker.
//!
//! Request: entity = a worker (a program, `group:name`); `args.bytes` = how much of the end
//! of the log (default 4 KiB, at most 1 MiB); `args.lines` = keep only the last lines.
//! Response: `output` = the log text; `metadata` = program, bytes, lines.

use marvin_plugin_sdk::types::{Capability, EntityKind, Target};
use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response, supervisor};
use serde_json::json;

struct Logs;

impl Guest for Logs {
    /// Once, at load: the actions that may run again when a crash interrupted them.
    /// Reading a log twice changes nothing.
    fn idempotent_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        marvin_plugin_sdk::handles(EntityKind::Worker, &["logs"])
    }

    fn unplannable_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    /// Once, at load: who we are, what we handle, what we need.
    fn describe() -> PluginInfo {
        marvin_plugin_sdk::info(
            "logs",
            "0.1.0",
            EntityKind::Worker,
            &["logs"],
            &[Capability::Supervisor],
        )
    }

    /// Per request, on a fresh instance.
    fn handle(req: Request) -> Response {
        let Target::Program(program) = &req.target else {
            return Response::fail("logs works on supervisor programs");
        };
        let bytes = marvin_plugin_sdk::arg_u64(&req, "bytes")
            .unwrap_or(4096)
            .min(1 << 20);
        let text = match supervisor::tail_log(program, bytes as u32) {
            Ok(text) => text,
            // The host's error names the missing grant, or what supervisord said.
            Err(e) => return Response::error(&e),
        };
        let text = match marvin_plugin_sdk::arg_u64(&req, "lines") {
            Some(n) => {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(n as usize)..].join("\n")
            }
            None => text,
        };
        let lines = text.lines().count();
        Response::ok(text)
            .with("program", json!(program))
            .with("bytes", json!(bytes))
            .with("lines", json!(lines))
    }
}

marvin_plugin_sdk::export!(Logs);
