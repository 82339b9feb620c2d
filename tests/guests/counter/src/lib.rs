//! Leaves a countable side effect each time it runs: the line `effect[<correlation id>]`
//! through the host's log (written to the manager's stderr before the answer exists), then
//! waits `args.ms` (default 40 ms), so a kill can land between the effect and the commit.
//! The fault suite's cheap action: a thousand of them cost seconds, where `docker exec` costs
//! minutes.
use std::time::Duration;

use marvin_plugin_sdk::types::{EntityKind, HandledAction};
use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response, log};

struct Counter;

impl Guest for Counter {
    fn describe() -> PluginInfo {
        marvin_plugin_sdk::info("counter", "1.0.0", EntityKind::Container, &["count"], &[])
    }

    /// Running it twice is seen (two lines): not idempotent.
    fn idempotent_actions() -> Vec<HandledAction> {
        Vec::new()
    }

    fn unplannable_actions() -> Vec<marvin_plugin_sdk::types::HandledAction> {
        Vec::new()
    }

    fn handle(req: Request) -> Response {
        log::log(log::Level::Info, &format!("effect[{}]", req.correlation_id));
        let ms = marvin_plugin_sdk::arg_u64(&req, "ms").unwrap_or(40);
        std::thread::sleep(Duration::from_millis(ms));
        Response::ok("counted")
    }
}

marvin_plugin_sdk::export!(Counter);
