//! The JSON REST API (`daemon.api`, and beside the console): list, show, approve, deny,
//! revoke, submit plans; the OpenAPI document at `GET /openapi.json`. Every `/v1` call needs
//! `Authorization: Bearer <admin token | OIDC token>`, an OIDC token of a reader (see
//! [`crate::config::Config::is_reader`]); decisions are attributed to the token's subject.
//! Errors are `{"error": "…"}` with the status the document names.
//!
//! Answers carry `Connection: close`, as the API always did: its callers (the CLI, chat bots,
//! scripts) make one call per connection, and some read to the end of the stream.

// A rejection is the `Response` a handler returns at once; boxing it buys nothing.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::json_error;
use crate::approval::{ApprovalError, Approvals, PlanSubmission, Principal, Ruling};
use crate::runtime::Context;

/// Largest request body accepted (a plan of 1,000 commands fits).
const MAX_BODY: usize = 1024 * 1024;

/// Serves the API alone on a bound listener (tests bind port 0).
pub async fn serve_listener(listener: tokio::net::TcpListener, ctx: Arc<Context>) {
    super::serve_listener(listener, router(ctx), None).await;
}

/// The API's routes: `/v1/…`, `/openapi.json` and `/healthz`.
pub fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .merge(routes(ctx))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::map_response(close_connection))
}

/// The API's routes without a fallback, to merge into another router (the console's).
pub fn routes(ctx: Arc<Context>) -> Router {
    let v1 = Router::new()
        .route("/v1/requests", get(list))
        .route("/v1/requests/{id}", get(show))
        .route("/v1/requests/{id}/{action}", post(decide))
        .route("/v1/plans", post(plan_submit))
        .route(
            "/v1/targets/{name}/rotate-credentials",
            post(rotate_credentials),
        )
        .route_layer(middleware::from_fn_with_state(ctx.clone(), authenticate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({ "ok": true })) }),
        )
        .merge(v1)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(ctx)
}

async fn method_not_allowed() -> Response {
    json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

async fn close_connection(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn openapi_json() -> Response {
    axum::Json(openapi()).into_response()
}

/// The service and the caller, for every `/v1` handler.
#[derive(Clone)]
struct Caller {
    svc: Arc<Approvals>,
    who: Principal,
}

/// Resolves the bearer token before any `/v1` handler runs: approvals disabled is 503, a
/// missing or invalid token 401, an OIDC token whose groups are not among the readers
/// (`daemon.console.readers`, by default the policy's approver groups) 403. The admin token
/// passes; deciding still needs the request's approver group ([`Approvals::decide`]).
async fn authenticate(State(ctx): State<Arc<Context>>, mut req: Request, next: Next) -> Response {
    let Some(svc) = ctx.approvals.get().cloned() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "approvals are not enabled on this instance",
        );
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .unwrap_or("")
        .to_owned();
    match svc.authenticate(&bearer, &ctx.oidc.load()).await {
        Ok(who) if !who.admin && !ctx.config.load().is_reader(&who.groups) => {
            tracing::warn!(subject = %who.subject, groups = ?who.groups, path = %req.uri().path(), "API: token refused, its groups are not readers");
            json_error(
                StatusCode::FORBIDDEN,
                format!(
                    "not a reviewer of this gateway: the token's groups ({}) are not among the readers",
                    super::console::auth::groups_text(&who.groups)
                ),
            )
        }
        Ok(who) => {
            req.extensions_mut().insert(Caller { svc, who });
            next.run(req).await
        }
        Err(e) => fail(&e),
    }
}

/// The HTTP status of an approval error.
pub(crate) fn status_of(e: &ApprovalError) -> StatusCode {
    match e {
        ApprovalError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        ApprovalError::NotFound(_) => StatusCode::NOT_FOUND,
        ApprovalError::Conflict { .. } | ApprovalError::AlreadyVoted => StatusCode::CONFLICT,
        ApprovalError::OwnRequest | ApprovalError::NotApprover { .. } => StatusCode::FORBIDDEN,
        ApprovalError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        ApprovalError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ApprovalError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn fail(e: &ApprovalError) -> Response {
    json_error(status_of(e), e)
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    (status, axum::Json(v)).into_response()
}

/// Body of approve, deny and revoke.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default, deserialize_with = "crate::approval::present")]
    reason: Option<String>,
}

/// `?pending=true|false` (also `1`, `0`, and a bare `pending`).
fn pending_param(query: Option<&str>) -> Result<bool, Response> {
    let mut pending = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        if k != "pending" {
            continue;
        }
        pending = match v {
            "true" | "1" | "" => true,
            "false" | "0" => false,
            _ => {
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    format!("pending: `{v}` is not a boolean"),
                ));
            }
        };
    }
    Ok(pending)
}

