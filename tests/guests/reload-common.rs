// Shared by reload-v1 and reload-v2: handles (worker, start), sleeps `args.sleep_ms`, then
// answers with its version.
use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response, types::EntityKind};

struct Reload;

impl Guest for Reload {
    /// None of its actions may run again after a crash interrupted them.
    fn idempotent_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn unplannable_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn describe() -> PluginInfo {
        marvin_plugin_sdk::info("reload", VERSION, EntityKind::Worker, &["start"], &[])
    }

    fn handle(req: Request) -> Response {
        let ms = marvin_plugin_sdk::args(&req)["sleep_ms"].as_u64().unwrap_or(0);
        std::thread::sleep(std::time::Duration::from_millis(ms));
        Response::ok(VERSION)
    }
}

marvin_plugin_sdk::export!(Reload);
