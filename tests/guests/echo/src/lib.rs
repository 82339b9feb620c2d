//! Well-behaved: answers every Core action with what it received, as JSON.
use marvin_plugin_sdk::types::{EntityKind, Target};
use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response, handles, log};
use serde_json::json;

struct Echo;

impl Guest for Echo {
    /// `start` and `stop` on containers (so the host's load test sees a declaration).
    fn idempotent_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        handles(EntityKind::Container, &["start", "stop"])
    }

    fn unplannable_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn describe() -> PluginInfo {
        let mut h = handles(
            EntityKind::Container,
            &[
                "start",
                "stop",
                "restart",
                "restart_all",
                "build",
                "exec_cmd",
            ],
        );
        h.extend(handles(
            EntityKind::Worker,
            &["start", "stop", "restart", "reread", "update"],
        ));
        PluginInfo {
            name: "echo".into(),
            version: "1.2.3".into(),
            handles: h,
            capabilities: vec![],
        }
    }

    fn handle(req: Request) -> Response {
        log::log(
            log::Level::Info,
            &format!("echo {} on {}", req.action, req.entity_id),
        );
        let target = match &req.target {
            Target::Compose(c) => json!({"project": c.project, "service": c.service}),
            Target::Program(p) => json!({"program": p}),
            Target::Supervisord => json!("supervisord"),
        };
        let seen = json!({
            "correlation_id": req.correlation_id,
            "entity_id": req.entity_id,
            "kind": match req.kind { EntityKind::Container => "container", EntityKind::Worker => "worker" },
            "target": target,
            "action": req.action,
            "command": req.command,
            "args": marvin_plugin_sdk::args(&req),
            "timeout_ms": req.timeout_ms,
        });
        Response::ok(seen.to_string()).with("echoed", json!(true))
    }
}

marvin_plugin_sdk::export!(Echo);
