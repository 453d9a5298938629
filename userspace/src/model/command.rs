//! What a caller asked for, in a form every protocol can express and policy can judge.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Protocols airlock speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque TCP relay: the connection itself is the command.
    Tcp,
    Postgres,
    Mysql,
    Ssh,
    Http,
    /// The Kubernetes API (HTTP underneath, judged by verb and resource).
    Kube,
}

impl Protocol {
    /// Every protocol, in declaration order.
    pub const ALL: [Protocol; 6] = [
        Protocol::Tcp,
        Protocol::Postgres,
        Protocol::Mysql,
        Protocol::Ssh,
        Protocol::Http,
        Protocol::Kube,
    ];

    /// Lower-case name, as in the config file, metric labels and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::Ssh => "ssh",
            Protocol::Http => "http",
            Protocol::Kube => "kube",
        }
    }

    /// The SQL dialect of a database protocol.
    pub fn dialect(self) -> Option<Dialect> {
        match self {
            Protocol::Postgres => Some(Dialect::Postgres),
            Protocol::Mysql => Some(Dialect::Mysql),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SQL dialect a command is parsed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Postgres,
    Mysql,
}

/// One command, as a protocol handler hands it to the gate. Borrowed from the wire where it
/// can be (`Command<'static>` owns its text, for approvals and records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command<'a> {
    /// A SQL command string: one or more statements, with the values bound to its parameters
    /// when it runs as a prepared statement (PostgreSQL's Bind, MySQL's COM_STMT_EXECUTE).
    Sql {
        dialect: Dialect,
        text: Cow<'a, str>,
        /// `None`: no parameters were bound (a simple query). Borrowed from the wire on the
        /// hot path; part of what an approval is for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        params: Option<Params<'a>>,
    },
    /// A command line run on a host (an SSH `exec` request), exactly as the remote shell
    /// would receive it.
    Exec { line: Cow<'a, str> },
    /// An interactive shell session.
    Shell,
    /// One operation on a file of a host (an SFTP request): `path` (and `to`, for a rename or a
    /// link) normalized, absolute, or `~/`-relative to the login's home directory.
    File {
        op: FileOp,
        path: Cow<'a, str>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<Cow<'a, str>>,
    },
    /// One HTTP request.
    Http(HttpRequest<'a>),
    /// One Kubernetes API request.
    Kube(KubeRequest<'a>),
    /// A whole TCP connection (the `tcp` protocol's only command).
    Connect,
}

/// What a file operation does. Listing a directory and reading metadata are `read`; changing
/// attributes and creating links are `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileOp {
    Read,
    Write,
    Remove,
    Rename,
    Mkdir,
}

impl FileOp {
    /// Every operation, in declaration order.
    pub const ALL: [FileOp; 5] = [
        FileOp::Read,
        FileOp::Write,
        FileOp::Remove,
        FileOp::Rename,
        FileOp::Mkdir,
    ];

    /// Lower-case name, as in the policy file and command texts.
    pub fn as_str(self) -> &'static str {
        match self {
            FileOp::Read => "read",
            FileOp::Write => "write",
            FileOp::Remove => "remove",
            FileOp::Rename => "rename",
            FileOp::Mkdir => "mkdir",
        }
    }
}

impl fmt::Display for FileOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FileOp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FileOp::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| {
                format!("`{s}` is not a file operation (read, write, remove, rename, mkdir)")
            })
    }
}

/// A path as it appears in a command text: bare when that is unambiguous, else single-quoted
/// the way a POSIX shell reads it back (so two different paths never print alike).
fn quote_path(p: &str) -> Cow<'_, str> {
    let plain = !p.is_empty()
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-~+,:@%=".contains(&b));
    if plain {
        Cow::Borrowed(p)
    } else {
        Cow::Owned(format!("'{}'", p.replace('\'', "'\\''")))
    }
}

/// How a bound value is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamFormat {
    Text,
    Binary,
}

/// One value bound to a statement parameter (`$1`, `?`), exactly as it came on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param<'a> {
    /// The protocol's type id (a PostgreSQL type OID, 0 when the server infers it; a MySQL
    /// column type).
    pub type_id: u32,
    pub format: ParamFormat,
    /// The encoded value; `None` is SQL NULL. Never serialized: values stay out of records
    /// (reviewers see them decoded and masked, through the approval request).
    #[serde(skip)]
    pub value: Option<Cow<'a, [u8]>>,
}

