//! Protocol handlers: each takes an intercepted client connection, frames its commands, asks
//! policy about each one, and relays the rest.

pub mod credentials;
pub mod freshness;
pub mod http;
pub mod kube;
pub mod mysql;
pub mod postgres;
pub mod ssh;
pub mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::config::TargetConfig;
use crate::model::Protocol;
use crate::model::Workload;
use crate::runtime::Context;

/// One intercepted client connection, handed to its target's protocol handler.
#[derive(Debug)]
pub struct Session {
    /// Unique per daemon run.
    pub id: u64,
    pub client: TcpStream,
    pub target: Arc<TargetConfig>,
    /// The caller, from the interception record (`None` only when unintercepted connections
    /// are accepted, as in benchmarks).
    pub workload: Option<Workload>,
    /// Where the proxy connects for this session.
    pub upstream: SocketAddr,
    pub started: Instant,
    /// The daemon's drain signal: the session ends with its protocol's error at the deadline.
    pub drain: crate::drain::Watch,
}

/// Runs a session to completion with the handler for its target's protocol.
pub async fn serve(session: Session, ctx: Arc<Context>) {
    match session.target.protocol {
        Protocol::Tcp => tcp::serve(session, ctx).await,
        Protocol::Postgres => postgres::serve(session, ctx).await,
        Protocol::Mysql => mysql::serve(session, ctx).await,
        Protocol::Ssh => ssh::serve(session, ctx).await,
        Protocol::Http => http::serve(session, ctx).await,
        Protocol::Kube => kube::serve(session, ctx).await,
    }
}
