//! The `http` part of policy: requests judged by method, host, path, query, headers and the
//! (bounded) body.

use crate::config::policy::HttpSpec;
use crate::model::{Class, Facts, HttpBody, HttpRequest};

/// The method as a static kind name, and its class: safe methods read, the others write,
/// methods outside RFC 9110 (and `CONNECT`, `TRACE`) are `unknown`.
fn method_kind(method: &str) -> (&'static str, Class) {
    const KNOWN: &[(&str, &str, Class)] = &[
        ("GET", "get", Class::Read),
        ("HEAD", "head", Class::Read),
        ("OPTIONS", "options", Class::Read),
        ("POST", "post", Class::Write),
        ("PUT", "put", Class::Write),
        ("PATCH", "patch", Class::Write),
        ("DELETE", "delete", Class::Write),
    ];
    KNOWN
        .iter()
        .find(|(m, _, _)| m.eq_ignore_ascii_case(method))
        .map_or(("other", Class::Unknown), |(_, k, c)| (k, *c))
}

/// Classifies a request.
pub fn classify(req: &HttpRequest<'_>) -> Facts {
    let (kind, class) = method_kind(&req.method);
    let mut facts = Facts::single(kind, class);
    facts.objects = vec![format!("{}{}", req.host, req.path)];
    if class == Class::Unknown {
        facts
            .notes
            .push(format!("method {} is not judged", req.method));
    }
    if let Some(HttpBody::OverLimit { limit }) = &req.body {
        // Fail closed: what was not read cannot be judged.
        facts.class = Class::Unknown;
        facts.notes.push(format!(
            "request body larger than {limit} bytes: not read before judging"
        ));
    }
    facts
}

/// Why an `http` block does not match a request (`None`: it matches). The head's filters
/// are single-valued, so allow and deny rules read them the same way; what the gateway could
/// not judge (a method outside RFC 9110, a body over the bound) matches an `allow`/`review`
/// rule (`permissive`) only when the rule names it, and always matches a `deny` rule's body
/// filter.
///
/// `allow`: the rule lets the request through unseen. Its path and query globs then match
/// narrowly (the case they name, parameter by parameter); a `deny` or `review` rule's match
/// broadly, since a request one of those misses falls through to the rules after it.
pub fn mismatch(
    spec: &HttpSpec,
    req: &HttpRequest<'_>,
    permissive: bool,
    allow: bool,
) -> Option<&'static str> {
    if !spec.methods.is_empty()
        && !spec
            .methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(&req.method))
    {
        return Some("http.methods");
    }
    if permissive && spec.methods.is_empty() && method_kind(&req.method).1 == Class::Unknown {
        return Some("http.methods (a method outside RFC 9110 must be named)");
    }
    let over_limit = matches!(req.body, Some(HttpBody::OverLimit { .. }));
    if permissive && over_limit && !spec.large_body {
        return Some("http.large_body (body over the bound, not judged)");
    }
    if !spec.body.is_empty() {
        let ok = match req.body_text() {
            Some(t) => spec.body.iter().any(|g| g.matches(t)),
            // Unread, binary, coded or in another encoding: a deny rule covers it, an
            // allow/review rule does not.
            None => !permissive,
        };
        if !ok {
            return Some("http.body");
        }
    }
    if !spec.hosts.is_empty() && !spec.hosts.iter().any(|g| g.matches(&req.host)) {
        return Some("http.hosts");
    }
    if !spec.paths.is_empty() && !paths_match(&spec.paths, &req.path, allow) {
        return Some("http.paths");
    }
    if !spec.query.is_empty() {
        let q = req.query.as_deref().unwrap_or("");
        // An allow rule's glob matches parameter by parameter (its `*` does not stretch over
        // further parameters); a deny or review rule's over the whole query.
        if !spec.query.iter().any(|g| {
            if q.is_empty() {
                g.0.is_empty()
            } else if allow {
                g.matches_params(q)
            } else {
                g.matches(q)
            }
        }) {
            return Some("http.query");
        }
    }
    for (name, glob) in &spec.headers {
        let ok = req
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(name) && glob.matches(v));
        if !ok {
            return Some("http.headers");
        }
    }
    None
}

