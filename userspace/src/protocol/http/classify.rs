//! Which command a request is: the one pluggable phase of the engine. `http` targets judge
//! method, host, path, query, headers and body ([`HttpClassifier`]); a Kubernetes target
//! reuses the whole engine with a classifier of its own that turns URL and method into
//! `Command::Kube`.

use std::borrow::Cow;

use crate::model::{Command, HttpBody, HttpRequest, Protocol};

/// A request's head as the engine hands it to a classifier.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub method: &'a http::Method,
    /// Host name (or address) without the port, lower-case.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

/// What the engine does differently for one request, beyond judging it: the classifier's
/// knowledge of its protocol's answers.
#[derive(Debug, Default)]
pub struct Treatment {
    /// The answer is a stream of JSON documents, one per line (a Kubernetes watch): each one
    /// is masked as a document of its own.
    pub json_lines: bool,
    /// When masking applies, `Accept` is narrowed to JSON, so that the target answers in a
    /// form masking reads (the Kubernetes API server then sends JSON, not protobuf or YAML).
    pub negotiate_json: bool,
    /// An upgraded connection of this request is a terminal stream (Kubernetes exec and
    /// attach): it is recorded, through the classifier's [`Classify::stream_decoder`].
    pub terminal: Option<Terminal>,
    /// The request opens a tunnel the policy names as such (Kubernetes port-forward, proxy):
    /// an upgrade is relayed even where masking applies. Any other upgrade (a WebSocket to an
    /// app) is refused where masking applies, since the tunnel would pass unmasked.
    pub tunnel: bool,
}

/// A terminal stream to record (titled with the command's text): what it may be.
#[derive(Debug, Clone)]
pub struct Terminal {
    /// The WebSocket subprotocols the classifier's decoder reads: a client's offer is narrowed
    /// to them (and its extensions dropped) before the request goes upstream, so that the
    /// target cannot switch to a stream the gateway cannot record.
    pub websocket_protocols: &'static [&'static str],
}

/// One thing a terminal stream carried, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEvent<'a> {
    /// Bytes for the program's standard input.
    Input(&'a [u8]),
    /// Bytes of its standard output or error.
    Output(&'a [u8]),
    /// The terminal's new size.
    Resize { cols: u32, rows: u32 },
    /// How the program ended, as the target reported it: `Err` says why it failed (an exit
    /// status, an error).
    Exit(Result<(), String>),
}

/// Why a stream's framing cannot be read: the tunnel is cut (what it carries must be recorded).
#[derive(Debug, thiserror::Error)]
#[error("{} stream framing: {why}", if *.from_client { "client" } else { "target" })]
pub struct FramingError {
    /// Whose bytes they were.
    pub from_client: bool,
    /// What in them could not be read.
    pub why: String,
}

/// Reads an upgraded connection's framing as its bytes pass, never changing them, and reports
/// the terminal events it completes. Memory stays bounded whatever either side sends.
pub trait StreamDecoder: Send {
    /// The next bytes from the client (`from_client`) or the target, in order.
    fn feed(
        &mut self,
        from_client: bool,
        bytes: &[u8],
        out: &mut dyn FnMut(StreamEvent<'_>),
    ) -> Result<(), FramingError>;
}

/// Turns a request into the command policy judges.
pub trait Classify: Send + Sync + std::fmt::Debug + 'static {
    /// The protocol commands are judged, counted and recorded as.
    fn protocol(&self) -> Protocol;

    /// The command for one request. `body` is the body as read before judging (`None`: the
    /// request has none). An `Err` is a request this classifier cannot express: the client
    /// gets a 400 with the message, and nothing goes upstream.
    fn command<'a>(
        &self,
        head: &Head<'a>,
        body: Option<HttpBody<'a>>,
    ) -> Result<Command<'a>, String>;

    /// How the engine treats this request's answer (default: by its content type alone);
    /// `command` is what [`command`](Self::command) made of it.
    fn treatment(&self, _head: &Head<'_>, _command: &Command<'_>) -> Treatment {
        Treatment::default()
    }

    /// The decoder of a terminal stream ([`Treatment::terminal`]) for the protocol the target
    /// switched to (`answer`: its 101's headers). `None`: one this classifier cannot read, and
    /// the upgrade is refused (a stream that must be recorded is never relayed unread).
    fn stream_decoder(&self, _answer: &http::HeaderMap) -> Option<Box<dyn StreamDecoder>> {
        None
    }

    /// The body of an answer the gateway writes itself (a refusal, an error): `body` is the
    /// engine's JSON (`error`, `message`, and `rule`, `request` where they apply); a
    /// protocol with an error form of its own (a Kubernetes `Status`) rewrites it.
    fn error_body(&self, _status: http::StatusCode, body: serde_json::Value) -> serde_json::Value {
        body
    }
}

/// The `http` protocol's classifier: [`Command::Http`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClassifier;

impl Classify for HttpClassifier {
    fn protocol(&self) -> Protocol {
        Protocol::Http
    }

    fn command<'a>(
        &self,
        head: &Head<'a>,
        body: Option<HttpBody<'a>>,
    ) -> Result<Command<'a>, String> {
        let headers = head
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    Cow::Borrowed(k.as_str()),
                    String::from_utf8_lossy(v.as_bytes()),
                )
            })
            .collect();
        Ok(Command::Http(HttpRequest {
            method: Cow::Borrowed(head.method.as_str()),
            host: Cow::Borrowed(head.host),
            path: Cow::Borrowed(head.path),
            query: head.query.map(Cow::Borrowed),
            headers,
            body,
        }))
    }
}
