//! One client session channel, from its setup requests to its close.
//!
//! The connection's reader hands every client event to the channel's task in order
//! ([`Input`]). Setup requests (pty, environment) are kept until the channel asks for a command;
//! the command is judged through the gate, and only an allowed one opens a channel to the
//! server, replays the setup there and starts. Then the task relays the client's input while a
//! pump relays the server's output back, recording both (a shell's input must be recorded for
//! it to go on; a command's input and output are recorded up to the limit).
//!
//! - `exec`: denied → the rule's message on stderr, exit status 1, nothing reaches the server;
//!   held → the request id on stderr and the client's stdin kept (bounded, then the client
//!   waits) until the decision; a client that leaves withdraws the request.
//! - `shell`: judged as a whole, the same way.
//! - `sftp`: every request naming a path is judged ([`super::sftp`]); a refused one gets an
//!   `SSH_FX_PERMISSION_DENIED` status (its message also on stderr), the others pass. Replies
//!   are framed so that a refusal is never spliced into the middle of the server's packet.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Pty, Sig};
use tokio::sync::mpsc;

use super::Shared;
use super::sftp::{self, Action, Framer, Handles};
use crate::audit::{
    ChainHash, CommandEvent, CommandResult, MaskTally, RECORDINGS_DIR, RecordingRecord,
    ReviewRecord,
};
use crate::gate::{self, HeldFuture, Judge, Judged, Notice, Verdict};
use crate::mask::{MaskCounts, TextMasker};
use crate::model::{Command, Decision, Facts, FileOp};
use crate::recording::{Header, MaskedCast};

/// Client input kept while a command is held; past it the client waits (backpressure).
const HELD_INPUT_LIMIT: usize = 8 * 1024 * 1024;
/// Environment requests kept per channel.
const MAX_ENV: usize = 64;
/// Environment variables passed on to the server: locale only. Anything else could change what
/// an allowed command runs (`BASH_ENV`, `LD_PRELOAD`, `PATH`, `GIT_SSH_COMMAND`) wherever the
/// server's `AcceptEnv` lets it through, so it is dropped (and logged). A locale value naming a
/// path (`LC_ALL=/tmp/x`) would make the C library load locale files from there: dropped too.
pub fn env_passes(name: &str, value: &str) -> bool {
    let locale = name == "LANG"
        || name == "LANGUAGE"
        || name.strip_prefix("LC_").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        });
    locale
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-@:".contains(&b))
}

/// A client's pty request, replayed to the server once the command is allowed.
#[derive(Debug, Clone)]
pub struct PtyRequest {
    pub term: String,
    pub cols: u32,
    pub rows: u32,
    pub pix_width: u32,
    pub pix_height: u32,
    pub modes: Vec<(Pty, u32)>,
}

/// What the client did on a channel, in the order it did it.
#[derive(Debug)]
pub enum Input {
    Pty(PtyRequest),
    Env {
        name: String,
        value: String,
    },
    Exec(Vec<u8>),
    Shell,
    Sftp,
    Data(Bytes),
    Eof,
    WindowChange {
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
    },
    Signal(Sig),
    Close,
}

type ClientTx = Arc<ChannelWriteHalf<russh::server::Msg>>;
type UpstreamTx = Arc<ChannelWriteHalf<russh::client::Msg>>;
type Cast = Arc<Mutex<Option<MaskedCast>>>;

/// Why a channel stops before its command finished.
#[derive(Debug)]
enum Ended {
    /// The client closed the channel (or the connection).
    ClientLeft,
    /// The audit log could not take a record: the session is being ended.
    Audit,
    /// The server refused or dropped the channel.
    Upstream(String),
    /// The client sent what this gateway cannot judge (malformed SFTP).
    Protocol(String),
}

/// The final verdict on a command, after any hold.
enum Outcome {
    /// `mask`: the masking rules the deciding rule names for its output, when it names any.
    Allowed {
        n: Option<u64>,
        mask: Vec<String>,
        /// The approval that released it, when it was held.
        approval: Option<String>,
    },
    Denied {
        message: String,
    },
}

/// The command a channel runs.
enum Mode {
    Exec(String),
    Shell,
    Sftp,
}

impl Mode {
    /// What an interactive channel is called, whose input must be recorded whole (`None`:
    /// not one). A command with a terminal is one: `ssh -t web systemctl status` pages with
    /// `less`, whose `!sh` is a shell no rule judged.
    fn interactive(&self, pty: bool) -> Option<&'static str> {
        match self {
            Mode::Shell => Some("shell"),
            Mode::Exec(_) if pty => Some("command with a terminal"),
            // `ssh web sh < script`: the input is commands, run as they arrive.
            Mode::Exec(line) if reads_commands(line) => Some("interpreter reading its input"),
            Mode::Exec(_) | Mode::Sftp => None,
        }
    }
}

/// Whether a command line's program is a shell or interpreter, which runs the commands it is
/// sent: its input must be recorded whole, as a shell's is (past the recording limit it would
/// run unrecorded).
fn reads_commands(line: &str) -> bool {
    const INTERPRETERS: &[&str] = &[
        "sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh", "busybox", "python",
        "perl", "ruby", "node", "php", "lua", "tclsh", "psql", "mysql", "mariadb", "sqlite",
    ];
    let Some(program) = line.split_whitespace().next() else {
        return false;
    };
    let name = program.rsplit('/').next().unwrap_or(program);
    // `python3.11`, `lua5.4`: the family's name.
    let family = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    INTERPRETERS.contains(&family)
}

