//! Traps in describe(): must be reported and skipped.
use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response};

struct Bad;

impl Guest for Bad {
    /// None of its actions may run again after a crash interrupted them.
    fn idempotent_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn unplannable_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn describe() -> PluginInfo {
        panic!("describe is broken on purpose")
    }

    fn handle(_req: Request) -> Response {
        Response::ok("unreachable")
    }
}

marvin_plugin_sdk::export!(Bad);
