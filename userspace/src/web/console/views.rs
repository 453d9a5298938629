//! What the pages show, prepared for the templates (userspace/templates/console/): every value
//! is text here, and the templates escape it.

use askama::Template;

use crate::approval::{ApprovalRequest, Ruling, now_ms};
use crate::audit::format_ts;

/// The logged-in reviewer, in every page's header.
#[derive(Debug, Clone)]
pub struct Me {
    pub subject: String,
    pub groups: String,
    pub csrf: String,
}

/// A duration in the inbox's words: `42s`, `3m 5s`, `2h 10m`, `3d 4h`.
pub fn human(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 60 {
        return format!("{m}m {}s", s % 60);
    }
    let h = m / 60;
    if h < 48 {
        return format!("{h}h {}m", m % 60);
    }
    format!("{}d {}h", h / 24, h % 24)
}

fn when(ms: u64) -> String {
    // format_ts takes microseconds and prints down to them; seconds are enough here.
    let full = format_ts(ms.saturating_mul(1000));
    match full.split_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => full,
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "–".into()
    } else {
        v.join(", ")
    }
}

/// A command shortened for a table cell (the request page shows it whole).
fn short(text: &str) -> String {
    const MAX: usize = 200;
    let text = crate::audit::cli::escape_controls(text);
    if text.chars().count() <= MAX {
        return text.into_owned();
    }
    let mut s: String = text.chars().take(MAX).collect();
    s.push('…');
    s
}

/// One row of the inbox.
#[derive(Debug, Clone)]
pub struct InboxRow {
    pub id: String,
    pub command: String,
    pub protocol: String,
    pub classes: String,
    pub subject: String,
    pub groups: String,
    pub target: String,
    pub rule: String,
    pub approvals: usize,
    pub quorum: u32,
    pub escalated: bool,
    pub created_ms: u64,
    pub deadline_ms: u64,
    pub age: String,
    pub left: String,
}

impl From<&ApprovalRequest> for InboxRow {
    fn from(r: &ApprovalRequest) -> Self {
        let now = now_ms();
        let command = match r.commands.as_slice() {
            [one] => short(&one.text),
            many => format!(
                "{} commands: {}",
                many.len(),
                short(&many.first().map(|c| c.text.clone()).unwrap_or_default())
            ),
        };
        InboxRow {
            id: r.id.clone(),
            command,
            protocol: r
                .protocol
                .map_or_else(|| "–".to_owned(), |p| p.as_str().to_owned()),
            classes: list(&r.classes),
            subject: r.subject.clone(),
            groups: list(&r.groups),
            target: r.target.clone(),
            rule: r.rule.clone(),
            approvals: r.approvals(),
            quorum: r.quorum,
            escalated: r.escalated,
            created_ms: r.created_ms,
            deadline_ms: r.deadline_ms,
            age: human(now.saturating_sub(r.created_ms)),
            left: if r.deadline_ms > now {
                human(r.deadline_ms - now)
            } else {
                "due".into()
            },
        }
    }
}

/// One inbox row on its own (what the live stream sends).
#[derive(Template)]
#[template(path = "console/inbox_row.html")]
pub struct RowTemplate<'a> {
    pub row: &'a InboxRow,
}

/// The inbox's rows (the live stream's `reset`).
#[derive(Template)]
#[template(
    source = "{% for row in rows %}{% include \"console/inbox_row.html\" %}\n{% endfor %}",
    ext = "html"
)]
pub struct InboxRows<'a> {
    pub rows: &'a [InboxRow],
}

/// `GET /`.
#[derive(Template)]
#[template(path = "console/inbox.html")]
pub struct InboxPage {
    pub nav: &'static str,
    pub me: Me,
    pub rows: Vec<InboxRow>,
}

/// A vote on the request page.
#[derive(Debug, Clone)]
pub struct VoteView {
    pub by: String,
    pub via: String,
    pub verdict: &'static str,
    pub reason: String,
    pub at: String,
}