impl Param<'_> {
    /// The same parameter owning its value.
    pub fn into_owned(self) -> Param<'static> {
        Param {
            type_id: self.type_id,
            format: self.format,
            value: self.value.map(|v| Cow::Owned(v.into_owned())),
        }
    }
}

/// The values bound to a statement: borrowed from the wire, or owned (a held command).
/// (A `Cow` of a slice would make [`Command`] invariant in its lifetime.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Params<'a> {
    Borrowed(&'a [Param<'a>]),
    Owned(Vec<Param<'a>>),
}

impl<'a> std::ops::Deref for Params<'a> {
    type Target = [Param<'a>];
    fn deref(&self) -> &[Param<'a>] {
        match self {
            Params::Borrowed(p) => p,
            Params::Owned(p) => p,
        }
    }
}

impl Serialize for Params<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de, 'a> Deserialize<'de> for Params<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<Param<'a>>::deserialize(d).map(Params::Owned)
    }
}

/// An HTTP request as policy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest<'a> {
    /// Upper-case method (`GET`).
    pub method: Cow<'a, str>,
    /// Host name (or address) the request is for, without the port.
    pub host: Cow<'a, str>,
    /// Path, percent-decoding left to the rules (`/api/users/7`).
    pub path: Cow<'a, str>,
    /// Query string without the `?`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Cow<'a, str>>,
    /// Request headers policy may match (names lower-case). Never recorded: credentials
    /// travel here.
    #[serde(skip)]
    pub headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// The request body as the gateway judged it (`None`: the request has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody<'a>>,
}

impl HttpRequest<'_> {
    /// A request header's value (`name` lower case), the first of that name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| &**v)
    }

    /// The body as text that rules can match (`""` without a body); `None` when the server
    /// could read it as something else than this text: not UTF-8; NUL bytes (UTF-16 or
    /// UTF-32 text is valid UTF-8 with a NUL beside every ASCII letter, and JSON readers
    /// detect those encodings); a declared charset that is not ASCII-compatible, or whose
    /// two-byte characters can end in an ASCII byte (Shift JIS, GBK, Big5); a content
    /// coding (the server decodes it first); or over the bound.
    pub fn body_text(&self) -> Option<&str> {
        let bytes = match &self.body {
            None => return Some(""),
            Some(HttpBody::OverLimit { .. }) => return None,
            Some(HttpBody::Judged { bytes, .. }) => bytes,
        };
        let coded = self
            .header("content-encoding")
            .is_some_and(|c| !c.trim().is_empty() && !c.trim().eq_ignore_ascii_case("identity"));
        // Where a second byte can be ASCII, an ASCII byte the rule reads may belong to
        // another character for the server.
        let charset_ok = self
            .header("content-type")
            .and_then(content_type_charset)
            .is_none_or(|c| {
                ascii_compatible_charset(&c)
                    && !["shift_jis", "sjis", "gbk", "gb18030", "big5"].contains(&c.as_str())
            });
        if coded || !charset_ok || memchr::memchr(0, bytes).is_some() {
            return None;
        }
        std::str::from_utf8(bytes).ok()
    }
}

/// The `charset` parameter of a `Content-Type` value, lower case, unquoted.
pub fn content_type_charset(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"').to_ascii_lowercase())
    })
}

