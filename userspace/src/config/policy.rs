//! The policy part of the configuration file (YAML): identities, rules, default, masking.
//! Schema and cross-field validation only; the policy engine compiles it.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::Config;
pub use crate::model::Action;
use crate::model::{Class, OnTimeout, Protocol, ReviewMode, SQL_KINDS};

/// An identity source: OIDC tokens, or a workload matcher over the kernel's view of the
/// caller. Either way it grants `groups`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    pub name: String,
    /// Tokens from this issuer (presented in the PostgreSQL password field or as a Bearer
    /// header).
    #[serde(default)]
    pub oidc: Option<OidcSpec>,
    /// Callers whose process matches.
    #[serde(default)]
    pub workload: Option<WorkloadMatcher>,
    /// Policy groups granted to a matching caller (in addition to token group claims). With
    /// both `oidc` and `workload`, only a caller whose token this entry accepted AND whose
    /// process matches gets them.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// An OIDC issuer trusted for tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSpec {
    /// Issuer URL; discovery at `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Claim holding the caller's groups (default `groups`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Allowed signing algorithms (default RS256 and ES256; `none` and HS* are refused).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Extra CA bundle (PEM) for the issuer's TLS.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// Matches a caller by what the kernel reported at connect time. Every field that is set must
/// match; a list matches when any element does.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadMatcher {
    /// Unix user names.
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub uids: Vec<u32>,
    /// cgroup v2 path globs, relative to the cgroup root (e.g. `/system.slice/ci-*.service`).
    #[serde(default)]
    pub cgroups: Vec<String>,
    /// Kubernetes pod UIDs (from the cgroup path).
    #[serde(default)]
    pub pods: Vec<String>,
    /// Process command names (`comm`).
    #[serde(default)]
    pub comms: Vec<String>,
}

impl WorkloadMatcher {
    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.uids.is_empty()
            && self.cgroups.is_empty()
            && self.pods.is_empty()
            && self.comms.is_empty()
    }
}

