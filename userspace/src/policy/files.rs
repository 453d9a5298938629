//! The `files` part of policy: one operation on a host's files (an SFTP request), judged by
//! operation and path glob.
//!
//! Paths reach policy normalized by the protocol handler ([`normalize`]); a path that still
//! holds `.`, `..` or empty segments is `unknown` here, so that a glob such as `/srv/*` can
//! never be passed with `/srv/../etc/shadow`. Symbolic links on the host are not resolved:
//! a rule over paths is as strong as the host's own layout (docs/decisions/ssh-gateway.md).

use crate::config::policy::FilesSpec;
use crate::model::{Class, Facts, FileOp};

/// Longest path judged; longer ones are `unknown`.
pub const MAX_PATH: usize = 4096;

/// Facts of a file operation: kind = the operation, class `read` for reads and `write` for
/// the rest, `objects` = the path(s).
pub fn classify(op: FileOp, path: &str, to: Option<&str>) -> Facts {
    for p in std::iter::once(path).chain(to) {
        if let Err(why) = check(p) {
            return Facts {
                objects: std::iter::once(path).chain(to).map(str::to_owned).collect(),
                ..Facts::unknown(op.as_str(), format!("path not judged: {why}"))
            };
        }
    }
    let class = match op {
        FileOp::Read => Class::Read,
        FileOp::Write | FileOp::Remove | FileOp::Rename | FileOp::Mkdir => Class::Write,
    };
    Facts {
        objects: std::iter::once(path).chain(to).map(str::to_owned).collect(),
        ..Facts::single(op.as_str(), class)
    }
}

/// Why a path is not in normal form (`None`: it is).
fn check(p: &str) -> Result<(), &'static str> {
    if p.len() > MAX_PATH {
        return Err("longer than 4096 bytes");
    }
    if p.is_empty() {
        return Err("empty");
    }
    if p.contains('\0') {
        return Err("contains NUL");
    }
    let rest = if let Some(r) = p.strip_prefix('/') {
        r
    } else if p == "~" {
        ""
    } else if let Some(r) = p.strip_prefix("~/") {
        r
    } else {
        return Err("neither absolute nor ~/-relative");
    };
    if rest.is_empty() {
        return Ok(());
    }
    if rest
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("not normalized (., .. or an empty segment)");
    }
    Ok(())
}

/// Normalizes a path as a protocol handler receives it: `.` and empty segments dropped, `..`
/// taken lexically (never above the root), a trailing `/` dropped; a relative path is taken as
/// relative to the login's home and written `~/…`. `None` for a path that climbs above a
/// relative start (`../x`), whose place only the host knows.
pub fn normalize(raw: &str) -> Option<String> {
    let (absolute, rest) = match raw.strip_prefix('/') {
        Some(r) => (true, r),
        None => match raw {
            "~" => (false, ""),
            _ => (false, raw.strip_prefix("~/").unwrap_or(raw)),
        },
    };
    let mut out: Vec<&str> = Vec::new();
    for seg in rest.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() && !absolute {
                    return None;
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    Some(if absolute {
        format!("/{joined}")
    } else if joined.is_empty() {
        "~".to_owned()
    } else {
        format!("~/{joined}")
    })
}

/// Why a `files` block does not match a classified file operation (`None`: it matches).
/// `permissive` (allow, review): the operation must be listed and every path must match; an
/// `unknown` operation never matches. For `deny`, a listed operation with any path matching is
/// enough, and an `unknown` one always is.
pub fn mismatch(
    spec: &FilesSpec,
    op: FileOp,
    facts: &Facts,
    permissive: bool,
) -> Option<&'static str> {
    let unknown = facts.class == Class::Unknown;
    if !spec.ops.is_empty() && !spec.ops.contains(&op) {
        return Some("files (operation not in the rule's ops)");
    }
    let path_ok = |p: &String| spec.paths.is_empty() || spec.paths.iter().any(|g| g.matches(p));
    if permissive {
        if unknown {
            return Some("files (the path could not be judged)");
        }
        if !facts.objects.iter().all(path_ok) {
            return Some("files (a path is not in the rule's paths)");
        }
        None
    } else {
        if unknown || facts.objects.iter().any(path_ok) {
            return None;
        }
        Some("files (no path in the rule's paths)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::policy::Glob;

    #[test]
    fn normalize_resolves_dots_and_relative_paths() {
        assert_eq!(normalize("/srv/data/../x//y/./z/").unwrap(), "/srv/x/y/z");
        assert_eq!(normalize("/../../etc/shadow").unwrap(), "/etc/shadow");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("notes.txt").unwrap(), "~/notes.txt");
        assert_eq!(normalize(".").unwrap(), "~");
        assert_eq!(normalize("").unwrap(), "~");
        assert_eq!(normalize("~/a/../b").unwrap(), "~/b");
        assert_eq!(normalize("a/../../etc"), None);
    }

    #[test]
    fn classify_reads_writes_and_refuses_unnormalized_paths() {
        let f = classify(FileOp::Read, "/srv/a", None);
        assert_eq!(f.class, Class::Read);
        assert_eq!(f.kinds, ["read"]);
        assert_eq!(f.objects, ["/srv/a"]);
        let f = classify(FileOp::Rename, "/srv/a", Some("/srv/b"));
        assert_eq!(f.class, Class::Write);
        assert_eq!(f.objects, ["/srv/a", "/srv/b"]);
        for bad in ["/srv/../etc", "relative", "/a//b", "", "/a/./b"] {
            assert_eq!(
                classify(FileOp::Read, bad, None).class,
                Class::Unknown,
                "{bad:?}"
            );
        }
        assert_eq!(
            classify(FileOp::Rename, "/ok", Some("/x/../y")).class,
            Class::Unknown
        );
        assert_eq!(classify(FileOp::Read, "~", None).class, Class::Read);
    }

    #[test]
    fn allow_needs_every_path_deny_any() {
        let spec = FilesSpec {
            ops: vec![FileOp::Read, FileOp::Rename],
            paths: vec![Glob("/srv/*".into())],
        };
        let read = classify(FileOp::Read, "/srv/a/b", None);
        assert_eq!(mismatch(&spec, FileOp::Read, &read, true), None);
        let write = classify(FileOp::Write, "/srv/a", None);
        assert!(mismatch(&spec, FileOp::Write, &write, true).is_some());
        let out = classify(FileOp::Rename, "/srv/a", Some("/etc/a"));
        assert!(mismatch(&spec, FileOp::Rename, &out, true).is_some());
        assert_eq!(mismatch(&spec, FileOp::Rename, &out, false), None);
        let unknown = classify(FileOp::Read, "/srv/../etc", None);
        assert!(mismatch(&spec, FileOp::Read, &unknown, true).is_some());
        assert_eq!(mismatch(&spec, FileOp::Read, &unknown, false), None);
    }
}
