//! Logs on stderr, as text or JSON lines, with every configured secret taken out of each line
//! before it is written (whatever code wrote it: ours, sqlx's, bollard's).

use std::io::Write;
use std::sync::{Arc, RwLock};

use crate::secrets::Redactor;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people, with the request's fields (correlation id, entity,
    /// action, plugin) in front.
    #[default]
    Text,
    /// One JSON object per line for log shippers: `timestamp`, `level`, `target`, the event's
    /// fields, and the request's fields (`correlation_id`, …) under `span`.
    Json,
}

/// The secrets of the settings in force; empty until they are read.
static REDACTOR: RwLock<Option<Arc<Redactor>>> = RwLock::new(None);

/// Sets the secrets log lines and messages are scrubbed of (again on a reload).
pub fn set_redactor(redactor: Redactor) {
    *REDACTOR.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(redactor));
}

/// `text` without the secrets known now.
pub fn scrub(text: &str) -> String {
    match current() {
        Some(r) => r.scrub(text).into_owned(),
        None => text.to_owned(),
    }
}

fn current() -> Option<Arc<Redactor>> {
    REDACTOR.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Stderr, one formatted event per `write`, scrubbed.
struct Scrubbed;

impl Write for Scrubbed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        match current() {
            Some(r) if !r.is_empty() => {
                let text = String::from_utf8_lossy(buf);
                err.write_all(r.scrub(&text).as_bytes())?;
            }
            _ => err.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Installs the log subscriber on stderr: `RUST_LOG`, else `default`.
pub fn init(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Scrubbed);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .try_init(),
    }
    .ok();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_scrubbed_once_the_secrets_are_known() {
        set_redactor(Redactor::new(["hunter22".to_owned()]));
        assert_eq!(scrub("password hunter22 leaked"), "password *** leaked");
        set_redactor(Redactor::default());
        assert_eq!(scrub("hunter22"), "hunter22");
    }
}
