//! The `kube` part of policy: Kubernetes API requests judged by verb, resource, subresource,
//! namespace and name, and for `exec`/`attach` by the command.

use crate::config::policy::KubeSpec;
use crate::model::{Class, Facts, KubeRequest};

/// The class of a verb: reads, writes, and the verbs that reach into a running container or
/// node (`admin`).
fn verb_kind(verb: &str) -> (&'static str, Class) {
    const VERBS: &[(&str, Class)] = &[
        ("get", Class::Read),
        ("list", Class::Read),
        ("watch", Class::Read),
        ("create", Class::Write),
        ("update", Class::Write),
        ("patch", Class::Write),
        ("delete", Class::Write),
        ("deletecollection", Class::Write),
        ("exec", Class::Admin),
        ("attach", Class::Admin),
        ("portforward", Class::Admin),
        ("proxy", Class::Admin),
    ];
    VERBS
        .iter()
        .find(|(v, _)| *v == verb)
        .map_or(("other", Class::Unknown), |(v, c)| (v, *c))
}

/// Classifies a request.
pub fn classify(req: &KubeRequest<'_>) -> Facts {
    let (kind, class) = verb_kind(&req.verb);
    let mut facts = if matches!(kind, "exec" | "attach") && !req.argv.is_empty() {
        let mut f = super::exec::classify_argv(&req.argv, kind);
        f.objects.clear();
        f
    } else {
        Facts::single(kind, class)
    };
    let mut object = req.resource_path();
    match (&req.namespace, &req.name) {
        (Some(ns), Some(n)) => object.push_str(&format!(" {ns}/{n}")),
        (Some(ns), None) => object.push_str(&format!(" {ns}/*")),
        (None, Some(n)) => object.push_str(&format!(" {n}")),
        (None, None) => {}
    }
    facts.objects.insert(0, object);
    if class == Class::Unknown {
        facts.notes.push(format!("verb {} is not judged", req.verb));
    }
    if !req.impersonate.is_empty() {
        // Acting as someone else with the gateway's credential: only a rule that names the
        // impersonation allows it (an `unknown` part is never covered by a default allow or
        // a rule without a what block).
        facts.kinds.push("impersonate");
        facts.statement_classes.push(Class::Unknown);
        facts.class = Class::Unknown;
        let who: Vec<&str> = req.impersonate.iter().map(|w| &**w).collect();
        facts.notes.insert(
            0,
            format!(
                "impersonation ({}) is refused unless a rule names it in kube.impersonate",
                who.join(", ")
            ),
        );
    }
    facts
}

/// Why a `kube` block does not match a request (`None`: it matches). For `allow`/`review`
/// (`permissive`), a subresource must be listed to match; for `deny` an empty list matches
/// every subresource.
pub fn mismatch(
    spec: &KubeSpec,
    req: &KubeRequest<'_>,
    facts: &Facts,
    permissive: bool,
) -> Option<&'static str> {
    if !spec.verbs.is_empty() && !spec.verbs.iter().any(|v| *v == req.verb) {
        return Some("kube.verbs");
    }
    if !spec.resources.is_empty() {
        let grouped = if req.group.is_empty() {
            req.resource.to_string()
        } else {
            format!("{}/{}", req.group, req.resource)
        };
        if !spec
            .resources
            .iter()
            .any(|g| g.matches(&req.resource) || g.matches(&grouped))
        {
            return Some("kube.resources");
        }
    }
    match (&req.subresource, spec.subresources.is_empty()) {
        (Some(sub), false) if !spec.subresources.iter().any(|s| s == sub) => {
            return Some("kube.subresources");
        }
        (Some(_), true) if permissive => {
            return Some("kube.subresources (a subresource must be named to be allowed)");
        }
        (None, false) => return Some("kube.subresources"),
        _ => {}
    }
    if !spec.namespaces.is_empty() {
        let ns = req.namespace.as_deref().unwrap_or("");
        if !spec.namespaces.iter().any(|g| {
            if ns.is_empty() {
                g.0.is_empty()
            } else {
                g.matches(ns)
            }
        }) {
            return Some("kube.namespaces");
        }
    }
    if !spec.names.is_empty() {
        let name = req.name.as_deref().unwrap_or("");
        if !spec.names.iter().any(|g| {
            if name.is_empty() {
                g.0.is_empty()
            } else {
                g.matches(name)
            }
        }) {
            return Some("kube.names");
        }
    }
    if !req.impersonate.is_empty() || !spec.impersonate.is_empty() {
        let named = |who: &str| spec.impersonate.iter().any(|g| g.matches(who));
        let ok = if permissive {
            req.impersonate.iter().all(|w| named(w))
        } else {
            spec.impersonate.is_empty() || req.impersonate.iter().any(|w| named(w))
        };
        if !ok {
            return Some("kube.impersonate");
        }
    }
    if let Some(exec) = &spec.exec
        && matches!(&*req.verb, "exec" | "attach")
    {
        return super::exec::mismatch(exec, facts, permissive).map(|_| "kube.exec");
    }
    None
}

