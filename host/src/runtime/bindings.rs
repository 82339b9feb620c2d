//! The one `bindgen!` of the host: Rust types and traits generated from `wit/`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use marvin::manager::{docker, log, supervisor, types};