/// A dry run as the request page shows it (values already masked for reviewers).
#[derive(Debug, Clone)]
pub struct DryRunView {
    /// `done`, `skipped` or `failed`.
    pub status: String,
    /// One line: rows affected, or why there was no dry run.
    pub summary: String,
    pub command_tag: Option<String>,
    pub plan: String,
    pub columns: Vec<String>,
    /// Sample rows, `NULL` written out.
    pub before: Vec<Vec<String>>,
    pub after: Vec<Vec<String>>,
    /// `(first N rows)` when more rows were affected than sampled.
    pub cap: String,
}

impl From<&crate::approval::DryRun> for DryRunView {
    fn from(d: &crate::approval::DryRun) -> Self {
        use crate::approval::text;
        let rows = |rows: &[Vec<Option<String>>]| -> Vec<Vec<String>> {
            rows.iter()
                .map(|r| r.iter().map(text::cell).collect())
                .collect()
        };
        DryRunView {
            status: d.status.clone(),
            summary: text::dry_run_summary(d),
            command_tag: d.command_tag.clone(),
            plan: d.plan.join("\n"),
            columns: d.columns.clone(),
            before: rows(&d.before),
            after: rows(&d.after),
            cap: text::sample_cap(d),
        }
    }
}

/// Everything the request page shows.
#[derive(Debug, Clone)]
pub struct RequestView {
    pub id: String,
    pub state: &'static str,
    pub pending: bool,
    /// The reviewer looking is the requester.
    pub own: bool,
    /// The reviewer looking is in none of the groups that may decide now.
    pub outsider: bool,
    pub commands: Vec<crate::approval::CommandEntry>,
    pub protocol: String,
    pub subject: String,
    pub groups: String,
    pub requested_by: Option<String>,
    pub task: Option<String>,
    /// The caller's process, as the kernel saw it.
    pub workload: Vec<(&'static str, String)>,
    pub target: String,
    pub classes: String,
    pub kinds: String,
    pub objects: String,
    pub reads: String,
    pub functions: String,
    pub notes: Vec<String>,
    pub rule: String,
    pub mask: Vec<String>,
    /// The effect of the command, from a dry run rolled back.
    pub dry_run: Option<DryRunView>,
    pub approvers: String,
    pub escalate_to: Vec<String>,
    pub approvals: usize,
    pub quorum: u32,
    pub mode: &'static str,
    pub on_timeout: &'static str,
    pub created: String,
    pub age: String,
    pub deadline: String,
    pub left: String,
    pub decided: Option<String>,
    pub reason: Option<String>,
    pub instance: String,
    pub session: Option<u64>,
    pub votes: Vec<VoteView>,
}

impl RequestView {
    /// The request as `viewer` sees it (the decision itself is checked again when made).
    pub fn new(r: &ApprovalRequest, viewer: &crate::approval::Principal) -> Self {
        let now = now_ms();
        let mut workload = Vec::new();
        if let Some(w) = &r.workload {
            workload.push((
                "Unix user",
                match &w.user {
                    Some(u) => format!("{u} (uid {})", w.uid),
                    None => format!("uid {}", w.uid),
                },
            ));
            workload.push((
                "Process",
                format!(
                    "{} (pid {})",
                    crate::audit::cli::escape_controls(&w.comm),
                    w.tgid
                ),
            ));
            if let Some(path) = &w.cgroup_path {
                workload.push(("Unit (cgroup)", path.clone()));
                if let Some(pod) = crate::policy::pod_uid(path) {
                    workload.push(("Pod", pod));
                }
            } else {
                workload.push(("cgroup id", w.cgroup_id.to_string()));
            }
        }
        RequestView {
            id: r.id.clone(),
            state: r.state.as_str(),
            pending: r.is_pending(),
            own: r.subject == viewer.subject,
            outsider: !viewer.admin && !r.eligible_groups().any(|g| viewer.groups.contains(g)),
            // Shown with what would reorder or hide text (bidirectional overrides, controls)
            // escaped: the reviewer reads what runs, not what it renders as.
            commands: r
                .commands
                .iter()
                .map(|c| crate::approval::CommandEntry {
                    text: crate::audit::cli::escape_controls(&c.text).into_owned(),
                    ..c.clone()
                })
                .collect(),
            protocol: r
                .protocol
                .map_or_else(|| "–".to_owned(), |p| p.as_str().to_owned()),
            subject: r.subject.clone(),
            groups: list(&r.groups),
            requested_by: r.requested_by.clone(),
            task: r.task.clone(),
            workload,
            target: r.target.clone(),
            classes: list(&r.classes),
            kinds: list(&r.kinds),
            objects: list(&r.tables),
            reads: list(&r.tables_read),
            functions: list(&r.functions),
            notes: r.notes.clone(),
            dry_run: r.dry_run.as_ref().map(DryRunView::from),
            rule: r.rule.clone(),
            mask: r.mask.clone(),
            approvers: list(&r.approvers),
            escalate_to: r.escalate_to.clone(),
            approvals: r.approvals(),
            quorum: r.quorum,
            mode: match r.mode {
                crate::model::ReviewMode::Hold => "hold (the command waits)",
                crate::model::ReviewMode::Retry => "retry (run it again once approved)",
            },
            on_timeout: match r.on_timeout {
                crate::model::OnTimeout::Deny => "deny",
                crate::model::OnTimeout::Escalate => "escalate",
            },
            created: when(r.created_ms),
            age: human(now.saturating_sub(r.created_ms)),
            deadline: when(r.deadline_ms),
            left: human(r.deadline_ms.saturating_sub(now)),
            decided: r.decided_ms.map(when),
            reason: r.reason.clone(),
            instance: r.instance.clone(),
            session: r.session,
            votes: r
                .votes
                .iter()
                .map(|v| VoteView {
                    by: v.by.clone(),
                    via: v.via.clone(),
                    verdict: match v.verdict {
                        Ruling::Approve => "approve",
                        Ruling::Deny => "deny",
                        Ruling::Revoke => "revoke",
                    },
                    reason: v.reason.clone().unwrap_or_default(),
                    at: when(v.at_ms),
                })
                .collect(),
        }
    }
}

/// `GET /requests/{id}`.
#[derive(Template)]
#[template(path = "console/request.html")]
pub struct RequestPage {
    pub nav: &'static str,
    pub me: Me,
    pub r: RequestView,
    pub notice: Option<String>,
    pub error: Option<String>,
}

/// History filters, as typed.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct HistoryFilter {
    pub target: String,
    pub requester: String,
    pub reviewer: String,
    pub outcome: String,
}

