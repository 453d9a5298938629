//! The shared vocabulary every layer speaks: which protocol, who is calling, what they asked
//! for, what classification found in it, and what policy decided.
//!
//! A leaf: nothing else of airlock's is imported here, so every layer (config, policy,
//! masking, audit, approvals, the gate, the protocol handlers) can use these types without
//! depending on each other.

mod command;
mod decision;
mod facts;
mod identity;
pub mod lineage;

pub use command::{
    Command, Dialect, FileOp, HttpBody, HttpRequest, KubeRequest, Param, ParamFormat, Params,
    Protocol, ascii_compatible_charset, content_type_charset,
};
pub use decision::{Action, Decision, OnTimeout, ReviewMode};
pub use facts::{Class, ClassSet, Facts, SQL_KINDS};
pub use identity::{Identity, TokenClaims, Workload};
