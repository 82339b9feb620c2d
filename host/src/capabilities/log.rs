//! `log`: plugin log lines become tracing events attributed to the plugin and the request.

use crate::bindings::log::{Host, Level};

use super::Capabilities;

/// Longest log line kept, in bytes; longer ones are cut.
pub const MAX_LINE_BYTES: usize = 4096;
/// Lines one request may log; later ones are counted and dropped.
pub const MAX_LINES: u32 = 1000;

/// Bounds what one request may log.
#[derive(Debug, Default)]
pub struct LogBudget {
    lines: u32,
    dropped: u32,
}

impl LogBudget {
    /// Lines dropped over the budget.
    pub fn dropped(&self) -> u32 {
        self.dropped
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Host for Capabilities {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        if self.tried_while_preparing() {
            return Ok(());
        }
        if self.log.lines >= MAX_LINES {
            self.log.dropped += 1;
            return Ok(());
        }
        self.log.lines += 1;
        let plugin = self.policy.plugin();
        let correlation_id = self.correlation_id.as_str();
        let message = truncate(&message, MAX_LINE_BYTES);
        match level {
            Level::Trace => tracing::trace!(plugin, correlation_id, "{message}"),
            Level::Debug => tracing::debug!(plugin, correlation_id, "{message}"),
            Level::Info => tracing::info!(plugin, correlation_id, "{message}"),
            Level::Warn => tracing::warn!(plugin, correlation_id, "{message}"),
            Level::Error => tracing::error!(plugin, correlation_id, "{message}"),
        }
        Ok(())
    }
}
