//! A session's audit record: opened before anything reaches the target (a session the log
//! cannot record does not start), closed with how it ended and what crossed.

use std::borrow::Cow;

use crate::approval::{Kind, Review, ReviewOutcome, Ruling};
use crate::audit::{
    ApprovalOutcome, AuditError, EndReason, GrantRecord, ReviewRecord, SessionEnd, SessionRecorder,
    SessionStart, VoteRecord,
};
use crate::model::ReviewMode;
use crate::runtime::Context;

/// Admits and starts the session's record. An error means the session must be refused.
pub async fn open(ctx: &Context, start: SessionStart<'_>) -> Result<SessionRecorder, AuditError> {
    let mut recorder = ctx.audit.admit_session()?;
    recorder.start(start).await?;
    Ok(recorder)
}

/// Records the session's end (a failure is logged: the session is over either way).
pub async fn close(
    recorder: SessionRecorder,
    reason: EndReason,
    detail: Option<&str>,
    bytes_from_client: u64,
    bytes_to_client: u64,
) {
    if let Err(e) = recorder
        .end(SessionEnd {
            reason,
            detail: detail.map(str::to_owned),
            bytes_from_client,
            bytes_to_client,
        })
        .await
    {
        tracing::warn!(error = %e, "audit: session end not recorded");
    }
}