/// Writes notices (a held command's request id) to the client's stderr.
struct StderrNotice {
    client: ClientTx,
    eol: &'static str,
}

impl Notice for StderrNotice {
    fn notice(&self, text: &str) {
        let client = Arc::clone(&self.client);
        let line = Bytes::from(format!("{text}{}", self.eol));
        tokio::spawn(async move {
            let _ = client.extended_data_bytes(1, line).await;
        });
    }
}

/// Decrements the session's open channel count when the task ends.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One channel's task.
pub struct ChannelTask {
    shared: Arc<Shared>,
    id: ChannelId,
    client: ClientTx,
    rx: mpsc::Receiver<Input>,
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    /// Client input that arrived while a command was held.
    held: VecDeque<Bytes>,
    held_bytes: usize,
    /// The client sent EOF while a command was held.
    held_eof: bool,
    _open: OpenGuard,
    _done: mpsc::Sender<()>,
}

impl ChannelTask {
    /// A task for client channel `id`, counted in `open` while it runs.
    pub fn new(
        shared: Arc<Shared>,
        id: ChannelId,
        client: ClientTx,
        rx: mpsc::Receiver<Input>,
        open: Arc<AtomicUsize>,
        done: mpsc::Sender<()>,
    ) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        ChannelTask {
            shared,
            id,
            client,
            rx,
            pty: None,
            env: Vec::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            held_eof: false,
            _open: OpenGuard(open),
            _done: done,
        }
    }

    fn eol(&self) -> &'static str {
        if self.pty.is_some() { "\r\n" } else { "\n" }
    }

    /// Runs the channel to its end.
    pub async fn run(mut self) {
        let mode = loop {
            match self.rx.recv().await {
                None | Some(Input::Close) => return,
                Some(Input::Pty(p)) => self.pty = Some(p),
                Some(Input::Env { name, value }) => {
                    if !env_passes(&name, &value) {
                        tracing::info!(session = self.shared.id, %name, "ssh environment variable dropped: only locale variables pass");
                    } else if self.env.len() < MAX_ENV {
                        self.env.push((name, value));
                    }
                }
                Some(Input::WindowChange { cols, rows, .. }) => {
                    if let Some(p) = &mut self.pty {
                        p.cols = cols;
                        p.rows = rows;
                    }
                }
                Some(Input::Exec(raw)) => match String::from_utf8(raw) {
                    Ok(line) => break Mode::Exec(line),
                    Err(e) => {
                        let line = String::from_utf8_lossy(e.as_bytes()).into_owned();
                        tracing::info!(session = self.shared.id, %line, "ssh exec refused: not UTF-8");
                        let message =
                            "airlock: the command line is not valid UTF-8; it was not run"
                                .to_owned();
                        let decision = Decision::Deny {
                            rule: "default".into(),
                            reason: message.clone(),
                        };
                        if self.shared.recording
                            && self
                                .record(
                                    &Command::Exec {
                                        line: line.as_str().into(),
                                    },
                                    &Facts::unknown("exec", "not UTF-8".into()),
                                    &decision,
                                    None,
                                )
                                .await
                                .is_err()
                        {
                            return;
                        }
                        return self.refuse(&message).await;
                    }
                },
                Some(Input::Shell) => break Mode::Shell,
                Some(Input::Sftp) => break Mode::Sftp,
                // Nothing runs yet that could take them.
                Some(Input::Data(_) | Input::Eof | Input::Signal(_)) => {}
            }
        };
        let command = match &mode {
            Mode::Exec(line) => Command::Exec {
                line: line.as_str().into(),
            },
            Mode::Shell => Command::Shell,
            Mode::Sftp => {
                return self.start(mode, None, Vec::new(), None).await;
            }
        };
        match self.resolve(&command).await {
            Ok(Outcome::Allowed { n, mask, approval }) => self.start(mode, n, mask, approval).await,
            Ok(Outcome::Denied { message }) => self.refuse(&message).await,
            Err(Ended::Audit) => {
                self.refuse("airlock: the audit log failed; the command was not run")
                    .await
            }
            Err(_) => {}
        }
    }

    /// Refuses the channel's command: the message on stderr, exit status 1, closed.
    async fn refuse(&self, message: &str) {
        let line = format!("{message}{}", self.eol());
        let _ = self.client.extended_data_bytes(1, Bytes::from(line)).await;
        let _ = self.client.exit_status(1).await;
        let _ = self.client.eof().await;
        let _ = self.client.close().await;
    }

    /// Queues a command record and waits until it is durable. An error ends the session.
    async fn record(
        &self,
        command: &Command<'_>,
        facts: &Facts,
        decision: &Decision,
        approval: Option<ReviewRecord>,
    ) -> Result<u64, Ended> {
        let queued = {
            let mut guard = self.shared.recorder.lock().await;
            let Some(rec) = guard.as_mut() else {
                return Err(Ended::Audit);
            };
            rec.command(CommandEvent {
                command,
                facts,
                decision,
                approval,
                caller: None,
            })
            .await
        };
        let acked = match queued {
            Ok((n, ack)) => ack.durable().await.map(|_| n),
            Err(e) => Err(e),
        };
        match acked {
            Ok(n) => Ok(n),
            Err(error) => {
                tracing::error!(session = self.shared.id, %error, "audit log failed; ssh session closed");
                self.shared.audit_failed.store(true, Ordering::Release);
                let shared = Arc::clone(&self.shared);
                tokio::spawn(async move {
                    shared
                        .disconnect("airlock: the audit log failed; the session is closed")
                        .await;
                });
                Err(Ended::Audit)
            }
        }
    }

    /// Judges a command through the gate, waits out a hold (keeping the client's input), and
    /// records it.
    async fn resolve(&mut self, command: &Command<'_>) -> Result<Outcome, Ended> {
        // Views matter to SQL masking only.
        let Judged {
            verdict,
            facts,
            record,
            ..
        } = self.shared.gate().judge(command);
        let text = command.text();
        let (verdict, record, approval) = match verdict {
            Verdict::Hold(hold) => {
                // How the review ends (its votes, or the request withdrawn) goes in the record.
                let trail = hold.trail();
                let notice = Arc::new(StderrNotice {
                    client: Arc::clone(&self.client),
                    eol: self.eol(),
                });
                let resolved = self.wait_held(hold.start(notice)).await;
                let review = trail.take().as_ref().map(gate::session::review_record);
                match resolved {
                    Some(v @ Verdict::Allow { .. }) => (v, record, review),
                    Some(Verdict::Deny { message }) => {
                        let record = record.map(|d| Decision::Deny {
                            rule: d.rule().to_owned(),
                            reason: message.clone(),
                        });
                        (Verdict::Deny { message }, record, review)
                    }
                    Some(Verdict::Hold(_)) => {
                        let message =
                            "airlock: internal error: approval did not resolve".to_owned();
                        (Verdict::Deny { message }, record, review)
                    }
                    None => {
                        tracing::info!(session = self.shared.id, command = %text, "client left while its command was held");
                        if let Some(d) = record {
                            let d = Decision::Deny {
                                rule: d.rule().to_owned(),
                                reason: "the client left before approval".into(),
                            };
                            let _ = self.record(command, &facts, &d, review).await;
                        }
                        return Err(Ended::ClientLeft);
                    }
                }
            }
            v => (v, record, None),
        };
        let n = match &record {
            Some(decision) => Some(self.record(command, &facts, decision, approval).await?),
            None => None,
        };
        match verdict {
            Verdict::Allow {
                rule,
                mask,
                approval,
                ..
            } => {
                // Live output is masked only where the rule says so (`mask:`): by default a
                // command's bytes pass as they are (rsync, scp and tar streams are not text).
                let explicit = self
                    .shared
                    .ctx
                    .config
                    .load()
                    .rules
                    .iter()
                    .any(|r| r.name == rule && r.mask.is_some());
                let mask = if explicit { mask } else { Vec::new() };
                Ok(Outcome::Allowed { n, mask, approval })
            }
            Verdict::Deny { message } => {
                tracing::info!(session = self.shared.id, command = %text, %message, "ssh command denied");
                Ok(Outcome::Denied { message })
            }
            Verdict::Hold(_) => Ok(Outcome::Denied {
                message: "airlock: internal error: approval did not resolve".into(),
            }),
        }
    }

    /// Waits for a held command's verdict while keeping the client's input (up to a limit,
    /// then the client waits). `None`: the client left, which withdraws the request.
    async fn wait_held(&mut self, wait: HeldFuture) -> Option<Verdict> {
        tokio::pin!(wait);
        loop {
            tokio::select! {
                v = &mut wait => return Some(v),
                input = self.rx.recv(), if self.held_bytes < HELD_INPUT_LIMIT => match input {
                    None | Some(Input::Close) => return None,
                    Some(Input::Data(b)) => {
                        self.held_bytes += b.len();
                        self.held.push_back(b);
                    }
                    Some(Input::Eof) => self.held_eof = true,
                    Some(Input::WindowChange { cols, rows, .. }) => {
                        if let Some(p) = &mut self.pty {
                            p.cols = cols;
                            p.rows = rows;
                        }
                    }
                    Some(_) => {}
                },
            }
        }
    }

    /// Opens the server channel, replays the setup, starts the command and relays it to the
    /// end; then records its result and recording. A command's output (not a shell's, whose
    /// prompts must not wait for a newline) passes the `mask` rules' detectors live.
    async fn start(
        mut self,
        mode: Mode,
        n: Option<u64>,
        mask: Vec<String>,
        approval: Option<String>,
    ) {
        let started = Instant::now();
        let up = match self.shared.upstream.handle.channel_open_session().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(session = self.shared.id, error = %e, "ssh upstream channel refused");
                return self
                    .refuse(&format!(
                        "airlock: the server refused a session channel: {e}"
                    ))
                    .await;
            }
        };
        let (up_read, up_write) = up.split();
        let up_write: UpstreamTx = Arc::new(up_write);
        let cast: Cast = Arc::new(Mutex::new(None));
        if let (Mode::Exec(_) | Mode::Shell, Some(dir), Some(n)) =
            (&mode, &self.shared.recordings, n)
        {
            let (cols, rows, term) = match &self.pty {
                Some(p) => (p.cols, p.rows, Some(p.term.as_str())),
                None => (80, 24, None),
            };
            let title = match &mode {
                Mode::Exec(line) => format!("{}: {line}", self.shared.target.name),
                _ => format!("{}: shell", self.shared.target.name),
            };
            let header = Header::new(cols, rows, Some(title), term);
            // Every rule's detectors mask the recording, whoever the caller is.
            let created = MaskedCast::create(
                &dir.join(format!("{n}.cast")),
                &header,
                self.shared
                    .ctx
                    .config
                    .load()
                    .daemon
                    .audit
                    .recording_max_bytes,
                &self.shared.masker,
            );
            match created {
                Ok(r) => {
                    if let Ok(mut c) = cast.lock() {
                        *c = Some(r);
                    }
                }
                Err(error) => {
                    tracing::error!(session = self.shared.id, %error, "ssh recording could not be created; command refused");
                    let _ = up_write.close().await;
                    return self
                        .refuse("airlock: the session recording could not be created; the command was not run")
                        .await;
                }
            }
        }
        let mut expect = VecDeque::new();
        let setup = async {
            if let Some(p) = &self.pty {
                up_write
                    .request_pty(
                        true,
                        &p.term,
                        p.cols,
                        p.rows,
                        p.pix_width,
                        p.pix_height,
                        &p.modes,
                    )
                    .await?;
                expect.push_back(Expect::Pty);
            }
            for (name, value) in &self.env {
                up_write
                    .set_env(false, name.as_str(), value.as_str())
                    .await?;
            }
            match &mode {
                Mode::Exec(line) => up_write.exec(true, line.as_bytes()).await?,
                Mode::Shell => up_write.request_shell(true).await?,
                Mode::Sftp => up_write.request_subsystem(true, "sftp").await?,
            }
            expect.push_back(Expect::Command);
            Ok::<(), russh::Error>(())
        };
        if let Err(e) = setup.await {
            let _ = up_write.close().await;
            return self
                .refuse(&format!("airlock: the server connection failed: {e}"))
                .await;
        }
        let sftp = matches!(mode, Mode::Sftp).then(|| {
            let (tx, rx) = mpsc::channel(64);
            (Arc::new(Mutex::new(Handles::default())), tx, rx)
        });
        let (handles, inject, inject_rx) = match sftp {
            Some((h, tx, rx)) => (Some(h), Some(tx), Some(rx)),
            None => (None, None, None),
        };
        let live = match (&mode, mask.is_empty()) {
            (Mode::Exec(_), false) => match (
                self.shared.masker.text(&mask),
                self.shared.masker.text(&mask),
            ) {
                (Ok(out), Ok(err)) => Some(Live {
                    out,
                    err,
                    buf: BytesMut::new(),
                }),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(session = self.shared.id, error = %e, "ssh masking rules unusable; command refused");
                    let _ = up_write.close().await;
                    return self
                        .refuse("airlock: the masking rules for this command cannot be applied; it was not run")
                        .await;
                }
            },
            _ => None,
        };
        let pump = tokio::spawn(pump(
            up_read,
            Pump {
                shared: Arc::clone(&self.shared),
                id: self.id,
                client: Arc::clone(&self.client),
                upstream: Arc::clone(&up_write),
                cast: Arc::clone(&cast),
                handles: handles.clone(),
                inject: inject_rx,
                live,
                expect,
                eol: self.eol(),
                stop: Box::pin(stop_signal(Arc::clone(&self.shared), approval)),
            },
        ));
        // A shell's input is its commands, with a terminal or without one. A command with a
        // terminal (`ssh -t web systemctl status`) may become one (its pager's `!sh`): its
        // input is held to the same rule, recorded whole or the channel ends.
        let shell = mode.interactive(self.pty.is_some());
        let mut sftp_in = handles.map(|h| SftpIn {
            framer: Framer::default(),
            handles: h,
            inject: inject.unwrap_or_else(|| mpsc::channel(1).0),
        });
        let relayed = self
            .relay(&up_write, &cast, shell, sftp_in.as_mut(), pump)
            .await;
        let end = match relayed {
            Ok(end) => end,
            Err((ended, end)) => {
                match &ended {
                    Ended::Protocol(m) | Ended::Upstream(m) => {
                        tracing::info!(session = self.shared.id, reason = %m, "ssh channel ended");
                        let _ = self
                            .client
                            .extended_data_bytes(1, Bytes::from(format!("{m}{}", self.eol())))
                            .await;
                        let _ = self.client.close().await;
                    }
                    Ended::ClientLeft | Ended::Audit => {}
                }
                end
            }
        };
        let _ = up_write.close().await;
        if let Some(n) = n {
            self.finish(n, started, end, &cast).await;
        }
    }

    /// Relays the client's input to the server until either side closes. Returns how the
    /// server's side ended.
    async fn relay(
        &mut self,
        up: &UpstreamTx,
        cast: &Cast,
        shell: Option<&'static str>,
        mut sftp: Option<&mut SftpIn>,
        pump: tokio::task::JoinHandle<PumpEnd>,
    ) -> Result<PumpEnd, (Ended, PumpEnd)> {
        tokio::pin!(pump);
        let joined = |r: Result<PumpEnd, tokio::task::JoinError>| r.unwrap_or_default();
        // Input kept during a hold goes first.
        let held: Vec<Bytes> = self.held.drain(..).collect();
        self.held_bytes = 0;
        for b in held {
            if let Err(e) = self.forward(up, cast, shell, sftp.as_deref_mut(), b).await {
                let _ = up.close().await;
                return Err((e, after_close(&mut pump).await));
            }
        }
        if std::mem::take(&mut self.held_eof) {
            let _ = up.eof().await;
        }
        loop {
            tokio::select! {
                end = &mut pump => return Ok(joined(end)),
                input = self.rx.recv() => {
                    let step = match input {
                        None | Some(Input::Close) => {
                            let _ = up.close().await;
                            return Ok(after_close(&mut pump).await);
                        }
                        Some(Input::Data(b)) => {
                            self.forward(up, cast, shell, sftp.as_deref_mut(), b).await
                        }
                        Some(Input::Eof) => up.eof().await.map_err(upstream),
                        Some(Input::WindowChange { cols, rows, pix_width, pix_height }) => {
                            if let Ok(mut c) = cast.lock()
                                && let Some(w) = c.as_mut()
                                && let Err(e) = w.resize(cols, rows)
                            {
                                tracing::warn!(session = self.shared.id, error = %e, "ssh recording failed");
                            }
                            up.window_change(cols, rows, pix_width, pix_height).await.map_err(upstream)
                        }
                        Some(Input::Signal(s)) => up.signal(s).await.map_err(upstream),
                        // A channel runs one command.
                        Some(_) => Ok(()),
                    };
                    if let Err(e) = step {
                        let _ = up.close().await;
                        return Err((e, after_close(&mut pump).await));
                    }
                }
            }
        }
    }

    /// Sends one piece of client input to the server (through the SFTP filter on an `sftp`
    /// channel), recording it first. `shell` names an interactive channel (a shell, or a
    /// command with a terminal); one whose recording failed or reached its limit is ended
    /// before the input goes on: nothing typed or piped into it runs unrecorded. Other
    /// commands' input (`ssh host sh < script`, an upload's bytes) is recorded up to the
    /// limit, like their output, and relayed past it unrecorded (the record says truncated).
    async fn forward(
        &mut self,
        up: &UpstreamTx,
        cast: &Cast,
        shell: Option<&'static str>,
        sftp: Option<&mut SftpIn>,
        data: Bytes,
    ) -> Result<(), Ended> {
        if let Ok(mut c) = cast.lock()
            && let Some(w) = c.as_mut()
        {
            if let Some(what) = shell {
                let unrecorded = match w.input(&data) {
                    Err(e) => Some(format!("its recording failed ({e})")),
                    Ok(()) if w.is_truncated() => Some(format!(
                        "its recording reached audit.recording_max_bytes ({} bytes)",
                        w.limit()
                    )),
                    Ok(()) => None,
                };
                if let Some(why) = unrecorded {
                    tracing::warn!(session = self.shared.id, %why, what, "ssh shell ended: input would run unrecorded");
                    return Err(Ended::Protocol(format!(
                        "airlock: the {what} was ended: {why}, and what is typed into it must be \
                         recorded"
                    )));
                }
            } else if !w.is_truncated()
                && let Err(error) = w.input(&data)
            {
                tracing::warn!(session = self.shared.id, %error, "ssh recording failed; it stops here");
                *c = None;
            }
        }
        match sftp {
            None => up.data_bytes(data).await.map_err(upstream),
            Some(s) => self.sftp_input(up, s, data).await,
        }
    }

    /// Feeds client bytes through the SFTP filter: every complete request is judged and
    /// forwarded or refused; input that arrives during a hold is fed in after it.
    async fn sftp_input(
        &mut self,
        up: &UpstreamTx,
        s: &mut SftpIn,
        data: Bytes,
    ) -> Result<(), Ended> {
        s.framer.push(&data);
        loop {
            while let Some(packet) = s
                .framer
                .next_packet()
                .map_err(|e| Ended::Protocol(format!("airlock: {e}")))?
            {
                self.sftp_request(up, s, packet).await?;
            }
            match self.held.pop_front() {
                Some(b) => {
                    self.held_bytes = self.held_bytes.saturating_sub(b.len());
                    s.framer.push(&b);
                }
                None => break,
            }
        }
        if std::mem::take(&mut self.held_eof) {
            up.eof().await.map_err(upstream)?;
        }
        Ok(())
    }

    async fn sftp_request(
        &mut self,
        up: &UpstreamTx,
        s: &mut SftpIn,
        packet: Bytes,
    ) -> Result<(), Ended> {
        let req =
            sftp::parse_request(&packet).map_err(|e| Ended::Protocol(format!("airlock: {e}")))?;
        let id = req.id.unwrap_or(0);
        let (op, path, to, opens, reads) = match req.action {
            Action::Pass => {
                if req.kind == sftp::FXP_CLOSE
                    && let Ok(mut h) = s.handles.lock()
                {
                    h.close(&packet);
                }
                return up.data_bytes(packet).await.map_err(upstream);
            }
            Action::Refuse { code, message } => {
                return self.sftp_refuse(s, id, code, &message).await;
            }
            Action::Judge {
                op,
                path,
                to,
                opens,
                reads,
            } => (op, path, to, opens, reads),
            Action::JudgeHandle { op, handle } => {
                let path = s
                    .handles
                    .lock()
                    .ok()
                    .and_then(|h| h.path(&handle).map(str::to_owned));
                match path {
                    Some(p) => (op, p, None, false, false),
                    None => {
                        return self
                            .sftp_refuse(
                                s,
                                id,
                                sftp::FX_PERMISSION_DENIED,
                                "airlock: unknown handle",
                            )
                            .await;
                    }
                }
            }
        };
        // A handle opened for reading and writing reads too: the read must be allowed as well.
        if reads {
            let read = Command::File {
                op: FileOp::Read,
                path: path.as_str().into(),
                to: None,
            };
            if let Outcome::Denied { message } = self.resolve(&read).await? {
                return self
                    .sftp_refuse(s, id, sftp::FX_PERMISSION_DENIED, &message)
                    .await;
            }
        }
        let command = Command::File {
            op,
            path: path.as_str().into(),
            to: to.map(Into::into),
        };
        match self.resolve(&command).await? {
            Outcome::Allowed { .. } => {
                if opens && let Ok(mut h) = s.handles.lock() {
                    h.opening(id, path);
                }
                up.data_bytes(packet).await.map_err(upstream)
            }
            Outcome::Denied { message } => {
                self.sftp_refuse(s, id, sftp::FX_PERMISSION_DENIED, &message)
                    .await
            }
        }
    }

    /// Answers request `id` with a status the server never saw, and says why on stderr.
    async fn sftp_refuse(
        &self,
        s: &SftpIn,
        id: u32,
        code: u32,
        message: &str,
    ) -> Result<(), Ended> {
        let _ = self
            .client
            .extended_data_bytes(1, Bytes::from(format!("{message}\n")))
            .await;
        s.inject
            .send(sftp::status(id, code, message))
            .await
            .map_err(|_| Ended::Upstream("airlock: the server side of the channel ended".into()))
    }

    /// Records a finished command's result and its recording.
    async fn finish(&self, n: u64, started: Instant, end: PumpEnd, cast: &Cast) {
        let recording = cast.lock().ok().and_then(|mut c| c.take());
        let mut masked = end.masked;
        let summary = match recording.map(MaskedCast::finish) {
            None => None,
            Some((Ok(s), counts)) => {
                masked.merge(&counts);
                Some(s)
            }
            Some((Err(error), _)) => {
                tracing::error!(session = self.shared.id, %error, "ssh recording could not be completed");
                None
            }
        };
        let mut tally = MaskTally::default();
        for (rule, count) in masked.iter() {
            let name = self.shared.masker.rule_name(rule);
            tally.add(name, u64::from(count));
            self.shared.ctx.metrics.masked(name, u64::from(count));
        }
        let error = match (&end.stopped, end.exit_status, &end.exit_signal) {
            (Some(stop), _, _) => Some(stop.detail()),
            (None, Some(0), _) => None,
            (None, Some(s), _) => Some(format!("exit status {s}")),
            (None, None, Some(sig)) => Some(format!("killed by signal {sig}")),
            (None, None, None) => Some("ended without an exit status".to_owned()),
        };
        let mut guard = self.shared.recorder.lock().await;
        let Some(rec) = guard.as_mut() else { return };
        let result = rec
            .result(
                n,
                CommandResult {
                    rows: None,
                    bytes: end.bytes,
                    duration: started.elapsed(),
                    error,
                    ..CommandResult::default()
                },
            )
            .await;
        if let Err(error) = result {
            tracing::error!(session = self.shared.id, %error, "audit: ssh command result not recorded");
        }
        if let Err(error) = rec.masking(n, &tally).await {
            tracing::error!(session = self.shared.id, %error, "audit: ssh masking counts not recorded");
        }
        if let Some(s) = summary {
            let record = RecordingRecord {
                n,
                file: format!("{RECORDINGS_DIR}/{}/{n}.cast", self.shared.audit_id),
                format: "asciicast-v2".into(),
                sha256: ChainHash(s.sha256),
                bytes: s.bytes,
                events: s.events,
                truncated: s.truncated,
            };
            let acked = match rec.recording(record).await {
                Ok(ack) => ack.durable().await.map(drop),
                Err(e) => Err(e),
            };
            if let Err(error) = acked {
                tracing::error!(session = self.shared.id, %error, "audit: ssh recording not recorded");
            }
        }
    }
}

