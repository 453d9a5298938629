//! The JSON REST API (`daemon.api`): list, show, approve, deny, revoke, submit plans; the
//! OpenAPI document at `GET /openapi.json`. HTTP/1.1 with one request per connection (the
//! callers are the CLI and chat bots; nothing here is on the data path). Every call needs
//! `Authorization: Bearer <admin token | OIDC token>`; decisions are attributed to the token's
//! subject.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{ApprovalError, Approvals, PlanSubmission, Verdict};
use crate::proxy::Context;

/// Largest request head and body accepted.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("approvals API: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Serves the API on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, ctx: Arc<Context>) -> Result<(), ApiError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })?;
    tracing::info!(%addr, "approvals API listening");
    serve_listener(listener, ctx).await;
    Ok(())
}

/// As [`serve`] on a bound listener (tests bind port 0).
pub async fn serve_listener(listener: TcpListener, ctx: Arc<Context>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(error) => {
                tracing::warn!(%error, "approvals API: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            if let Err(error) = connection(stream, &ctx).await {
                tracing::debug!(%peer, %error, "approvals API request failed");
            }
        });
    }
}

/// One parsed request.
struct HttpRequest {
    method: String,
    path: String,
    query: String,
    bearer: Option<String>,
    body: Vec<u8>,
}

async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<HttpRequest>> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let target = first.next().unwrap_or("").to_owned();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target, String::new()),
    };
    let mut length = 0usize;
    let mut bearer = None;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = v.parse().unwrap_or(usize::MAX);
        } else if k.eq_ignore_ascii_case("authorization") {
            bearer = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .map(str::to_owned);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked bodies are not accepted: the callers send Content-Length.
            return Ok(None);
        }
    }
    if length > MAX_BODY {
        return Ok(None);
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Some(HttpRequest {
        method,
        path,
        query,
        bearer,
        body,
    }))
}

async fn connection(mut stream: TcpStream, ctx: &Context) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let req = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) | Err(_) => {
            return respond(&mut stream, 400, &error_body("bad request")).await;
        }
        Ok(Err(e)) => return Err(e),
    };
    let (status, body) = route(&req, ctx).await;
    respond(&mut stream, status, &body).await
}

async fn respond(stream: &mut TcpStream, status: u16, body: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    let _ = stream.shutdown().await;
    Ok(())
}

fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default()
}

fn status_of(e: &ApprovalError) -> u16 {
    match e {
        ApprovalError::Store(_) => 503,
        ApprovalError::NotFound(_) => 404,
        ApprovalError::Conflict { .. } | ApprovalError::AlreadyVoted => 409,
        ApprovalError::OwnRequest | ApprovalError::NotApprover { .. } => 403,
        ApprovalError::Unauthorized(_) => 401,
        ApprovalError::Invalid(_) => 422,
        ApprovalError::Config(_) => 500,
    }
}

fn json<T: serde::Serialize>(status: u16, v: &T) -> (u16, Vec<u8>) {
    match serde_json::to_vec(v) {
        Ok(b) => (status, b),
        Err(e) => (500, error_body(&e.to_string())),
    }
}

fn fail(e: &ApprovalError) -> (u16, Vec<u8>) {
    (status_of(e), error_body(&e.to_string()))
}

/// Body of approve, deny and revoke.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reason: Option<String>,
}