async fn list(axum::Extension(c): axum::Extension<Caller>, RawQuery(q): RawQuery) -> Response {
    let pending = match pending_param(q.as_deref()) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match c.svc.list(pending).await {
        Ok(list) => json(StatusCode::OK, &list),
        Err(e) => fail(&e),
    }
}

async fn show(axum::Extension(c): axum::Extension<Caller>, Path(id): Path<String>) -> Response {
    match c.svc.get(&id).await {
        Ok(r) => json(StatusCode::OK, &r),
        Err(e) => fail(&e),
    }
}

/// The ruling an action path names.
pub(crate) fn ruling(action: &str) -> Option<Ruling> {
    match action {
        "approve" => Some(Ruling::Approve),
        "deny" => Some(Ruling::Deny),
        "revoke" => Some(Ruling::Revoke),
        _ => None,
    }
}

async fn decide(
    axum::Extension(c): axum::Extension<Caller>,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(verdict) = ruling(&action) else {
        return json_error(StatusCode::NOT_FOUND, "unknown action");
    };
    let body: DecisionBody = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("body: {e}")),
        }
    };
    match c.svc.decide(&id, &c.who, verdict, body.reason).await {
        Ok(r) => json(StatusCode::OK, &r),
        Err(e) => fail(&e),
    }
}

async fn plan_submit(
    State(ctx): State<Arc<Context>>,
    axum::Extension(c): axum::Extension<Caller>,
    body: Bytes,
) -> Response {
    let plan: PlanSubmission = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let config = ctx.config.load();
    let Some(target) = config.target(&plan.target) else {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("no target named {:?}", plan.target),
        );
    };
    let protocol = target.protocol;
    let engine = ctx.engine.load();
    match c.svc.submit_plan(plan, &c.who, &engine, protocol).await {
        Ok(r) => json(StatusCode::CREATED, &r),
        Err(e) => fail(&e),
    }
}