/// Whether text in `charset` (lower case) keeps ASCII characters as their ASCII bytes, which
/// is what rules, detectors and the JSON reader look for. UTF-16 and UTF-32 do not; UTF-7
/// and the ISO-2022 sets can spell them as other bytes; EBCDIC uses other bytes. A set not
/// listed counts as one that does not (fail closed).
pub fn ascii_compatible_charset(charset: &str) -> bool {
    matches!(
        charset,
        "utf-8"
            | "utf8"
            | "us-ascii"
            | "ascii"
            | "latin1"
            | "shift_jis"
            | "sjis"
            | "gbk"
            | "gb2312"
            | "gb18030"
            | "big5"
            | "euc-jp"
            | "euc-kr"
            | "koi8-r"
            | "koi8-u"
    ) || ["iso-8859-", "iso8859-", "windows-125", "cp125"]
        .iter()
        .any(|p| {
            charset
                .strip_prefix(p)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// A request body, read (up to the target's bound) before policy judges the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HttpBody<'a> {
    /// Read whole: rules see it, the approval binds its hash.
    Judged {
        /// The bytes (never recorded; rules match them).
        #[serde(skip)]
        bytes: Cow<'a, [u8]>,
        len: u64,
        /// SHA-256 of the bytes, lower-case hex.
        sha256: String,
    },
    /// Larger than the bound: not read before judging, so policy judges the request
    /// `unknown`.
    OverLimit { limit: u64 },
}

impl<'a> HttpBody<'a> {
    /// Appends what a command's text says of the body (` body sha256:… (n bytes)`), so an
    /// approval binds the body with the request.
    pub fn describe(&self, text: &mut String) {
        use std::fmt::Write as _;
        let _ = match self {
            HttpBody::Judged { len, sha256, .. } => {
                write!(text, " body sha256:{sha256} ({len} bytes)")
            }
            HttpBody::OverLimit { limit } => write!(text, " body over {limit} bytes (not judged)"),
        };
    }

    /// A judged body, hashed.
    pub fn judged(bytes: impl Into<Cow<'a, [u8]>>) -> Self {
        use sha2::Digest as _;
        let bytes = bytes.into();
        let digest = sha2::Sha256::digest(&bytes);
        let sha256 = digest.iter().map(|b| format!("{b:02x}")).collect();
        HttpBody::Judged {
            len: bytes.len() as u64,
            bytes,
            sha256,
        }
    }

    fn into_owned(self) -> HttpBody<'static> {
        match self {
            HttpBody::Judged { bytes, len, sha256 } => HttpBody::Judged {
                bytes: Cow::Owned(bytes.into_owned()),
                len,
                sha256,
            },
            HttpBody::OverLimit { limit } => HttpBody::OverLimit { limit },
        }
    }
}

/// A Kubernetes API request, classified from its URL and method.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeRequest<'a> {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`,
    /// `exec`, `attach`, `portforward`, `proxy`.
    pub verb: Cow<'a, str>,
    /// API group (empty for the core group).
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub group: Cow<'a, str>,
    pub resource: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
    /// The command of an `exec` or `attach` (`command=` parameters), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<Cow<'a, str>>,
    /// The container of an `exec`, `attach` or `log` (`container=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Cow<'a, str>>,
    /// An `exec`/`attach` that sends the caller's input (`stdin=true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// An `exec`/`attach` with a terminal (`tty=true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// Who the request asks to act as (`Impersonate-*` headers), as `user:NAME`,
    /// `group:NAME`, `uid:ID` or `extra:KEY=VALUE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub impersonate: Vec<Cow<'a, str>>,
    /// The request as sent, beyond the fields above: method, path, query and the body's
    /// hash (`PATCH /apis/…/deployments/web?fieldManager=x body sha256:… (412 bytes)`). Part
    /// of the text, so an approval binds the spec a create or patch sends, a selector, and
    /// a proxy's method and path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<Cow<'a, str>>,
}

impl KubeRequest<'_> {
    /// `group/resource[/subresource]`, or `resource[/subresource]` for the core group.
    pub fn resource_path(&self) -> String {
        let mut s = String::new();
        if !self.group.is_empty() {
            s.push_str(&self.group);
            s.push('/');
        }
        s.push_str(&self.resource);
        if let Some(sub) = &self.subresource {
            s.push('/');
            s.push_str(sub);
        }
        s
    }
}

impl<'a> Command<'a> {
    /// A SQL command borrowed from the wire.
    pub fn sql(dialect: Dialect, text: &'a str) -> Self {
        Command::Sql {
            dialect,
            text: Cow::Borrowed(text),
            params: None,
        }
    }