async fn route(req: &HttpRequest, ctx: &Context) -> (u16, Vec<u8>) {
    let m = req.method.as_str();
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    if m == "GET" && req.path == "/openapi.json" {
        return (200, openapi().to_string().into_bytes());
    }
    if m == "GET" && req.path == "/healthz" {
        return json(200, &serde_json::json!({ "ok": true }));
    }
    let Some(svc) = ctx.approvals.get() else {
        return (
            503,
            error_body("approvals are not enabled on this instance"),
        );
    };
    let who = match svc
        .authenticate(req.bearer.as_deref().unwrap_or(""), &ctx.oidc.load())
        .await
    {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    match (m, segs.as_slice()) {
        ("GET", ["v1", "requests"]) => {
            let pending = req
                .query
                .split('&')
                .any(|kv| kv == "pending=true" || kv == "pending=1" || kv == "pending");
            match svc.list(pending).await {
                Ok(list) => json(200, &list),
                Err(e) => fail(&e),
            }
        }
        ("GET", ["v1", "requests", id]) => match svc.get(id).await {
            Ok(r) => json(200, &r),
            Err(e) => fail(&e),
        },
        ("POST", ["v1", "requests", id, action]) => {
            let verdict = match *action {
                "approve" => Verdict::Approve,
                "deny" => Verdict::Deny,
                "revoke" => Verdict::Revoke,
                _ => return (404, error_body("unknown action")),
            };
            let body: DecisionBody = if req.body.iter().all(u8::is_ascii_whitespace) {
                DecisionBody::default()
            } else {
                match serde_json::from_slice(&req.body) {
                    Ok(b) => b,
                    Err(e) => return (400, error_body(&format!("body: {e}"))),
                }
            };
            match svc.decide(id, &who, verdict, body.reason).await {
                Ok(r) => json(200, &r),
                Err(e) => fail(&e),
            }
        }
        ("POST", ["v1", "plans"]) => {
            let plan: PlanSubmission = match serde_json::from_slice(&req.body) {
                Ok(p) => p,
                Err(e) => return (400, error_body(&format!("body: {e}"))),
            };
            plan_submit(svc, plan, &who, ctx).await
        }
        (_, ["v1", ..]) => (404, error_body("no such endpoint")),
        _ => (404, error_body("no such endpoint")),
    }
}

async fn plan_submit(
    svc: &Approvals,
    plan: PlanSubmission,
    who: &super::Principal,
    ctx: &Context,
) -> (u16, Vec<u8>) {
    let config = ctx.config.load();
    let Some(target) = config.target(&plan.target) else {
        return (
            422,
            error_body(&format!("no target named {:?}", plan.target)),
        );
    };
    let protocol = target.protocol;
    let engine = ctx.engine.load();
    match svc.submit_plan(plan, who, &engine, protocol).await {
        Ok(r) => json(201, &r),
        Err(e) => fail(&e),
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
            "responses": {
                "200": {"description": "The request after the decision", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApprovalRequest"}}}},
                "401": {"$ref": "#/components/responses/Error"},
                "403": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"},
                "409": {"$ref": "#/components/responses/Error"},
                "503": {"$ref": "#/components/responses/Error"}
            }
        })
    };
    let request_schema = serde_json::json!({"type": "object", "properties": {
        "id": {"type": "string"},
        "kind": {"enum": ["command", "plan"]},
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
                "description": "The local admin token (<state_dir>/api.token) or an OIDC token from a trusted issuer whose groups include the request's approver group"}},
            "responses": {"Error": {"description": "Error", "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}},
            "schemas": {
                "DecisionBody": {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 4096}}, "additionalProperties": false},
                "PlanSubmission": {"type": "object", "required": ["target", "commands"], "additionalProperties": false, "properties": {
                    "target": {"type": "string"},
                    "subject": {"type": "string", "description": "Identity that runs the commands (default: the submitter)"},
                    "groups": {"type": "array", "items": {"type": "string"}},
                    "task": {"type": "string"},
                    "commands": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1000},
                    "ttl_seconds": {"type": "integer", "minimum": 1, "maximum": 86400},
                    "uses": {"type": "integer", "minimum": 1}
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

fn paths(
    decision: &dyn Fn(&str) -> serde_json::Value,
    id_param: &serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "/v1/requests": {"get": {
            "summary": "List approval requests, newest first",
            "parameters": [{"name": "pending", "in": "query", "schema": {"type": "boolean"}}],
            "responses": {"200": {"description": "Requests", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/ApprovalRequest"}}}}},
                          "401": {"$ref": "#/components/responses/Error"}}
        }},
        "/v1/requests/{id}": {"get": {
            "summary": "One approval request",
            "parameters": id_param,
            "responses": {"200": {"description": "The request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApprovalRequest"}}}},
                          "404": {"$ref": "#/components/responses/Error"}}
        }},
        "/v1/requests/{id}/approve": {"post": decision("Approve (counts toward the quorum)")},
        "/v1/requests/{id}/deny": {"post": decision("Deny (ends the request; a held command is refused)")},
        "/v1/requests/{id}/revoke": {"post": decision("Revoke a pending request or an unused approval (a held command is aborted)")},
        "/v1/plans": {"post": {
            "summary": "Submit a plan: commands approved ahead of time for a task",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PlanSubmission"}}}},
            "responses": {"201": {"description": "The plan's approval request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApprovalRequest"}}}},
                          "422": {"$ref": "#/components/responses/Error"}}
        }},
        "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI document"}}}}
    })
}
