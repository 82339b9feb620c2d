//! A complete marvin-manager plugin: it handles the `hello` action on containers by listing
//! the containers of the entity's compose service through the docker capability.
//!
//! Grant it in manager.toml, or its docker calls are denied:
//!
//! ```toml
//! [plugins.hello.grants.docker]
//! projects = ["marvin"]
//! ```

use marvin_plugin_sdk::types::{Capability, EntityKind, Target};
use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response, docker, log};
use serde_json::json;

struct Hello;

impl Guest for Hello {
    /// None of its actions may run again after a crash interrupted them.
    fn idempotent_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn unplannable_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    /// Called once at load: who we are, what we handle, what we need.
    fn describe() -> PluginInfo {
        marvin_plugin_sdk::info(
            "hello",
            "0.1.0",
            EntityKind::Container,
            &["hello"],
            &[Capability::Docker],
        )
    }

    /// Called once per request, on a fresh instance.
    fn handle(req: Request) -> Response {
        let Target::Compose(target) = &req.target else {
            return Response::fail("hello works on compose containers only");
        };
        log::log(
            log::Level::Info,
            &format!("saying hello to {}", req.entity_id),
        );
        match docker::list_containers(&target.project, target.service.as_deref()) {
            Ok(containers) => {
                let states: Vec<_> = containers
                    .iter()
                    .map(|c| json!({"name": c.name, "status": c.state.status}))
                    .collect();
                Response::ok(format!("hello, {} container(s)", containers.len()))
                    .with("containers", json!(states))
            }
            // The host's error names the missing grant; pass it on to Core as is.
            Err(e) => Response::error(&e),
        }
    }
}

marvin_plugin_sdk::export!(Hello);
