//! Plain-text views of a request's review context, shared by the CLI (`airlock requests ID`)
//! and chat notifications, so a reviewer reads the same parameters and dry run everywhere.
//! The values are already masked for the reviewer when the request is made; nothing here
//! unmasks or reads anything else.

use std::fmt::Write;

use super::model::{ApprovalRequest, DryRun, ShownParam};

/// One line for a list or a chat message: what the dry run showed, or why there was none.
pub fn dry_run_summary(d: &DryRun) -> String {
    let reason = d.reason.as_deref().unwrap_or("no reason given");
    match d.status.as_str() {
        "done" => {
            let rows = d.rows_affected.unwrap_or(0);
            let mut s = format!(
                "dry run: {rows} row{} affected",
                if rows == 1 { "" } else { "s" }
            );
            if let Some(table) = &d.table {
                let _ = write!(s, " in {table}");
            }
            let _ = write!(s, ", rolled back ({} ms)", d.took_ms);
            s
        }
        "skipped" => format!("no dry run: {reason}"),
        _ => format!("dry run failed: {reason}"),
    }
}

/// A sample cell as shown: the value, or `NULL`.
pub fn cell(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "NULL".into())
}

/// ` (first N rows)` when more rows were affected than each sample holds, else empty.
pub fn sample_cap(d: &DryRun) -> String {
    if d.truncated {
        format!(" (first {} rows)", d.sample_limit)
    } else {
        String::new()
    }
}

/// A short form for table columns: `2 rows`, `none`, `failed`.
pub fn dry_run_short(d: Option<&DryRun>) -> String {
    match d {
        None => "-".into(),
        Some(d) => match d.status.as_str() {
            "done" => format!("{} rows", d.rows_affected.unwrap_or(0)),
            "skipped" => "none".into(),
            _ => "failed".into(),
        },
    }
}

/// `$1 int4 = 3`, with where it goes and which masking rules changed it.
pub fn param_line(p: &ShownParam) -> String {
    let mut s = format!("${} {} = ", p.n, p.type_name);
    match &p.value {
        None => s.push_str("NULL"),
        Some(v) if p.shown_as == "text" => {
            let _ = write!(s, "'{}'", v.replace('\'', "''"));
        }
        Some(v) => s.push_str(v),
    }
    if let Some(col) = &p.column {
        let _ = write!(s, "  (→ {col})");
    }
    if !p.masked.is_empty() {
        let _ = write!(s, "  [masked: {}]", p.masked.join(", "));
    }
    s
}

