//! Guest-side helpers for marvin-manager plugins.
//!
//! A plugin implements [`Guest`] (`describe`, `idempotent_actions`, `unplannable_actions` and
//! `handle`) and calls
//! [`export!`]. It reaches
//! the outside only through the imported interfaces ([`docker`], [`supervisor`], [`log`]),
//! and only as far as the operator granted. Files under granted directories are readable
//! with `std::fs` at their host path.
//!
//! A whole plugin — the `logs` action on workers answers the end of a program's log:
//!
//! ```no_run
//! use marvin_plugin_sdk::types::{Capability, EntityKind, HandledAction, Target};
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
//!     /// Once, at load: the actions that may run again when a crash interrupted them.
//!     /// Reading a log twice changes nothing.
//!     fn idempotent_actions() -> Vec<HandledAction> {
//!         marvin_plugin_sdk::handles(EntityKind::Worker, &["logs"])
//!     }
//!
//!     /// Once, at load: the actions a dry run must not run. In a dry run the host makes the
//!     /// reading calls and plans the changing ones, so there is rarely any.
//!     fn unplannable_actions() -> Vec<HandledAction> {
//!         Vec::new()
//!     }
//!
//!     /// Per request, on a fresh instance.
//!     fn handle(req: Request) -> Response {
//!         let Target::Program(program) = &req.target else {
//!             return Response::fail("logs works on supervisor programs");
//!         };
//!         let bytes = marvin_plugin_sdk::arg_u64(&req, "bytes").unwrap_or(4096);
//!         match supervisor::tail_log(program, bytes.min(1 << 20) as u32) {
//!             Ok(text) => Response::ok(text).with("program", json!(program)).with("bytes", json!(bytes)),
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

// The lints of this repository's workspaces, here because the crate stands alone.
#![deny(unsafe_code)]
#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::dbg_macro,
    clippy::todo
)]

#[doc(hidden)]
pub use wit_bindgen;

extern crate self as marvin_plugin_sdk;

#[allow(missing_docs, unsafe_code)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin-with-planning",
        path: "wit",
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
        Self {
            success: true,
            output: Some(output.into()),
            error: None,
            metadata: "{}".into(),
        }
    }

    /// A failed response with `error`.
    pub fn fail(error: impl Into<String>) -> Self {
        Self {
            success: false,
            output: None,
            error: Some(error.into()),
            metadata: "{}".into(),
        }
    }

    /// A failed response saying what a host call answered.
    pub fn error(e: &types::Error) -> Self {
        Self::fail(error_text(e))
    }

    /// With `output` (a failure can report what it did before failing).
    pub fn with_output(mut self, output: impl Into<String>) -> Self {
        self.output = Some(output.into());
        self
    }

    /// With one more metadata key (its value replaced when the key is there already).
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        // serde_json's writers, not `Display` (`to_string`): that one goes through the
        // formatting machinery for every token, several times slower in a plugin.
        let name = serde_json::to_string(key).unwrap_or_default();
        if has_key(&self.metadata, &name) == Some(false) {
            // Written after the keys before it: building an answer key by key stays linear.
            self.metadata.pop();
            let open = self.metadata.trim_end().ends_with('{');
            if !open {
                self.metadata.push(',');
            }
            self.metadata.push_str(&name);
            self.metadata.push(':');
            self.metadata
                .push_str(&serde_json::to_string(&value).unwrap_or_default());
            self.metadata.push('}');
            return self;
        }
        let mut metadata = match serde_json::from_str(&self.metadata) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        metadata.insert(key.into(), value);
        self.metadata = serde_json::to_string(&metadata).unwrap_or_default();
        self
    }
}

/// Whether the JSON object `json` has the top-level key whose JSON text is `name` (quoted and
/// escaped as serde_json writes it); `None` when `json` is not an object this scan reads, for
/// the caller to parse it. A scan, not a parse: parsing and writing the whole metadata again at
/// each `with` took a short action most of its time in the guest.
fn has_key(json: &str, name: &str) -> Option<bool> {
    let b = json.as_bytes();
    if b.first() != Some(&b'{') || b.last() != Some(&b'}') {
        return None;
    }
    let (mut depth, mut key_next, mut i) = (0usize, false, 0usize);
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i;
                i += 1;
                while *b.get(i)? != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 && key_next && json.get(start..=i)? == name {
                    return Some(true);
                }
                key_next = false;
            }
            c @ (b'{' | b'[') => {
                depth += 1;
                key_next = c == b'{' && depth == 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 && i + 1 != b.len() {
                    return None;
                }
            }
            b',' => key_next = depth == 1,
            _ => {}
        }
        i += 1;
    }
    (depth == 0).then_some(false)
}

/// The last `lines` lines of `text` (a build log, a command's stderr), trailing blank lines
/// dropped.
pub fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.trim_end().lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_builder_for_every_response() {
        let r = Response::ok("done")
            .with("already", json!(true))
            .with("n", json!(2));
        assert!(r.success);
        assert_eq!(r.output.as_deref(), Some("done"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&r.metadata).unwrap(),
            json!({"already": true, "n": 2})
        );
        let r = Response::fail("update failed: x").with_output("a\nb");
        assert!(!r.success);
        assert_eq!(r.error.as_deref(), Some("update failed: x"));
        assert_eq!(r.output.as_deref(), Some("a\nb"));
        let r = Response::error(&types::Error::NotFound("no such container".into()));
        assert_eq!(r.error.as_deref(), Some("not found: no such container"));
        let r = Response::ok("x").with("a", json!(1)).with("b", json!(2));
        assert_eq!(r.metadata, r#"{"a":1,"b":2}"#);
    }

    #[test]
    fn with_replaces_a_key_and_appends_a_new_one() {
        let meta = |r: &Response| serde_json::from_str::<serde_json::Value>(&r.metadata).unwrap();
        let r = Response::ok("x")
            .with("a", json!({"b": 1, "c": [{"a": 2}]}))
            .with("b", json!("a,\"b\":{"))
            .with("a", json!(3))
            .with("quo\"te", json!(null));
        assert_eq!(meta(&r), json!({"a": 3, "b": "a,\"b\":{", "quo\"te": null}));
        // A nested key of the same name is not the top-level one.
        let r = Response::ok("x")
            .with("n", json!({"m": 1}))
            .with("m", json!(2));
        assert_eq!(r.metadata, r#"{"n":{"m":1},"m":2}"#);
        // Metadata a plugin wrote itself, spaced or not an object, still works.
        let mut r = Response::ok("x");
        r.metadata = "{ \"k\" : [1, 2] }".into();
        assert_eq!(meta(&r.with("l", json!(1))), json!({"k": [1, 2], "l": 1}));
        let mut r = Response::ok("x");
        r.metadata = " {} ".into();
        assert_eq!(meta(&r.with("l", json!(1))), json!({"l": 1}));
        let mut r = Response::ok("x");
        r.metadata = "[1]".into();
        assert_eq!(meta(&r.with("l", json!(1))), json!({"l": 1}));
        assert_eq!(has_key("{}{}", "\"a\""), None);
        assert_eq!(has_key(r#"{"a":"\\"}"#, "\"a\""), Some(true));
        assert_eq!(has_key(r#"{"x":"\\","a":1}"#, "\"a\""), Some(true));
        assert_eq!(has_key(r#"{"x":"unterminated}"#, "\"a\""), None);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 3), "");
    }
}