/// One policy rule: a shared "who" part (subjects, groups, workloads, tokens, time windows,
/// targets) and at most one per-protocol "what" block (`sql`, `exec`, `shell`, `files`, `http`,
/// `kube`, `connect`). A rule with a "what" block matches only that kind of command; a rule without
/// one matches every kind (but never allows a command classified `unknown`). Every filter
/// that is set must match; an empty list matches anything.
///
/// How a filter over a multi-part command matches depends on the action, so that a rule never
/// lets through more than it names: for `allow` and `review`, **every** statement class and
/// kind, every table touched, every program of a command line, must be in the rule's lists
/// (an `allow` for `read` does not cover `SELECT 1; DROP TABLE t`, and an `allow` for tables
/// does not cover a command that touches none); for `deny`, **any** one is enough. Commands classified `unknown` match an `allow`/`review` rule only when its `sql`
/// classes list `unknown`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name, reported in decisions and the audit log.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Subject globs (`unix:ci-*`, `alice@example.com`).
    #[serde(default)]
    pub subjects: Vec<Glob>,
    /// The caller is in any of these groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Names of `identities:` entries whose workload matcher the caller must match (any).
    #[serde(default)]
    pub identities: Vec<String>,
    /// An inline workload matcher (ORed with `identities`).
    #[serde(default)]
    pub workload: Option<WorkloadMatcher>,
    /// Target names.
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub protocols: Vec<Protocol>,
    /// SQL command classes. `classes`, `kinds`, `tables` and `functions` at the top level of
    /// a rule are the same as an `sql:` block holding them (the form policies used before
    /// rules had one block per protocol); a rule uses one form or the other.
    #[serde(default)]
    pub classes: Vec<Class>,
    /// SQL statement kinds (top-level form of `sql.kinds`).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// SQL table globs (top-level form of `sql.tables`).
    #[serde(default)]
    pub tables: Vec<Glob>,
    /// SQL function globs (top-level form of `sql.functions`).
    #[serde(default)]
    pub functions: Vec<Glob>,
    /// What SQL commands (PostgreSQL, MySQL) the rule covers.
    #[serde(default)]
    pub sql: Option<SqlSpec>,
    /// What command lines run on a host (SSH `exec`) the rule covers.
    #[serde(default)]
    pub exec: Option<ExecSpec>,
    /// Interactive shell sessions (SSH).
    #[serde(default)]
    pub shell: Option<EmptySpec>,
    /// What file operations (SSH's SFTP) the rule covers.
    #[serde(default)]
    pub files: Option<FilesSpec>,
    /// What HTTP requests the rule covers.
    #[serde(default)]
    pub http: Option<HttpSpec>,
    /// What Kubernetes API requests the rule covers.
    #[serde(default)]
    pub kube: Option<KubeSpec>,
    /// Whole TCP connections (the `tcp` protocol).
    #[serde(default)]
    pub connect: Option<EmptySpec>,
    /// Time windows (any); outside all of them the rule does not match.
    #[serde(default)]
    pub time: Vec<TimeWindow>,
    /// What the caller must have shown: `[token]` (a verified OIDC token in the password
    /// field), `[workload]` (an intercepted connection, so the kernel named the process), or
    /// both. A rule requiring a token does not match a token-less caller.
    #[serde(default)]
    pub require: Vec<Requirement>,
    /// Token claim globs, e.g. CI claims `{repository: "org/*", ref: "refs/heads/main",
    /// workflow: deploy}`: every one must match the claim of that name (strings, numbers and
    /// booleans, compared as text). Implies a token: token-less callers never match.
    #[serde(default)]
    pub claims: std::collections::BTreeMap<String, Glob>,
    pub action: Action,
    /// Required when `action: review`.
    #[serde(default)]
    pub review: Option<ReviewSpec>,
    /// Masking rules applied to the answer when this rule allows, or after approval (default:
    /// every masking rule).
    #[serde(default)]
    pub mask: Option<Vec<String>>,
    /// Message for a deny.
    #[serde(default)]
    pub reason: Option<String>,
    /// PostgreSQL and MySQL: the database role the commands this rule allows (or approves) run
    /// as; one of the target's `postgres.roles` / `mysql.roles`. The server itself then
    /// refuses what the role may not do, whatever classification concluded. Default: the
    /// target's `run_as`.
    #[serde(default)]
    pub run_as: Option<String>,
    /// PostgreSQL and MySQL, `action: review` only: the role an approved command runs as, for
    /// that one statement (then the session goes back to `run_as`).
    #[serde(default)]
    pub approved_run_as: Option<String>,
    /// Record what this rule would have done, without enforcing it; evaluation continues.
    #[serde(default)]
    pub shadow: bool,
    /// HTTP and Kubernetes: record the request and answer bodies of the exchanges this rule
    /// decides in the audit log, masked first with the rule's `mask` list (every masking rule
    /// when unset; `except_groups` do not apply: audit readers are not the caller) and capped
    /// in size. Off by default: exchanges are recorded without bodies.
    #[serde(default)]
    pub record_bodies: bool,
}

/// The `sql` block of a rule (also written at the rule's top level).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSpec {
    /// Command classes.
    #[serde(default)]
    pub classes: Vec<Class>,
    /// Statement kinds (`select`, `insert`, `create_table`, … see `SQL_KINDS` in the model).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Table globs: `customers` matches that table in any schema, `public.*` every table in
    /// `public`. An unqualified table in a command matches a schema-qualified glob only for
    /// `deny` rules (the search path could put it anywhere). For `allow` and `review`, a
    /// command must touch at least one table, every one of them listed: `SET ROLE`, `CREATE
    /// ROLE` or `SELECT pg_read_file(…)` are on no table, so a `tables` rule never covers them.
    #[serde(default)]
    pub tables: Vec<Glob>,
    /// Function globs (`lower`, `pg_catalog.*`, `json_*`). A user-defined function called
    /// from a `SELECT` is classified `read` unless it is a known writer or escape, so an
    /// `allow` rule can pin the functions it covers: every function called must match one of
    /// these. For `deny`, any one matching is enough.
    #[serde(default)]
    pub functions: Vec<Glob>,
}

impl SqlSpec {
    /// Whether no filter is set.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
            && self.kinds.is_empty()
            && self.tables.is_empty()
            && self.functions.is_empty()
    }
}