/// Rotates a database target's password (PostgreSQL, MariaDB/MySQL) in the daemon, recorded
/// in the audit log (admin token only).
async fn rotate_credentials(
    State(ctx): State<Arc<Context>>,
    axum::Extension(c): axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    if !c.who.admin {
        return json_error(
            StatusCode::FORBIDDEN,
            "only the admin token may rotate credentials",
        );
    }
    let config = ctx.config.load();
    let Some(target) = config.target(&name) else {
        return json_error(StatusCode::NOT_FOUND, format!("no target named {name:?}"));
    };
    if crate::protocol::credentials::Account::of(target).is_none() {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "target {name:?} is not a database target (PostgreSQL, MariaDB/MySQL) with a login"
            ),
        );
    }
    let Some(upstream) = target.upstream else {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("target {name:?} has no `upstream` to rotate on"),
        );
    };
    match crate::protocol::credentials::rotate_recorded(&ctx, target, upstream).await {
        Ok(file) => json(
            StatusCode::OK,
            &serde_json::json!({ "target": name, "password_file": file.display().to_string() }),
        ),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi() -> serde_json::Value {
    let id_param = serde_json::json!([{
        "name": "id", "in": "path", "required": true, "schema": {"type": "string"}
    }]);
    let decision = |summary: &str| {
        serde_json::json!({
            "summary": summary,
            "parameters": id_param,
            "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DecisionBody"}}}},
            "responses": with_errors(
                serde_json::json!({"200": {"description": "The request after the decision", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApprovalRequest"}}}}}),
                &[("400", "The body is not a DecisionBody"), ("403", "Your own request, or not in an approver group"), ("404", "No such request"), ("409", "Decided already, or you already approved"), ("422", "The reason is longer than 4096 characters")],
            )
        })
    };
    let request_schema = serde_json::json!({"type": "object", "properties": {
        "id": {"type": "string"},
        "kind": {"enum": ["command", "plan"]},
        "protocol": {"type": "string", "description": "Protocol of the commands (absent in requests stored before it was recorded)"},
        "state": {"enum": ["pending", "approved", "denied", "expired", "revoked", "used", "withdrawn"]},
        "commands": {"type": "array", "items": {"type": "object", "properties": {
            "text": {"type": "string"}, "sha256": {"type": "string"}, "uses_left": {"type": "integer"}}}},
        "classes": {"type": "array", "items": {"type": "string"}},
        "kinds": {"type": "array", "items": {"type": "string"}},
        "tables": {"type": "array", "items": {"type": "string"}},
        "subject": {"type": "string"}, "groups": {"type": "array", "items": {"type": "string"}},
        "workload": {"type": ["object", "null"]},
        "target": {"type": "string"}, "session": {"type": ["integer", "null"]},
        "instance": {"type": "string"}, "rule": {"type": "string"},
        "requested_by": {"type": ["string", "null"]}, "task": {"type": ["string", "null"]},
        "approvers": {"type": "array", "items": {"type": "string"}},
        "escalate_to": {"type": "array", "items": {"type": "string"}},
        "escalated": {"type": "boolean"}, "quorum": {"type": "integer"},
        "ttl_ms": {"type": "integer"}, "timeout_ms": {"type": "integer"},
        "on_timeout": {"enum": ["deny", "escalate"]}, "mode": {"enum": ["hold", "retry"]},
        "mask": {"type": "array", "items": {"type": "string"}},
        "created_ms": {"type": "integer"}, "deadline_ms": {"type": "integer"},
        "decided_ms": {"type": ["integer", "null"]}, "expires_ms": {"type": ["integer", "null"]},
        "votes": {"type": "array", "items": {"$ref": "#/components/schemas/Vote"}},
        "reason": {"type": ["string", "null"]}
    }});
    let paths = paths(&decision, &id_param);
    serde_json::json!({
        "openapi": "3.1.0",
        "info": {"title": "airlock approvals API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Human-in-the-loop approvals of commands held by airlock."},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "The local admin token (<state_dir>/api.token), or an OIDC token from a trusted issuer whose groups include one of the readers (daemon.console.readers; by default every approver group of the policy); deciding also needs the request's approver group"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
                "DecisionBody": {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 4096}}, "additionalProperties": false},
                "PlanSubmission": {"type": "object", "required": ["target", "commands"], "additionalProperties": false, "properties": {
                    "target": {"type": "string"},
                    "subject": {"type": "string", "description": "Identity that runs the commands (default: the submitter)"},
                    "groups": {"type": "array", "items": {"type": "string"}},
                    "task": {"type": "string"},
                    "commands": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1000},
                    "ttl_seconds": {"type": "integer", "minimum": 1, "maximum": 86400},
                    "uses": {"type": "integer", "minimum": 1, "maximum": u32::MAX}
                }},
                "Vote": {"type": "object", "properties": {
                    "by": {"type": "string"}, "via": {"type": "string"},
                    "verdict": {"enum": ["approve", "deny", "revoke"]},
                    "reason": {"type": ["string", "null"]}, "at_ms": {"type": "integer"}}},
                "ApprovalRequest": request_schema
            }
        }
    })
}

/// What every `/v1` call answers with 403.
const NOT_READER: &str = "An OIDC token whose groups are not among the readers (daemon.console.readers; by default every approver group of the policy)";

/// `responses` with the errors every `/v1` call can answer (401 without a valid token, 403 for
/// a token of someone who is not a reader, 503 when the store or the approval service is
/// unavailable) and the operation's own (a 403 of its own is added to the readers' one).
fn with_errors(mut ok: serde_json::Value, own: &[(&str, &str)]) -> serde_json::Value {
    let error = |description: &str| serde_json::json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    if let Some(map) = ok.as_object_mut() {
        map.insert("401".into(), error("No token, or not a valid one"));
        map.insert("403".into(), error(NOT_READER));
        map.insert(
            "503".into(),
            error("Approvals are off here, or the store is unavailable"),
        );
        for (code, description) in own {
            let description = if *code == "403" {
                format!("{description}; or: {NOT_READER}")
            } else {
                (*description).to_owned()
            };
            map.insert((*code).into(), error(&description));
        }
    }
    ok
}

