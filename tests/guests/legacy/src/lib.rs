//! A plugin of the first contract (world `plugin` of `marvin:manager@0.1.0`: `describe` and
//! `handle`, no `idempotent-actions`), as plugins built before that export existed are: it
//! must keep loading and running.

#[allow(missing_docs, unsafe_code)]
mod bindings {
    marvin_plugin_sdk::wit_bindgen::generate!({
        world: "plugin",
        path: "../../../wit",
        runtime_path: "marvin_plugin_sdk::wit_bindgen::rt",
    });
}

use bindings::marvin::manager::types::{EntityKind, HandledAction};
use bindings::{Guest, PluginInfo, Request, Response};

struct Legacy;

impl Guest for Legacy {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "legacy".into(),
            version: "0.1.0".into(),
            handles: vec![HandledAction {
                kind: EntityKind::Container,
                action: "legacy_ping".into(),
            }],
            capabilities: vec![],
        }
    }

    fn handle(req: Request) -> Response {
        Response {
            success: true,
            output: Some(format!("pong from 0.1.0 to {}", req.correlation_id)),
            error: None,
            metadata: "{}".into(),
        }
    }
}

bindings::export!(Legacy with_types_in bindings);