/// One decided request.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub id: String,
    pub command: String,
    pub subject: String,
    pub target: String,
    pub state: &'static str,
    pub reviewers: String,
    pub decided: String,
}

impl From<&ApprovalRequest> for HistoryRow {
    fn from(r: &ApprovalRequest) -> Self {
        let reviewers: Vec<String> = r.votes.iter().map(|v| v.by.clone()).collect();
        HistoryRow {
            id: r.id.clone(),
            command: InboxRow::from(r).command,
            subject: r.subject.clone(),
            target: r.target.clone(),
            state: r.state.as_str(),
            reviewers: list(&reviewers),
            decided: r.decided_ms.map(when).unwrap_or_else(|| "–".into()),
        }
    }
}

/// `GET /history`.
#[derive(Template)]
#[template(path = "console/history.html")]
pub struct HistoryPage {
    pub nav: &'static str,
    pub me: Me,
    pub f: HistoryFilter,
    pub outcomes: &'static [&'static str],
    pub rows: Vec<HistoryRow>,
}

/// Session search, as typed.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct SessionFilter {
    pub target: String,
    pub identity: String,
    pub q: String,
}

/// One session in the list.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: String,
    pub started: String,
    pub subject: String,
    pub target: String,
    pub protocol: String,
    pub client: String,
    pub commands: u64,
    pub denied: u64,
    pub reviewed: u64,
    pub masked: u64,
    pub end: String,
}

/// `GET /sessions`.
#[derive(Template)]
#[template(path = "console/sessions.html")]
pub struct SessionsPage {
    pub nav: &'static str,
    pub me: Me,
    pub f: SessionFilter,
    pub rows: Vec<SessionRow>,
    pub error: Option<String>,
}

/// One command of a session's transcript.
#[derive(Debug, Clone, Default)]
pub struct TranscriptRow {
    pub n: u64,
    pub at: String,
    pub text: String,
    pub classes: String,
    pub action: String,
    pub rule: String,
    pub approval: String,
    pub result: String,
}