fn paths(
    decision: &dyn Fn(&str) -> serde_json::Value,
    id_param: &serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "/v1/requests": {"get": {
            "summary": "List approval requests, newest first",
            "parameters": [{"name": "pending", "in": "query", "schema": {"type": "boolean"}}],
            "responses": with_errors(
                serde_json::json!({"200": {"description": "Requests", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/ApprovalRequest"}}}}}}),
                &[("400", "`pending` is not a boolean")],
            )
        }},
        "/v1/requests/{id}": {"get": {
            "summary": "One approval request",
            "parameters": id_param,
            "responses": with_errors(
                serde_json::json!({"200": {"description": "The request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApprovalRequest"}}}}}),
                &[("404", "No such request")],
            )
        }},
        "/v1/requests/{id}/approve": {"post": decision("Approve (counts toward the quorum)")},
        "/v1/requests/{id}/deny": {"post": decision("Deny (ends the request; a held command is refused)")},
        "/v1/requests/{id}/revoke": {"post": decision("Revoke a pending request or an unused approval (a held command is aborted)")},
        "/v1/targets/{name}/rotate-credentials": {"post": {
            "summary": "Rotate the gateway's password on a database target (PostgreSQL, MariaDB/MySQL) in the daemon and write it to the target's password_file (admin token only; recorded in the audit log, never the secret)",
            "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": with_errors(
                serde_json::json!({"200": {"description": "Rotated", "content": {"application/json": {"schema": {"type": "object"}}}}}),
                &[("403", "Not the admin token"), ("404", "No such target"), ("422", "Not a database target, or the target has no upstream"), ("500", "The rotation failed; the message says which password works")],
            )
        }},
        "/v1/plans": {"post": {
            "summary": "Submit a plan: commands approved ahead of time for a task",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PlanSubmission"}}}},
            "responses": with_errors(
                serde_json::json!({"201": {"description": "The plan's approval request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApprovalRequest"}}}}}),
                &[("400", "The body is not a PlanSubmission"), ("422", "No such target, a command policy denies, no command needing review, approver groups that differ, or a TTL out of range")],
            )
        }},
        "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/healthz": {"get": {"summary": "The API answers", "security": [], "responses": {"200": {"description": "Up", "content": {"application/json": {"schema": {"type": "object", "properties": {"ok": {"const": true}}, "required": ["ok"]}}}}}}}
    })
}

#[cfg(test)]
mod tests {
    use super::DecisionBody;
    use crate::approval::PlanSubmission;

    /// The document types these fields as plain `string`/`integer`: `null` is refused, not
    /// read as "absent".
    #[test]
    fn null_is_refused_where_the_document_says_string_or_integer() {
        assert!(serde_json::from_str::<DecisionBody>(r#"{"reason": null}"#).is_err());
        let ok: DecisionBody = serde_json::from_str(r#"{"reason": "ok"}"#).unwrap();
        assert_eq!(ok.reason.as_deref(), Some("ok"));
        assert!(
            serde_json::from_str::<DecisionBody>("{}")
                .unwrap()
                .reason
                .is_none()
        );
        for field in ["subject", "task", "ttl_seconds", "uses"] {
            let body = format!(r#"{{"target": "db", "commands": ["SELECT 1"], "{field}": null}}"#);
            assert!(
                serde_json::from_str::<PlanSubmission>(&body).is_err(),
                "{field}: null was accepted"
            );
        }
        let plan: PlanSubmission =
            serde_json::from_str(r#"{"target": "db", "commands": ["SELECT 1"], "uses": 2.0}"#)
                .unwrap();
        assert_eq!(
            (plan.uses, plan.ttl_seconds, plan.task),
            (Some(2), None, None)
        );
    }
}