/// Why the gateway ends a running command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The approval that released it was revoked.
    Revoked(String),
}

impl Stop {
    /// What the client reads on stderr.
    fn message(&self) -> String {
        match self {
            Stop::Revoked(id) => {
                format!("airlock: approval {id} was revoked; the command was ended")
            }
        }
    }

    /// The exit status the client gets.
    fn exit_status(&self) -> u32 {
        match self {
            Stop::Revoked(_) => 1,
        }
    }

    /// The command result's error in the audit log.
    fn detail(&self) -> String {
        match self {
            Stop::Revoked(id) => format!("ended: approval {id} was revoked"),
        }
    }
}

/// Resolves when the gateway must end a running command: the approval that released it
/// (`approval`) is revoked. Never resolves otherwise.
async fn stop_signal(shared: Arc<Shared>, approval: Option<String>) -> Stop {
    match approval {
        Some(id) => {
            revoked(&shared, &id).await;
            Stop::Revoked(id)
        }
        None => std::future::pending().await,
    }
}

/// Resolves once approval `id` is revoked.
async fn revoked(shared: &Shared, id: &str) {
    let Some(svc) = shared.ctx.approvals.get().cloned() else {
        return std::future::pending().await;
    };
    let mut events = svc.store().subscribe();
    loop {
        // Checked after subscribing, so a revoke between the two is not missed.
        if let Ok(req) = svc.get(id).await
            && req.state == crate::approval::State::Revoked
        {
            tracing::info!(session = shared.id, request = %id, "approval revoked; ssh command ended");
            return;
        }
        loop {
            match events.recv().await {
                Ok(crate::approval::StoreEvent::Changed(x)) if x == id => break,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                // The store's notifications ended with the daemon.
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return std::future::pending().await;
                }
            }
        }
    }
}

