//! The reviewer console: server-rendered pages (readable without JavaScript), a live inbox over
//! server-sent events, approve and deny with a reason, history, sessions with their transcript
//! and a player, the audit log's verification, and a policy explain form. Login is OIDC
//! ([`auth`]) and open only to the readers (`readers`, by default the policy's approver groups);
//! every page needs a session whose groups are readers under the configuration in force, every
//! POST its CSRF token.
//!
//! Decisions go through the same [`Approvals::decide`] as the API and the CLI, so the same
//! rules hold: no self-approval, one approval per reviewer, approver groups, quorum.

pub mod assets;
pub mod auth;
pub mod events;
pub mod pages;
pub mod transcript;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::approval::Approvals;
use crate::config::console::ConsoleConfig;
use crate::runtime::Context;

pub use auth::Auth;

/// What every console handler gets.
pub struct Console {
    pub ctx: Arc<Context>,
    pub auth: Auth,
    pub hub: events::Hub,
    pub svc: Arc<Approvals>,
    /// `scheme://host:port` reviewers use; a POST's `Origin` must be this.
    pub origin: String,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("origin", &self.origin)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// The console's router: its pages, the REST API beside them, and its assets.
pub async fn router(ctx: Arc<Context>, cfg: &ConsoleConfig) -> anyhow::Result<Router> {
    let console = Arc::new(state(ctx.clone(), cfg)?);
    Ok(routes(console).merge(super::api::routes(ctx)))
}

/// The console's state for `cfg` (the approval service must be set on `ctx`).
pub fn state(ctx: Arc<Context>, cfg: &ConsoleConfig) -> anyhow::Result<Console> {
    let svc = ctx
        .approvals
        .get()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the console needs the approval service"))?;
    let auth = Auth::new(cfg)?;
    let origin = url::Url::parse(&cfg.base_url())?
        .origin()
        .ascii_serialization();
    Ok(Console {
        hub: events::Hub::start(svc.clone()),
        svc,
        ctx,
        auth,
        origin,
    })
}

/// The console's own routes.
pub fn routes(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(pages::inbox))
        .route("/events", get(pages::events))
        .route("/requests/{id}", get(pages::request))
        .route("/requests/{id}/decide", post(pages::decide))
        .route("/history", get(pages::history))
        .route("/sessions", get(pages::sessions))
        .route("/sessions/{id}", get(pages::session))
        .route("/sessions/{id}/cast", get(pages::cast))
        .route("/audit", get(pages::audit))
        .route("/policy", get(pages::policy))
        .route("/login", get(pages::login))
        .route("/auth/callback", get(pages::callback))
        .route("/logout", post(pages::logout))
        .route("/assets/{name}", get(assets::asset))
        .fallback(|| async {
            pages::message(StatusCode::NOT_FOUND, "Not found", "There is no such page.")
        })
        .layer(middleware::map_response(security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(console)
}

/// The Content Security Policy of every page: scripts and styles only from the daemon itself.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The session page's: the player's terminal emulator is WebAssembly (embedded in its script),
/// which a CSP lets compile only with `'wasm-unsafe-eval'` (that allows no JavaScript `eval`).
pub(crate) const CSP_PLAYER: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Headers on every console answer: no framing, no sniffing, no referrer to other sites, scripts and styles
/// only from the daemon itself, and nothing cached but the assets.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // `no-referrer` would make the browser send `Origin: null` on our own form posts.
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::CACHE_CONTROL, "no-store");
    response
}

/// Sends a visitor without a session to the login, coming back to `path` afterwards.
pub(crate) fn to_login(path: &str) -> Response {
    let next: String = url::form_urlencoded::byte_serialize(path.as_bytes()).collect();
    Redirect::to(&format!("/login?next={next}")).into_response()
}
