//! Webhook notifications: a generic JSON body signed with HMAC-SHA256, or a Slack-compatible
//! incoming-webhook payload. Sent in the background with retries and exponential backoff; a
//! notification that fails is logged and dropped. It never decides anything.

use std::sync::Arc;
use std::time::Duration;

use ring::hmac;

use super::model::ApprovalRequest;
use crate::config::approvals::{WebhookConfig, WebhookKind};

/// Header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "x-airlock-signature";
/// Header carrying the event name.
pub const EVENT_HEADER: &str = "x-airlock-event";

/// First retry delay; doubled after each failed attempt.
const BACKOFF: Duration = Duration::from_millis(200);
/// How long one delivery may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Hook {
    url: String,
    kind: WebhookKind,
    key: Option<hmac::Key>,
    attempts: u32,
}

/// Sends notifications to the configured webhooks.
#[derive(Debug, Clone)]
pub struct Notifier {
    hooks: Arc<Vec<Hook>>,
    client: reqwest::Client,
}

/// `sha256=<hex>` of `body` under `secret`, as sent in [`SIGNATURE_HEADER`].
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hex_signature(&key, body)
}

fn hex_signature(key: &hmac::Key, body: &[u8]) -> String {
    let tag = hmac::sign(key, body);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256=");
    for b in tag.as_ref() {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The generic JSON body for `event` about `req`.
pub fn generic_body(event: &str, req: &ApprovalRequest, sent_ms: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "event": event,
        "sent_ms": sent_ms,
        "approve": format!("airlock approve {}", req.id),
        "deny": format!("airlock deny {}", req.id),
        "request": req,
    }))
    .unwrap_or_default()
}

/// The Slack incoming-webhook body for `event` about `req`: the command, its parameters and
/// the dry run as the reviewer sees them (masked when the request was made), bounded in size.
pub fn slack_body(event: &str, req: &ApprovalRequest) -> Vec<u8> {
    use super::text;
    let mut shown = String::new();
    for c in &req.commands {
        shown.push_str(&c.text);
        shown.push('\n');
        for p in &c.params {
            shown.push_str("  ");
            shown.push_str(&text::param_line(p));
            shown.push('\n');
        }
    }
    let effect = match &req.dry_run {
        Some(d) => format!(
            "\n```{}```",
            bounded(text::dry_run_text(d), 1500).replace("```", "'''")
        ),
        None => String::new(),
    };
    let text = format!(
        "*airlock* {event}: request `{}` by `{}` on `{}` (rule `{}`, approvers: {})\n```{}```{}\nApprove: `airlock approve {}` · Deny: `airlock deny {}` · Details: `airlock requests {}`",
        req.id,
        req.subject,
        req.target,
        req.rule,
        req.eligible_groups()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        bounded(shown, 2000).replace("```", "'''"),
        effect,
        req.id,
        req.id,
        req.id
    );
    serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap_or_default()
}

/// `s` cut to at most `max` bytes on a character boundary, with what would act on a reader's
/// display (controls, bidirectional overrides) escaped. A cut says so plainly: what is shown
/// is not the whole command, and the reviewer must read it whole before approving.
fn bounded(s: String, max: usize) -> String {
    let total = s.len();
    let mut s = crate::audit::cli::escape_controls(&s).into_owned();
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(&format!(
            "… [TRUNCATED: {total} bytes in all; read the whole request before deciding]"
        ));
    }
    s
}

impl Notifier {
    /// A notifier for `hooks`; a hook without a usable secret still sends, unsigned only if it
    /// is a Slack hook (a generic hook without a secret is refused here).
    pub fn new(hooks: &[WebhookConfig]) -> Result<Self, super::ApprovalError> {
        let mut out = Vec::new();
        for h in hooks {
            let key = h.secret().map(|s| hmac::Key::new(hmac::HMAC_SHA256, &s));
            if key.is_none() && h.kind == WebhookKind::Generic {
                return Err(super::ApprovalError::Config(format!(
                    "webhook {}: a generic webhook needs `secret` or `secret_env` (set and non-empty)",
                    h.url
                )));
            }
            out.push(Hook {
                url: h.url.clone(),
                kind: h.kind,
                key,
                attempts: h.attempts.max(1),
            });
        }
        let client = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            .build()
            .map_err(|e| super::ApprovalError::Config(format!("webhook client: {e}")))?;
        Ok(Self {
            hooks: Arc::new(out),
            client,
        })
    }

    /// Sends `event` about `req` to every hook, in the background.
    pub fn notify(&self, event: &'static str, req: &ApprovalRequest) {
        if self.hooks.is_empty() {
            return;
        }
        let now = super::now_ms();
        for i in 0..self.hooks.len() {
            let hook = &self.hooks[i];
            let body = match hook.kind {
                WebhookKind::Generic => generic_body(event, req, now),
                WebhookKind::Slack => slack_body(event, req),
            };
            let hooks = Arc::clone(&self.hooks);
            let client = self.client.clone();
            let id = req.id.clone();
            tokio::spawn(async move {
                deliver(&client, &hooks[i], event, &id, body).await;
            });
        }
    }
}

async fn deliver(client: &reqwest::Client, hook: &Hook, event: &str, id: &str, body: Vec<u8>) {
    let signature = hook.key.as_ref().map(|k| hex_signature(k, &body));
    let mut delay = BACKOFF;
    for attempt in 1..=hook.attempts {
        let mut req = client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header(EVENT_HEADER, event)
            .body(body.clone());
        if let Some(s) = &signature {
            req = req.header(SIGNATURE_HEADER, s);
        }
        let error = match req.send().await {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(url = %hook.url, request = id, event, attempt, "webhook delivered");
                return;
            }
            // A 4xx other than 429 will not get better by retrying.
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                tracing::warn!(url = %hook.url, request = id, event, status = r.status().as_u16(), "webhook refused; not retrying");
                return;
            }
            Ok(r) => format!("status {}", r.status()),
            Err(e) => e.to_string(),
        };
        tracing::warn!(url = %hook.url, request = id, event, attempt, %error, "webhook delivery failed");
        if attempt < hook.attempts {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
    }
    tracing::error!(url = %hook.url, request = id, event, "webhook gave up");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc4231_case_2() {
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn slack_shows_parameters_and_the_dry_run() {
        let req = crate::approval::text::tests::held_write();
        let body: serde_json::Value =
            serde_json::from_slice(&slack_body("requested", &req)).unwrap();
        let text = body["text"].as_str().unwrap();
        assert!(text.contains("$1 text = '[REDACTED]'"), "{text}");
        assert!(text.contains("$2 int4 = '7'"), "{text}");
        assert!(
            text.contains("dry run: 2 rows affected in public.accounts"),
            "{text}"
        );
        assert!(text.contains("before (first 1 rows):"), "{text}");
        assert!(text.contains("`airlock requests r1`"), "{text}");
        // The generic body carries the request whole, dry run included.
        let body: serde_json::Value =
            serde_json::from_slice(&generic_body("requested", &req, 1)).unwrap();
        assert_eq!(body["request"]["dry_run"]["rows_affected"], 2);
        assert_eq!(
            body["request"]["commands"][0]["params"][0]["value"],
            "[REDACTED]"
        );
    }
}