    /// A prepared SQL statement with the values bound to its parameters, borrowed from the
    /// wire.
    pub fn sql_bound(dialect: Dialect, text: &'a str, params: &'a [Param<'a>]) -> Self {
        Command::Sql {
            dialect,
            text: Cow::Borrowed(text),
            params: Some(Params::Borrowed(params)),
        }
    }

    /// The values bound to a SQL statement's parameters (empty for everything else).
    pub fn params(&self) -> &[Param<'a>] {
        match self {
            Command::Sql {
                params: Some(p), ..
            } => p,
            _ => &[],
        }
    }

    /// Which kind of command this is: `sql`, `exec`, `shell`, `file`, `http`, `kube`, `connect`
    /// (`file` is judged by a rule's `files` block, the others by the block of their name).
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Sql { .. } => "sql",
            Command::Exec { .. } => "exec",
            Command::Shell => "shell",
            Command::File { .. } => "file",
            Command::Http(_) => "http",
            Command::Kube(_) => "kube",
            Command::Connect => "connect",
        }
    }

    /// The command as one line of text: what a reviewer reads, what approvals hash and
    /// grants match. For SQL it is exactly the statement text the client sent.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Command::Sql { text, .. } => Cow::Borrowed(text),
            Command::Exec { line } => Cow::Borrowed(line),
            Command::Shell => Cow::Borrowed("<interactive shell>"),
            Command::Connect => Cow::Borrowed("<tcp connection>"),
            Command::File { op, path, to } => {
                let mut s = format!("{op} {}", quote_path(path));
                if let Some(to) = to {
                    s.push(' ');
                    s.push_str(&quote_path(to));
                }
                Cow::Owned(s)
            }
            Command::Http(h) => {
                let mut s = format!("{} {}{}", h.method, h.host, h.path);
                if let Some(q) = &h.query {
                    s.push('?');
                    s.push_str(q);
                }
                // The body's hash is part of the text, so an approval binds method, URL and
                // body together.
                if let Some(b) = &h.body {
                    b.describe(&mut s);
                }
                Cow::Owned(s)
            }
            Command::Kube(k) => {
                let mut s = format!("{} {}", k.verb, k.resource_path());
                match (&k.namespace, &k.name) {
                    (Some(ns), Some(n)) => s.push_str(&format!(" {ns}/{n}")),
                    (Some(ns), None) => s.push_str(&format!(" -n {ns}")),
                    (None, Some(n)) => s.push_str(&format!(" {n}")),
                    (None, None) => {}
                }
                if let Some(c) = &k.container {
                    s.push_str(" -c ");
                    s.push_str(c);
                }
                match (k.stdin, k.tty) {
                    (true, true) => s.push_str(" -it"),
                    (true, false) => s.push_str(" -i"),
                    (false, true) => s.push_str(" -t"),
                    (false, false) => {}
                }
                for who in &k.impersonate {
                    s.push_str(" --as ");
                    s.push_str(who);
                }
                if let Some(sent) = &k.sent {
                    s.push_str(" (");
                    s.push_str(sent);
                    s.push(')');
                }
                if !k.argv.is_empty() {
                    s.push_str(" --");
                    for a in &k.argv {
                        s.push(' ');
                        s.push_str(a);
                    }
                }
                Cow::Owned(s)
            }
        }
    }

    /// The same command owning its text.
    pub fn into_owned(self) -> Command<'static> {
        fn own(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        match self {
            Command::Sql {
                dialect,
                text,
                params,
            } => Command::Sql {
                dialect,
                text: own(text),
                params: params
                    .map(|p| Params::Owned(p.iter().cloned().map(Param::into_owned).collect())),
            },
            Command::Exec { line } => Command::Exec { line: own(line) },
            Command::Shell => Command::Shell,
            Command::Connect => Command::Connect,
            Command::File { op, path, to } => Command::File {
                op,
                path: own(path),
                to: to.map(own),
            },
            Command::Http(h) => Command::Http(HttpRequest {
                method: own(h.method),
                host: own(h.host),
                path: own(h.path),
                query: h.query.map(own),
                headers: h
                    .headers
                    .into_iter()
                    .map(|(k, v)| (own(k), own(v)))
                    .collect(),
                body: h.body.map(HttpBody::into_owned),
            }),
            Command::Kube(k) => Command::Kube(KubeRequest {
                verb: own(k.verb),
                group: own(k.group),
                resource: own(k.resource),
                subresource: k.subresource.map(own),
                namespace: k.namespace.map(own),
                name: k.name.map(own),
                argv: k.argv.into_iter().map(own).collect(),
                container: k.container.map(own),
                stdin: k.stdin,
                tty: k.tty,
                impersonate: k.impersonate.into_iter().map(own).collect(),
                sent: k.sent.map(own),
            }),
        }
    }
}

impl fmt::Display for Command<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}
