//! Guest-side helpers for marvin-manager plugins.
//!
//! A plugin implements [`Guest`] (`describe` and `handle`) and calls [`export!`]. It reaches
//! the outside only through the imported interfaces ([`docker`], [`supervisor`], [`log`]),
//! and only as far as the operator granted. Files under granted directories are readable
//! with `std::fs` at their host path.
//!
//! A whole plugin — the `logs` action on workers answers the end of a program's log:
//!
//! ```no_run
//! use marvin_plugin_sdk::types::{Capability, EntityKind, Target};
//! use marvin_plugin_sdk::{Guest, PluginInfo, Request, Response, supervisor};
//! use serde_json::json;
//!
//! struct Logs;
//!
//! impl Guest for Logs {
//!     /// Once, at load: name, version, the (kind, action) pairs, the capabilities.
//!     fn describe() -> PluginInfo {
//!         marvin_plugin_sdk::info("logs", "0.1.0", EntityKind::Worker, &["logs"], &[Capability::Supervisor])
//!     }
//!
//!     /// Per request, on a fresh instance.
//!     fn handle(req: Request) -> Response {
//!         let Target::Program(program) = &req.target else {
//!             return Response::fail("logs works on supervisor programs");
//!         };
//!         let bytes = marvin_plugin_sdk::arg_u64(&req, "bytes").unwrap_or(4096);
//!         match supervisor::tail_log(program, bytes.min(1 << 20) as u32) {
//!             Ok(text) => Response::ok(text).metadata(json!({ "program": program, "bytes": bytes })),
//!             // The host's error names the missing grant or what supervisord said.
//!             Err(e) => Response::error(&e),
//!         }
//!     }
//! }
//!
//! marvin_plugin_sdk::export!(Logs);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release`, test it with `marvin-manager
//! plugin test` (scripted host calls, no supervisord needed), drop the `.wasm` into the
//! plugins directory: see `docs/writing-plugins.md`.

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

impl Response {
    /// A successful response with `output`.
    pub fn ok(output: impl Into<String>) -> Self {
        ok(output)
    }

    /// A failed response with `error`.
    pub fn fail(error: impl Into<String>) -> Self {
        fail(error)
    }

    /// A failed response saying what a host call answered.
    pub fn error(e: &types::Error) -> Self {
        fail(error_text(e))
    }

    /// Sets the metadata object.
    pub fn metadata(self, metadata: serde_json::Value) -> Self {
        with_metadata(self, metadata)
    }
}

/// A response built up while a request is carried out: metadata keys added one at a time,
/// turned into the [`Response`] at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Whether the action worked.
    pub success: bool,
    /// What it reports; empty is no output.
    pub output: String,
    /// Why it failed.
    pub error: Option<String>,
    /// The metadata object.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl Outcome {
    /// A success with `output`.
    pub fn ok(output: impl Into<String>) -> Self {
        Self {
            success: true,
            output: output.into(),
            error: None,
            metadata: serde_json::Map::new(),
        }
    }

    /// A failure with `error`.
    pub fn fail(error: impl Into<String>) -> Self {
        Self {
            success: false,
            output: String::new(),
            error: Some(error.into()),
            metadata: serde_json::Map::new(),
        }
    }

    /// Sets a metadata key.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.metadata.insert(key.into(), value);
        self
    }

    /// The response.
    pub fn into_response(self) -> Response {
        Response {
            success: self.success,
            output: (!self.output.is_empty()).then_some(self.output),
            error: self.error,
            metadata: serde_json::Value::Object(self.metadata).to_string(),
        }
    }
}

/// `args.<key>` as text (numbers too), when present and not empty.
pub fn arg_str(req: &Request, key: &str) -> Option<String> {
    match args(req).get(key)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `args.<key>` as a number (numeric text too).
pub fn arg_u64(req: &Request, key: &str) -> Option<u64> {
    let args = args(req);
    let v = args.get(key)?;
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
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
