//! Version 2 of the hot-reload plugin.
const VERSION: &str = "2.0.0";
include!("../../reload-common.rs");
