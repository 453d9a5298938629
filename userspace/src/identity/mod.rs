//! Who is asking: the caller's workload resolved into names (user, cgroup path, unit, pod),
//! OIDC tokens verified against trusted issuers, and `airlock login` for reviewers. The
//! identity types themselves are in [`crate::model`].

pub mod login;
pub mod oidc;
pub mod workload;
