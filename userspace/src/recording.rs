//! Terminal recordings in asciicast v2 (<https://docs.asciinema.org/manual/asciicast/v2/>):
//! a JSON header line (`version`, `width`, `height`, `timestamp`, …), then one JSON array per
//! event, `[seconds, "o" | "i" | "r", data]`. SSH shells and command output are written with
//! [`CastWriter`] beside the audit log and bound to its chain by their SHA-256 (the writer
//! hashes what it writes); `airlock replay` plays them back with [`play`].
//!
//! Event data must be UTF-8 text, while a terminal stream is bytes cut anywhere: a character
//! split across two chunks is held back until its end arrives, and bytes that are not UTF-8 at
//! all become U+FFFD (binary output is recorded lossily, never dropped silently).

use std::fs::File;
use std::io::{self, BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::mask::{MaskCounts, Masker, TextMasker};

/// The asciicast v2 header line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    pub width: u32,
    pub height: u32,
    /// Unix time the recording started.
    pub timestamp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
}

impl Header {
    /// A header for a terminal of `width` × `height` starting now.
    pub fn new(width: u32, height: u32, title: Option<String>, term: Option<&str>) -> Self {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut env = std::collections::BTreeMap::new();
        if let Some(t) = term {
            env.insert("TERM".to_owned(), t.to_owned());
        }
        Header {
            version: 2,
            width: width.max(1),
            height: height.max(1),
            timestamp,
            title,
            env,
        }
    }
}

/// What a finished recording is, for the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub path: PathBuf,
    pub sha256: [u8; 32],
    pub bytes: u64,
    pub events: u64,
    pub truncated: bool,
}