/// A Kubernetes API path, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiPath<'p> {
    /// A resource request: `/api/v1/…` or `/apis/GROUP/VERSION/…`.
    Resource {
        group: &'p str,
        namespace: Option<&'p str>,
        resource: &'p str,
        name: Option<&'p str>,
        subresource: Option<&'p str>,
        /// The legacy `/api/v1/watch/…` form.
        watch_prefix: bool,
    },
    /// Anything else (`/version`, `/api`, `/apis/apps`, `/openapi/v2`, `/healthz`): RBAC's
    /// non-resource URLs.
    NonResource,
}

/// Splits a request path (without the query). What is not a resource path is
/// [`ApiPath::NonResource`]; the third part after the namespace is the subresource whatever
/// follows it (`…/pods/web/proxy/any/thing` is `pods/proxy web`, `…/pods/web/exec/x` is
/// `pods/exec web`), as the API server reads it.
pub fn parse_path(path: &str) -> ApiPath<'_> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segs.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
        _ => return ApiPath::NonResource,
    };
    let (group, mut rest) = rest;
    let watch_prefix = rest.first() == Some(&"watch");
    if watch_prefix {
        rest = &rest[1..];
    }
    // `namespaces/NS/status` and `namespaces/NS/finalize` are subresources of the namespace
    // itself, not resources inside it (the API server's `namespaceSubresources`).
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..]
            if !rest.is_empty() && !matches!(rest[0], "status" | "finalize") =>
        {
            (Some(*ns), rest)
        }
        ["namespaces", ns, ..] => (Some(*ns), rest),
        _ => (None, rest),
    };
    // As the API server reads it: the third part is the subresource, whatever follows.
    let (resource, name, subresource) = match rest {
        [] => return ApiPath::NonResource,
        [r] => (*r, None, None),
        [r, n] => (*r, Some(*n), None),
        [r, n, s, ..] => (*r, Some(*n), Some(*s)),
    };
    if resource.is_empty() || name == Some("") || subresource == Some("") {
        return ApiPath::NonResource;
    }
    ApiPath::Resource {
        group,
        namespace,
        resource,
        name,
        subresource,
        watch_prefix,
    }
}

/// Parses a request path (`/api/v1/namespaces/default/pods/web/exec?command=ls`) with its verb
/// into a request (for `policy explain --kube`). Query parameters `command=` become the argv,
/// `container=`, `stdin=` and `tty=` the exec's container and flags.
pub fn parse(verb: &str, path: &str) -> Result<KubeRequest<'static>, String> {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path, ""),
    };
    let ApiPath::Resource {
        group,
        namespace,
        resource,
        name,
        subresource,
        ..
    } = parse_path(path)
    else {
        return Err(format!(
            "`{path}` is not a Kubernetes API resource path (/api/v1/… or /apis/GROUP/VERSION/…)"
        ));
    };
    let owned = |s: &str| std::borrow::Cow::Owned(s.to_owned());
    let mut req = KubeRequest {
        verb: owned(verb),
        group: owned(group),
        resource: owned(resource),
        subresource: subresource.map(owned),
        namespace: namespace.map(owned),
        name: name.map(owned),
        ..KubeRequest::default()
    };
    check_query(query)?;
    apply_query(&mut req, query);
    Ok(req)
}

