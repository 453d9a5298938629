//! The `daemon.audit:` section of the configuration file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Audit log settings (`daemon.audit` in the config file).
///
/// ```yaml
/// daemon:
///   audit:
///     dir: /var/lib/airlock/audit        # default: <state_dir>/audit
///     fsync: batch                       # batch (default) | always
///     batch_interval: 10ms               # fdatasync period with `fsync: batch`
///     signing_key: /var/lib/airlock/audit.key   # default: <state_dir>/audit.key
///     head_interval: 0s                  # 0: a signed head after every sync
///     segment_max_bytes: 67108864
///     retention: { max_age: 90d, max_bytes: 10737418240 }
///     min_free_bytes: 67108864
///     on_full: refuse                    # refuse (default, fail closed) | allow
///     recording_max_bytes: 67108864      # per terminal recording (SSH, Kubernetes exec)
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Record sessions at all. Off only for benchmarks that measure the cost of recording.
    pub enabled: bool,
    /// Log directory (default `<state_dir>/audit`).
    pub dir: Option<PathBuf>,
    pub fsync: FsyncPolicy,
    /// With `fsync: batch`, how often the writer calls `fdatasync`.
    #[serde(deserialize_with = "de_duration")]
    pub batch_interval: Duration,
    /// Ed25519 signing key (default `<state_dir>/audit.key`); generated at first start when
    /// missing, with the public key next to it as `<file>.pub`.
    pub signing_key: Option<PathBuf>,
    /// Shortest time between two signed heads. The head is signed after each sync that
    /// covers new records (every `batch_interval` while records are written), at most this
    /// often; 0 (the default) signs after every sync.
    #[serde(deserialize_with = "de_duration")]
    pub head_interval: Duration,
    /// A segment file is closed and a new one started past this size.
    pub segment_max_bytes: u64,
    pub retention: RetentionConfig,
    /// Below this much free space on the log's file system, new sessions meet `on_full`.
    pub min_free_bytes: u64,
    pub on_full: OnFull,
    /// Bounded queue between sessions and the writer (records); a full queue makes senders
    /// wait.
    pub queue_capacity: usize,
    /// Largest terminal recording of one command. An SSH recording stops there and says so; a
    /// Kubernetes exec or attach stream is cut there (nothing it carries goes unrecorded).
    pub recording_max_bytes: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            fsync: FsyncPolicy::Batch,
            batch_interval: Duration::from_millis(10),
            signing_key: None,
            head_interval: Duration::ZERO,
            segment_max_bytes: 64 << 20,
            retention: RetentionConfig::default(),
            min_free_bytes: 64 << 20,
            on_full: OnFull::Refuse,
            queue_capacity: 4096,
            recording_max_bytes: 64 << 20,
        }
    }
}

impl AuditConfig {
    /// The log directory, resolved against the daemon's state directory.
    pub fn dir(&self, state_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| state_dir.join("audit"))
    }

    /// The signing key file, resolved against the daemon's state directory.
    pub fn signing_key(&self, state_dir: &Path) -> PathBuf {
        self.signing_key
            .clone()
            .unwrap_or_else(|| state_dir.join("audit.key"))
    }
}

/// When the writer forces records to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Acknowledge after `fdatasync` (one per drained group of records). Survives power loss.
    Always,
    /// Acknowledge after `write(2)`; `fdatasync` every `batch_interval`. Survives `kill -9`;
    /// a power loss can lose up to one interval.
    Batch,
}

/// What happens to new sessions when the log cannot take more records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Refuse new sessions (fail closed).
    Refuse,
    /// Let sessions run unrecorded, with a warning (fail open).
    Allow,
}

/// Retention of old segments; whatever is kept stays verifiable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Delete segments whose last write is older than this (e.g. `90d`).
    #[serde(deserialize_with = "de_opt_duration")]
    pub max_age: Option<Duration>,
    /// Delete the oldest segments while the log is larger than this.
    pub max_bytes: Option<u64>,
}

impl RetentionConfig {
    pub(crate) fn is_set(&self) -> bool {
        self.max_age.is_some() || self.max_bytes.is_some()
    }
}

/// Parses `500ms`, `10s`, `5m`, `12h`, `90d` (a bare number is seconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 10s, 5m, 12h, 90d)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => return Err(format!("`{s}`: unknown unit `{other}` (ms, s, m, h, d)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration such as 500ms, 10s, 5m, 12h, 90d (or a number of seconds)")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom("a duration cannot be negative"))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

/// Deserializes a duration written as `500ms`, `10s`, `5m`, `12h`, `90d` or a number of seconds.
pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}
