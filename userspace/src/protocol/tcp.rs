//! The `tcp` protocol: an opaque relay with per-session accounting.

use std::sync::Arc;

use super::Session;
use crate::proxy::Context;

/// Relays one TCP session to its upstream and logs what crossed.
pub async fn serve(session: Session, _ctx: Arc<Context>) {
    tracing::warn!(session = session.id, "tcp relay not wired yet");
}
