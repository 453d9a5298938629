//! airlock: a host-level access gateway.
//!
//! Data flow, one module per step:
//! [`intercept`] (eBPF redirect, original destination, caller identity) →
//! [`daemon`] (listeners, sessions) → [`protocol`] (tcp, postgres, ssh) →
//! [`policy`] (classify, decide) → [`relay`] (bytes to and from the target).

pub mod approval;
pub mod audit;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod drain;
pub mod gate;
pub mod handover;
pub mod identity;
pub mod intercept;
pub mod mask;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod protocol;
pub mod recording;
pub mod relay;
pub mod runtime;
pub mod secrets;
pub mod web;

/// The REST API's old path (it lives in [`web::api`] now).
pub use web::api;
