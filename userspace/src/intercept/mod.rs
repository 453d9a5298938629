//! Transparent interception: the kernel programs, their pins, and interception records.

pub mod bpf;
pub mod events;
pub mod system;

pub use bpf::{ConnTable, DaemonIdentity, InterceptError, Interceptor, TargetEntry};
