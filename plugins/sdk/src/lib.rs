//! Guest-side helpers for marvin-manager plugins.
//!
//! A plugin implements [`Guest`] (`describe` and `handle`) and calls [`export!`]. It reaches
//! the outside only through the imported interfaces ([`docker`], [`supervisor`], [`log`]),
//! and only as far as the operator granted. Files under granted directories are readable
//! with `std::fs` at their host path.
//!
//! ```ignore
//! use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response, types::EntityKind};
//! struct Hello;
//! impl Guest for Hello {
//!     fn describe() -> PluginInfo {
//!         marvin_plugin_sdk::info("hello", "0.1.0", EntityKind::Container, &["start"], &[])
//!     }
//!     fn handle(req: Request) -> Response {
//!         marvin_plugin_sdk::ok(format!("hello {}", req.entity_id))
//!     }
//! }
//! marvin_plugin_sdk::export!(Hello);
//! ```

#[doc(hidden)]
pub use wit_bindgen;

extern crate self as marvin_plugin_sdk;

#[allow(missing_docs, unsafe_code)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "marvin_plugin_sdk::bindings",
        runtime_path: "marvin_plugin_sdk::wit_bindgen::rt",
    });
}

pub use bindings::marvin::manager::{docker, log, supervisor, types};
pub use bindings::{Guest, PluginInfo, Request, Response, export};

use types::{Capability, EntityKind, HandledAction};

/// A `PluginInfo` for a plugin that handles `actions` on one entity kind.
pub fn info(
    name: &str,
    version: &str,
    kind: EntityKind,
    actions: &[&str],
    capabilities: &[Capability],
) -> PluginInfo {
    PluginInfo {
        name: name.into(),
        version: version.into(),
        handles: handles(kind, actions),
        capabilities: capabilities.to_vec(),
    }
}

/// The (kind, action) pairs for `actions`.
pub fn handles(kind: EntityKind, actions: &[&str]) -> Vec<HandledAction> {
    actions
        .iter()
        .map(|a| HandledAction {
            kind,
            action: (*a).into(),
        })
        .collect()
}

/// A successful response.
pub fn ok(output: impl Into<String>) -> Response {
    Response {
        success: true,
        output: Some(output.into()),
        error: None,
        metadata: "{}".into(),
    }
}

/// A failed response.
pub fn fail(error: impl Into<String>) -> Response {
    Response {
        success: false,
        output: None,
        error: Some(error.into()),
        metadata: "{}".into(),
    }
}

/// Sets a response's metadata object.
pub fn with_metadata(mut response: Response, metadata: serde_json::Value) -> Response {
    response.metadata = metadata.to_string();
    response
}

/// The request's `args` as JSON (an empty object when they are not valid JSON).
pub fn args(req: &Request) -> serde_json::Value {
    serde_json::from_str(&req.args).unwrap_or_else(|_| serde_json::json!({}))
}

/// A capability error as text: its kind, then what the host said.
pub fn error_text(e: &types::Error) -> String {
    use types::Error as E;
    let (kind, text) = match e {
        E::PermissionDenied(t) => ("permission denied", t),
        E::NotFound(t) => ("not found", t),
        E::Unavailable(t) => ("unavailable", t),
        E::TimedOut(t) => ("timed out", t),
        E::AlreadyStarted(t) => ("already started", t),
        E::NotRunning(t) => ("not running", t),
        E::SpawnError(t) => ("spawn error", t),
        E::Failed(t) => ("failed", t),
    };
    if text.starts_with(kind) {
        text.clone()
    } else {
        format!("{kind}: {text}")
    }
}
