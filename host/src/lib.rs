//! marvin-manager: executes Marvin Core's `ManagerRequestCommand`s on Docker compose
//! containers and Supervisor workers, each action carried out by a sandboxed WebAssembly
//! component plugin that reaches the outside only through capabilities the operator granted.
//!
//! Where to start: [`service::Manager::execute`] follows one request through the stages,
//! [`runtime`] owns wasmtime (engine, plugin loading, limits), [`capabilities`] the host calls
//! and their grant checks. The queue (Symfony Messenger's Doctrine transport) lands in
//! `transport` and `codec`.

pub mod capabilities;
pub mod cli;
pub mod codec;
pub mod config;
pub mod consumer;
pub mod message;
pub mod registry;
pub mod router;
pub mod runtime;
pub mod service;
pub mod testing;
pub mod transport;
