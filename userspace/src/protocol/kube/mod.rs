//! The `kube` protocol: the Kubernetes API served by the HTTP engine ([`super::http`]) with a
//! classifier of its own. Each request becomes a [`KubeRequest`] (verb, group, resource,
//! subresource, namespace, name; for exec and attach the argv, container and flags; the
//! `Impersonate-*` headers), decided by the `kube` blocks of policy. The engine does the rest:
//! the gateway's credential swapped in, holds, answers masked (Secret values by the masking
//! rules' JSON paths), upgrades (exec, attach, port-forward) tunnelled after the request was
//! judged. What the gateway answers itself is a Kubernetes `Status`, which kubectl prints.

pub mod stream;

use std::borrow::Cow;
use std::sync::Arc;

use http::{Method, StatusCode};

use super::Session;
use super::http::classify::{StreamDecoder, Terminal, Treatment};
use super::http::{Classify, Head};
use crate::model::{Command, HttpBody, KubeRequest, Protocol};
use crate::policy::kube::{ApiPath, apply_query, check_query, parse_path, watch_param};
use crate::runtime::Context;

/// Serves one intercepted connection to a Kubernetes API server.
pub async fn serve(session: Session, ctx: Arc<Context>) {
    super::http::serve_with(session, ctx, Arc::new(KubeClassifier)).await;
}

/// The `kube` protocol's classifier: [`Command::Kube`].
#[derive(Debug, Clone, Copy, Default)]
pub struct KubeClassifier;

impl Classify for KubeClassifier {
    fn protocol(&self) -> Protocol {
        Protocol::Kube
    }

    fn command<'a>(
        &self,
        head: &Head<'a>,
        body: Option<HttpBody<'a>>,
    ) -> Result<Command<'a>, String> {
        let mut req = request(head)?;
        // What the fields leave out (a body, a selector, a proxy's path) still changes what
        // runs: the text an approval binds carries it.
        let mut sent = format!("{} {}", head.method, head.path);
        if let Some(q) = head.query {
            sent.push('?');
            sent.push_str(q);
        }
        if let Some(b) = &body {
            b.describe(&mut sent);
        }
        req.sent = Some(Cow::Owned(sent));
        Ok(Command::Kube(req))
    }

    fn treatment(&self, head: &Head<'_>, command: &Command<'_>) -> Treatment {
        // Exec and attach streams are recorded.
        let terminal = matches!(command, Command::Kube(r) if matches!(&*r.verb, "exec" | "attach"))
            .then_some(Terminal {
                websocket_protocols: &stream::CHANNEL_PROTOCOLS,
            });
        // Port-forward is a tunnel only a rule naming the subresource allows. A proxy's
        // upgrade is an app's WebSocket (or the kubelet's own exec), refused under masking.
        let tunnel = matches!(command, Command::Kube(r) if &*r.verb == "portforward");
        Treatment {
            json_lines: is_watch(head),
            negotiate_json: true,
            terminal,
            tunnel,
        }
    }

    fn stream_decoder(&self, answer: &http::HeaderMap) -> Option<Box<dyn StreamDecoder>> {
        stream::decoder(answer)
    }

    fn error_body(&self, status: StatusCode, body: serde_json::Value) -> serde_json::Value {
        status_object(status, &body)
    }
}

/// Whether a request is a watch: `?watch=true` or the legacy `/watch/` path prefix.
fn is_watch(head: &Head<'_>) -> bool {
    let param = head.query.is_some_and(watch_param);
    param
        || matches!(
            parse_path(head.path),
            ApiPath::Resource {
                watch_prefix: true,
                ..
            }
        )
}