/// Takes an exec's or attach's command, container and flags from a query string, decoded as
/// the API server decodes it (keys and values percent-decoded, `+` a space; the first of a
/// repeated single-valued parameter counts). The caller refuses what Go would read otherwise
/// first ([`check_query`]).
pub fn apply_query(req: &mut KubeRequest<'_>, query: &str) {
    let (mut container, mut stdin, mut tty) = (None, None, None);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "command" => req.argv.push(v.into_owned().into()),
            "container" => {
                container.get_or_insert_with(|| v.into_owned());
            }
            "stdin" => {
                stdin.get_or_insert_with(|| is_true(&v));
            }
            "tty" => {
                tty.get_or_insert_with(|| is_true(&v));
            }
            _ => {}
        }
    }
    req.container = container.map(Into::into);
    req.stdin = stdin.unwrap_or(false);
    req.tty = tty.unwrap_or(false);
}

/// Refuses a query the API server would read otherwise than a form decoder: Go's parser drops
/// a parameter with a `;` (or a malformed escape, which the HTTP layer refuses), so
/// `command=x;/ls&command=rm` would run `rm` where `ls` was judged.
pub fn check_query(query: &str) -> Result<(), String> {
    if query.contains(';') {
        return Err("a `;` in the query (the API server drops that parameter)".into());
    }
    Ok(())
}

/// How the API server reads a boolean query parameter (`Convert_Slice_string_To_bool`, on the
/// first value): anything but `0` and `false` (any case), the empty string too, is true.
pub fn is_true(v: &str) -> bool {
    !(v == "0" || v.eq_ignore_ascii_case("false"))
}

