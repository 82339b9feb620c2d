//! Claims (container, start), which echo already handles: must be refused, naming both.
use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response, types::EntityKind};

struct Twin;

impl Guest for Twin {
    /// None of its actions may run again after a crash interrupted them.
    fn idempotent_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn unplannable_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn describe() -> PluginInfo {
        marvin_plugin_sdk::info("twin", "0.1.0", EntityKind::Container, &["start"], &[])
    }

    fn handle(_req: Request) -> Response {
        Response::ok("twin")
    }
}

marvin_plugin_sdk::export!(Twin);
