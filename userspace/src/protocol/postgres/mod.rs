//! PostgreSQL front end and back end. STUB: the PostgreSQL issue fills this in.

use std::sync::Arc;

use super::Session;
use crate::proxy::Context;

/// Serves one PostgreSQL client session.
pub async fn serve(session: Session, _ctx: Arc<Context>) {
    tracing::warn!(session = session.id, "postgres protocol not implemented yet");
}
