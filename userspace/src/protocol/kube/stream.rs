//! Exec and attach streams read as they pass, for their recordings: the Kubernetes channel
//! protocols over WebSocket (`v5.channel.k8s.io` … `channel.k8s.io`, kubectl ≥ 1.30) and over
//! SPDY/3.1 (kubectl ≤ 1.29, and later ones when WebSocket is refused). Both decoders follow
//! the framing byte by byte with bounded state (a frame head, a control frame up to
//! [`MAX_CONTROL`], an error or resize message up to [`MAX_MESSAGE`]); stream payloads are
//! never buffered. Which stream is which comes from the protocol itself: a WebSocket message's
//! first byte names its channel, a SPDY stream's `streamtype` header (in its zlib-compressed
//! header block) names it.

use std::collections::HashMap;

use flate2::{Decompress, FlushDecompress, Status};
use http::HeaderMap;
use http::header::{SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL, UPGRADE};

use crate::protocol::http::classify::{FramingError, StreamDecoder, StreamEvent};

/// Largest SPDY control frame the client may send (its header blocks are read).
pub const MAX_CONTROL: usize = 64 * 1024;
/// Largest error-channel Status or resize message kept to be read whole.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Largest decompressed SPDY header block.
const MAX_HEADERS: usize = 64 * 1024;

/// The WebSocket subprotocols of the binary channel framing (one channel byte per message):
/// what an exec or attach offer is narrowed to.
pub const CHANNEL_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// The decoder for the stream a target switched to (its 101's headers): `None` for what it
/// cannot read (base64 channels, WebSocket extensions, another protocol).
pub fn decoder(answer: &HeaderMap) -> Option<Box<dyn StreamDecoder>> {
    let upgrade = answer.get(UPGRADE)?.to_str().ok()?.trim();
    if upgrade.eq_ignore_ascii_case("websocket") {
        // A negotiated extension (compression) would change the framing read here.
        if answer.contains_key(SEC_WEBSOCKET_EXTENSIONS) {
            return None;
        }
        let protocol = answer.get(SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?.trim();
        CHANNEL_PROTOCOLS
            .contains(&protocol)
            .then(|| Box::new(WebSocketChannels::default()) as Box<dyn StreamDecoder>)
    } else if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        Some(Box::new(SpdyStreams::new()))
    } else {
        None
    }
}

/// A protocol's framing, read one direction's bytes at a time; an `Err` says what could not be
/// read. Every such reader is a [`StreamDecoder`].
trait Framing: Send {
    fn read(
        &mut self,
        from_client: bool,
        bytes: &[u8],
        out: &mut dyn FnMut(StreamEvent<'_>),
    ) -> Result<(), String>;
}

impl<F: Framing> StreamDecoder for F {
    fn feed(
        &mut self,
        from_client: bool,
        bytes: &[u8],
        out: &mut dyn FnMut(StreamEvent<'_>),
    ) -> Result<(), FramingError> {
        self.read(from_client, bytes, out)
            .map_err(|why| FramingError { from_client, why })
    }
}

/// What a channel (WebSocket) or stream (SPDY) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Stdin,
    Stdout,
    Stderr,
    Error,
    Resize,
    /// Something else (v5's close signal, a stream type not recorded).
    Other,
}

impl Channel {
    fn from_byte(b: u8) -> Self {
        match b {
            0 => Channel::Stdin,
            1 => Channel::Stdout,
            2 => Channel::Stderr,
            3 => Channel::Error,
            4 => Channel::Resize,
            _ => Channel::Other,
        }
    }

