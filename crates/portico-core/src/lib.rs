//! `portico-core` is Portico's domain: identifiers, validated values (slugs, e-mails, money,
//! limits, versions), API keys, roles, the **config snapshot** the gateway reads and the
//! **usage event** it emits, and the declarative document that `portico apply` speaks.
//!
//! It is pure: no tokio, no sqlx, no axum, no hyper, no I/O. Everything here can be tested with
//! plain unit tests and property tests.

pub mod api_key;
pub mod declarative;
pub mod error;
pub mod ids;
pub mod jwt;
pub mod model;
pub mod openapi;
pub mod operations;
pub mod outbound;
pub mod policy;
pub mod secret;
pub mod sketch;
pub mod snapshot;
pub mod upstream;
pub mod usage;
pub mod validation;
pub mod values;

pub use error::{Error, Result};