/// Whether a query asks for a watch: its first `watch` parameter, read as the API server
/// reads it.
pub fn watch_param(query: &str) -> bool {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "watch")
        .is_some_and(|(_, v)| is_true(&v))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::policy::{ExecSpec, Glob};

    #[test]
    fn parses_paths() {
        let r = parse("get", "/api/v1/namespaces/default/pods/web").unwrap();
        assert_eq!(
            (
                &*r.group,
                &*r.resource,
                r.namespace.as_deref(),
                r.name.as_deref()
            ),
            ("", "pods", Some("default"), Some("web"))
        );
        let r = parse("list", "/apis/apps/v1/namespaces/prod/deployments").unwrap();
        assert_eq!(
            (&*r.group, &*r.resource, r.name.as_deref()),
            ("apps", "deployments", None)
        );
        let r = parse(
            "exec",
            "/api/v1/namespaces/default/pods/web/exec?command=rm&command=-rf&command=%2Fdata&stdin=true",
        )
        .unwrap();
        assert_eq!(r.subresource.as_deref(), Some("exec"));
        assert_eq!(r.argv, ["rm", "-rf", "/data"]);
        let r = parse("get", "/api/v1/nodes/n1").unwrap();
        assert_eq!((r.namespace, r.name.as_deref()), (None, Some("n1")));
        let r = parse("delete", "/api/v1/namespaces/team-a").unwrap();
        assert_eq!(
            (&*r.resource, r.name.as_deref()),
            ("namespaces", Some("team-a"))
        );
        assert!(parse("get", "/healthz").is_err());
        // The API server reads the third part as the subresource whatever follows.
        let r = parse("get", "/api/v1/namespaces/default/pods/web/exec/x").unwrap();
        assert_eq!(r.subresource.as_deref(), Some("exec"));
        // A namespace's own subresources are not resources inside it.
        for sub in ["status", "finalize"] {
            let r = parse("update", &format!("/api/v1/namespaces/dev/{sub}")).unwrap();
            assert_eq!(
                (
                    &*r.resource,
                    r.name.as_deref(),
                    r.subresource.as_deref(),
                    r.namespace.as_deref()
                ),
                ("namespaces", Some("dev"), Some(sub), Some("dev"))
            );
        }
        let r = parse("get", "/api/v1/namespaces/dev/status/x").unwrap();
        assert_eq!(
            (&*r.resource, r.name.as_deref()),
            ("namespaces", Some("dev"))
        );
    }

    #[test]
    fn queries_are_read_as_the_api_server_reads_them() {
        // Booleans: anything but 0 and false is true; the first value counts.
        for (v, want) in [
            ("true", true),
            ("1", true),
            ("yes", true),
            ("", true),
            ("f", true),
            ("0", false),
            ("false", false),
            ("FALSE", false),
        ] {
            assert_eq!(is_true(v), want, "{v:?}");
        }
        assert!(watch_param("watch=yes"));
        assert!(!watch_param("watch=0&watch=1"));
        assert!(!watch_param("resourceVersion=1"));
        let r = parse(
            "exec",
            "/api/v1/namespaces/default/pods/web/exec?command=ls&stdin=&tty=0",
        )
        .unwrap();
        assert!(r.stdin && !r.tty);
        // Go drops a parameter with a `;`: refused rather than judged otherwise.
        assert!(
            parse(
                "exec",
                "/api/v1/namespaces/default/pods/web/exec?command=x;/ls&command=rm"
            )
            .is_err()
        );
    }

    #[test]
    fn impersonation_needs_a_rule_that_names_it() {
        let mut req = parse("list", "/api/v1/namespaces/default/secrets").unwrap();
        req.impersonate = vec!["user:admin".into(), "group:system:masters".into()];
        let f = classify(&req);
        assert_eq!(f.class, Class::Unknown, "never covered by a default allow");
        assert!(f.notes[0].contains("user:admin"), "{:?}", f.notes);
        let reads = KubeSpec {
            verbs: vec!["list".into()],
            ..KubeSpec::default()
        };
        // An allow rule without `impersonate` does not cover it.
        assert_eq!(mismatch(&reads, &req, &f, true), Some("kube.impersonate"));
        // One naming only some of the identities neither.
        let some = KubeSpec {
            impersonate: vec![Glob("user:*".into())],
            ..reads.clone()
        };
        assert_eq!(mismatch(&some, &req, &f, true), Some("kube.impersonate"));
        let all = KubeSpec {
            impersonate: vec![Glob("user:admin".into()), Glob("group:*".into())],
            ..reads.clone()
        };
        assert_eq!(mismatch(&all, &req, &f, true), None);
        // A deny rule naming impersonation matches it, and only it.
        let deny = KubeSpec {
            impersonate: vec![Glob("*".into())],
            ..KubeSpec::default()
        };
        assert_eq!(mismatch(&deny, &req, &f, false), None);
        let plain = parse("list", "/api/v1/namespaces/default/secrets").unwrap();
        assert!(mismatch(&deny, &plain, &classify(&plain), false).is_some());
        assert_eq!(mismatch(&reads, &plain, &classify(&plain), true), None);
    }

    #[test]
    fn classes_and_matching() {
        let exec = parse(
            "exec",
            "/api/v1/namespaces/default/pods/web/exec?command=ls&command=-la",
        )
        .unwrap();
        let f = classify(&exec);
        assert_eq!(f.class, Class::Admin);
        assert_eq!(f.programs, ["ls"]);
        assert_eq!(f.objects[0], "pods/exec default/web");
        let spec = KubeSpec {
            verbs: vec!["exec".into()],
            resources: vec![Glob("pods".into())],
            subresources: vec!["exec".into()],
            exec: Some(ExecSpec {
                programs: vec![Glob("ls".into())],
                ..ExecSpec::default()
            }),
            ..KubeSpec::default()
        };
        assert_eq!(mismatch(&spec, &exec, &f, true), None);
        let rm = parse(
            "exec",
            "/api/v1/namespaces/default/pods/web/exec?command=rm&command=-rf&command=/",
        )
        .unwrap();
        assert_eq!(
            mismatch(&spec, &rm, &classify(&rm), true),
            Some("kube.exec")
        );
        // A read rule on pods does not cover a subresource unless it names it.
        let read = KubeSpec {
            verbs: vec!["get".into(), "list".into()],
            resources: vec![Glob("pods".into())],
            ..KubeSpec::default()
        };
        let logs = parse("get", "/api/v1/namespaces/default/pods/web/log").unwrap();
        assert!(mismatch(&read, &logs, &classify(&logs), true).is_some());
        assert_eq!(mismatch(&read, &logs, &classify(&logs), false), None);
        let get = parse("get", "/api/v1/namespaces/default/pods/web").unwrap();
        assert_eq!(mismatch(&read, &get, &classify(&get), true), None);
        let apps = KubeSpec {
            resources: vec![Glob("apps/*".into())],
            namespaces: vec![Glob("prod".into())],
            ..KubeSpec::default()
        };
        let dep = parse("delete", "/apis/apps/v1/namespaces/prod/deployments/api").unwrap();
        assert_eq!(mismatch(&apps, &dep, &classify(&dep), true), None);
        assert_eq!(classify(&dep).class, Class::Write);
    }
}
