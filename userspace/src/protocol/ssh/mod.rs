//! SSH gateway: terminates the client's SSH connection (russh server), decides every command
//! through the gate, and runs what is allowed over its own connection to the target (russh
//! client), logged in with a credential the caller never sees.
//!
//! - Towards the client airlock is the target: it presents a short-lived host certificate from
//!   its host CA for the target's names and addresses, or the target's own host key
//!   ([`authority`]). The caller is its kernel workload identity, optionally with an OIDC token
//!   given as the password or keyboard-interactive answer (asked for only when a rule needs
//!   one).
//! - Towards the server it trusts only the pinned host keys or host CA, and logs in with a
//!   per-session user certificate whose key id names the caller and the session, or a key the
//!   operator gave it ([`upstream`]).
//! - Each session channel ([`channel`]): `exec` is judged on its command line (denied: the
//!   rule's message on stderr and exit status 1, and nothing reaches the server; held: the
//!   request id on stderr, stdin buffered until approval); a shell is judged as a whole; the
//!   `sftp` subsystem is judged per operation and path ([`sftp`]); legacy `scp -t/-f` and
//!   `rsync --server` are execs. Port, agent and X11 forwarding are refused. Shells and
//!   command output are recorded as asciicast v2 beside the audit log and hashed into it.
//!
//! russh replenishes a channel's window as data arrives rather than as it is consumed, so the
//! gateway's flow control is backpressure: a channel's input queue is bounded, and a full one
//! stops the connection's reader (docs/decisions/ssh-gateway.md).

pub mod authority;
pub mod channel;
pub mod cli;
pub mod offer;
pub mod sftp;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Response};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect, MethodKind, MethodSet, Pty, Sig};
use tokio::sync::mpsc;

use self::authority::Authority;
use self::channel::{ChannelTask, Input, PtyRequest};
use self::upstream::Upstream;
use super::Session;
use crate::audit::{EndReason, SessionRecorder, SessionStart};
use crate::config::{SshTarget, TargetConfig};
use crate::gate::{self, Authenticator, Gate, PolicyAuthenticator, Presented};
use crate::mask::Masker;
use crate::metrics::{DenyReason, TargetMetrics};
use crate::model::{Identity, Protocol, Workload};
use crate::runtime::Context;

/// Channel window the gateway offers (and OpenSSH offers): 2 MiB.
pub const WINDOW_SIZE: u32 = 2 * 1024 * 1024;
/// Largest SSH packet the gateway accepts: 32 KiB of data, as OpenSSH.
pub const MAX_PACKET_SIZE: u32 = 32 * 1024;
/// Messages russh queues per channel before it stops reading the connection.
pub const CHANNEL_BUFFER: usize = 64;
/// Client events one channel queues before the connection's reader waits (backpressure).
pub const INPUT_QUEUE: usize = 128;
/// How long a client may take from connecting to being logged in.
pub const LOGIN_GRACE: Duration = Duration::from_secs(60);
/// Channel opens refused for being over `max_channels` before the connection is ended as a
/// flood.
const FLOOD_REFUSALS: u32 = 32;

/// Serves one intercepted SSH connection to completion.
pub async fn serve(session: Session, ctx: Arc<Context>) {
    let id = session.id;
    let target = session.target.name.clone();
    match serve_inner(session, ctx).await {
        Ok(()) => tracing::debug!(session = id, %target, "ssh session ended"),
        Err(error) => {
            tracing::info!(session = id, %target, %error, "ssh session ended with an error")
        }
    }
}