/// Classifies a request as the API server's request-info resolver does, with exec, attach,
/// port-forward and proxy as verbs of their own (whatever the method: kubectl opens exec with
/// POST over SPDY and GET over WebSocket). A path outside the resource tree (`/version`,
/// `/api`, `/openapi/v3`) is a non-resource request: its verb is the method's, lower-case, and
/// its resource the path.
pub fn request<'a>(head: &Head<'a>) -> Result<KubeRequest<'a>, String> {
    let method = head.method;
    check_query(head.query.unwrap_or(""))?;
    let mut req = match parse_path(head.path) {
        ApiPath::NonResource => KubeRequest {
            verb: Cow::Owned(method.as_str().to_ascii_lowercase()),
            resource: Cow::Borrowed(head.path),
            ..KubeRequest::default()
        },
        ApiPath::Resource {
            group,
            namespace,
            resource,
            name,
            subresource,
            watch_prefix,
        } => {
            let watch = watch_prefix || head.query.is_some_and(watch_param);
            let verb = match subresource {
                Some(s @ ("exec" | "attach" | "portforward" | "proxy")) => s,
                _ => match *method {
                    Method::GET | Method::HEAD if watch => "watch",
                    Method::GET | Method::HEAD if name.is_some() => "get",
                    Method::GET | Method::HEAD => "list",
                    Method::POST => "create",
                    Method::PUT => "update",
                    Method::PATCH => "patch",
                    Method::DELETE if name.is_some() => "delete",
                    Method::DELETE => "deletecollection",
                    _ => return Err(format!("method {method} is not a Kubernetes API verb")),
                },
            };
            KubeRequest {
                verb: Cow::Borrowed(verb),
                group: Cow::Borrowed(group),
                resource: Cow::Borrowed(resource),
                subresource: subresource.map(Cow::Borrowed),
                namespace: namespace.map(Cow::Borrowed),
                name: name.map(Cow::Borrowed),
                ..KubeRequest::default()
            }
        }
    };
    // Through `nodes/NAME/proxy` the kubelet's own endpoints run commands in any pod of the
    // node (`/run/NS/POD/CONTAINER?cmd=…`, `/exec/…`, `/attach/…`) or forward its ports: judged
    // as the exec or port-forward they are, never as a plain proxy call a metrics rule allows.
    if &*req.resource == "nodes"
        && req.subresource.as_deref() == Some("proxy")
        && let Some((_, rest)) = head.path.split_once("/proxy/")
    {
        match rest.split('/').next() {
            Some("run" | "exec" | "attach" | "cri" | "checkpoint") => {
                req.verb = Cow::Borrowed("exec")
            }
            Some("portForward") => req.verb = Cow::Borrowed("portforward"),
            _ => {}
        }
    }
    if matches!(&*req.verb, "exec" | "attach") {
        apply_query(&mut req, head.query.unwrap_or(""));
    }
    req.impersonate = impersonation(head.headers)?;
    Ok(req)
}

/// The identities a request asks to act as, from its `Impersonate-*` headers.
fn impersonation(headers: &http::HeaderMap) -> Result<Vec<Cow<'static, str>>, String> {
    let mut who = Vec::new();
    for (name, value) in headers {
        let Some(what) = name.as_str().strip_prefix("impersonate-") else {
            continue;
        };
        let value = value
            .to_str()
            .map_err(|_| format!("header {name} is not text"))?;
        let entry = match what {
            "user" => format!("user:{value}"),
            "group" => format!("group:{value}"),
            "uid" => format!("uid:{value}"),
            _ => match what.strip_prefix("extra-") {
                Some(key) => format!("extra:{key}={value}"),
                // An unknown Impersonate- header is still an attempt: judged as one.
                None => format!("{what}:{value}"),
            },
        };
        who.push(Cow::Owned(entry));
    }
    Ok(who)
}

