//! Version 1 of the hot-reload plugin.
const VERSION: &str = "1.0.0";
include!("../../reload-common.rs");
