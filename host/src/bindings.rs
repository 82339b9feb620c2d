//! The one `bindgen!` of the host: the Rust types and traits generated from `wit/`, shared by
//! the runtime (which links them), the capabilities (which implement the host side) and the
//! scripting module (which fakes and records host calls). Data types only: imports no stage.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use marvin::manager::{docker, log, supervisor, types};

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