/// Whether a path glob covers `path` as the targets may route it. Tomcat and Spring drop each
/// segment's `;parameters` before routing (`/actuator;x/env` is `/actuator/env`), so rules
/// read the path without them. Express and ASP.NET route without regard to case: a `deny` or
/// `review` rule matches any case (`/Admin/users` under `/admin/*`), an `allow` rule only the
/// case it names.
fn paths_match(globs: &[crate::config::policy::Glob], path: &str, allow: bool) -> bool {
    let plain: std::borrow::Cow<'_, str> = if path.contains(';') {
        path.split('/')
            .map(|seg| seg.split(';').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("/")
            .into()
    } else {
        path.into()
    };
    if allow {
        globs.iter().any(|g| g.matches(&plain))
    } else {
        globs.iter().any(|g| {
            crate::config::policy::glob_match_ignore_ascii_case(g.0.as_bytes(), plain.as_bytes())
        })
    }
}

/// Parses `METHOD URL` into a request (for `policy explain --http`): `https://host:port/path?q`
/// or a bare `/path?q` (host empty).
pub fn parse(method: &str, url: &str) -> Result<HttpRequest<'static>, String> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!("`{method}` is not an HTTP method"));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let (host, path_query) = match rest {
        Some(r) => match r.find('/') {
            Some(i) => (&r[..i], &r[i..]),
            None => (r, "/"),
        },
        None if url.starts_with('/') => ("", url),
        None => return Err(format!("`{url}` is neither an absolute URL nor a path")),
    };
    // Drop the port and any user info: rules match on the host name.
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.split(':').next().unwrap_or(host),
    };
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned().into())),
        None => (path_query, None),
    };
    Ok(HttpRequest {
        method: method.to_ascii_uppercase().into(),
        host: host.to_ascii_lowercase().into(),
        path: path.to_owned().into(),
        query,
        headers: Vec::new(),
        body: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::policy::Glob;

    #[test]
    fn parse_and_classify() {
        let r = parse("delete", "https://API.internal:8443/users/7?force=1").unwrap();
        assert_eq!(r.method, "DELETE");
        assert_eq!(r.host, "api.internal");
        assert_eq!(r.path, "/users/7");
        assert_eq!(r.query.as_deref(), Some("force=1"));
        let f = classify(&r);
        assert_eq!((f.kinds[0], f.class), ("delete", Class::Write));
        assert_eq!(f.objects, ["api.internal/users/7"]);
        assert_eq!(classify(&parse("GET", "/x").unwrap()).class, Class::Read);
        assert_eq!(
            classify(&parse("TRACE", "/x").unwrap()).class,
            Class::Unknown
        );
        assert!(parse("GE T", "/x").is_err());
        assert!(parse("GET", "x").is_err());
        let v6 = parse("GET", "http://[2001:2::2]:80/").unwrap();
        assert_eq!(v6.host, "2001:2::2");
    }

    #[test]
    fn every_filter_must_match() {
        let spec = HttpSpec {
            methods: vec!["get".into()],
            hosts: vec![Glob("*.internal".into())],
            paths: vec![Glob("/users/*".into())],
            query: Vec::new(),
            headers: [("X-Team".to_string(), Glob("sre".into()))].into(),
            ..HttpSpec::default()
        };
        let mut r = parse("GET", "http://api.internal/users/7").unwrap();
        assert_eq!(mismatch(&spec, &r, true, true), Some("http.headers"));
        r.headers.push(("x-team".into(), "sre".into()));
        assert_eq!(mismatch(&spec, &r, true, true), None);
        r.method = "POST".into();
        assert_eq!(mismatch(&spec, &r, true, true), Some("http.methods"));
        let q = HttpSpec {
            query: vec![Glob("".into()), Glob("page=*".into())],
            ..HttpSpec::default()
        };
        assert_eq!(mismatch(&q, &parse("GET", "/a").unwrap(), true, true), None);
        assert_eq!(
            mismatch(&q, &parse("GET", "/a?page=2").unwrap(), true, true),
            None
        );
        assert!(mismatch(&q, &parse("GET", "/a?all=1").unwrap(), true, true).is_some());
        // An allow rule's `*` stays in its parameter; a deny rule's reaches over them all.
        let more = parse("GET", "/a?page=2&delete=1").unwrap();
        assert!(mismatch(&q, &more, true, true).is_some());
        assert_eq!(mismatch(&q, &more, false, false), None);
        // A review rule matches broadly: one it missed would fall through to an allow rule.
        assert_eq!(mismatch(&q, &more, true, false), None);
        // Paths without `;parameters`; a deny rule in any case.
        let admin = HttpSpec {
            paths: vec![Glob("/actuator/*".into())],
            ..HttpSpec::default()
        };
        let hidden = parse("GET", "/actuator;x/env").unwrap();
        assert_eq!(mismatch(&admin, &hidden, false, false), None);
        assert_eq!(mismatch(&admin, &hidden, true, true), None);
        let upper = parse("GET", "/Actuator/env").unwrap();
        assert_eq!(mismatch(&admin, &upper, false, false), None);
        assert!(mismatch(&admin, &upper, true, true).is_some());
    }

    #[test]
    fn bodies_over_the_bound_are_unknown_and_fail_closed() {
        let mut r = parse("POST", "http://api.internal/orders").unwrap();
        r.body = Some(HttpBody::OverLimit { limit: 1024 });
        let f = classify(&r);
        assert_eq!(f.class, Class::Unknown);
        let allow = HttpSpec {
            methods: vec!["POST".into()],
            ..HttpSpec::default()
        };
        assert!(
            mismatch(&allow, &r, true, true).is_some(),
            "allow must not cover it"
        );
        let big = HttpSpec {
            large_body: true,
            ..allow.clone()
        };
        assert_eq!(mismatch(&big, &r, true, true), None);
        let deny = HttpSpec {
            body: vec![Glob("*DROP*".into())],
            ..HttpSpec::default()
        };
        assert_eq!(
            mismatch(&deny, &r, false, false),
            None,
            "deny covers what it cannot read"
        );
        assert!(mismatch(&deny, &r, true, true).is_some());
        r.body = Some(HttpBody::judged(&b"{\"q\":\"DROP TABLE\"}"[..]));
        assert_eq!(mismatch(&deny, &r, true, true), None);
        assert_eq!(classify(&r).class, Class::Write);
        r.body = Some(HttpBody::judged(&b"\xff\xfe"[..]));
        assert!(
            mismatch(&deny, &r, true, true).is_some(),
            "binary never matches allow"
        );
        // Text the server may read otherwise than the rule would: UTF-16 (valid UTF-8, a
        // NUL beside each letter; JSON readers detect it), a charset that spells ASCII
        // otherwise, a content coding. A deny rule covers each; an allow rule none.
        let utf16: Vec<u8> = "{\"q\":\"DROP TABLE\"}"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let plain = b"{\"q\":\"select\"}".to_vec();
        let allow_body = HttpSpec {
            body: vec![Glob("*".into())],
            ..HttpSpec::default()
        };
        for (body, header) in [
            (utf16, None),
            (
                plain.clone(),
                Some(("content-type", "application/json; charset=utf-7")),
            ),
            (
                plain.clone(),
                Some(("content-type", "text/plain; charset=\"UTF-16\"")),
            ),
            (plain.clone(), Some(("content-encoding", "deflate"))),
            (
                plain.clone(),
                Some(("content-type", "application/json; charset=Shift_JIS")),
            ),
        ] {
            r.body = Some(HttpBody::judged(body));
            r.headers = header
                .map(|(k, v)| (k.into(), v.into()))
                .into_iter()
                .collect();
            assert_eq!(r.body_text(), None, "{header:?}");
            assert_eq!(mismatch(&deny, &r, false, false), None, "{header:?}");
            assert!(
                mismatch(&allow_body, &r, true, true).is_some(),
                "{header:?}"
            );
        }
        r.headers = vec![(
            "content-type".into(),
            "application/json; charset=UTF-8".into(),
        )];
        r.body = Some(HttpBody::judged(plain));
        assert_eq!(r.body_text(), Some("{\"q\":\"select\"}"));
        assert_eq!(mismatch(&allow_body, &r, true, true), None);
        r.headers.clear();
        let trace = parse("PROPFIND", "/x").unwrap();
        assert!(mismatch(&HttpSpec::default(), &trace, true, true).is_some());
        let named = HttpSpec {
            methods: vec!["propfind".into()],
            ..HttpSpec::default()
        };
        assert_eq!(mismatch(&named, &trace, true, true), None);
    }

    #[test]
    fn only_ascii_compatible_charsets_are_read() {
        for c in [
            "utf-8",
            "us-ascii",
            "iso-8859-1",
            "iso8859-1",
            "iso-8859-15",
            "windows-1252",
            "shift_jis",
        ] {
            assert!(crate::model::ascii_compatible_charset(c), "{c}");
        }
        for c in [
            "utf-16",
            "utf-16le",
            "utf-32",
            "ucs-2",
            "utf-7",
            "iso-2022-jp",
            "ibm037",
            "iso-8859-",
            "",
        ] {
            assert!(!crate::model::ascii_compatible_charset(c), "{c}");
        }
    }
}
