//! airlock: a host-level access gateway.
//!
//! Data flow, one module per step:
//! [`intercept`] (eBPF redirect, original destination, caller identity) →
//! [`proxy`] (listeners, sessions) → [`protocol`] (tcp, postgres framing) →
//! [`policy`] (classify, decide) → [`relay`] (bytes to and from the target).

pub mod approval;
pub mod audit;
pub mod cli;
pub mod config;
pub mod identity;
pub mod intercept;
pub mod mask;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod proxy;
pub mod relay;
