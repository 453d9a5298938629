//! The request target in one canonical form, judged and forwarded alike.
//!
//! Rules match the path the gateway reads; the target routes on the path *it* reads after
//! decoding and normalising (nginx resolves `/../` and `%2e%2e`, merges `//`, decodes `%61`;
//! the Kubernetes API server decodes `s%65crets` and `web%2Fexec`). So before judging, the
//! gateway decodes what every server decodes the same way (percent-encoded unreserved
//! characters) and refuses what servers read differently: dot segments, empty segments,
//! encoded `/`, `\` or NUL, backslashes and malformed escapes. The path it judged is the path
//! it forwards.

use std::borrow::Cow;

/// Why a request target is refused (a 400).
pub type Refusal = &'static str;

/// The canonical form of `path` (an origin-form path, or `*`), or why it is refused. Also
/// checks that `query`'s percent escapes are well-formed (servers disagree on what a
/// malformed one means: Go drops the whole parameter, others keep it).
pub fn canonical<'a>(path: &'a str, query: Option<&str>) -> Result<Cow<'a, str>, Refusal> {
    if let Some(q) = query {
        check_escapes(q.as_bytes())?;
    }
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err("the request path does not start with `/`");
    }
    if path.contains('\\') {
        return Err("a backslash in the request path (some servers read it as `/`)");
    }
    let decoded = decode_unreserved(path, true)?;
    // Every segment between the first `/` and the last one must be a real name: `//`, `.` and
    // `..` are resolved (or not) differently by each server. A final empty segment (`/dir/`)
    // is a name of its own everywhere.
    let mut segments = decoded[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        // Tomcat and Spring drop path parameters before resolving (`/public/..;/admin` is
        // `/admin` there): a segment is judged by what comes before its `;`.
        let seg = seg.split(';').next().unwrap_or("");
        if seg == "." || seg == ".." {
            return Err("a dot segment (`.` or `..`) in the request path");
        }
        if seg.is_empty() && segments.peek().is_some() {
            return Err("an empty segment (`//`) in the request path");
        }
    }
    Ok(decoded)
}

/// The canonical form of a query string: unreserved escapes decoded and the others in upper
/// case, as in the path (`force=%74rue` is `force=true` to the rules and to the target), or
/// why it is refused (a malformed escape).
pub fn canonical_query(query: &str) -> Result<Cow<'_, str>, Refusal> {
    decode_unreserved(query, false)
}

/// `path` with percent-encoded unreserved characters (ALPHA, DIGIT, `-`, `.`, `_`, `~`)
/// decoded (RFC 3986 §6.2.2.2: equivalent everywhere); other escapes are kept, in upper case,
/// except (`in_path`) `/`, `\` and NUL, which are refused.
fn decode_unreserved(path: &str, in_path: bool) -> Result<Cow<'_, str>, Refusal> {
    let bytes = path.as_bytes();
    check_escapes(bytes)?;
    if !bytes.contains(&b'%') {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // `check_escapes` saw two hex digits here.
            let byte = (hex(bytes[i + 1]).unwrap_or(0) << 4) | hex(bytes[i + 2]).unwrap_or(0);
            match byte {
                b'/' | b'\\' | 0 if in_path => {
                    return Err("an encoded `/`, `\\` or NUL in the request path");
                }
                b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                    out.push(char::from(b));
                }
                // Hex digits in upper case (RFC 3986 §6.2.2.1), so `%c3` and `%C3` are one
                // name to the rules.
                _ => {
                    out.push('%');
                    out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                    out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
                }
            }
            i += 3;
        } else {
            // Copy up to the next escape; `%` is ASCII, so this stays on char boundaries.
            let next = bytes[i..]
                .iter()
                .position(|&b| b == b'%')
                .map_or(bytes.len(), |n| i + n);
            out.push_str(&path[i..next]);
            i = next;
        }
    }
    Ok(Cow::Owned(out))
}

/// Refuses a `%` not followed by two hex digits.
fn check_escapes(bytes: &[u8]) -> Result<(), Refusal> {
    let mut i = 0;
    while let Some(n) = bytes[i..].iter().position(|&b| b == b'%') {
        let at = i + n;
        let ok = bytes
            .get(at + 1..at + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        if !ok {
            return Err("a malformed percent escape in the request target");
        }
        i = at + 3;
    }
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept() {
        for (raw, want) in [
            ("/app/orders", "/app/orders"),
            ("/", "/"),
            ("*", "*"),
            ("/app/dir/", "/app/dir/"),
            ("/app/%61dmin", "/app/admin"),
            (
                "/api/v1/namespaces/default/s%65crets/db",
                "/api/v1/namespaces/default/secrets/db",
            ),
            ("/ns/kube%2Dsystem", "/ns/kube-system"),
            ("/files/my%20doc", "/files/my%20doc"),
            ("/files/%C3%A9t%C3%A9", "/files/%C3%A9t%C3%A9"),
            ("/files/%c3%a9t%C3%a9", "/files/%C3%A9t%C3%A9"),
            ("/a/100%25", "/a/100%25"),
            ("/a/%252e%252e/b", "/a/%252e%252e/b"),
            ("/a/.well-known/x", "/a/.well-known/x"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a/b;v=1/c", "/a/b;v=1/c"),
        ] {
            assert_eq!(canonical(raw, None).unwrap(), want, "{raw}");
        }
        // The query likewise, but an encoded `/` is an ordinary value there.
        assert_eq!(canonical_query("%66orce=%74rue").unwrap(), "force=true");
        assert_eq!(
            canonical_query("next=%2fhome&q=a%2Bb").unwrap(),
            "next=%2Fhome&q=a%2Bb"
        );
        assert!(canonical_query("a=%zz").is_err());
    }

    #[test]
    fn targets_servers_read_differently_are_refused() {
        for raw in [
            "/app/echo/../orders",
            "/app/echo/%2e%2e/orders",
            "/app/echo/%2E%2e/orders",
            "/app/./admin",
            "/app/%2e/admin",
            "/app/..",
            "/app//admin",
            "//admin",
            "/api/v1/namespaces/default/pods/web%2Fexec",
            "/api/v1/namespaces/default/pods/web%2fexec",
            "/app/a%5c..%5cadmin",
            "/app\\admin",
            "/app/%00",
            "/app/public/..;/admin",
            "/app/.;x/admin",
            "/app/;x/admin",
            "/app/%zz",
            "/app/%4",
            "/app/%",
            "app/relative",
        ] {
            assert!(canonical(raw, None).is_err(), "{raw}");
        }
        assert!(canonical("/x", Some("command=%zz/ls&command=rm")).is_err());
        assert!(canonical("/x", Some("a=%")).is_err());
        assert!(canonical("/x", Some("a=%41&b=%2F")).is_ok());
    }
}