/// What ends an SSH session.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("target {0} has no ssh settings")]
    NotConfigured(String),
    #[error("host identity: {0}")]
    Authority(#[from] authority::AuthorityError),
    #[error("ssh: {0}")]
    Protocol(#[from] russh::Error),
    #[error("no login within {}s", LOGIN_GRACE.as_secs())]
    LoginTimeout,
    #[error("client connection: {0}")]
    Client(#[source] std::io::Error),
}

/// Everything a session's channels share once the caller is logged in.
pub struct Shared {
    pub ctx: Arc<Context>,
    pub id: u64,
    pub target: Arc<TargetConfig>,
    pub identity: Identity,
    pub metrics: TargetMetrics,
    pub masker: Arc<Masker>,
    /// `None` once the session is closing.
    pub recorder: tokio::sync::Mutex<Option<SessionRecorder>>,
    pub recording: bool,
    /// `<log dir>/recordings/<session>` when the session is recorded.
    pub recordings: Option<std::path::PathBuf>,
    /// The audit session id (`recordings/<it>/…` in recording records).
    pub audit_id: String,
    pub upstream: Upstream,
    /// The client connection, for requests a channel's write half cannot make (exit-signal,
    /// disconnect).
    pub client: server::Handle,
    pub bytes_from_client: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// Set when a command could not be recorded: the session ends (fail closed).
    pub audit_failed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("id", &self.id)
            .field("target", &self.target.name)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The gate for this session's commands.
    pub fn gate(&self) -> Gate<'_> {
        Gate {
            ctx: &self.ctx,
            decider: None,
            identity: &self.identity,
            target: &self.target.name,
            protocol: Protocol::Ssh,
            session: self.id,
            metrics: &self.metrics,
            masker: &self.masker,
            recording: self.recording,
            preview: None,
        }
    }

    /// Ends the client connection with `message` (an audit failure).
    pub async fn disconnect(&self, message: &str) {
        let _ = self
            .client
            .disconnect(Disconnect::ByApplication, message.to_owned(), String::new())
            .await;
    }
}

/// The server configuration for one connection: the host identity for this target, and the
/// ciphers offered to this client: the target's list when it has one, else AES-GCM alone to a
/// client that speaks it ([`offer`]), else every cipher the gateway offers.
fn server_config(
    target: &TargetConfig,
    authority: &Authority,
    client_speaks_gcm: bool,
) -> Result<server::Config, SshError> {
    let host = authority.host_identity(target)?;
    let mut preferred = russh::Preferred::default();
    let listed = target.ssh.as_ref().map_or(&[][..], |s| &s.ciphers[..]);
    let ciphers: Vec<&str> = if !listed.is_empty() {
        listed.iter().map(String::as_str).collect()
    } else if client_speaks_gcm {
        offer::GCM.to_vec()
    } else {
        crate::config::SSH_CIPHERS.to_vec()
    };
    // Validated at load: every name is one russh knows.
    preferred.cipher = std::borrow::Cow::Owned(
        ciphers
            .into_iter()
            .filter_map(|c| russh::cipher::Name::try_from(c).ok())
            .collect(),
    );
    Ok(server::Config {
        preferred,
        server_id: russh::SshId::Standard(std::borrow::Cow::Borrowed(offer::SERVER_ID)),
        methods: MethodSet::from(
            &[
                MethodKind::None,
                MethodKind::KeyboardInteractive,
                MethodKind::Password,
            ][..],
        ),
        auth_rejection_time: Duration::from_millis(500),
        // OpenSSH probes with `none` first; when a token is needed, say so at once.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host.key],
        certificates: host.certificate.into_iter().collect(),
        window_size: WINDOW_SIZE,
        maximum_packet_size: MAX_PACKET_SIZE,
        channel_buffer_size: CHANNEL_BUFFER,
        max_auth_attempts: 6,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    })
}

async fn serve_inner(session: Session, ctx: Arc<Context>) -> Result<(), SshError> {
    let Session {
        id,
        client,
        target,
        workload,
        upstream,
        ..
    } = session;
    let ssh = target
        .ssh
        .clone()
        .ok_or_else(|| SshError::NotConfigured(target.name.clone()))?;
    let metrics = ctx.metrics.target(&target.name, Protocol::Ssh);
    let _active = metrics.session_started();
    let state_dir = ctx.config.load().daemon.state_dir.clone();
    let authority = Authority::of(&state_dir)?;
    let _ = client.set_nodelay(true);
    let mut client = client;
    let prelude = match tokio::time::timeout(LOGIN_GRACE, offer::exchange_ids(&mut client)).await {
        Ok(r) => r.map_err(SshError::Client)?,
        Err(_) => return Err(SshError::LoginTimeout),
    };
    let config = Arc::new(server_config(&target, &authority, prelude.speaks_gcm)?);
    let client = offer::Replayed::new(client, prelude);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let (shared_tx, shared_rx) = tokio::sync::oneshot::channel();
    let handler = ClientSide {
        ctx: Arc::clone(&ctx),
        id,
        target: Arc::clone(&target),
        ssh,
        workload,
        upstream_addr: upstream,
        authority,
        metrics: Some(metrics),
        identity: None,
        shared: None,
        shared_out: Some(shared_tx),
        channels: HashMap::new(),
        open_channels: Arc::new(AtomicUsize::new(0)),
        refused_opens: 0,
        done: done_tx,
    };
    let running = match tokio::time::timeout(
        LOGIN_GRACE,
        server::run_stream(config, client, handler),
    )
    .await
    {
        Ok(r) => r?,
        Err(_) => return Err(SshError::LoginTimeout),
    };
    let handle = running.handle();
    let mut shared_rx = shared_rx;
    // Until the caller is logged in, the session may not linger.
    let grace = tokio::time::sleep(LOGIN_GRACE);
    tokio::pin!(grace);
    tokio::pin!(running);
    let mut shared: Option<Arc<Shared>> = None;
    // The handler either hands over the logged-in session once, or goes away without.
    let mut login_pending = true;
    let result = loop {
        tokio::select! {
            r = &mut running => break r,
            s = &mut shared_rx, if login_pending => {
                login_pending = false;
                shared = s.ok();
            }
            () = &mut grace, if shared.is_none() => {
                let _ = handle
                    .disconnect(Disconnect::ByApplication, "airlock: login timed out".into(), String::new())
                    .await;
                break Err(russh::Error::ConnectionTimeout);
            }
            _ = upstream_gone(shared.as_ref()) => {
                // The server ended the connection: let the channels deliver what it sent,
                // then end the client's.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = handle
                    .disconnect(Disconnect::ByApplication, "airlock: the server closed the connection".into(), String::new())
                    .await;
                break (&mut running).await;
            }
        }
    };
    // The handler (and with it every channel's input) is gone: wait for the channels to finish
    // their recordings and records.
    let _ = done_rx.recv().await;
    let shared = match shared {
        Some(s) => Some(s),
        None if login_pending => shared_rx.try_recv().ok(),
        None => None,
    };
    let Some(shared) = shared else {
        return result.map_err(SshError::from);
    };
    let _ = shared
        .upstream
        .handle
        .disconnect(Disconnect::ByApplication, "", "")
        .await;
    let (reason, detail) = match (&result, shared.audit_failed.load(Ordering::Acquire)) {
        (_, true) => (
            EndReason::AuditFailure,
            Some("a command could not be recorded".to_owned()),
        ),
        (Ok(()), false) => (EndReason::ClientClosed, None),
        (Err(e), false) => (EndReason::Error, Some(e.to_string())),
    };
    let recorder = shared.recorder.lock().await.take();
    if let Some(recorder) = recorder {
        gate::session::close(
            recorder,
            reason,
            detail.as_deref(),
            shared.bytes_from_client.load(Ordering::Relaxed),
            shared.bytes_to_client.load(Ordering::Relaxed),
        )
        .await;
    }
    tracing::info!(
        session = id,
        target = %shared.target.name,
        subject = %shared.identity.subject,
        bytes_in = shared.bytes_from_client.load(Ordering::Relaxed),
        bytes_out = shared.bytes_to_client.load(Ordering::Relaxed),
        error = detail.as_deref(),
        "ssh session closed"
    );
    result.map_err(SshError::from)
}

/// Resolves once the server connection of a logged-in session has ended (never before login).
async fn upstream_gone(shared: Option<&Arc<Shared>>) {
    match shared {
        Some(s) => {
            let mut gone = s.upstream.gone.clone();
            while gone.changed().await.is_ok() {}
        }
        None => std::future::pending().await,
    }
}

/// One open client channel, as the connection's reader sees it.
struct ChannelEntry {
    input: mpsc::Sender<Input>,
}

/// The russh server handler of one client connection: authentication, then every channel
/// event handed in order to that channel's task.
struct ClientSide {
    ctx: Arc<Context>,
    id: u64,
    target: Arc<TargetConfig>,
    ssh: SshTarget,
    workload: Option<Workload>,
    upstream_addr: std::net::SocketAddr,
    authority: Arc<Authority>,
    /// Moved into `Shared` at login.
    metrics: Option<TargetMetrics>,
    /// Who the caller is, once an authentication method succeeded.
    identity: Option<Identity>,
    shared: Option<Arc<Shared>>,
    shared_out: Option<tokio::sync::oneshot::Sender<Arc<Shared>>>,
    channels: HashMap<ChannelId, ChannelEntry>,
    open_channels: Arc<AtomicUsize>,
    refused_opens: u32,
    /// Cloned into every channel task; the session waits until all are dropped.
    done: mpsc::Sender<()>,
}

impl ClientSide {
    async fn authenticate(&mut self, user: &str, secret: Option<&[u8]>) -> Auth {
        let presented = Presented {
            workload: self.workload.as_ref(),
            user: Some(user),
            secret,
        };
        if secret.is_none() && PolicyAuthenticator.wants_secret(&self.ctx, &presented) {
            return Auth::Reject {
                proceed_with_methods: Some(MethodSet::from(
                    &[MethodKind::KeyboardInteractive, MethodKind::Password][..],
                )),
                partial_success: false,
            };
        }
        match PolicyAuthenticator.authenticate(&self.ctx, presented).await {
            Ok(identity) => {
                self.identity = Some(identity);
                Auth::Accept
            }
            Err(error) => {
                tracing::warn!(session = self.id, target = %self.target.name, %error, "ssh caller not identified");
                self.ctx
                    .metrics
                    .denied_connection(DenyReason::Unauthenticated);
                Auth::reject()
            }
        }
    }

    /// Opens the session record and the server connection once the caller is known.
    async fn start(&mut self, client: server::Handle) -> Result<Arc<Shared>, String> {
        let identity = self
            .identity
            .clone()
            .ok_or_else(|| "airlock: internal error: no identity".to_owned())?;
        let start = SessionStart {
            proxy_session: Some(self.id),
            identity: &identity,
            workload: self.workload.as_ref(),
            target: &self.target.name,
            protocol: Protocol::Ssh,
            client: self.workload.as_ref().and_then(|w| w.peer),
            original_dst: self.workload.as_ref().and_then(|w| w.original_dst),
            tls: None,
        };
        let recorder = gate::session::open(&self.ctx, start).await.map_err(|error| {
            tracing::error!(session = self.id, target = %self.target.name, %error, "audit log refused the session");
            self.ctx.metrics.denied_connection(DenyReason::Internal);
            "airlock: the audit log cannot record this session; it is refused".to_owned()
        })?;
        let key_id = format!(
            "airlock session {} ({}) for {}",
            recorder.id(),
            self.id,
            identity.subject
        );
        let upstream = match upstream::connect(
            &self.ssh,
            &self.authority,
            self.upstream_addr,
            &key_id,
        )
        .await
        {
            Ok(u) => u,
            Err(error) => {
                tracing::warn!(session = self.id, target = %self.target.name, upstream = %self.upstream_addr, %error, "ssh upstream failed");
                self.ctx.metrics.denied_connection(DenyReason::Upstream);
                let detail = format!("upstream {}: {error}", self.upstream_addr);
                gate::session::close(recorder, EndReason::Error, Some(&detail), 0, 0).await;
                return Err(format!(
                    "airlock: cannot reach {}: {error}",
                    self.target.name
                ));
            }
        };
        let metrics = self
            .metrics
            .take()
            .unwrap_or_else(|| self.ctx.metrics.target(&self.target.name, Protocol::Ssh));
        let recording = recorder.is_recording();
        let recordings = recorder.recordings_dir();
        let audit_id = recorder.id().to_owned();
        Ok(Arc::new(Shared {
            ctx: Arc::clone(&self.ctx),
            id: self.id,
            target: Arc::clone(&self.target),
            identity,
            metrics,
            masker: self.ctx.masker.load_full(),
            recorder: tokio::sync::Mutex::new(Some(recorder)),
            recording,
            recordings,
            audit_id,
            upstream,
            client,
            bytes_from_client: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            audit_failed: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    async fn send(&mut self, channel: ChannelId, input: Input) {
        if let Some(entry) = self.channels.get(&channel) {
            // A task that already ended takes nothing more; that is not an error here.
            let _ = entry.input.send(input).await;
        }
    }
}

impl server::Handler for ClientSide {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.authenticate(user, None).await)
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(self.authenticate(user, Some(password.as_bytes())).await)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        match response {
            None => Ok(Auth::Partial {
                name: "airlock".into(),
                instructions: "This target needs an identity token (OIDC).".into(),
                prompts: std::borrow::Cow::Owned(vec![("airlock token: ".into(), false)]),
            }),
            Some(mut answers) => {
                let token = answers.next().unwrap_or_default();
                Ok(self.authenticate(user, Some(&token)).await)
            }
        }
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Callers are their workload (and token); keys are not asked for.
        Ok(Auth::Reject {
            proceed_with_methods: None,
            partial_success: false,
        })
    }

    async fn auth_succeeded(&mut self, session: &mut server::Session) -> Result<(), Self::Error> {
        match self.start(session.handle()).await {
            Ok(shared) => {
                if let Some(tx) = self.shared_out.take() {
                    let _ = tx.send(Arc::clone(&shared));
                }
                self.shared = Some(shared);
            }
            Err(message) => {
                session.disconnect(Disconnect::ByApplication, &message, "")?;
            }
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let Some(shared) = self.shared.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        if self.open_channels.load(Ordering::Acquire) >= self.ssh.max_channels {
            self.refused_opens += 1;
            tracing::info!(
                session = self.id,
                max = self.ssh.max_channels,
                "ssh channel refused: too many open"
            );
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            if self.refused_opens > FLOOD_REFUSALS {
                tracing::warn!(session = self.id, target = %self.target.name, "ssh channel flood; connection closed");
                return Err(russh::Error::Disconnect);
            }
            return Ok(());
        }
        let id = channel.id();
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        self.channels.insert(id, ChannelEntry { input: tx });
        let (_read, write) = channel.split();
        reply.accept().await;
        let task = ChannelTask::new(
            shared,
            id,
            Arc::new(write),
            rx,
            Arc::clone(&self.open_channels),
            self.done.clone(),
        );
        tokio::spawn(task.run());
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(session = self.id, target = %self.target.name, %host, port, "ssh port forwarding refused");
        reply
            .reject(ChannelOpenFailure::Other {
                code: 1,
                reason: "airlock: port forwarding is not allowed through the gateway".into(),
            })
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(session = self.id, %socket_path, "ssh socket forwarding refused");
        reply
            .reject(ChannelOpenFailure::Other {
                code: 1,
                reason: "airlock: socket forwarding is not allowed through the gateway".into(),
            })
            .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut server::Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(session = self.id, %address, port = *port, "ssh remote forwarding refused");
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut server::Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(session = self.id, %socket_path, "ssh remote socket forwarding refused");
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _session: &mut server::Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(session = self.id, ?channel, "ssh agent forwarding refused");
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(session = self.id, ?channel, "ssh X11 forwarding refused");
        session.channel_failure(channel)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let pty = PtyRequest {
            term: term.to_owned(),
            cols,
            rows,
            pix_width,
            pix_height,
            modes: modes.to_vec(),
        };
        self.send(channel, Input::Pty(pty)).await;
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        self.send(
            channel,
            Input::Env {
                name: name.to_owned(),
                value: value.to_owned(),
            },
        )
        .await;
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        // Accepted here; a denied command ends with the rule's message and exit status 1.
        self.send(channel, Input::Exec(data.to_vec())).await;
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Input::Shell).await;
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            self.send(channel, Input::Sftp).await;
            session.channel_success(channel)
        } else {
            tracing::info!(session = self.id, subsystem = name, "ssh subsystem refused");
            session.channel_failure(channel)
        }
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        self.send(
            channel,
            Input::WindowChange {
                cols,
                rows,
                pix_width,
                pix_height,
            },
        )
        .await;
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Input::Signal(signal)).await;
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        if let Some(s) = &self.shared {
            s.bytes_from_client
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        self.send(channel, Input::Data(Bytes::copy_from_slice(data)))
            .await;
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Input::Eof).await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Input::Close).await;
        self.channels.remove(&channel);
        Ok(())
    }
}