fn upstream(e: russh::Error) -> Ended {
    Ended::Upstream(format!("airlock: the server connection failed: {e}"))
}

/// The SFTP filter's state on the client's side of a channel.
struct SftpIn {
    framer: Framer,
    handles: Arc<Mutex<Handles>>,
    /// Replies for the client, written by the pump between whole server packets.
    inject: mpsc::Sender<Bytes>,
}

/// A request whose reply the pump waits for, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Pty,
    Command,
}

/// How the server's side of a channel ended.
#[derive(Debug, Default)]
struct PumpEnd {
    exit_status: Option<u32>,
    exit_signal: Option<String>,
    bytes: u64,
    /// What live masking replaced in the output.
    masked: MaskCounts,
    /// Set when the gateway ended the command.
    stopped: Option<Stop>,
}

/// Text maskers for a command's two output streams.
struct Live {
    out: TextMasker,
    err: TextMasker,
    buf: BytesMut,
}

impl Live {
    /// Masks a chunk of stdout (`ext` `None`) or stderr; returns what can be released now.
    fn feed(&mut self, ext: Option<u32>, data: &[u8]) -> Bytes {
        self.buf.clear();
        match ext {
            None => self.out.feed(data, &mut self.buf),
            Some(_) => self.err.feed(data, &mut self.buf),
        }
        self.buf.split().freeze()
    }

