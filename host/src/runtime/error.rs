//! Why a plugin file is not usable ([`LoadError`]) and why a call into a plugin did not return
//! an answer ([`RunError`]). Their texts are what Core and the operator read.

use std::time::Duration;

/// A plugin file that is not a usable plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Read(String),
    /// The file is over the size limit.
    #[error("file is larger than {max_mib} MiB")]
    TooLarge {
        /// The limit.
        max_mib: u64,
    },
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file")]
    NotWasm,
    /// A core module where a component is needed.
    #[error("a core WebAssembly module, not a component (build it with `--target wasm32-wasip2`)")]
    CoreModule,
    /// The compile task ended abnormally.
    #[error("compilation did not finish: {0}")]
    CompileTask(String),
    /// wasmtime refused the component.
    #[error("not a valid component: {0}")]
    Invalid(String),
    /// The component's imports do not fit the host.
    #[error("wrong world: {0}")]
    WrongWorld(String),
    /// The component does not export the plugin interface.
    #[error(
        "wrong world: it does not export `describe` and `handle` of marvin:manager/plugin@0.1.0 ({0})"
    )]
    MissingExports(String),
    /// `describe()` failed.
    #[error(transparent)]
    Describe(#[from] RunError),
    /// The name `describe()` returned is not usable.
    #[error(
        "plugin name '{0}' is not a valid name (lowercase letters, digits, '-' and '_', at most 64)"
    )]
    InvalidName(String),
    /// `describe()` returned no version.
    #[error("plugin '{0}' declares no version")]
    NoVersion(String),
}

/// A call into a plugin (`describe` or `handle`) that did not return an answer. `who` names
/// the call: `plugin 'name'` or `describe()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The deadline passed: the epoch interrupt stopped the code.
    #[error(
        "{who} did not finish within the {} s timeout and was stopped",
        timeout.as_secs_f64()
    )]
    Timeout {
        /// The call.
        who: String,
        /// The deadline it had.
        timeout: Duration,
    },
    /// The call did not return in time (the outer bound, `describe()` at load).
    #[error("{who} did not return within {within:?}")]
    NoReturn {
        /// The call.
        who: String,
        /// How long it had.
        within: Duration,
    },
    /// A memory grew past the plugin's cap.
    #[error(
        "{who} exceeded its memory limit of {} (it tried to grow a memory to {})",
        mib(*limit),
        mib(*wanted)
    )]
    Memory {
        /// The call.
        who: String,
        /// The cap, in bytes.
        limit: usize,
        /// The size asked for, in bytes.
        wanted: usize,
    },
    /// The guest panicked; its message, from its stderr.
    #[error("{who} {location}: {message}")]
    Panic {
        /// The call.
        who: String,
        /// `panicked at src/lib.rs:10:5`.
        location: String,
        /// The panic message.
        message: String,
    },
    /// Another trap.
    #[error("{who} trapped: {trap}")]
    Trap {
        /// The call.
        who: String,
        /// wasmtime's description of the trap.
        trap: String,
    },
    /// Any other failure of the call (a host call's trap, a bad handle).
    #[error("{who} failed: {cause}")]
    Failed {
        /// The call.
        who: String,
        /// The first line of what wasmtime said.
        cause: String,
    },
    /// The request's store could not be set up.
    #[error("cannot preopen granted directory {dir}: {cause}")]
    Preopen {
        /// The granted directory.
        dir: String,
        /// Why.
        cause: String,
    },
}

fn mib(bytes: usize) -> String {
    #[expect(clippy::cast_precision_loss, reason = "a size shown to one decimal")]
    let m = bytes as f64 / f64::from(1u32 << 20);
    format!("{m:.1} MiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_the_ones_core_and_operators_read() {
        let who = || "plugin 'p'".to_owned();
        assert_eq!(
            RunError::Timeout {
                who: who(),
                timeout: Duration::from_millis(1500)
            }
            .to_string(),
            "plugin 'p' did not finish within the 1.5 s timeout and was stopped"
        );
        assert_eq!(
            RunError::Memory {
                who: who(),
                limit: 16 << 20,
                wanted: 17 << 20
            }
            .to_string(),
            "plugin 'p' exceeded its memory limit of 16.0 MiB (it tried to grow a memory to 17.0 MiB)"
        );
        let e = LoadError::from(RunError::NoReturn {
            who: "describe()".into(),
            within: Duration::from_secs(5),
        });
        assert_eq!(e.to_string(), "describe() did not return within 5s");
        assert!(
            std::error::Error::source(&e).is_none(),
            "the cause prints once"
        );
    }
}