/// The sample rows as an aligned table under their column names (NULL for SQL NULL).
pub fn sample_table(columns: &[String], rows: &[Vec<Option<String>>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in rows {
        for (i, v) in row.iter().enumerate() {
            let w = cell(v).chars().count();
            match widths.get_mut(i) {
                Some(cur) => *cur = (*cur).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        out.push_str(padded.join(" | ").trim_end());
        out.push('\n');
    };
    line(&mut out, columns.to_vec());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&rule.join("-+-"));
    out.push('\n');
    for row in rows {
        line(&mut out, row.iter().map(cell).collect());
    }
    out
}

/// The dry run in full: summary, command tag, plan, and the samples before and after.
pub fn dry_run_text(d: &DryRun) -> String {
    let mut out = dry_run_summary(d);
    out.push('\n');
    if d.status != "done" {
        return out;
    }
    if let Some(tag) = &d.command_tag {
        let _ = writeln!(out, "server answered: {tag}");
    }
    if !d.plan.is_empty() {
        out.push_str("plan (estimate):\n");
        for l in &d.plan {
            let _ = writeln!(out, "  {l}");
        }
    }
    let cap = sample_cap(d);
    for (label, rows) in [("before", &d.before), ("after", &d.after)] {
        if rows.is_empty() {
            let _ = writeln!(out, "{label}: no rows");
            continue;
        }
        let _ = writeln!(out, "{label}{cap}:");
        for l in sample_table(&d.columns, rows).lines() {
            let _ = writeln!(out, "  {l}");
        }
    }
    out
}

/// Everything a reviewer needs to decide one request, as `airlock requests ID` prints it.
pub fn describe(r: &ApprovalRequest, now_ms: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "request   {} ({})", r.id, r.state.as_str());
    let _ = writeln!(
        out,
        "target    {}{}",
        r.target,
        r.protocol
            .map(|p| format!(" ({})", p.as_str()))
            .unwrap_or_default()
    );
    let _ = write!(out, "subject   {}", r.subject);
    if !r.groups.is_empty() {
        let _ = write!(out, " [{}]", r.groups.join(", "));
    }
    out.push('\n');
    if let Some(by) = &r.requested_by {
        let _ = writeln!(out, "submitted {by}");
    }
    if let Some(task) = &r.task {
        let _ = writeln!(out, "task      {task}");
    }
    if let Some(w) = &r.workload {
        let user = w.user.as_ref().map_or_else(
            || format!("uid {}", w.uid),
            |u| format!("{u} (uid {})", w.uid),
        );
        let _ = writeln!(out, "workload  {} pid {}, {user}", w.comm, w.tgid);
        if let Some(cg) = &w.cgroup_path {
            let _ = writeln!(out, "cgroup    {cg}");
        }
    }
    let _ = writeln!(out, "rule      {}", r.rule);
    let fields: [(&str, &[String]); 7] = [
        ("classes", &r.classes),
        ("kinds", &r.kinds),
        ("writes", &r.tables),
        ("reads", &r.tables_read),
        ("functions", &r.functions),
        ("objects", &r.objects),
        ("notes", &r.notes),
    ];
    for (label, v) in fields {
        if !v.is_empty() {
            let _ = writeln!(out, "{label:<9} {}", v.join(", "));
        }
    }
    let _ = writeln!(
        out,
        "review    {}/{} from {}{}",
        r.approvals(),
        r.quorum,
        r.approvers.join(", "),
        if r.escalate_to.is_empty() {
            String::new()
        } else {
            format!(" (then {})", r.escalate_to.join(", "))
        }
    );
    let age = now_ms.saturating_sub(r.created_ms) / 1000;
    let left = r.deadline_ms as i64 - now_ms as i64;
    let _ = writeln!(
        out,
        "age       {age}s; deadline {}",
        if r.is_pending() {
            format!("in {}s", left.max(0) / 1000)
        } else {
            "passed or decided".into()
        }
    );
    if !r.mask.is_empty() {
        let _ = writeln!(out, "masking   {}", r.mask.join(", "));
    }
    for v in &r.votes {
        let _ = writeln!(
            out,
            "vote      {} {} via {}{}",
            v.by,
            format!("{:?}", v.verdict).to_lowercase(),
            v.via,
            v.reason
                .as_ref()
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        );
    }
    if let Some(reason) = &r.reason {
        let _ = writeln!(out, "reason    {reason}");
    }
    for (i, c) in r.commands.iter().enumerate() {
        let _ = writeln!(
            out,
            "\ncommand{} (sha256 {}, uses left {}):",
            if r.commands.len() > 1 {
                format!(" {}", i + 1)
            } else {
                String::new()
            },
            c.sha256,
            c.uses_left
        );
        for l in c.text.lines() {
            let _ = writeln!(out, "  {l}");
        }
        if !c.params.is_empty() {
            out.push_str("parameters:\n");
            for p in &c.params {
                let _ = writeln!(out, "  {}", param_line(p));
            }
        }
    }
    if let Some(d) = &r.dry_run {
        out.push('\n');
        out.push_str(&dry_run_text(d));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::ParamFormat;

    fn done() -> DryRun {
        DryRun {
            status: "done".into(),
            rows_affected: Some(2),
            command_tag: Some("UPDATE 2".into()),
            plan: vec!["Update on accounts  (cost=0.00..1.02 rows=2 width=10)".into()],
            table: Some("public.accounts".into()),
            columns: vec!["id".into(), "email".into()],
            before: vec![
                vec![Some("1".into()), Some("[REDACTED]".into())],
                vec![Some("22".into()), None],
            ],
            after: vec![vec![Some("1".into()), Some("[REDACTED]".into())]],
            sample_limit: 1,
            truncated: true,
            took_ms: 4,
            ..DryRun::default()
        }
    }

    #[test]
    fn a_dry_run_reads_as_rows_plan_and_samples() {
        let text = dry_run_text(&done());
        assert!(
            text.starts_with("dry run: 2 rows affected in public.accounts, rolled back (4 ms)\n"),
            "{text}"
        );
        assert!(text.contains("server answered: UPDATE 2"), "{text}");
        assert!(text.contains("  Update on accounts"), "{text}");
        assert!(text.contains("before (first 1 rows):\n  id | email\n  ---+-----------\n  1  | [REDACTED]\n  22 | NULL\n"), "{text}");
        assert!(text.contains("after (first 1 rows):"), "{text}");
        assert_eq!(
            dry_run_summary(&DryRun::skipped("calls nextval")),
            "no dry run: calls nextval"
        );
        assert_eq!(dry_run_short(Some(&done())), "2 rows");
        assert_eq!(dry_run_short(Some(&DryRun::failed("timeout"))), "failed");
        assert_eq!(dry_run_short(None), "-");
    }

    #[test]
    fn parameters_read_with_type_column_and_masking() {
        let p = ShownParam {
            n: 1,
            type_name: "text".into(),
            type_id: 25,
            format: ParamFormat::Text,
            value: Some("it's [REDACTED]".into()),
            shown_as: "text".into(),
            masked: vec!["pii".into()],
            column: Some("public.t.email".into()),
        };
        assert_eq!(
            param_line(&p),
            "$1 text = 'it''s [REDACTED]'  (→ public.t.email)  [masked: pii]"
        );
        let null = ShownParam {
            value: None,
            masked: vec![],
            column: None,
            ..p
        };
        assert_eq!(param_line(&null), "$1 text = NULL");
    }

    /// The whole context of a held, bound write: command, masked parameter, objects, dry run.
    pub(crate) fn held_write() -> ApprovalRequest {
        let mut r = crate::approval::model::tests::sample();
        r.commands[0].text = "UPDATE t SET email = $1 WHERE id = $2".into();
        r.commands[0].params = vec![
            ShownParam {
                n: 1,
                type_name: "text".into(),
                type_id: 25,
                format: ParamFormat::Text,
                value: Some("[REDACTED]".into()),
                shown_as: "text".into(),
                masked: vec!["pii".into()],
                column: Some("public.t.email".into()),
            },
            ShownParam {
                n: 2,
                type_name: "int4".into(),
                type_id: 23,
                format: ParamFormat::Binary,
                value: Some("7".into()),
                shown_as: "text".into(),
                masked: vec![],
                column: Some("public.t.id".into()),
            },
        ];
        r.notes = vec!["no WHERE on a joined table".into()];
        r.dry_run = Some(done());
        r
    }

    #[test]
    fn a_request_reads_whole() {
        let text = describe(&held_write(), 30_000);
        for want in [
            "request   r1 (pending)",
            "target    db (postgres)",
            "subject   unix:agent [agents]",
            "classes   write",
            "writes    t",
            "notes     no WHERE on a joined table",
            "review    0/2 from dba (then oncall)",
            "age       30s; deadline in 0s",
            "  UPDATE t SET email = $1 WHERE id = $2",
            "  $1 text = '[REDACTED]'  (→ public.t.email)  [masked: pii]",
            "  $2 int4 = '7'  (→ public.t.id)",
            "dry run: 2 rows affected",
            "  Update on accounts",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
    }
}