/// The engine's own error answer as a Kubernetes `Status` (kubectl prints its `message`).
fn status_object(status: StatusCode, body: &serde_json::Value) -> serde_json::Value {
    let reason = match status.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        408 | 504 => "Timeout",
        409 => "Conflict",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    };
    let text = body
        .get("message")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("refused by airlock");
    let text = text.strip_prefix("airlock: ").unwrap_or(text);
    // The gate's message names the rule already ("denied by rule \"…\": …").
    let message = match body.get("rule").and_then(serde_json::Value::as_str) {
        Some(rule) if !text.contains(rule) => format!("airlock: {text} (rule {rule})"),
        _ => format!("airlock: {text}"),
    };
    let mut details = serde_json::Map::new();
    if let Some(error) = body.get("error") {
        details.insert("kind".into(), error.clone());
    }
    let mut causes = Vec::new();
    for key in ["rule", "request"] {
        if let Some(v) = body.get(key) {
            causes.push(serde_json::json!({"reason": key, "message": v}));
        }
    }
    if !causes.is_empty() {
        details.insert("causes".into(), causes.into());
    }
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": status.as_u16(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(method: Method, target: &str, headers: &[(&str, &str)]) -> KubeRequest<'static> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        let head = Head {
            method: &method,
            host: "api.test",
            path,
            query,
            headers: &map,
        };
        match Command::Kube(request(&head).unwrap()).into_owned() {
            Command::Kube(k) => k,
            _ => unreachable!(),
        }
    }

    fn text(method: Method, target: &str, headers: &[(&str, &str)]) -> String {
        Command::Kube(classify(method, target, headers))
            .text()
            .into_owned()
    }

    #[test]
    fn verbs_follow_the_api_servers_resolver() {
        let t = |m, p| text(m, p, &[]);
        assert_eq!(
            t(Method::GET, "/api/v1/namespaces/default/pods"),
            "list pods -n default"
        );
        assert_eq!(
            t(Method::GET, "/api/v1/namespaces/default/pods/web"),
            "get pods default/web"
        );
        assert_eq!(t(Method::GET, "/api/v1/pods?watch=1"), "watch pods");
        assert_eq!(
            t(Method::GET, "/api/v1/watch/namespaces/a/secrets"),
            "watch secrets -n a"
        );
        assert_eq!(
            t(Method::POST, "/apis/apps/v1/namespaces/a/deployments"),
            "create apps/deployments -n a"
        );
        assert_eq!(
            t(Method::PUT, "/api/v1/namespaces/a/pods/web/status"),
            "update pods/status a/web"
        );
        assert_eq!(t(Method::PATCH, "/api/v1/nodes/n1"), "patch nodes n1");
        assert_eq!(
            t(Method::DELETE, "/api/v1/namespaces/a/pods/web"),
            "delete pods a/web"
        );
        assert_eq!(
            t(Method::DELETE, "/api/v1/namespaces/a/pods"),
            "deletecollection pods -n a"
        );
        assert_eq!(
            t(Method::GET, "/api/v1/nodes/n1/proxy/metrics"),
            "proxy nodes/proxy n1"
        );
        // The kubelet's command endpoints through the node proxy are what they run.
        assert_eq!(
            t(
                Method::POST,
                "/api/v1/nodes/n1/proxy/run/prod/db-0/db?cmd=id"
            ),
            "exec nodes/proxy n1"
        );
        assert_eq!(
            t(Method::POST, "/api/v1/nodes/n1/proxy/portForward/prod/db-0"),
            "portforward nodes/proxy n1"
        );
        assert_eq!(
            t(Method::POST, "/api/v1/namespaces/a/pods/web/portforward"),
            "portforward pods/portforward a/web"
        );
        assert_eq!(t(Method::GET, "/version"), "get /version");
        assert_eq!(t(Method::GET, "/apis"), "get /apis");
    }

    #[test]
    fn exec_carries_its_argv_container_and_flags_over_both_methods() {
        let q = "/api/v1/namespaces/default/pods/web/exec?command=rm&command=-rf&command=%2Fdata&container=app&stdin=true&stdout=true&tty=true";
        for m in [Method::POST, Method::GET] {
            let k = classify(m, q, &[]);
            assert_eq!(k.verb, "exec");
            assert_eq!(k.argv, ["rm", "-rf", "/data"]);
            assert_eq!(k.container.as_deref(), Some("app"));
            assert!(k.stdin && k.tty);
        }
        assert_eq!(
            text(Method::POST, q, &[]),
            "exec pods/exec default/web -c app -it -- rm -rf /data"
        );
    }

    #[test]
    fn impersonation_headers_are_part_of_the_request() {
        let k = classify(
            Method::GET,
            "/api/v1/secrets",
            &[
                ("impersonate-user", "admin"),
                ("impersonate-group", "system:masters"),
                ("impersonate-extra-scopes", "view"),
            ],
        );
        assert_eq!(
            k.impersonate,
            ["user:admin", "group:system:masters", "extra:scopes=view"]
        );
    }

    #[test]
    fn refusals_are_kubernetes_status_objects() {
        let s = status_object(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": "denied", "rule": "no-rm", "message": "rm is not allowed"}),
        );
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["reason"], "Forbidden");
        assert_eq!(s["code"], 403);
        assert_eq!(s["message"], "airlock: rm is not allowed (rule no-rm)");
        let s = status_object(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": "denied", "rule": "no-rm",
                "message": "airlock: denied by rule \"no-rm\": rm is not allowed"}),
        );
        assert_eq!(
            s["message"],
            "airlock: denied by rule \"no-rm\": rm is not allowed"
        );
    }
}
