//! Traps in describe(): must be reported and skipped.
use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response};

struct Bad;

impl Guest for Bad {
    fn describe() -> PluginInfo {
        panic!("describe is broken on purpose")
    }

    fn handle(_req: Request) -> Response {
        Response::ok("unreachable")
    }
}

marvin_plugin_sdk::export!(Bad);