/// The `exec` block: command lines run on a host. A line is split the way a shell would;
/// compound lines (`;`, `&&`, `||`, `|`, `$(…)`, backquotes) are judged part by part, and a
/// line that cannot be split (unbalanced quotes, here-documents, control structures, a
/// program name built from a variable) is `unknown`, which no `allow`/`review` rule matches.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// Program globs, matched against each part's program. A glob with a `/` matches the
    /// program as written; a bare name its base name: for `deny` wherever the program is, for
    /// `allow`/`review` only a bare program or one in /bin, /usr/bin, /sbin, /usr/sbin or
    /// /usr/local/bin (`ls` matches `/bin/ls`, not `/srv/incoming/ls`).
    #[serde(default)]
    pub programs: Vec<Glob>,
    /// Command globs over each part's words (`git status`, `systemctl restart web-*`). For
    /// `allow`/`review` they go word by word: the glob's words (split at spaces) pair up one
    /// to one with the part's, and a `*` stays within its word, so `scp -f /srv/*` does not
    /// cover `scp -f /srv/x /etc/passwd`. For `deny` the glob matches the words joined by
    /// single spaces, so `git push*` also denies `git push origin main`.
    #[serde(default)]
    pub commands: Vec<Glob>,
    /// Whether an `allow`/`review` rule covers compound lines (each part must still match).
    /// Default false: only single commands.
    #[serde(default)]
    pub compound: bool,
    /// Files a line may redirect output to (`>`, `>>`, `&>`; globs, `*` crosses `/`). For
    /// `allow`/`review`, a line that writes a file by redirection is covered only when every
    /// such file matches (never one named at run time, `> $HOME/x`, or one climbing with
    /// `..`); default none. `/dev/null` is not a file written. For `deny`, set, the rule
    /// matches only lines that write a matching file.
    #[serde(default)]
    pub writes: Vec<Glob>,
}

/// The `files` block: operations on a host's files (an SFTP request each), by operation and
/// path glob. Paths are normalized before they are judged (`..` resolved); a relative path is
/// judged as `~/path` (the login's home directory). For `allow`/`review`, every path of the
/// operation (both of a rename) must match; for `deny`, any one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSpec {
    /// Operations: `read` (also listing and metadata), `write` (also attributes and links),
    /// `remove`, `rename`, `mkdir`. Empty: all. An open whose handle both writes and reads
    /// (`READ|WRITE`) is judged as both: each must be allowed.
    #[serde(default)]
    pub ops: Vec<crate::model::FileOp>,
    /// Path globs (`/srv/data/*`; `*` crosses `/`). Empty: any path.
    #[serde(default)]
    pub paths: Vec<Glob>,
}

/// A block without filters (`shell: {}`, `connect: {}`): the rule covers that kind of
/// command.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptySpec {}

/// The `http` block.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// Methods (`GET`, `POST`, …; any case).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Host globs (`api.internal`, `*.svc.cluster.local`).
    #[serde(default)]
    pub hosts: Vec<Glob>,
    /// Path globs (`/api/users/*`); `*` crosses `/`.
    #[serde(default)]
    pub paths: Vec<Glob>,
    /// Query string globs (without the `?`); a request without a query matches only `""`.
    #[serde(default)]
    pub query: Vec<Glob>,
    /// Header globs by (case-insensitive) header name: every one must match a value of that
    /// header.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Glob>,
    /// Request body globs, over the body as UTF-8 text (any one must match). For `allow` and
    /// `review` a body that is not text, or larger than the target's `max_body`, never matches;
    /// for `deny` a body larger than the bound always does.
    #[serde(default)]
    pub body: Vec<Glob>,
    /// Whether an `allow`/`review` rule also covers requests whose body is larger than the
    /// target's `max_body` (judged `unknown`: the gateway did not read it before deciding).
    /// Default false: such requests fall through to the next rule (fail closed).
    #[serde(default)]
    pub large_body: bool,
}

/// The `kube` block.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeSpec {
    /// Verbs: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, `exec`, `attach`, `portforward`, `proxy`.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// Resource globs, as `resource` (any group) or `group/resource` (`apps/deployments`).
    #[serde(default)]
    pub resources: Vec<Glob>,
    /// Subresources (`log`, `exec`, `status`, …). For `allow`/`review`, a request for a
    /// subresource matches only when it is listed here.
    #[serde(default)]
    pub subresources: Vec<String>,
    /// Namespace globs; cluster-scoped requests match only `""`.
    #[serde(default)]
    pub namespaces: Vec<Glob>,
    /// Object name globs.
    #[serde(default)]
    pub names: Vec<Glob>,
    /// For `exec` and `attach`: the command, judged as an `exec` block judges a line.
    #[serde(default)]
    pub exec: Option<ExecSpec>,
    /// Impersonation the rule covers, as globs over `user:NAME`, `group:NAME`, `uid:ID` and
    /// `extra:KEY=VALUE` (from the client's `Impersonate-*` headers). A request that
    /// impersonates matches an `allow`/`review` rule only when every identity it asks for is
    /// named here; nothing else (no default, no rule without a `kube` block) allows it. For
    /// `deny`, an empty list matches with or without impersonation.
    #[serde(default)]
    pub impersonate: Vec<Glob>,
}