/// `GET /sessions/{id}`.
#[derive(Template)]
#[template(path = "console/session.html")]
pub struct SessionPage {
    pub nav: &'static str,
    pub me: Me,
    pub id: String,
    pub facts: Vec<(&'static str, String)>,
    pub commands: Vec<TranscriptRow>,
}

/// The verify report as shown.
#[derive(Debug, Clone)]
pub struct VerifyView {
    pub ok: bool,
    pub records: u64,
    pub files: usize,
    pub seqs: String,
    pub sessions: u64,
    pub open: u64,
    pub signed: String,
    pub unsigned: u64,
    pub anchored: Option<u64>,
    pub issues: Vec<String>,
}

/// `GET /audit`.
#[derive(Template)]
#[template(path = "console/audit.html")]
pub struct AuditPage {
    pub nav: &'static str,
    pub me: Me,
    pub report: Option<VerifyView>,
    pub error: Option<String>,
}

/// The explain form, as typed.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct ExplainForm {
    pub target: String,
    pub identity: String,
    pub groups: String,
    pub kind: String,
    pub command: String,
}

/// An explanation as shown.
#[derive(Debug, Clone)]
pub struct ExplainView {
    pub action: &'static str,
    pub rule: String,
    pub reason: Option<String>,
    pub facts: Vec<(&'static str, String)>,
    pub trace: Vec<(String, String)>,
}

/// `GET /policy`.
#[derive(Template)]
#[template(path = "console/policy.html")]
pub struct PolicyPage {
    pub nav: &'static str,
    pub me: Me,
    pub f: ExplainForm,
    pub targets: Vec<String>,
    pub kinds: &'static [&'static str],
    pub explanation: Option<ExplainView>,
    pub error: Option<String>,
}

/// A page with one message (login problems, refusals).
#[derive(Template)]
#[template(path = "console/message.html")]
pub struct MessagePage {
    pub title: String,
    pub text: String,
    pub link: Option<(String, String)>,
    /// Go here at once (a same-site navigation, so the strict session cookie is sent).
    pub refresh: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human(42_000), "42s");
        assert_eq!(human(185_000), "3m 5s");
        assert_eq!(human(2 * 3_600_000 + 600_000), "2h 10m");
        assert_eq!(human(76 * 3_600_000), "3d 4h");
    }

    /// The request page shows the parameters and the dry run as reviewers see them, escaped.
    #[test]
    fn the_request_page_shows_parameters_and_the_dry_run() {
        let mut r = crate::approval::text::tests::held_write();
        if let Some(d) = r.dry_run.as_mut() {
            d.after[0][1] = Some("<b>x</b>".into());
        }
        let page = RequestPage {
            nav: "inbox",
            me: Me {
                subject: "alice".into(),
                groups: "dba".into(),
                csrf: "c".into(),
            },
            r: RequestView::new(&r, &crate::approval::Principal::admin()),
            notice: None,
            error: None,
        };
        let html = page.render().expect("render");
        for want in [
            "<td>$1</td><td>text</td><td class=\"value\">[REDACTED]</td><td>public.t.email</td><td>pii</td>",
            "<td>$2</td><td>int4</td><td class=\"value\">7</td>",
            "id=\"dry-run-summary\">dry run: 2 rows affected in public.accounts",
            "<code>UPDATE 2</code>",
            "<h3>Before (first 1 rows)</h3>",
            "<tr><td>22</td><td>NULL</td></tr>",
            "<td>&#60;b&#62;x&#60;/b&#62;</td>",
            "<dt>Note</dt><dd>no WHERE on a joined table</dd>",
        ] {
            assert!(html.contains(want), "{want:?} missing from\n{html}");
        }
        r.dry_run = Some(crate::approval::DryRun::skipped("calls nextval"));
        let html = RequestPage {
            r: RequestView::new(&r, &crate::approval::Principal::admin()),
            ..page
        }
        .render()
        .expect("render");
        assert!(html.contains(">no dry run: calls nextval"), "{html}");
        assert!(!html.contains("dry-run-before"), "{html}");
    }
}