/// A review as the audit log records it beside its command: the request (id, rule, approver
/// groups), every vote with the voter and reason, how it ended, and the grant it used.
pub fn review_record(review: &Review) -> ReviewRecord {
    let r = &review.request;
    let outcome = match review.outcome {
        ReviewOutcome::Approved => ApprovalOutcome::Approved,
        ReviewOutcome::Granted => ApprovalOutcome::Grant,
        ReviewOutcome::Denied => ApprovalOutcome::Denied,
        ReviewOutcome::TimedOut => ApprovalOutcome::TimedOut,
        ReviewOutcome::Revoked => ApprovalOutcome::Revoked,
        ReviewOutcome::Withdrawn => ApprovalOutcome::Withdrawn,
        ReviewOutcome::Pending => ApprovalOutcome::Pending,
        ReviewOutcome::Unavailable => ApprovalOutcome::Unavailable,
    };
    let us = |ms: u64| ms.saturating_mul(1000);
    ReviewRecord {
        id: r.id.clone(),
        outcome,
        rule: r.rule.clone(),
        groups: r.approvers.clone(),
        quorum: r.quorum,
        mode: Some(Cow::Borrowed(match r.mode {
            ReviewMode::Hold => "hold",
            ReviewMode::Retry => "retry",
        })),
        escalated_to: if r.escalated {
            r.escalate_to.clone()
        } else {
            Vec::new()
        },
        requested_at: us(r.created_ms),
        decided_at: r.decided_ms.map(us),
        votes: r
            .votes
            .iter()
            .map(|v| VoteRecord {
                by: v.by.clone(),
                via: v.via.clone(),
                verdict: Cow::Borrowed(match v.verdict {
                    Ruling::Approve => "approve",
                    Ruling::Deny => "deny",
                    Ruling::Revoke => "revoke",
                }),
                reason: v.reason.clone(),
                at: us(v.at_ms),
            })
            .collect(),
        grant: (review.outcome == ReviewOutcome::Granted).then(|| GrantRecord {
            kind: Cow::Borrowed(match r.kind {
                Kind::Command => "command",
                Kind::Plan => "plan",
            }),
            uses_left: review.uses_left.unwrap_or(0),
            expires_at: r.expires_ms.map(us),
            requested_by: r.requested_by.clone(),
            task: r.task.clone(),
        }),
        reason: r.reason.clone(),
        decided_by: Vec::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::approval::scratch::service;
    use crate::approval::{Approvals, Principal, ReviewRequest, Ruling, State};
    use crate::gate::{LogNotice, Verdict};
    use crate::model::{Class, Command, Decision, Dialect, Facts, Identity, OnTimeout};

    fn request(text: &str, quorum: u32, mode: ReviewMode) -> ReviewRequest {
        ReviewRequest {
            identity: Identity {
                subject: "unix:agent".into(),
                groups: vec!["agents".into()],
                workload: None,
                token: None,
            },
            target: "demo-db".into(),
            session: 1,
            protocol: crate::model::Protocol::Postgres,
            command: Command::sql(Dialect::Postgres, text).into_owned(),
            facts: Arc::new(Facts::single("update", Class::Write)),
            decision: Decision::Review {
                rule: "write-review".into(),
                approvers: vec!["dba".into()],
                quorum,
                ttl: Duration::from_secs(60),
                timeout: Duration::from_secs(60),
                on_timeout: OnTimeout::Deny,
                escalate_to: Vec::new(),
                mode,
                mask: Vec::new(),
                run_as: None,
                approved_run_as: None,
                dry_run: false,
            },
            preview: None,
        }
    }

    fn reviewer(name: &str) -> Principal {
        Principal {
            subject: name.into(),
            groups: vec!["dba".into()],
            admin: false,
            via: "oidc:https://idp.example".into(),
        }
    }

    /// Starts the review of `text`; returns its trail, the waiting task and the request id.
    async fn held(
        svc: &Arc<Approvals>,
        text: &str,
        quorum: u32,
    ) -> (
        crate::approval::ReviewTrail,
        tokio::task::JoinHandle<Verdict>,
        String,
    ) {
        let Verdict::Hold(hold) =
            crate::gate::review(Some(svc), request(text, quorum, ReviewMode::Hold))
        else {
            panic!("a review decision is held")
        };
        let trail = hold.trail();
        let task = tokio::spawn(hold.start(Arc::new(LogNotice { session: 1 })));
        let id = pending(svc, text).await;
        (trail, task, id)
    }

    async fn pending(svc: &Arc<Approvals>, text: &str) -> String {
        for _ in 0..500 {
            if let Some(r) = svc
                .list(true)
                .await
                .unwrap()
                .into_iter()
                .find(|r| r.commands[0].text == text)
            {
                return r.id;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no pending request for {text}")
    }

    /// What a held command's review leaves for its audit record: every vote with voter, how
    /// they authenticated and their reason, and how it ended (approved, denied, withdrawn when
    /// the waiter is dropped, a grant used by a later run).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_review_leaves_its_request_votes_and_outcome_for_the_audit_record() {
        let svc = service("trail");
        let svc = &svc.0;

        // Approved by two votes (quorum 2).
        let (trail, task, id) = held(svc, "UPDATE a SET x = 1", 2).await;
        svc.decide(
            &id,
            &reviewer("carol"),
            Ruling::Approve,
            Some("ticket 7".into()),
        )
        .await
        .unwrap();
        svc.decide(&id, &reviewer("dave"), Ruling::Approve, None)
            .await
            .unwrap();
        let verdict = task.await.unwrap();
        assert!(
            matches!(&verdict, Verdict::Allow { approval: Some(a), .. } if *a == id),
            "{verdict:?}"
        );
        let rec = review_record(&trail.take().expect("the review is on the trail"));
        assert_eq!(rec.id, id);
        assert_eq!(rec.outcome, ApprovalOutcome::Approved);
        assert_eq!(
            (rec.rule.as_str(), rec.groups.as_slice(), rec.quorum),
            ("write-review", &["dba".to_owned()][..], 2)
        );
        assert_eq!(rec.mode.as_deref(), Some("hold"));
        assert!(rec.requested_at > 0 && rec.decided_at >= Some(rec.requested_at));
        let votes: Vec<_> = rec
            .votes
            .iter()
            .map(|v| {
                (
                    v.by.as_str(),
                    v.verdict.as_ref(),
                    v.reason.as_deref(),
                    v.via.as_str(),
                )
            })
            .collect();
        assert_eq!(
            votes,
            vec![
                (
                    "carol",
                    "approve",
                    Some("ticket 7"),
                    "oidc:https://idp.example"
                ),
                ("dave", "approve", None, "oidc:https://idp.example"),
            ]
        );
        assert!(rec.grant.is_none());

        // Denied, with the reason.
        let (trail, task, id) = held(svc, "UPDATE a SET x = 2", 1).await;
        svc.decide(&id, &reviewer("erin"), Ruling::Deny, Some("not now".into()))
            .await
            .unwrap();
        assert!(matches!(task.await.unwrap(), Verdict::Deny { .. }));
        let rec = review_record(&trail.take().unwrap());
        assert_eq!(
            (rec.id.as_str(), rec.outcome),
            (id.as_str(), ApprovalOutcome::Denied)
        );
        assert_eq!(rec.votes[0].verdict, "deny");
        assert_eq!(rec.votes[0].reason.as_deref(), Some("not now"));

        // The waiter goes away (the client left): the request as it stood, withdrawn.
        let (trail, task, id) = held(svc, "UPDATE a SET x = 3", 1).await;
        task.abort();
        let _ = task.await;
        let rec = review_record(&trail.take().unwrap());
        assert_eq!(
            (rec.id.as_str(), rec.outcome),
            (id.as_str(), ApprovalOutcome::Withdrawn)
        );
        assert!(rec.votes.is_empty());
        for _ in 0..500 {
            if svc.get(&id).await.unwrap().state == State::Withdrawn {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(svc.get(&id).await.unwrap().state, State::Withdrawn);

        // Retry mode: refused with a pending request; once approved, the next run uses the
        // grant, and the record says which request, who approved it and what is left.
        let text = "UPDATE a SET x = 4";
        let Verdict::Hold(hold) =
            crate::gate::review(Some(svc), request(text, 1, ReviewMode::Retry))
        else {
            panic!()
        };
        let trail = hold.trail();
        assert!(matches!(
            hold.start(Arc::new(LogNotice { session: 1 })).await,
            Verdict::Deny { .. }
        ));
        let rec = review_record(&trail.take().unwrap());
        assert_eq!(rec.outcome, ApprovalOutcome::Pending);
        assert_eq!(rec.mode.as_deref(), Some("retry"));
        svc.decide(
            &rec.id,
            &reviewer("carol"),
            Ruling::Approve,
            Some("go".into()),
        )
        .await
        .unwrap();
        let Verdict::Hold(hold) =
            crate::gate::review(Some(svc), request(text, 1, ReviewMode::Retry))
        else {
            panic!()
        };
        let trail = hold.trail();
        assert!(matches!(
            hold.start(Arc::new(LogNotice { session: 1 })).await,
            Verdict::Allow { .. }
        ));
        let granted = review_record(&trail.take().unwrap());
        assert_eq!(
            (granted.id.as_str(), granted.outcome),
            (rec.id.as_str(), ApprovalOutcome::Grant)
        );
        assert_eq!(granted.votes[0].by, "carol");
        let grant = granted.grant.expect("the grant used");
        assert_eq!((grant.kind.as_ref(), grant.uses_left), ("command", 0));
        assert!(grant.expires_at.is_some());
    }
}