/// Kubernetes verbs a `kube` block may name.
pub const KUBE_VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "exec",
    "attach",
    "portforward",
    "proxy",
];

impl RuleSpec {
    /// The rule's SQL filters, from its `sql:` block or its top-level fields.
    pub fn sql_spec(&self) -> Option<SqlSpec> {
        let top = SqlSpec {
            classes: self.classes.clone(),
            kinds: self.kinds.clone(),
            tables: self.tables.clone(),
            functions: self.functions.clone(),
        };
        match (&self.sql, top.is_empty()) {
            (Some(s), _) => Some(s.clone()),
            (None, false) => Some(top),
            (None, true) => None,
        }
    }

    /// The names of the "what" blocks the rule has (`sql` counts its top-level form).
    pub fn what_blocks(&self) -> Vec<&'static str> {
        let top_sql = !self.classes.is_empty()
            || !self.kinds.is_empty()
            || !self.tables.is_empty()
            || !self.functions.is_empty();
        let mut v = Vec::new();
        if self.sql.is_some() || top_sql {
            v.push("sql");
        }
        for (name, set) in [
            ("exec", self.exec.is_some()),
            ("shell", self.shell.is_some()),
            ("files", self.files.is_some()),
            ("http", self.http.is_some()),
            ("kube", self.kube.is_some()),
            ("connect", self.connect.is_some()),
        ] {
            if set {
                v.push(name);
            }
        }
        v
    }
}

/// What a rule requires of the caller (`require:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Requirement {
    /// A verified OIDC token.
    Token,
    /// An intercepted connection with the kernel's view of the calling process.
    Workload,
}

/// How a command needing review is approved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewSpec {
    /// Groups whose members may approve.
    pub approvers: Vec<String>,
    /// Approvals needed.
    #[serde(default = "one")]
    pub quorum: u32,
    /// How long an approval stays valid for repeating the same command (`15m`).
    #[serde(default = "default_ttl")]
    pub ttl: DurationSpec,
    /// How long to wait for a decision.
    #[serde(default = "default_timeout")]
    pub timeout: DurationSpec,
    #[serde(default = "default_on_timeout")]
    pub on_timeout: OnTimeout,
    /// Groups asked when `on_timeout: escalate`.
    #[serde(default)]
    pub escalate_to: Vec<String>,
    /// `hold` keeps the client waiting; `retry` refuses now and allows the same command once
    /// approved.
    #[serde(default)]
    pub mode: ReviewMode,
    /// Show reviewers the effect of a held DML statement: the gateway runs it on its own
    /// connection in a transaction it always rolls back (statement timeout, row cap) and
    /// attaches rows affected, a before/after sample and the planner's estimate. Statements
    /// with effects outside the transaction get none, with the reason.
    #[serde(default)]
    pub dry_run: bool,
}

fn one() -> u32 {
    1
}
fn default_ttl() -> DurationSpec {
    DurationSpec(Duration::from_secs(15 * 60))
}
fn default_timeout() -> DurationSpec {
    DurationSpec(Duration::from_secs(5 * 60))
}
fn default_on_timeout() -> OnTimeout {
    OnTimeout::Deny
}

/// A duration written `500ms`, `30s`, `15m`, `2h`, `1d`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationSpec(pub Duration);

