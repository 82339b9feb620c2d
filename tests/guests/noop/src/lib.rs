//! Does nothing, successfully: the benchmark's plugin.
use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response, types::EntityKind};

struct Noop;

impl Guest for Noop {
    /// None of its actions may run again after a crash interrupted them.
    fn idempotent_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn unplannable_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn describe() -> PluginInfo {
        marvin_plugin_sdk::info("noop", "1.0.0", EntityKind::Container, &["noop"], &[])
    }

    fn handle(_req: Request) -> Response {
        Response {
            success: true,
            output: None,
            error: None,
            metadata: String::new(),
        }
    }
}

marvin_plugin_sdk::export!(Noop);