    /// Releases what both streams hold (at EOF or close), once.
    async fn flush(&mut self, client: &ClientTx) {
        let mut out = BytesMut::new();
        self.out.finish(&mut out);
        if !out.is_empty() {
            let _ = client.data_bytes(out.split().freeze()).await;
        }
        self.err.finish(&mut out);
        if !out.is_empty() {
            let _ = client.extended_data_bytes(1, out.freeze()).await;
        }
    }

    fn counts(&mut self) -> MaskCounts {
        let mut c = self.out.take_counts();
        c.merge(&self.err.take_counts());
        c
    }
}

/// What the pump needs.
struct Pump {
    shared: Arc<Shared>,
    id: ChannelId,
    client: ClientTx,
    upstream: UpstreamTx,
    cast: Cast,
    handles: Option<Arc<Mutex<Handles>>>,
    inject: Option<mpsc::Receiver<Bytes>>,
    /// Live masking of a command's stdout and stderr.
    live: Option<Live>,
    expect: VecDeque<Expect>,
    eol: &'static str,
    /// Resolves when the gateway ends the command ([`Stop`]).
    stop: std::pin::Pin<Box<dyn std::future::Future<Output = Stop> + Send>>,
}

async fn next_injected(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Relays the server's side of a channel to the client: output (recorded, and framed into
/// whole packets on an `sftp` channel), exit status or signal, EOF, close.
/// How long the pump may take to end once the gateway closed the server's channel.
const PUMP_GRACE: Duration = Duration::from_secs(1);

/// The pump's end after the gateway closed the server's channel. The server's answering
/// close normally ends it; one that does not come within [`PUMP_GRACE`] (a server still
/// sending, a close russh does not deliver) must not keep the channel's task, and the
/// client, waiting: the pump is stopped and its counts are lost.
async fn after_close(pump: &mut std::pin::Pin<&mut tokio::task::JoinHandle<PumpEnd>>) -> PumpEnd {
    match tokio::time::timeout(PUMP_GRACE, pump.as_mut()).await {
        Ok(r) => r.unwrap_or_default(),
        Err(_) => {
            tracing::debug!("ssh channel: the server's side did not end after its close; stopped");
            pump.abort();
            PumpEnd::default()
        }
    }
}

async fn pump(mut up: ChannelReadHalf, mut p: Pump) -> PumpEnd {
    let mut end = PumpEnd::default();
    let mut framer = p.handles.as_ref().map(|_| Framer::default());
    loop {
        let msg = tokio::select! {
            m = up.wait() => m,
            Some(packet) = next_injected(&mut p.inject) => {
                let _ = p.client.data_bytes(packet).await;
                continue;
            }
            stop = &mut p.stop => {
                // The server's channel is closed without waiting for its answer; the client
                // hears why, an exit status, and the close.
                let _ = p.upstream.close().await;
                if let Some(mut l) = p.live.take() {
                    l.flush(&p.client).await;
                    end.masked = l.counts();
                }
                let line = format!("{}{}", stop.message(), p.eol);
                let _ = p.client.extended_data_bytes(1, Bytes::from(line)).await;
                let _ = p.client.exit_status(stop.exit_status()).await;
                let _ = p.client.eof().await;
                let _ = p.client.close().await;
                end.stopped = Some(stop);
                return end;
            }
        };
        let Some(msg) = msg else { break };
        match msg {
            ChannelMsg::Data { data } => {
                end.bytes += data.len() as u64;
                p.shared
                    .bytes_to_client
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                record_output(&p, &data);
                match (&mut framer, &p.handles) {
                    (Some(f), Some(h)) => {
                        f.push(&data);
                        loop {
                            match f.next_packet() {
                                Ok(Some(packet)) => {
                                    if let Ok(mut h) = h.lock() {
                                        h.server_packet(&packet);
                                    }
                                    if p.client.data_bytes(packet).await.is_err() {
                                        break;
                                    }
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    tracing::warn!(session = p.shared.id, error = %e, "ssh server sent malformed sftp");
                                    let _ = p.upstream.close().await;
                                    let _ = p.client.close().await;
                                    return end;
                                }
                            }
                        }
                    }
                    _ => {
                        let data = match &mut p.live {
                            Some(l) => l.feed(None, &data),
                            None => data,
                        };
                        if !data.is_empty() && p.client.data_bytes(data).await.is_err() {
                            break;
                        }
                    }
                }
            }
            ChannelMsg::ExtendedData { data, ext } => {
                end.bytes += data.len() as u64;
                p.shared
                    .bytes_to_client
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                record_output(&p, &data);
                let data = match &mut p.live {
                    Some(l) => l.feed(Some(ext), &data),
                    None => data,
                };
                if !data.is_empty() {
                    let _ = p.client.extended_data_bytes(ext, data).await;
                }
            }
            ChannelMsg::ExitStatus { exit_status } => {
                end.exit_status = Some(exit_status);
                let _ = p.client.exit_status(exit_status).await;
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                end.exit_signal = Some(format!("{signal_name:?}"));
                let _ = p
                    .shared
                    .client
                    .exit_signal_request(p.id, signal_name, core_dumped, error_message, lang_tag)
                    .await;
            }
            ChannelMsg::Success => {
                p.expect.pop_front();
            }
            ChannelMsg::Failure => match p.expect.pop_front() {
                Some(Expect::Pty) => {
                    let _ = p
                        .client
                        .extended_data_bytes(
                            1,
                            Bytes::from(format!("airlock: the server refused the pty{}", p.eol)),
                        )
                        .await;
                }
                Some(Expect::Command) | None => {
                    tracing::info!(
                        session = p.shared.id,
                        "ssh server refused the command request"
                    );
                    let _ = p
                        .client
                        .extended_data_bytes(
                            1,
                            Bytes::from(format!("airlock: the server refused to run it{}", p.eol)),
                        )
                        .await;
                    end.exit_status = Some(1);
                    let _ = p.client.exit_status(1).await;
                    let _ = p.client.eof().await;
                    let _ = p.client.close().await;
                    let _ = p.upstream.close().await;
                    return end;
                }
            },
            ChannelMsg::Eof => {
                if let Some(l) = &mut p.live {
                    l.flush(&p.client).await;
                }
                let _ = p.client.eof().await;
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    if let Some(mut l) = p.live.take() {
        l.flush(&p.client).await;
        end.masked = l.counts();
    }
    let _ = p.client.close().await;
    end
}

fn record_output(p: &Pump, data: &[u8]) {
    if let Ok(mut c) = p.cast.lock()
        && let Some(w) = c.as_mut()
        && let Err(error) = w.output(data)
    {
        tracing::warn!(session = p.shared.id, %error, "ssh recording failed; it stops here");
        *c = None;
    }
}

#[cfg(test)]
mod tests {
    use super::{Mode, env_passes};

    /// A command with a terminal can turn into a shell (a pager's `!sh`): its input is held to
    /// a shell's rule (recorded whole, or the channel ends); a piped command's is not.
    #[test]
    fn commands_with_a_terminal_are_interactive_like_shells() {
        let exec = Mode::Exec("systemctl status nginx".into());
        assert_eq!(exec.interactive(true), Some("command with a terminal"));
        assert_eq!(exec.interactive(false), None);
        for line in ["sh", "/bin/bash -s", "python3.11 -", "perl", "sqlite3 db"] {
            assert_eq!(
                Mode::Exec(line.into()).interactive(false),
                Some("interpreter reading its input"),
                "{line}"
            );
        }
        assert_eq!(Mode::Exec("shasum".into()).interactive(false), None);
        assert_eq!(Mode::Shell.interactive(false), Some("shell"));
        assert_eq!(Mode::Shell.interactive(true), Some("shell"));
        assert_eq!(Mode::Sftp.interactive(true), None);
    }

    #[test]
    fn only_locale_variables_pass_to_the_server() {
        for (name, value) in [
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "de_DE.UTF-8"),
            ("LC_MESSAGES", "en_US.utf8@euro"),
            ("LANGUAGE", "de:en"),
        ] {
            assert!(env_passes(name, value), "{name}={value}");
        }
        for (name, value) in [
            ("BASH_ENV", "/tmp/x"),
            ("LD_PRELOAD", "/tmp/x.so"),
            ("PATH", "/tmp"),
            ("ENV", "/tmp/x"),
            ("LC_", "C"),
            ("LC_all", "C"),
            ("LC_ALL", "/tmp/locale"),
            ("LANG", "../../tmp/x"),
            ("LANG", "C\n"),
            ("TERM", "xterm"),
        ] {
            assert!(!env_passes(name, value), "{name}={value}");
        }
    }
}