impl FromStr for DurationSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (e.g. 30s, 15m, 2h)"))?;
        let ms = match unit.trim() {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("`{s}`: unit must be ms, s, m, h or d")),
        };
        Ok(DurationSpec(Duration::from_millis(n.saturating_mul(ms))))
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum, so errors keep the value's line.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DurationSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as 30s, 15m or 2h")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<DurationSpec, E> {
                Ok(DurationSpec(Duration::from_secs(n)))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<DurationSpec, E> {
                u64::try_from(n)
                    .map(|n| DurationSpec(Duration::from_secs(n)))
                    .map_err(|_| E::custom("a duration must not be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<DurationSpec, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A glob: `*` matches any run of characters (including `/` and `.`), `?` one character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(pub String);

impl Glob {
    /// Whether the glob matches all of `s`.
    pub fn matches(&self, s: &str) -> bool {
        glob_match(self.0.as_bytes(), s.as_bytes())
    }

    /// Whether the glob, split at spaces into words, matches `words` one to one: each of its
    /// words matches the word in the same place, and there are as many. A `*` never crosses
    /// a word boundary, so `scp -f /srv/*` does not match `scp -f /srv/x /etc/passwd`.
    pub fn matches_words(&self, words: &[impl AsRef<str>]) -> bool {
        pair_up(self.0.split_whitespace(), words.iter().map(AsRef::as_ref))
    }

    /// Whether the glob matches a query string parameter by parameter: split both at `&`,
    /// each of its parameters matches the one in the same place, and there are as many. A `*`
    /// never crosses into another parameter, so `page=*` does not match `page=1&delete=1`.
    pub fn matches_params(&self, query: &str) -> bool {
        pair_up(self.0.split('&'), query.split('&'))
    }
}

/// Whether `pattern` and `items` pair up one to one, each glob matching its item.
fn pair_up<'a, 'b>(
    mut pattern: impl Iterator<Item = &'a str>,
    mut items: impl Iterator<Item = &'b str>,
) -> bool {
    loop {
        match (pattern.next(), items.next()) {
            (None, None) => return true,
            (Some(p), Some(w)) if glob_match(p.as_bytes(), w.as_bytes()) => {}
            _ => return false,
        }
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("a glob must not be empty"));
        }
        Ok(Glob(s))
    }
}

/// Iterative glob matching (no recursion, linear backtracking on the last `*`).
pub fn glob_match(p: &[u8], s: &[u8]) -> bool {
    glob_match_by(p, s, |a, b| a == b)
}

/// [`glob_match`] without regard to ASCII case.
pub fn glob_match_ignore_ascii_case(p: &[u8], s: &[u8]) -> bool {
    glob_match_by(p, s, |a, b| a.eq_ignore_ascii_case(&b))
}

#[inline(always)]
fn glob_match_by(p: &[u8], s: &[u8], eq: impl Fn(u8, u8) -> bool) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || eq(p[pi], s[si])) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Days of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// Monday = 0.
    pub fn index(self) -> u32 {
        self as u32
    }
}

/// A weekly time window: `{days: [mon, tue], from: "09:00", to: "18:00", utc_offset: "+02:00"}`.
/// `from` after `to` wraps past midnight (the day is the day the window starts).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    /// Days the window starts on (default: every day).
    #[serde(default)]
    pub days: Vec<Weekday>,
    #[serde(default = "midnight")]
    pub from: ClockTime,
    #[serde(default = "end_of_day")]
    pub to: ClockTime,
    /// Fixed offset from UTC the times are in (default `+00:00`).
    #[serde(default)]
    pub utc_offset: UtcOffset,
}

fn midnight() -> ClockTime {
    ClockTime(0)
}
fn end_of_day() -> ClockTime {
    ClockTime(24 * 60)
}

/// Minutes after midnight, written `HH:MM` (`24:00` is the end of the day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClockTime(pub u32);

impl<'de> Deserialize<'de> for ClockTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || serde::de::Error::custom(format!("`{s}` is not a time of day (HH:MM)"));
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        let h: u32 = h.parse().map_err(|_| bad())?;
        let m: u32 = m.parse().map_err(|_| bad())?;
        if m >= 60 || h > 24 || (h == 24 && m != 0) {
            return Err(bad());
        }
        Ok(ClockTime(h * 60 + m))
    }
}

/// A fixed offset from UTC in minutes, written `+02:00` / `-05:30` / `Z`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UtcOffset(pub i32);