    fn from_stream_type(t: &[u8]) -> Self {
        match t {
            b"stdin" => Channel::Stdin,
            b"stdout" => Channel::Stdout,
            b"stderr" => Channel::Stderr,
            b"error" => Channel::Error,
            b"resize" => Channel::Resize,
            _ => Channel::Other,
        }
    }
}

/// Routes one channel's bytes: input from the client, output from the target, the error and
/// resize messages gathered (bounded) until they end.
#[derive(Debug, Default)]
struct Messages {
    error: Vec<u8>,
    resize: Vec<u8>,
}

impl Messages {
    fn data(
        &mut self,
        from_client: bool,
        channel: Channel,
        bytes: &[u8],
        out: &mut dyn FnMut(StreamEvent<'_>),
    ) -> Result<(), String> {
        match (from_client, channel) {
            (true, Channel::Stdin) => out(StreamEvent::Input(bytes)),
            (false, Channel::Stdout | Channel::Stderr) => out(StreamEvent::Output(bytes)),
            (false, Channel::Error) => gather(&mut self.error, bytes, "error")?,
            (true, Channel::Resize) => {
                gather(&mut self.resize, bytes, "resize")?;
                // SPDY's resize stream is JSON documents one per line; a WebSocket resize
                // message ends with its message (see `resize_end`).
                while let Some(i) = self.resize.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.resize.drain(..=i).collect();
                    resize(&line, out);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A WebSocket resize message ended.
    fn resize_end(&mut self, out: &mut dyn FnMut(StreamEvent<'_>)) {
        let msg = std::mem::take(&mut self.resize);
        resize(&msg, out);
    }

    /// The error channel ended: the program's end as the target reported it.
    fn error_end(&mut self, out: &mut dyn FnMut(StreamEvent<'_>)) {
        let msg = std::mem::take(&mut self.error);
        out(StreamEvent::Exit(exit_status(&msg)));
    }
}

fn gather(buf: &mut Vec<u8>, bytes: &[u8], what: &str) -> Result<(), String> {
    if buf.len() + bytes.len() > MAX_MESSAGE {
        return Err(format!("{what} message over {MAX_MESSAGE} bytes"));
    }
    buf.extend_from_slice(bytes);
    Ok(())
}

fn resize(msg: &[u8], out: &mut dyn FnMut(StreamEvent<'_>)) {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u32,
        height: u32,
    }
    let msg = msg.trim_ascii();
    if msg.is_empty() {
        return;
    }
    if let Ok(s) = serde_json::from_slice::<Size>(msg) {
        out(StreamEvent::Resize {
            cols: s.width,
            rows: s.height,
        });
    }
}

/// The end a program's error channel reports: a v4+ `Status` (Success; Failure with an
/// `ExitCode` cause for a non-zero exit), or an older protocol's plain error text.
fn exit_status(msg: &[u8]) -> Result<(), String> {
    let msg = msg.trim_ascii();
    if msg.is_empty() {
        return Ok(());
    }
    let Ok(status) = serde_json::from_slice::<serde_json::Value>(msg) else {
        return Err(String::from_utf8_lossy(msg).into_owned());
    };
    if status["status"] == "Success" {
        return Ok(());
    }
    let code = status["details"]["causes"].as_array().and_then(|causes| {
        causes
            .iter()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
    });
    Err(match code {
        Some(code) => format!("exit status {code}"),
        None => status["message"]
            .as_str()
            .unwrap_or("the target reported a failure")
            .to_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// WebSocket channels

/// Where one direction of a WebSocket stands.
#[derive(Debug, Default)]
struct WsDirection {
    /// A frame head being read (at most 14 bytes).
    head: [u8; 14],
    have: usize,
    /// Payload bytes left of the current frame, and its masking key and position.
    remaining: u64,
    mask: Option<[u8; 4]>,
    mask_at: usize,
    /// The current frame is a data frame (a whole binary message).
    data: bool,
    fin: bool,
    /// The channel of the message being read (`None`: its first byte is still to come).
    channel: Option<Channel>,
}

/// Decodes the channel framing over WebSocket, both directions.
#[derive(Debug, Default)]
pub struct WebSocketChannels {
    client: WsDirection,
    upstream: WsDirection,
    messages: Messages,
    scratch: Vec<u8>,
}

impl Framing for WebSocketChannels {
    fn read(
        &mut self,
        from_client: bool,
        mut bytes: &[u8],
        out: &mut dyn FnMut(StreamEvent<'_>),
    ) -> Result<(), String> {
        let dir = if from_client {
            &mut self.client
        } else {
            &mut self.upstream
        };
        while !bytes.is_empty() {
            if dir.remaining == 0 {
                // Reading a frame head.
                let want = head_len(&dir.head[..dir.have]);
                let take = (want - dir.have).min(bytes.len());
                dir.head[dir.have..dir.have + take].copy_from_slice(&bytes[..take]);
                dir.have += take;
                bytes = &bytes[take..];
                let want = head_len(&dir.head[..dir.have]);
                if dir.have < want {
                    continue;
                }
                start_frame(dir, from_client)?;
                if dir.remaining == 0 {
                    end_frame(dir, &mut self.messages, out);
                }
                continue;
            }
            let take = (dir.remaining.min(bytes.len() as u64)) as usize;
            let (chunk, rest) = bytes.split_at(take);
            bytes = rest;
            dir.remaining -= take as u64;
            if dir.data {
                let payload: &[u8] = match dir.mask {
                    Some(key) => {
                        self.scratch.clear();
                        self.scratch.extend(
                            chunk
                                .iter()
                                .enumerate()
                                .map(|(i, b)| b ^ key[(dir.mask_at + i) % 4]),
                        );
                        dir.mask_at = (dir.mask_at + take) % 4;
                        &self.scratch
                    }
                    None => chunk,
                };
                let payload = match dir.channel {
                    Some(_) => payload,
                    None => {
                        dir.channel = Some(Channel::from_byte(payload[0]));
                        &payload[1..]
                    }
                };
                if let Some(channel) = dir.channel
                    && !payload.is_empty()
                {
                    self.messages.data(from_client, channel, payload, out)?;
                }
            }
            if dir.remaining == 0 {
                end_frame(dir, &mut self.messages, out);
            }
        }
        Ok(())
    }
}

/// How long a frame head is, from what of it has arrived (2 until the length byte is known).
fn head_len(have: &[u8]) -> usize {
    if have.len() < 2 {
        return 2;
    }
    let len = match have[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if have[1] & 0x80 != 0 { 4 } else { 0 };
    2 + len + mask
}

fn start_frame(dir: &mut WsDirection, from_client: bool) -> Result<(), String> {
    let head = &dir.head[..dir.have];
    let (b0, b1) = (head[0], head[1]);
    if b0 & 0x70 != 0 {
        return Err("a frame with reserved bits set (no extension was negotiated)".into());
    }
    let opcode = b0 & 0x0f;
    let masked = b1 & 0x80 != 0;
    if masked != from_client {
        return Err(if from_client {
            "an unmasked client frame".into()
        } else {
            "a masked server frame".into()
        });
    }
    let mut at = 2;
    let len = match b1 & 0x7f {
        126 => {
            at += 2;
            u64::from(u16::from_be_bytes([head[2], head[3]]))
        }
        127 => {
            at += 8;
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[2..10]);
            // RFC 6455: the most significant bit is 0. Go's x/net reader (the API server's)
            // drops it, so a length with it set would be read two ways.
            if b[0] & 0x80 != 0 {
                return Err("a 64-bit frame length with its top bit set".into());
            }
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    dir.mask = masked.then(|| [head[at], head[at + 1], head[at + 2], head[at + 3]]);
    dir.mask_at = 0;
    dir.remaining = len;
    dir.fin = b0 & 0x80 != 0;
    dir.have = 0;
    dir.data = match opcode {
        // The API server's WebSocket reader (Go's x/net) takes every frame as a message of its
        // own, with a channel byte first: a fragmented message would be read two ways, and
        // Kubernetes clients never send one.
        0 => return Err("a fragmented message (continuation frame)".into()),
        2 if !dir.fin => return Err("a fragmented message (a binary frame without FIN)".into()),
        2 => {
            dir.channel = None;
            true
        }
        1 => return Err("a text message on a binary channel protocol".into()),
        8..=10 if len > 125 || !dir.fin => return Err("a malformed control frame".into()),
        8..=10 => false,
        _ => return Err(format!("a frame of unknown opcode {opcode}")),
    };
    if dir.data && dir.channel.is_none() && len == 0 && dir.fin {
        return Err("an empty message (no channel byte)".into());
    }
    Ok(())
}

/// A frame's payload has all passed: a final data frame ends its message.
fn end_frame(dir: &mut WsDirection, messages: &mut Messages, out: &mut dyn FnMut(StreamEvent<'_>)) {
    if !(dir.data && dir.fin) {
        return;
    }
    match dir.channel.take() {
        Some(Channel::Resize) => messages.resize_end(out),
        Some(Channel::Error) => messages.error_end(out),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// SPDY/3.1 streams

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1).
const SPDY_DICTIONARY: &[u8] = include_bytes!("spdy_dictionary.bin");

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 0x01;

/// Where one direction of a SPDY connection stands.
#[derive(Debug, Default)]
struct SpdyDirection {
    head: [u8; 8],
    have: usize,
    /// Bytes left of the current frame.
    remaining: usize,
    frame: SpdyFrame,
}

#[derive(Debug, Default)]
enum SpdyFrame {
    #[default]
    None,
    /// A data frame of a stream, and whether it ends the stream.
    Data { stream: u32, fin: bool },
    /// A control frame whose payload is gathered (the client's header blocks).
    Control { kind: u16, payload: Vec<u8> },
    /// A control frame passed over.
    Skip,
}

/// Decodes kubectl's SPDY streams, both directions. Only the client's header blocks are
/// inflated (they name each stream's type); the server's are passed over unread.
pub struct SpdyStreams {
    client: SpdyDirection,
    upstream: SpdyDirection,
    /// The client's header decompressor: one zlib stream for the connection.
    inflate: Decompress,
    /// Whether the zlib header of the client's first header block was read.
    zlib_started: bool,
    streams: HashMap<u32, Channel>,
    messages: Messages,
    headers: Vec<u8>,
}

impl std::fmt::Debug for SpdyStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdyStreams")
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

/// Streams a connection may name before the decoder stops taking new ones.
const MAX_STREAMS: usize = 1024;

impl Default for SpdyStreams {
    fn default() -> Self {
        Self::new()
    }
}

impl SpdyStreams {
    fn dir(&mut self, from_client: bool) -> &mut SpdyDirection {
        if from_client {
            &mut self.client
        } else {
            &mut self.upstream
        }
    }

    /// A decoder for a connection that just switched to SPDY/3.1.
    pub fn new() -> Self {
        // A raw inflater primed with the dictionary as a stored block: back references into
        // the dictionary then resolve (the pure-Rust backend takes no preset dictionary).
        let mut inflate = Decompress::new(false);
        let n = SPDY_DICTIONARY.len() as u16;
        let mut primer = vec![0x00];
        primer.extend_from_slice(&n.to_le_bytes());
        primer.extend_from_slice(&(!n).to_le_bytes());
        primer.extend_from_slice(SPDY_DICTIONARY);
        let mut sink = vec![0u8; SPDY_DICTIONARY.len()];
        // Startup: a fixed, valid stored block.
        let _ = inflate.decompress(&primer, &mut sink, FlushDecompress::Sync);
        SpdyStreams {
            client: SpdyDirection::default(),
            upstream: SpdyDirection::default(),
            inflate,
            zlib_started: false,
            streams: HashMap::new(),
            messages: Messages::default(),
            headers: Vec::new(),
        }
    }

    /// A whole frame has passed.
    fn end_frame(
        &mut self,
        from_client: bool,
        out: &mut dyn FnMut(StreamEvent<'_>),
    ) -> Result<(), String> {
        match std::mem::take(&mut self.dir(from_client).frame) {
            SpdyFrame::Data { stream, fin: true }
                if !from_client && self.streams.get(&stream) == Some(&Channel::Error) =>
            {
                self.messages.error_end(out);
            }
            SpdyFrame::Control { kind, payload } => self.header_frame(kind, &payload)?,
            _ => {}
        }
        Ok(())
    }

    /// A client header frame: its block is inflated (keeping the zlib context), and a new
    /// stream's type noted.
    fn header_frame(&mut self, kind: u16, payload: &[u8]) -> Result<(), String> {
        let (stream, block) = match kind {
            SYN_STREAM if payload.len() >= 10 => (stream_id(payload), &payload[10..]),
            SYN_REPLY | HEADERS if payload.len() >= 4 => (stream_id(payload), &payload[4..]),
            _ => return Err("a header frame too short".into()),
        };
        let mut block = block;
        if !self.zlib_started {
            // The zlib header: CMF, FLG, and with FDICT the dictionary's id.
            if block.len() < 2 {
                return Err("a header block without its zlib header".into());
            }
            let skip = if block[1] & 0x20 != 0 { 6 } else { 2 };
            block = block.get(skip..).ok_or("a truncated zlib header")?;
            self.zlib_started = true;
        }
        self.inflate_block(block)?;
        if kind == SYN_STREAM {
            let channel = stream_type(&self.headers)?;
            if self.streams.len() >= MAX_STREAMS {
                return Err(format!("over {MAX_STREAMS} streams"));
            }
            self.streams.insert(stream, channel);
        }
        Ok(())
    }

    fn inflate_block(&mut self, block: &[u8]) -> Result<(), String> {
        self.headers.clear();
        let mut input = block;
        let mut buf = [0u8; 4096];
        loop {
            let (before_in, before_out) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self
                .inflate
                .decompress(input, &mut buf, FlushDecompress::Sync)
                .map_err(|e| format!("header block: {e}"))?;
            let used = (self.inflate.total_in() - before_in) as usize;
            let made = (self.inflate.total_out() - before_out) as usize;
            input = &input[used..];
            if self.headers.len() + made > MAX_HEADERS {
                return Err(format!("a header block over {MAX_HEADERS} bytes"));
            }
            self.headers.extend_from_slice(&buf[..made]);
            if status == Status::StreamEnd {
                return Err("the header compression stream ended".into());
            }
            if input.is_empty() && made < buf.len() {
                return Ok(());
            }
            if used == 0 && made == 0 {
                return if input.is_empty() {
                    Ok(())
                } else {
                    Err("a header block that does not inflate".into())
                };
            }
        }
    }
}

fn stream_id(payload: &[u8]) -> u32 {
    u32::from_be_bytes([payload[0] & 0x7f, payload[1], payload[2], payload[3]])
}

/// The `streamtype` of a SPDY/3 header block (count, then length-prefixed names and values).
/// The block must be read to its last byte, as Go's framer reads it: it keeps what a block
/// leaves over for the next, so leftover bytes would make the two readers disagree. A value is
/// NUL-separated pieces, of which Go's `Header.Get` returns the first.
fn stream_type(block: &[u8]) -> Result<Channel, String> {
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= block.len())
            .ok_or("a truncated header block")?;
        let piece = &block[*at..end];
        *at = end;
        Ok(piece)
    };
    let len = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = len(take(&mut at, 4)?);
    let mut channel = None;
    for _ in 0..count {
        let n = len(take(&mut at, 4)?);
        let name = take(&mut at, n)?;
        let n = len(take(&mut at, 4)?);
        let value = take(&mut at, n)?;
        if name.eq_ignore_ascii_case(b"streamtype") {
            if channel.is_some() {
                return Err("two streamtype headers".into());
            }
            let first = value.split(|&b| b == 0).next().unwrap_or_default();
            channel = Some(Channel::from_stream_type(first));
        }
    }
    if at != block.len() {
        return Err("bytes after a header block's last header".into());
    }
    Ok(channel.unwrap_or(Channel::Other))
}

impl Framing for SpdyStreams {
    fn read(
        &mut self,
        from_client: bool,
        mut bytes: &[u8],
        out: &mut dyn FnMut(StreamEvent<'_>),
    ) -> Result<(), String> {
        while !bytes.is_empty() {
            let dir = self.dir(from_client);
            if matches!(dir.frame, SpdyFrame::None) {
                let take = (8 - dir.have).min(bytes.len());
                dir.head[dir.have..dir.have + take].copy_from_slice(&bytes[..take]);
                dir.have += take;
                bytes = &bytes[take..];
                if dir.have < 8 {
                    continue;
                }
                dir.have = 0;
                let h = dir.head;
                let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
                let flags = h[4];
                dir.remaining = len;
                dir.frame = if h[0] & 0x80 == 0 {
                    let stream = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                    SpdyFrame::Data {
                        stream,
                        fin: flags & FLAG_FIN != 0,
                    }
                } else {
                    let version = u16::from_be_bytes([h[0] & 0x7f, h[1]]);
                    if version != 3 {
                        return Err(format!("SPDY version {version}"));
                    }
                    let kind = u16::from_be_bytes([h[2], h[3]]);
                    if from_client && matches!(kind, SYN_STREAM | SYN_REPLY | HEADERS) {
                        if len > MAX_CONTROL {
                            return Err(format!("a header frame over {MAX_CONTROL} bytes"));
                        }
                        SpdyFrame::Control {
                            kind,
                            payload: Vec::with_capacity(len),
                        }
                    } else {
                        SpdyFrame::Skip
                    }
                };
                if len == 0 {
                    self.end_frame(from_client, out)?;
                }
                continue;
            }
            let take = dir.remaining.min(bytes.len());
            let (chunk, rest) = bytes.split_at(take);
            bytes = rest;
            dir.remaining -= take;
            let data_stream = match &mut dir.frame {
                SpdyFrame::Data { stream, .. } => Some(*stream),
                SpdyFrame::Control { payload, .. } => {
                    payload.extend_from_slice(chunk);
                    None
                }
                SpdyFrame::Skip | SpdyFrame::None => None,
            };
            if let Some(channel) = data_stream.and_then(|s| self.streams.get(&s).copied()) {
                self.messages.data(from_client, channel, chunk, out)?;
            }
            if self.dir(from_client).remaining == 0 {
                self.end_frame(from_client, out)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a decoder made of the whole exchange, fed in pieces of `step` bytes.
    #[derive(Debug, Default, PartialEq)]
    struct Seen {
        input: Vec<u8>,
        output: Vec<u8>,
        resizes: Vec<(u32, u32)>,
        exits: Vec<Result<(), String>>,
    }

    fn run(
        decoder: &mut dyn StreamDecoder,
        client: &[u8],
        server: &[u8],
        step: usize,
    ) -> Result<Seen, FramingError> {
        let mut seen = Seen::default();
        let mut on = |e: StreamEvent<'_>| match e {
            StreamEvent::Input(b) => seen.input.extend_from_slice(b),
            StreamEvent::Output(b) => seen.output.extend_from_slice(b),
            StreamEvent::Resize { cols, rows } => seen.resizes.push((cols, rows)),
            StreamEvent::Exit(r) => seen.exits.push(r),
        };
        for chunk in client.chunks(step) {
            decoder.feed(true, chunk, &mut on)?;
        }
        for chunk in server.chunks(step) {
            decoder.feed(false, chunk, &mut on)?;
        }
        Ok(seen)
    }

    fn ws_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                f.extend_from_slice(&k);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    fn ws_exchange() -> (Vec<u8>, Vec<u8>) {
        let k = Some([0x12, 0x34, 0x56, 0x78]);
        let mut client = ws_frame(true, 2, b"\x00echo ", k);
        client.extend(ws_frame(true, 9, b"ping", k)); // a control frame between messages
        client.extend(ws_frame(true, 2, b"\x00hi\n", k));
        client.extend(ws_frame(true, 2, b"\x04{\"Width\":100,\"Height\":30}", k));
        client.extend(ws_frame(true, 2, b"\xff\x00", k)); // v5: stdin closed
        let big = vec![b'x'; 70_000];
        let mut out = vec![1u8];
        out.extend_from_slice(&big);
        let mut server = ws_frame(true, 2, &out, None);
        server.extend(ws_frame(true, 2, b"\x02warn\n", None));
        server.extend(ws_frame(
            true,
            2,
            b"\x03{\"metadata\":{},\"status\":\"Success\"}",
            None,
        ));
        server.extend(ws_frame(true, 8, &1000u16.to_be_bytes(), None));
        (client, server)
    }

    #[test]
    fn websocket_channels_are_read_whatever_the_chunking() {
        let (client, server) = ws_exchange();
        let mut want = None;
        for step in [1, 2, 3, 7, 13, 4096, usize::MAX] {
            let seen = run(
                &mut WebSocketChannels::default(),
                &client,
                &server,
                step.min(client.len().max(server.len())),
            )
            .unwrap();
            assert_eq!(seen.input, b"echo hi\n");
            assert_eq!(seen.output.len(), 70_000 + 5);
            assert!(seen.output.ends_with(b"xwarn\n"));
            assert_eq!(seen.resizes, [(100, 30)]);
            assert_eq!(seen.exits, [Ok(())]);
            match &want {
                None => want = Some(seen),
                Some(w) => assert_eq!(w, &seen, "step {step}"),
            }
        }
    }

    #[test]
    fn a_non_zero_exit_is_read_from_the_status() {
        let status = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        let mut msg = vec![3u8];
        msg.extend_from_slice(status);
        let server = ws_frame(true, 2, &msg, None);
        let seen = run(&mut WebSocketChannels::default(), &[], &server, 5).unwrap();
        assert_eq!(seen.exits, [Err("exit status 3".to_owned())]);
        assert_eq!(
            exit_status(b"error executing command in container: not found"),
            Err("error executing command in container: not found".into())
        );
    }

    #[test]
    fn websocket_framing_it_cannot_read_is_an_error() {
        let k = Some([1, 2, 3, 4]);
        // A 64-bit length with its top bit set: Go's reader drops the bit.
        let mut huge = vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 5];
        huge.extend_from_slice(&[1, 2, 3, 4]);
        let cases: [(Vec<u8>, bool); 8] = [
            (ws_frame(true, 2, b"\x00ls", None), true), // unmasked client frame
            (ws_frame(true, 2, b"\x01ok", k), false),   // masked server frame
            (ws_frame(true, 1, b"\x00ls", k), true),    // text message
            (ws_frame(true, 0, b"ls", k), true),        // continuation frame
            (ws_frame(false, 2, b"\x05", k), true),     // a fragment: the server reads it whole
            (vec![0xc2, 0x80, 0, 0, 0, 0], true),       // reserved bit (compression)
            (ws_frame(false, 9, b"p", k), true),        // fragmented control frame
            (huge, true),
        ];
        for (frame, from_client) in cases {
            let mut d = WebSocketChannels::default();
            assert!(
                d.feed(from_client, &frame, &mut |_| {}).is_err(),
                "{frame:?}"
            );
        }
        // An error message is bounded however long its frame says it is.
        let mut d = WebSocketChannels::default();
        let mut frame = vec![0x82, 127];
        frame.extend_from_slice(&(1u64 << 40).to_be_bytes());
        frame.push(3);
        let mut r = d.feed(false, &frame, &mut |_| {});
        for _ in 0..100 {
            r = r.and(d.feed(false, &[b'x'; 1000], &mut |_| {}));
        }
        assert!(r.is_err());
    }

    #[test]
    fn spdy_streams_are_named_by_their_compressed_headers() {
        // kubectl's side of an exec (SYN_STREAMs compressed with the SPDY/3 dictionary, as
        // Go's spdy framer writes them), and the server's, generated with Python's zlib.
        let client = include_bytes!("testdata/spdy_client.bin");
        let server = include_bytes!("testdata/spdy_server.bin");
        for step in [1, 3, 8, 64, usize::MAX] {
            let step = step.min(client.len().max(server.len()));
            let seen = run(&mut SpdyStreams::new(), client, server, step).unwrap();
            assert_eq!(seen.input, b"echo hi\n", "step {step}");
            assert_eq!(seen.output, b"hi\noops\n");
            assert_eq!(seen.resizes, [(120, 40)]);
            assert_eq!(seen.exits, [Err("exit status 3".to_owned())]);
        }
    }

    #[test]
    fn spdy_framing_it_cannot_read_is_an_error() {
        // A header frame over the bound, another version, a block that is not deflate.
        let big = [0x80, 0x03, 0x00, 0x01, 0x00, 0x01, 0x00, 0x01];
        assert!(SpdyStreams::new().feed(true, &big, &mut |_| {}).is_err());
        let v2 = [0x80, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1];
        assert!(SpdyStreams::new().feed(true, &v2, &mut |_| {}).is_err());
        let mut junk = vec![0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 20];
        junk.extend_from_slice(&[
            0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x78, 0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff,
        ]);
        assert!(SpdyStreams::new().feed(true, &junk, &mut |_| {}).is_err());
    }

    /// A header block's entries, as SPDY/3 lays them out (before compression).
    fn block(headers: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut b = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            b.extend_from_slice(&(k.len() as u32).to_be_bytes());
            b.extend_from_slice(k);
            b.extend_from_slice(&(v.len() as u32).to_be_bytes());
            b.extend_from_slice(v);
        }
        b
    }

    #[test]
    fn spdy_stream_types_are_read_as_go_reads_them() {
        // A value's first NUL-separated piece is the one Go's Header.Get returns.
        assert_eq!(
            stream_type(&block(&[(b"streamtype", b"stdin\0x")])),
            Ok(Channel::Stdin)
        );
        assert_eq!(
            stream_type(&block(&[(b"StreamType", b"resize")])),
            Ok(Channel::Resize)
        );
        assert_eq!(stream_type(&block(&[(b"port", b"80")])), Ok(Channel::Other));
        // Leftover bytes (Go would read them as the next block's start), two types, a
        // length past the end: errors.
        let mut leftover = block(&[(b"streamtype", b"error")]);
        leftover.extend_from_slice(&[0, 0, 0, 1]);
        assert!(stream_type(&leftover).is_err());
        assert!(
            stream_type(&block(&[
                (b"streamtype", b"error"),
                (b"streamtype", b"stdin")
            ]))
            .is_err()
        );
        let mut cut = block(&[(b"streamtype", b"stdout")]);
        cut.truncate(cut.len() - 2);
        assert!(stream_type(&cut).is_err());
        assert!(stream_type(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn decoders_are_chosen_by_the_switch() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        assert!(decoder(&h(&[("upgrade", "SPDY/3.1")])).is_some());
        assert!(
            decoder(&h(&[
                ("upgrade", "websocket"),
                ("sec-websocket-protocol", "v5.channel.k8s.io")
            ]))
            .is_some()
        );
        for refused in [
            h(&[
                ("upgrade", "websocket"),
                ("sec-websocket-protocol", "base64.channel.k8s.io"),
            ]),
            h(&[
                ("upgrade", "websocket"),
                ("sec-websocket-protocol", "v4.channel.k8s.io"),
                ("sec-websocket-extensions", "permessage-deflate"),
            ]),
            h(&[("upgrade", "h2c")]),
            h(&[]),
        ] {
            assert!(decoder(&refused).is_none(), "{refused:?}");
        }
    }
}
