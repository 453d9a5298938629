//! Transparent interception: the kernel programs, their pins, interception records, and the
//! daemon's own (marked) sockets.

pub mod bpf;
pub mod events;
pub mod link;
pub mod sockets;
pub mod system;

pub use bpf::{ConnTable, DaemonIdentity, InterceptError, Interceptor, Lookup, TargetEntry};