impl<'de> Deserialize<'de> for UtcOffset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || serde::de::Error::custom(format!("`{s}` is not a UTC offset (+HH:MM)"));
        if s == "Z" || s == "UTC" {
            return Ok(UtcOffset(0));
        }
        let (sign, rest) = match s.as_bytes().first() {
            Some(b'+') => (1, &s[1..]),
            Some(b'-') => (-1, &s[1..]),
            _ => return Err(bad()),
        };
        let (h, m) = rest.split_once(':').ok_or_else(bad)?;
        let h: i32 = h.parse().map_err(|_| bad())?;
        let m: i32 = m.parse().map_err(|_| bad())?;
        if !(0..=14).contains(&h) || !(0..60).contains(&m) {
            return Err(bad());
        }
        Ok(UtcOffset(sign * (h * 60 + m)))
    }
}

impl TimeWindow {
    /// Whether `unix_secs` (seconds since the epoch) falls inside the window.
    pub fn contains(&self, unix_secs: i64) -> bool {
        let local_min = unix_secs.div_euclid(60) + i64::from(self.utc_offset.0);
        let day = local_min.div_euclid(24 * 60);
        let minute = u32::try_from(local_min.rem_euclid(24 * 60)).unwrap_or(0);
        // 1970-01-01 was a Thursday (index 3 with Monday = 0).
        let weekday = |d: i64| u32::try_from((d + 3).rem_euclid(7)).unwrap_or(0);
        let day_ok =
            |d: i64| self.days.is_empty() || self.days.iter().any(|w| w.index() == weekday(d));
        let (from, to) = (self.from.0, self.to.0);
        if from <= to {
            day_ok(day) && minute >= from && minute < to
        } else {
            // Wraps past midnight: the evening part belongs to today, the morning part to
            // the window that started yesterday.
            (minute >= from && day_ok(day)) || (minute < to && day_ok(day - 1))
        }
    }
}

/// The fail-safe default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    #[default]
    Deny,
    Allow,
}

/// Masking rules, applied to answers of allowed commands.
pub type MaskingSpec = Vec<MaskRuleSpec>;

/// One masking rule: which values (by column and/or by content) and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRuleSpec {
    pub name: String,
    /// `schema.table.column` globs (`*.customers.email`, `public.*.ssn`).
    #[serde(default)]
    pub columns: Vec<String>,
    /// JSON paths whose values are masked whole in JSON answers (`$.users[*].email`,
    /// `$..password`, `$.data.*`).
    #[serde(default)]
    pub json_paths: Vec<String>,
    /// Content detectors applied to every text value.
    #[serde(default)]
    pub detectors: Vec<Detector>,
    pub style: MaskStyle,
    /// Groups that see raw values.
    #[serde(default)]
    pub except_groups: Vec<String>,
    /// A masked column that flows through an expression (a function, cast, `||`, aggregate,
    /// set operation, scalar subquery) into a result: `refuse` the statement (the default) or
    /// `redact` the computed value whole. Rows, arrays and JSON built from it are refused
    /// either way.
    #[serde(default)]
    pub computed: ComputedMasking,
    /// A masked column used only to choose or order rows (`WHERE`, `JOIN … ON`, `GROUP BY`,
    /// `ORDER BY`, `count()`): `allow` (the default; each answer reveals one comparison) or
    /// `refuse`.
    #[serde(default)]
    pub compared: ComparedMasking,
}

/// What a column rule does with a masked column computed into a result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputedMasking {
    /// Refuse the statement before the server sees it (42501 naming the rule and column).
    #[default]
    Refuse,
    /// Replace the computed value whole with `[REDACTED]` (NULL for `style: null`).
    Redact,
}

/// What a column rule does with a masked column used only in comparisons.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComparedMasking {
    /// Allow it: the values never reach the client, one comparison per answer does.
    #[default]
    Allow,
    /// Refuse the statement.
    Refuse,
}

/// Content detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Email,
    /// Payment card numbers, Luhn-checked.
    Card,
    Iban,
    /// US social security numbers.
    Ssn,
    Phone,
    Ip,
    AwsKey,
    /// Other cloud provider keys (GCP, Azure, GitHub, Slack tokens).
    CloudKey,
    Jwt,
    PrivateKey,
    /// Generic high-entropy tokens.
    HighEntropy,
}

/// How a matched value is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskStyle {
    /// Replace whole value.
    Redact,
    /// Keep the last four characters.
    Partial,
    /// Deterministic keyed hash, so masked values still join.
    Hash,
    /// SQL NULL.
    Null,
}

