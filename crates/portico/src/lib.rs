//! The `portico` binary's library: the CLI, settings, and [`app::App`], which wires the store,
//! the control plane, the portal, metering and the gateway into one process. Tests build the
//! same `App` on port 0.

pub mod app;
pub mod cli;
pub mod client;
pub mod commands;
pub mod demo;
pub mod document;
pub mod fuzzing;
pub mod settings;
pub mod telemetry;
pub mod tls;

/// rustls needs a process-wide crypto provider before any TLS client (reqwest, sqlx) is built.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
