//! A "new version" of docker-compose whose `start` changed its host calls: it starts every
//! container without looking at its state. Replaying an old trace must show the difference.
use marvin_plugin_sdk::types::{Capability, EntityKind, Target};
use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response, docker};

struct ComposeV2;

impl Guest for ComposeV2 {
    /// None of its actions may run again after a crash interrupted them.
    fn idempotent_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn unplannable_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn describe() -> PluginInfo {
        marvin_plugin_sdk::info(
            "docker-compose",
            "0.2.0",
            EntityKind::Container,
            &["start"],
            &[Capability::Docker],
        )
    }

    fn handle(req: Request) -> Response {
        let Target::Compose(t) = &req.target else {
            return Response::fail("compose only");
        };
        let list = match docker::list_containers(&t.project, t.service.as_deref()) {
            Ok(l) => l,
            Err(e) => return Response::error(&e),
        };
        let ids: Vec<String> = list.iter().map(|c| c.id.clone()).collect();
        for r in docker::start(&ids) {
            if let Err(e) = r {
                return Response::error(&e);
            }
        }
        Response::ok(format!("started {}", ids.len()))
    }
}

marvin_plugin_sdk::export!(ComposeV2);
