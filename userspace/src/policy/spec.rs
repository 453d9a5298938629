//! The policy part of the configuration file (YAML): identities, rules, default, masking.
//!
//! `RuleSpec` is a STUB until the policy issue fills it in; the identity and masking shapes are
//! shared with the identity and masking work and change only by agreement.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::{Config, Protocol};
use crate::policy::classify::{Class, KINDS};
use crate::policy::{OnTimeout, ReviewMode};

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

/// One policy rule. Every filter that is set must match; an empty list matches anything.
///
/// How a filter over a multi-part command matches depends on the action, so that a rule never
/// lets through more than it names: for `allow` and `review`, **every** statement class and
/// kind, and every table touched, must be in the rule's lists (an `allow` for `read` does not
/// cover `SELECT 1; DROP TABLE t`); for `deny`, **any** one is enough. Commands classified
/// `unknown` match an `allow`/`review` rule only when its `classes` lists `unknown`.
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
    /// Command classes.
    #[serde(default)]
    pub classes: Vec<Class>,
    /// Statement kinds (`select`, `insert`, `create_table`, … see `classify::KINDS`).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Table globs: `customers` matches that table in any schema, `public.*` every table in
    /// `public`. An unqualified table in a command matches a schema-qualified glob only for
    /// `deny` rules (the search path could put it anywhere).
    #[serde(default)]
    pub tables: Vec<Glob>,
    /// Function globs (`lower`, `pg_catalog.*`, `json_*`). A user-defined function called
    /// from a `SELECT` is classified `read` unless it is a known writer or escape, so an
    /// `allow` rule can pin the functions it covers: every function called must match one of
    /// these. For `deny`, any one matching is enough.
    #[serde(default)]
    pub functions: Vec<Glob>,
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
    /// Record what this rule would have done, without enforcing it; evaluation continues.
    #[serde(default)]
    pub shadow: bool,
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

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    Review,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Review => "review",
        }
    }
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
    pub fn matches(&self, s: &str) -> bool {
        glob_match(self.0.as_bytes(), s.as_bytes())
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
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
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
    /// Content detectors applied to every text value.
    #[serde(default)]
    pub detectors: Vec<Detector>,
    pub style: MaskStyle,
    /// Groups that see raw values.
    #[serde(default)]
    pub except_groups: Vec<String>,
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
        if m.columns.is_empty() && m.detectors.is_empty() {
            return err(f, "needs `columns` or `detectors`");
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
        for (j, k) in r.kinds.iter().enumerate() {
            if !KINDS.contains(&k.as_str()) {
                return Err((
                    f(&format!("kinds[{j}]")),
                    format!("unknown statement kind `{k}`"),
                ));
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
        if r.action == Action::Deny && r.mask.is_some() {
            return err(f("mask"), "a `deny` rule has no answer to mask");
        }
    }
    Ok(())
}