/// A rule's role must be one the targets it applies to let the gateway use: each of its
/// `targets` that is a PostgreSQL or MySQL target, or (without `targets`) at least one such
/// target. A target that does not list the role refuses the command at run time.
fn check_role(config: &Config, rule: &RuleSpec, role: &str) -> Result<(), String> {
    /// The roles a database target lists, and the field they are in.
    fn roles(t: &super::TargetConfig) -> Option<(&[String], &'static str)> {
        match t.protocol {
            Protocol::Postgres => t
                .postgres
                .as_ref()
                .map(|p| (p.roles.as_slice(), "postgres.roles")),
            Protocol::Mysql => t
                .mysql
                .as_ref()
                .map(|m| (m.roles.as_slice(), "mysql.roles")),
            _ => None,
        }
    }
    if rule.targets.is_empty() {
        if config
            .targets
            .iter()
            .filter_map(|t| roles(t))
            .any(|(r, _)| r.iter().any(|r| r == role))
        {
            return Ok(());
        }
        return Err(format!(
            "no PostgreSQL or MySQL target lists `{role}` in its `postgres.roles` or `mysql.roles`"
        ));
    }
    for name in &rule.targets {
        if let Some((roles, field)) = config.target(name).and_then(roles)
            && !roles.iter().any(|r| r == role)
        {
            return Err(format!(
                "target `{name}` does not list `{role}` in its `{field}`"
            ));
        }
    }
    Ok(())
}

