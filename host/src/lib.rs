//! marvin-manager: executes Marvin Core's `ManagerRequestCommand`s on Docker compose
//! containers and Supervisor workers, each action carried out by a sandboxed WebAssembly
//! component plugin that reaches the outside only through capabilities the operator granted.
//!
//! The modules follow a request's journey, and a stage imports only the stages after it:
//! [`transport`] (the queue table) -> [`codec`] (PHP `serialize()` / Symfony JSON) ->
//! [`ledger`] (what was answered: dedup, history) -> [`scheduler`] (slots, batching,
//! per-entity order) -> [`service`] (the consume loop and one request's execution) ->
//! [`registry`] (entity id -> target) -> [`router`] (kind and action -> plugin) ->
//! [`runtime`] (wasmtime, plugin loading, limits) -> [`capabilities`] (host calls, grant
//! checks, backends). [`scripting`] runs plugins against scripted or recorded host calls.
//! [`config`], [`message`], [`secrets`], [`metrics`] and [`bindings`] are data types. [`cli`] builds the parts: the one
//! composition root. `docs/architecture.md` draws the map and lists the imports that must
//! never exist.

pub mod bindings;
pub mod capabilities;
pub mod cli;
pub mod codec;
pub mod config;
pub mod ledger;
pub mod message;
pub mod metrics;
pub mod registry;
pub mod router;
pub mod runtime;
pub mod scheduler;
pub mod scripting;
pub mod secrets;
pub mod service;
pub mod transport;