/// A writer that hashes what passes through it.
struct Hashing {
    file: File,
    hasher: Sha256,
    bytes: u64,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Turns a byte stream into UTF-8 text chunk by chunk, holding back a character cut at the end
/// of a chunk until the next one completes it.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// The text of `data` (with what the previous chunk held back); invalid bytes become
    /// U+FFFD, an incomplete character at the end waits for the next chunk.
    pub fn push(&mut self, data: &[u8]) -> String {
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(data);
        let mut out = String::with_capacity(buf.len());
        let mut rest = &buf[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        None => {
                            // At most three bytes of a character whose end is still to come.
                            self.pending = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// What is still held back, as text (U+FFFD for a character that never completed).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// Writes one asciicast v2 file, hashing it as it goes, up to a size limit.
pub struct CastWriter {
    out: BufWriter<Hashing>,
    path: PathBuf,
    started: Instant,
    events: u64,
    limit: u64,
    truncated: bool,
    output: Utf8Stream,
    input: Utf8Stream,
}

impl std::fmt::Debug for CastWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CastWriter")
            .field("path", &self.path)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl CastWriter {
    /// Creates `path` (mode 0600, parent directories as needed, mode 0700; never over an
    /// existing file) and writes the header. The file stops growing past about `limit` bytes.
    ///
    /// The two directories above the file (`recordings/<session>`) must be directories, not
    /// links: the daemon runs as root, and a link planted there would have it create files
    /// wherever the link points.
    pub fn create(path: &Path, header: &Header, limit: u64) -> io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            check_dirs(path)?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(path)?;
        let mut out = BufWriter::with_capacity(
            64 * 1024,
            Hashing {
                file,
                hasher: Sha256::new(),
                bytes: 0,
            },
        );
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        Ok(CastWriter {
            out,
            path: path.to_owned(),
            started: Instant::now(),
            events: 0,
            limit,
            truncated: false,
            output: Utf8Stream::default(),
            input: Utf8Stream::default(),
        })
    }

    fn written(&self) -> u64 {
        self.out.get_ref().bytes + self.out.buffer().len() as u64
    }

    fn event(&mut self, code: &str, text: &str) -> io::Result<()> {
        if self.truncated || text.is_empty() {
            return Ok(());
        }
        if self.written() + text.len() as u64 > self.limit {
            self.truncated = true;
            let note = format!(
                "\r\n[airlock: recording stopped at its limit of {} bytes]\r\n",
                self.limit
            );
            return self.write_event("o", &note);
        }
        self.write_event(code, text)
    }

    fn write_event(&mut self, code: &str, text: &str) -> io::Result<()> {
        let t = self.started.elapsed().as_micros() as f64 / 1e6;
        serde_json::to_writer(&mut self.out, &(t, code, text))?;
        self.out.write_all(b"\n")?;
        self.events += 1;
        Ok(())
    }

    /// Records terminal output (`o`).
    pub fn output(&mut self, data: &[u8]) -> io::Result<()> {
        let text = self.output.push(data);
        self.event("o", &text)
    }

    /// Records what was typed (`i`).
    pub fn input(&mut self, data: &[u8]) -> io::Result<()> {
        let text = self.input.push(data);
        self.event("i", &text)
    }

    /// Records a terminal resize (`r`, `COLSxROWS`).
    pub fn resize(&mut self, cols: u32, rows: u32) -> io::Result<()> {
        self.event("r", &format!("{cols}x{rows}"))
    }

    /// Writes what is held back, flushes, syncs and returns the file's size and hash.
    pub fn finish(mut self) -> io::Result<Summary> {
        let o = self.output.finish();
        self.event("o", &o)?;
        let i = self.input.finish();
        self.event("i", &i)?;
        let hashing = self.out.into_inner().map_err(|e| e.into_error())?;
        hashing.file.sync_data()?;
        Ok(Summary {
            path: self.path,
            sha256: hashing.hasher.finalize().into(),
            bytes: hashing.bytes,
            events: self.events,
            truncated: self.truncated,
        })
    }
}

/// A terminal recording whose output and keystrokes pass masking detectors before they are
/// written, so secrets on the screen never reach the file (SSH commands and shells, Kubernetes
/// exec and attach streams).
pub struct MaskedCast {
    writer: CastWriter,
    output: TextMasker,
    input: TextMasker,
    buf: BytesMut,
}

impl std::fmt::Debug for MaskedCast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskedCast")
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl MaskedCast {
    /// Creates the file at `path` (see [`CastWriter::create`]); every rule of `masker` masks
    /// it, whoever the caller is.
    pub fn create(path: &Path, header: &Header, limit: u64, masker: &Masker) -> io::Result<Self> {
        let all: Vec<String> = masker.rule_names().map(str::to_owned).collect();
        let text = || masker.text(&all).map_err(io::Error::other);
        let (output, input) = (text()?, text()?);
        Ok(MaskedCast {
            writer: CastWriter::create(path, header, limit)?,
            output,
            input,
            buf: BytesMut::new(),
        })
    }

    /// Whether the file stopped at its limit (what follows is not written).
    pub fn is_truncated(&self) -> bool {
        self.writer.truncated
    }

    /// The file's size limit.
    pub fn limit(&self) -> u64 {
        self.writer.limit
    }

    /// Records terminal output.
    pub fn output(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.clear();
        self.output.feed(data, &mut self.buf);
        if self.buf.is_empty() {
            return Ok(());
        }
        self.writer.output(&self.buf)
    }

    /// Records what was typed (or piped in).
    pub fn input(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.clear();
        self.input.feed(data, &mut self.buf);
        if self.buf.is_empty() {
            return Ok(());
        }
        self.writer.input(&self.buf)
    }

    /// Records a terminal resize.
    pub fn resize(&mut self, cols: u32, rows: u32) -> io::Result<()> {
        self.writer.resize(cols, rows)
    }

    /// Releases what the maskers hold, completes the file; returns it and what was masked.
    pub fn finish(mut self) -> (io::Result<Summary>, MaskCounts) {
        let mut out = BytesMut::new();
        self.output.finish(&mut out);
        let written = self.writer.output(&out);
        out.clear();
        self.input.finish(&mut out);
        let written = written.and_then(|()| self.writer.input(&out));
        let mut counts = self.output.take_counts();
        counts.merge(&self.input.take_counts());
        (written.and_then(|()| self.writer.finish()), counts)
    }
}

/// One event read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub time: f64,
    pub code: String,
    pub data: String,
}

/// Errors reading a recording.
#[derive(Debug, thiserror::Error)]
pub enum CastError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: not asciicast v2: {message}")]
    Format {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Reads a whole recording: its header and events.
pub fn read(path: &Path) -> Result<(Header, Vec<Event>), CastError> {
    let file = File::open(path).map_err(|source| CastError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(path, io::BufReader::new(file))
}

/// The two directories above a recording (`recordings/<session>`) are directories nobody
/// else can write, reached through no link but one root (or this user) made: the daemon
/// runs as root, and a link planted in the log directory would have it create files, or
/// `verify` read them, wherever the link points. An operator's link (recordings on another
/// volume) is fine.
pub fn check_dirs(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    for d in path.ancestors().skip(1).take(2) {
        let link = std::fs::symlink_metadata(d)?;
        let refuse = |why: &str| {
            Err(io::Error::other(format!(
                "{} {why}: not a place for recordings",
                d.display()
            )))
        };
        if link.file_type().is_symlink() && link.uid() != 0 && link.uid() != me {
            return refuse("is a link another user made");
        }
        let dir = std::fs::metadata(d)?;
        if !dir.is_dir() {
            return refuse("is not a directory");
        }
        if dir.mode() & 0o022 != 0 {
            return refuse("is writable by others");
        }
    }
    Ok(())
}

/// [`read`] of a recording already in hand (`path` names it in errors).
pub fn parse(path: &Path, input: impl BufRead) -> Result<(Header, Vec<Event>), CastError> {
    let io_err = |source| CastError::Io {
        path: path.to_owned(),
        source,
    };
    let bad = |line: usize, message: String| CastError::Format {
        path: path.to_owned(),
        line,
        message,
    };
    let mut lines = input.lines();
    let first = lines
        .next()
        .ok_or_else(|| bad(1, "empty file".into()))?
        .map_err(io_err)?;
    let header: Header = serde_json::from_str(&first).map_err(|e| bad(1, e.to_string()))?;
    if header.version != 2 {
        return Err(bad(1, format!("version {}", header.version)));
    }
    let mut events = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line.map_err(io_err)?;
        if line.is_empty() {
            continue;
        }
        let (time, code, data): (f64, String, String) =
            serde_json::from_str(&line).map_err(|e| bad(i + 2, e.to_string()))?;
        events.push(Event { time, code, data });
    }
    Ok((header, events))
}

/// How fast [`play`] goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// At the recorded pace divided by this factor (1.0 = real time).
    Speed(f64),
    /// Everything at once.
    Instant,
}

/// Writes the output events to `out` at `pace` (input and resize events are not shown).
pub fn play(events: &[Event], out: &mut dyn Write, pace: Pace) -> io::Result<()> {
    let start = Instant::now();
    for e in events.iter().filter(|e| e.code == "o") {
        if let Pace::Speed(s) = pace
            && s > 0.0
            && e.time.is_finite()
            && e.time > 0.0
        {
            let due = Duration::from_secs_f64(e.time / s);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                out.flush()?;
                std::thread::sleep(wait);
            }
        }
        out.write_all(e.data.as_bytes())?;
    }
    out.flush()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks_is_kept_whole() {
        let text = "héllo — 世界 🎉";
        let bytes = text.as_bytes();
        // Every split point, including inside multi-byte characters.
        for cut in 0..=bytes.len() {
            let mut s = Utf8Stream::default();
            let mut got = s.push(&bytes[..cut]);
            got.push_str(&s.push(&bytes[cut..]));
            got.push_str(&s.finish());
            assert_eq!(got, text, "cut at {cut}");
        }
        // One byte at a time.
        let mut s = Utf8Stream::default();
        let got: String = bytes.iter().map(|b| s.push(&[*b])).collect();
        assert_eq!(got, text);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(b"a\xffb\xc3"), "a\u{fffd}b");
        assert_eq!(s.push(b"("), "\u{fffd}(");
        assert_eq!(s.push(b"\xe2\x82"), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    #[test]
    fn writes_reads_hashes_and_truncates() {
        let dir = std::env::temp_dir().join(format!("airlock-cast-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("s/1.cast");
        let header = Header::new(100, 30, Some("t".into()), Some("xterm"));
        let mut w = CastWriter::create(&path, &header, 10_000).unwrap();
        w.output("é".as_bytes().get(..1).unwrap()).unwrap();
        w.output("é\r\n".as_bytes().get(1..).unwrap()).unwrap();
        w.input(b"ls\r").unwrap();
        w.resize(120, 40).unwrap();
        w.output(b"\x1b[1mbold\x1b[0m").unwrap();
        let sum = w.finish().unwrap();
        let raw = std::fs::read(&path).unwrap();
        assert_eq!(sum.bytes, raw.len() as u64);
        assert_eq!(sum.sha256, <[u8; 32]>::from(Sha256::digest(&raw)));
        let (h, events) = read(&path).unwrap();
        assert_eq!(h, header);
        let codes: Vec<&str> = events.iter().map(|e| e.code.as_str()).collect();
        assert_eq!(codes, ["o", "i", "r", "o"]);
        assert_eq!(events[0].data, "é\r\n");
        assert_eq!(events[2].data, "120x40");
        assert!(events.windows(2).all(|w| w[0].time <= w[1].time));
        let mut screen = Vec::new();
        play(&events, &mut screen, Pace::Instant).unwrap();
        assert_eq!(screen, "é\r\n\x1b[1mbold\x1b[0m".as_bytes());
        assert!(
            CastWriter::create(&path, &header, 10).is_err(),
            "never over an existing recording"
        );

        let small = dir.join("s/2.cast");
        let mut w = CastWriter::create(&small, &header, 300).unwrap();
        for _ in 0..100 {
            w.output(b"0123456789").unwrap();
        }
        let sum = w.finish().unwrap();
        assert!(sum.truncated);
        assert!(sum.bytes < 600, "{}", sum.bytes);
        let (_, events) = read(&small).unwrap();
        assert!(events.last().unwrap().data.contains("recording stopped"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