/// Cross-field validation; an error is `(field path, message)`.
pub fn validate(config: &Config) -> Result<(), (String, String)> {
    use std::collections::HashSet;
    let err = |f: String, m: &str| Err((f, m.to_string()));

    let mut names = HashSet::new();
    for (i, id) in config.identities.iter().enumerate() {
        let f = format!("identities[{i}] ({})", id.name);
        if id.name.is_empty() {
            return err(f + ".name", "must not be empty");
        }
        if !names.insert(id.name.as_str()) {
            return err(f + ".name", "duplicate identity name");
        }
        if id.oidc.is_none() && id.workload.is_none() {
            return err(f, "needs `oidc` or `workload`");
        }
        if id.workload.as_ref().is_some_and(WorkloadMatcher::is_empty) {
            return err(f + ".workload", "an empty matcher would match every caller");
        }
        if let Some(o) = &id.oidc
            && o.algorithms
                .iter()
                .any(|a| a.eq_ignore_ascii_case("none") || a.to_ascii_uppercase().starts_with("HS"))
        {
            return err(f + ".oidc.algorithms", "`none` and HS* are refused");
        }
    }

    let mut masks = HashSet::new();
    for (i, m) in config.masking.iter().enumerate() {
        let f = format!("masking[{i}] ({})", m.name);
        if m.name.is_empty() {
            return err(f + ".name", "must not be empty");
        }
        if !masks.insert(m.name.as_str()) {
            return err(f + ".name", "duplicate masking rule name");
        }
        if m.columns.is_empty() && m.detectors.is_empty() && m.json_paths.is_empty() {
            return err(f, "needs `columns`, `json_paths` or `detectors`");
        }
    }

    let mut rules = HashSet::new();
    for (i, r) in config.rules.iter().enumerate() {
        let f = |field: &str| format!("rules[{i}] ({}).{field}", r.name);
        if r.name.is_empty() {
            return err(f("name"), "must not be empty");
        }
        if r.name == "default" {
            return err(f("name"), "`default` is reserved for the default action");
        }
        if !rules.insert(r.name.as_str()) {
            return err(f("name"), "duplicate rule name");
        }
        for (j, t) in r.targets.iter().enumerate() {
            if config.target(t).is_none() {
                return Err((
                    f(&format!("targets[{j}]")),
                    format!("no target named `{t}`"),
                ));
            }
        }
        for (j, n) in r.identities.iter().enumerate() {
            match config.identities.iter().find(|x| &x.name == n) {
                None => {
                    return Err((
                        f(&format!("identities[{j}]")),
                        format!("no identity named `{n}`"),
                    ));
                }
                Some(x) if x.workload.is_none() => {
                    return Err((
                        f(&format!("identities[{j}]")),
                        format!(
                            "identity `{n}` has no workload matcher; match its callers with `groups` or `subjects`"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        if r.workload.as_ref().is_some_and(WorkloadMatcher::is_empty) {
            return err(f("workload"), "an empty matcher would match every caller");
        }
        if r.claims.keys().any(String::is_empty) {
            return err(f("claims"), "a claim name must not be empty");
        }
        if (r.require.contains(&Requirement::Token) || !r.claims.is_empty())
            && !config.identities.iter().any(|x| x.oidc.is_some())
        {
            return err(
                f(if r.claims.is_empty() {
                    "require"
                } else {
                    "claims"
                }),
                "needs a token, but no identity has `oidc`: no caller could match",
            );
        }
        let sql_kinds = r.sql.as_ref().map_or(&r.kinds, |s| &s.kinds);
        for (j, k) in sql_kinds.iter().enumerate() {
            if !SQL_KINDS.contains(&k.as_str()) {
                return Err((
                    f(&format!("kinds[{j}]")),
                    format!("unknown statement kind `{k}`"),
                ));
            }
        }
        let blocks = r.what_blocks();
        if blocks.len() > 1 {
            return Err((
                f(blocks[1]),
                format!(
                    "a rule has at most one of sql (or top-level classes/kinds/tables/functions), exec, shell, files, http, kube, connect; this one has {}",
                    blocks.join(", ")
                ),
            ));
        }
        if r.sql.is_some()
            && (!r.classes.is_empty()
                || !r.kinds.is_empty()
                || !r.tables.is_empty()
                || !r.functions.is_empty())
        {
            return err(
                f("sql"),
                "write SQL filters either in `sql:` or at the rule's top level, not both",
            );
        }
        if let Some(h) = &r.http {
            for (j, m) in h.methods.iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err((
                        f(&format!("http.methods[{j}]")),
                        format!("`{m}` is not an HTTP method"),
                    ));
                }
            }
            if h.headers.keys().any(String::is_empty) {
                return err(f("http.headers"), "a header name must not be empty");
            }
        }
        if let Some(k) = &r.kube {
            for (j, v) in k.verbs.iter().enumerate() {
                if !KUBE_VERBS.contains(&v.as_str()) {
                    return Err((
                        f(&format!("kube.verbs[{j}]")),
                        format!("unknown verb `{v}` (one of {})", KUBE_VERBS.join(", ")),
                    ));
                }
            }
        }
        if let Some(list) = &r.mask {
            for (j, m) in list.iter().enumerate() {
                if !masks.contains(m.as_str()) {
                    return Err((
                        f(&format!("mask[{j}]")),
                        format!("no masking rule named `{m}`"),
                    ));
                }
            }
        }
        match (r.action, &r.review) {
            (Action::Review, None) => {
                return err(f("review"), "`action: review` needs a `review:` block");
            }
            (Action::Allow | Action::Deny, Some(_)) => {
                return err(f("review"), "only `action: review` takes a `review:` block");
            }
            (Action::Review, Some(rv)) => {
                if rv.approvers.is_empty() {
                    return err(f("review.approvers"), "at least one approver group");
                }
                if rv.quorum == 0 {
                    return err(f("review.quorum"), "must be at least 1");
                }
                if rv.timeout.0.is_zero() {
                    return err(f("review.timeout"), "must be more than 0");
                }
                if rv.on_timeout == OnTimeout::Escalate && rv.escalate_to.is_empty() {
                    return err(
                        f("review.escalate_to"),
                        "`on_timeout: escalate` needs `escalate_to`",
                    );
                }
            }
            _ => {}
        }
        if r.record_bodies && r.http.is_none() && r.kube.is_none() {
            return err(
                f("record_bodies"),
                "only a rule with an `http:` or `kube:` block records bodies",
            );
        }
        if r.action == Action::Deny && r.mask.is_some() {
            return err(f("mask"), "a `deny` rule has no answer to mask");
        }
        if r.action == Action::Deny && r.run_as.is_some() {
            return err(f("run_as"), "a `deny` rule runs nothing");
        }
        if r.approved_run_as.is_some() && r.action != Action::Review {
            return err(
                f("approved_run_as"),
                "only `action: review` takes `approved_run_as`",
            );
        }
        for (field, role) in [
            ("run_as", &r.run_as),
            ("approved_run_as", &r.approved_run_as),
        ] {
            if let Some(role) = role {
                check_role(config, r, role).map_err(|m| (f(field), m))?;
            }
        }
    }
    Ok(())
}
