//! The client-facing handshake: airlock's greeting (the server's version and capabilities,
//! minus what the gateway refuses; a connection id and scramble of its own), the optional TLS
//! upgrade, the client's handshake response, and the client's secret when policy wants one.
//!
//! The client's password is never checked against anything: the caller is identified by the
//! kernel (workload identity) or by an OIDC token it sends as its password. A token must travel
//! in clear, so it is asked for with an AuthSwitchRequest to `mysql_clear_password`, and only
//! over TLS; an empty password means "no token". Whatever scramble a client computes for the
//! offered method (`caching_sha2_password` by default, what MySQL 8 connectors expect) is
//! accepted as is.

use std::collections::HashMap;

use mysql_common::constants::{CapabilityFlags, MariadbCapabilities, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;
use tokio::io::{AsyncRead, AsyncWrite};

use super::codec::{self, errno};
use super::tls::{self, MaybeTls};
use super::wire::{self, WireError};
use crate::config::{MysqlClientAuth, MysqlTarget};

/// Capabilities that pass between client and server when both have them. Everything else is
/// cleared on both legs: compression (the gateway could not inspect it), LOAD DATA LOCAL
/// (`CLIENT_LOCAL_FILES`: the server could read files from the client's machine), optional
/// result set metadata, query attributes, MariaDB's metadata caching, progress reports, bulk
/// operations and COM_MULTI (each would hide column definitions or commands from the gateway),
/// and the expired-password sandbox.
pub const PASSED: CapabilityFlags = CapabilityFlags::from_bits_truncate(
    CapabilityFlags::CLIENT_LONG_PASSWORD.bits()
        | CapabilityFlags::CLIENT_FOUND_ROWS.bits()
        | CapabilityFlags::CLIENT_LONG_FLAG.bits()
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB.bits()
        | CapabilityFlags::CLIENT_ODBC.bits()
        | CapabilityFlags::CLIENT_IGNORE_SPACE.bits()
        | CapabilityFlags::CLIENT_PROTOCOL_41.bits()
        | CapabilityFlags::CLIENT_INTERACTIVE.bits()
        | CapabilityFlags::CLIENT_IGNORE_SIGPIPE.bits()
        | CapabilityFlags::CLIENT_TRANSACTIONS.bits()
        | CapabilityFlags::CLIENT_RESERVED.bits()
        | CapabilityFlags::CLIENT_SECURE_CONNECTION.bits()
        | CapabilityFlags::CLIENT_MULTI_STATEMENTS.bits()
        | CapabilityFlags::CLIENT_MULTI_RESULTS.bits()
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS.bits()
        | CapabilityFlags::CLIENT_PLUGIN_AUTH.bits()
        | CapabilityFlags::CLIENT_CONNECT_ATTRS.bits()
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA.bits()
        | CapabilityFlags::CLIENT_SESSION_TRACK.bits()
        | CapabilityFlags::CLIENT_DEPRECATE_EOF.bits(),
);

/// Capabilities a client must have: the 4.1 protocol with plugin-era scrambles (every
/// connector of the last fifteen years).
const REQUIRED: CapabilityFlags = CapabilityFlags::from_bits_truncate(
    CapabilityFlags::CLIENT_PROTOCOL_41.bits() | CapabilityFlags::CLIENT_SECURE_CONNECTION.bits(),
);

/// Client methods whose answers the gateway reads (and otherwise ignores).
const KNOWN_CLIENT_PLUGINS: [&[u8]; 3] = [
    b"mysql_native_password",
    b"caching_sha2_password",
    b"mysql_clear_password",
];

/// Why the client handshake failed. `Refused` was already answered with an ERR packet.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("{0}")]
    Refused(String),
}

/// What the upstream greeting tells the client-facing one.
#[derive(Debug, Clone)]
pub struct ServerHello {
    pub version: Vec<u8>,
    pub capabilities: CapabilityFlags,
    pub collation: u8,
    pub status: u16,
    /// The server's own connection (thread) id: KILL needs it; the client never sees it.
    pub thread_id: u32,
    /// The scramble the server sent (its auth plugin's first challenge).
    pub nonce: Vec<u8>,
    /// The server's default authentication plugin.
    pub plugin: Vec<u8>,
    pub mariadb: bool,
}

impl ServerHello {
    /// Parses the server's initial handshake packet (protocol 10).
    pub fn parse(payload: &[u8]) -> Result<Self, HandshakeError> {
        if payload.first() == Some(&0xff) {
            let e = codec::parse_err(payload)
                .map(|e| format!("{} ({})", e.message, e.code))
                .unwrap_or_else(|| "an error".into());
            return Err(HandshakeError::Refused(format!(
                "the server refused the connection: {e}"
            )));
        }
        // mysql_common reads the second scramble's length as `len as i8 - 8`, which overflows
        // (a panic where overflow checks are on) for a length byte of 0x80–0x87; servers send
        // 21. Found by the mysql_wire fuzz target.
        if auth_data_len(payload).is_some_and(|n| n > 127) {
            return Err(HandshakeError::Malformed(
                "server greeting (auth data length)",
            ));
        }
        let h: HandshakePacket<'_> = ParseBuf(payload)
            .parse(())
            .map_err(|_| HandshakeError::Malformed("server greeting"))?;
        if h.protocol_version() != 10 {
            return Err(HandshakeError::Malformed(
                "server greeting (protocol is not 10)",
            ));
        }
        let mut nonce = h.nonce();
        // The scramble travels NUL-terminated.
        if nonce.len() > 20 && nonce.last() == Some(&0) {
            nonce.pop();
        }
        let version = h.server_version_ref().to_vec();
        let mariadb = h.maria_db_server_version_parsed().is_some()
            || version.windows(7).any(|w| w == b"MariaDB");
        Ok(ServerHello {
            capabilities: h.capabilities(),
            collation: h.default_collation(),
            status: h.status_flags().bits(),
            thread_id: h.connection_id(),
            plugin: h
                .auth_plugin_name_ref()
                .unwrap_or(b"mysql_native_password")
                .to_vec(),
            version,
            nonce,
            mariadb,
        })
    }
}

/// The client's login, as it presented itself.
#[derive(Debug)]
pub struct ClientLogin {
    /// Capabilities both legs of the session use: what the client asked for of what the
    /// greeting offered.
    pub capabilities: CapabilityFlags,
    pub max_packet: u32,
    pub collation: u8,
    /// The user name the client asked for (not trusted).
    pub user: String,
    pub database: Option<String>,
    pub attributes: Option<HashMap<String, String>>,
    /// A secret the client presented when policy asked for one (an OIDC token).
    pub secret: Option<Vec<u8>>,
    /// The client expects caching_sha2_password's "fast auth success" before the OK.
    pub fast_auth: bool,
    /// The next sequence id towards the client.
    pub seq: u8,
}

/// Random printable scramble bytes (a NUL would end the C string some clients read).
fn scramble() -> Result<[u8; 20], HandshakeError> {
    let mut s = [0u8; 20];
    let raw = crate::secrets::random(20)
        .map_err(|_| HandshakeError::Refused("no randomness for the scramble".into()))?;
    for (d, r) in s.iter_mut().zip(raw) {
        *d = 0x21 + (r % 0x5e);
    }
    Ok(s)
}

/// The capabilities offered to the client.
pub fn offered(server: &ServerHello, client_tls: bool) -> CapabilityFlags {
    let mut caps = server.capabilities & PASSED;
    caps.insert(CapabilityFlags::CLIENT_PLUGIN_AUTH);
    if client_tls {
        caps.insert(CapabilityFlags::CLIENT_SSL);
    }
    caps
}

/// Writes airlock's greeting (sequence id 0): the server's version, collation and status, the
/// offered capabilities, our connection id and a fresh scramble.
pub async fn write_greeting<S: AsyncWrite + Unpin>(
    client: &mut S,
    server: &ServerHello,
    connection_id: u32,
    cfg: &MysqlTarget,
) -> Result<[u8; 20], HandshakeError> {
    let nonce = scramble()?;
    let caps = offered(server, cfg.client_tls.is_some());
    let plugin = offered_plugin(server, cfg.client_auth);
    let mut scramble_2 = nonce[8..].to_vec();
    scramble_2.push(0);
    let mut scramble_1 = [0u8; 8];
    scramble_1.copy_from_slice(&nonce[..8]);
    let greeting = HandshakePacket::new(
        10,
        server.version.as_slice(),
        connection_id,
        scramble_1,
        Some(scramble_2),
        caps,
        server.collation,
        StatusFlags::from_bits_truncate(server.status),
        Some(plugin),
    )
    .with_mariadb_ext_capabilities(MariadbCapabilities::empty());
    let mut payload = Vec::with_capacity(128);
    greeting.serialize(&mut payload);
    let mut seq = 0u8;
    wire::write_packet(client, &mut seq, &payload).await?;
    Ok(nonce)
}

/// The authentication method the greeting names: the configured one, or (`auto`) the
/// server's own default when it is one of the two every connector of its family expects —
/// `caching_sha2_password` from MySQL 8, `mysql_native_password` from MariaDB.
pub fn offered_plugin(server: &ServerHello, choice: MysqlClientAuth) -> &'static [u8] {
    match choice {
        MysqlClientAuth::CachingSha2Password => b"caching_sha2_password",
        MysqlClientAuth::MysqlNativePassword => b"mysql_native_password",
        MysqlClientAuth::Auto if server.plugin == b"caching_sha2_password" => {
            b"caching_sha2_password"
        }
        MysqlClientAuth::Auto if server.plugin == b"mysql_native_password" || server.mariadb => {
            b"mysql_native_password"
        }
        MysqlClientAuth::Auto => b"caching_sha2_password",
    }
}

/// Runs the client-facing handshake up to (not including) the final OK. `wants_secret` asks
/// the client for its password in clear (over TLS) when it sent a non-empty one.
pub async fn accept(
    mut client: MaybeTls,
    server: &ServerHello,
    connection_id: u32,
    cfg: &MysqlTarget,
    wants_secret: bool,
) -> Result<(MaybeTls, ClientLogin), HandshakeError> {
    let nonce = write_greeting(&mut client, server, connection_id, cfg).await?;
    let mut seq;
    let (mut first, mut last_seq) = match wire::read_packet(&mut client, "handshake response").await
    {
        Ok(p) => p,
        Err(WireError::Frame(e)) => {
            // A bad packet ends the session with an error the client can read.
            let m = format!("airlock: {e}");
            refuse(&mut client, &mut 1, errno::MALFORMED_PACKET, "08S01", &m).await;
            return Err(HandshakeError::Refused(m));
        }
        Err(e) => return Err(e.into()),
    };
    let requested = first
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(HandshakeError::Malformed("handshake response"))?;
    if requested & CapabilityFlags::CLIENT_SSL.bits() != 0 && first.len() == 32 {
        let (MaybeTls::Plain(tcp), Some(tls_cfg)) = (client, cfg.client_tls.as_ref()) else {
            return Err(HandshakeError::Refused(
                "the client asked for TLS, which this gateway does not offer".into(),
            ));
        };
        client = tls::accept(tcp, tls_cfg)
            .await
            .map_err(|e| HandshakeError::Refused(format!("client TLS: {e}")))?;
        (first, last_seq) = wire::read_packet(&mut client, "handshake response").await?;
    }
    seq = last_seq.wrapping_add(1);
    let tls_on = matches!(client, MaybeTls::Server(_));
    let caps = offered(server, cfg.client_tls.is_some());
    let response: HandshakeResponse<'_> = match ParseBuf(&first).parse(()) {
        Ok(r) => r,
        Err(_) => {
            refuse(
                &mut client,
                &mut seq,
                errno::MALFORMED_PACKET,
                "08S01",
                "airlock: malformed handshake response",
            )
            .await;
            return Err(HandshakeError::Malformed("handshake response"));
        }
    };
    let asked = response.capabilities();
    if !asked.contains(REQUIRED) {
        let m = "airlock: this client speaks a protocol older than MySQL 4.1; upgrade it";
        refuse(&mut client, &mut seq, errno::NOT_SUPPORTED, "08004", m).await;
        return Err(HandshakeError::Refused(m.into()));
    }
    let collation = first.get(8).copied().unwrap_or(server.collation);
    if let Some(charset) = unsafe_charset(u16::from(collation)) {
        let m = format!(
            "airlock: the connection character set {charset} is not allowed through the gateway \
             (in it a backslash can end a multibyte character, so the server would read \
             statements differently from the gateway); use utf8mb4"
        );
        refuse(&mut client, &mut seq, errno::NOT_SUPPORTED, "42000", &m).await;
        return Err(HandshakeError::Refused(m));
    }
    let mut session = asked & caps;
    session.remove(CapabilityFlags::CLIENT_SSL);
    let mut used = response
        .auth_plugin()
        .map(|p| p.as_bytes().to_vec())
        .unwrap_or_else(|| b"mysql_native_password".to_vec());
    let mut data = response.scramble_buf().to_vec();
    if !KNOWN_CLIENT_PLUGINS.contains(&used.as_slice()) {
        // A method we do not speak (or libmariadb's placeholder for a plugin it failed to
        // load): switch the client to mysql_native_password, as a server does for an account
        // of another method.
        let mut switch = vec![0xfe];
        switch.extend_from_slice(b"mysql_native_password\0");
        switch.extend_from_slice(&nonce);
        switch.push(0);
        wire::write_packet(&mut client, &mut seq, &switch).await?;
        let (answer, s) = wire::read_packet(&mut client, "auth switch response").await?;
        seq = s.wrapping_add(1);
        used = b"mysql_native_password".to_vec();
        data = answer;
    }
    // An empty password: no data, or libmysqlclient's single NUL.
    let no_password = data.is_empty() || data == [0];
    tracing::debug!(plugin = %String::from_utf8_lossy(&used), data = data.len(), "client login");
    // A caching_sha2_password client that sent a scramble waits for "fast auth success"; one
    // with an empty password sent none and expects the OK at once (as from MySQL).
    let mut fast_auth = used == b"caching_sha2_password" && !no_password;
    let secret = if !wants_secret {
        None
    } else if used == b"mysql_clear_password" {
        if !tls_on {
            let m = "airlock: a token as password is only accepted over TLS";
            refuse(&mut client, &mut seq, errno::ACCESS_DENIED, "28000", m).await;
            return Err(HandshakeError::Refused(m.into()));
        }
        Some(strip_nul(data))
    } else if no_password {
        // No password: no token, the workload identity alone.
        Some(Vec::new())
    } else {
        if !tls_on {
            let m = "airlock: send a token as password over TLS (mysql_clear_password); \
                     without TLS connect with an empty password";
            refuse(&mut client, &mut seq, errno::ACCESS_DENIED, "28000", m).await;
            return Err(HandshakeError::Refused(m.into()));
        }
        // AuthSwitchRequest: 0xFE, plugin name, plugin data.
        let mut switch = vec![0xfe];
        switch.extend_from_slice(AuthPlugin::MysqlClearPassword.as_bytes());
        switch.push(0);
        wire::write_packet(&mut client, &mut seq, &switch).await?;
        let (answer, s) = wire::read_packet(&mut client, "clear password").await?;
        seq = s.wrapping_add(1);
        fast_auth = false;
        Some(strip_nul(answer))
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((
        client,
        ClientLogin {
            capabilities: session,
            max_packet: max_packet(&first),
            collation,
            user: text(response.user()),
            database: response.db_name().filter(|d| !d.is_empty()).map(text),
            attributes: response.connect_attributes(),
            secret,
            fast_auth,
            seq,
        },
    ))
}

/// The character set of a collation id when it is one whose multibyte characters can end in
/// a backslash (0x5c): the server's lexer and the gateway's would then disagree about where a
/// string ends. MariaDB's NO PAD variants are the base id plus 1024.
pub fn unsafe_charset(collation: u16) -> Option<&'static str> {
    let known = known_collation(collation)?;
    ["big5", "gbk", "sjis", "cp932", "gb18030"]
        .into_iter()
        .find(|c| *c == known.charset())
}

/// The character set of a collation id when ASCII characters are not single bytes in it
/// (UCS-2, UTF-16, UTF-32): masking cannot read its text. An id no table knows counts as
/// one (fail closed). MariaDB's UCA 14 collations (2048 and up) carry their character set in
/// bits 8–10.
pub fn wide_charset(collation: u16) -> Option<&'static str> {
    const WIDE: [&str; 4] = ["ucs2", "utf16", "utf16le", "utf32"];
    if collation >= 2048 {
        return match (collation - 2048) >> 8 {
            0 | 1 => None,
            2 => Some("ucs2"),
            3 => Some("utf16"),
            4 => Some("utf32"),
            _ => Some("an unknown character set"),
        };
    }
    // MariaDB's compatibility collations (`*_mysql561_ci`, `*_mysql500_ci`), which
    // mysql_common does not list.
    match collation {
        576..=578 | 608..=610 => return None,
        640..=642 => return Some("ucs2"),
        672..=674 => return Some("utf16"),
        736..=738 => return Some("utf32"),
        _ => {}
    }
    let Some(known) = known_collation(collation) else {
        return Some("an unknown character set");
    };
    WIDE.into_iter().find(|c| *c == known.charset())
}

/// The collation of an id that mysql_common lists (MariaDB's NO PAD variants are the base id
/// plus 1024).
fn known_collation(collation: u16) -> Option<mysql_common::collations::Collation<'static>> {
    use mysql_common::collations::{Collation, CollationId};
    let base = if (1024..2048).contains(&collation) {
        collation - 1024
    } else {
        collation
    };
    let id = CollationId::from(base);
    (id != CollationId::UNKNOWN_COLLATION_ID).then(|| Collation::from(id))
}

fn max_packet(response: &[u8]) -> u32 {
    response
        .get(4..8)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

fn strip_nul(mut v: Vec<u8>) -> Vec<u8> {
    if v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// Answers a client with an ERR packet and closes its connection.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    seq: &mut u8,
    code: u16,
    state: &str,
    message: &str,
) {
    wire::write_err_and_close(client, seq, code, state, message).await;
}

/// The end of a successful login: caching_sha2_password's "fast auth success" when the client
/// expects it, then the server's OK (re-numbered for this leg).
pub async fn finish<S: AsyncWrite + Unpin>(
    client: &mut S,
    login: &mut ClientLogin,
    ok: &[u8],
) -> Result<(), WireError> {
    let mut out = bytes::BytesMut::with_capacity(ok.len() + 16);
    if login.fast_auth {
        codec::put_packet(&mut out, &mut login.seq, &[0x01, 0x03]);
    }
    codec::put_packet(&mut out, &mut login.seq, ok);
    use tokio::io::AsyncWriteExt;
    client.write_all(&out).await?;
    client.flush().await?;
    Ok(())
}

/// The greeting's auth-plugin-data length byte: after the protocol version, the
/// NUL-terminated server version, and 20 bytes (connection id, first scramble, filler,
/// capabilities, collation, status, more capabilities).
fn auth_data_len(payload: &[u8]) -> Option<u8> {
    let version_end = payload.get(1..)?.iter().position(|&b| b == 0)? + 1;
    payload.get(version_end + 1 + 20).copied()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_greeting_with_an_auth_data_length_over_127_is_malformed_not_a_panic() {
        // The mysql_wire fuzz target's crash input (length byte 0x84).
        let mut g = vec![0x0a];
        g.extend_from_slice(b"5.5.5-10.11.6-MariaDB\0");
        g.extend_from_slice(&[1, 0, 0, 0]); // connection id
        g.extend_from_slice(b"scrambl1"); // first scramble
        g.push(0); // filler
        g.extend_from_slice(&[0xff, 0xf7]); // capabilities (secure connection set)
        g.push(8); // collation
        g.extend_from_slice(&[2, 0]); // status
        g.extend_from_slice(&[0xff, 0x81]); // more capabilities (plugin auth set)
        assert_eq!(auth_data_len(&g), None, "cut before the length byte");
        g.push(0x84); // auth data length
        g.extend_from_slice(&[0; 10]);
        g.extend_from_slice(b"scramble2part\0mysql_native_password\0");
        assert_eq!(auth_data_len(&g), Some(0x84));
        assert!(matches!(
            ServerHello::parse(&g),
            Err(HandshakeError::Malformed(_))
        ));
        // The fuzz target's crash input itself (payload of its first packet).
        let crash = [
            0x8c, 0x2e, 0x7e, 0x00, 0x5d, 0x5d, 0x5d, 0x35, 0x2e, 0x2d, 0x84, 0x84, 0x84, 0x84,
            0x84, 0x84, 0x84, 0x84, 0x84, 0x84, 0xc9, 0x84, 0x84, 0x84, 0x84, 0x84, 0x84, 0x84,
            0x84, 0x84, 0x84, 0x84, 0x84, 0x84, 0x84, 0x84, 0x84, 0x84, 0x84, 0x35, 0x30, 0x2e,
            0x31, 0x31, 0xda,
        ];
        assert!(ServerHello::parse(&crash).is_err());
        // A well-formed length still parses.
        let n = g.len() - 10 - 14 - 22 - 1;
        g[n] = 21;
        assert!(ServerHello::parse(&g).is_ok());
    }

    fn hello(caps: CapabilityFlags) -> ServerHello {
        ServerHello {
            version: b"5.5.5-10.11.6-MariaDB".to_vec(),
            capabilities: caps,
            collation: 45,
            status: 2,
            thread_id: 9,
            nonce: vec![b'a'; 20],
            plugin: b"mysql_native_password".to_vec(),
            mariadb: true,
        }
    }

    #[test]
    fn refused_capabilities_are_never_offered() {
        let all = CapabilityFlags::all();
        let caps = offered(&hello(all), false);
        for refused in [
            CapabilityFlags::CLIENT_COMPRESS,
            CapabilityFlags::CLIENT_ZSTD_COMPRESSION_ALGORITHM,
            CapabilityFlags::CLIENT_LOCAL_FILES,
            CapabilityFlags::CLIENT_OPTIONAL_RESULTSET_METADATA,
            CapabilityFlags::CLIENT_QUERY_ATTRIBUTES,
            CapabilityFlags::CLIENT_PROGRESS_OBSOLETE,
            CapabilityFlags::CLIENT_SSL,
            CapabilityFlags::CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS,
        ] {
            assert!(!caps.contains(refused), "{refused:?}");
        }
        assert!(caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF));
        assert!(offered(&hello(all), true).contains(CapabilityFlags::CLIENT_SSL));
    }

    #[tokio::test]
    async fn greeting_round_trips_and_hides_the_server_id() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let server = hello(CapabilityFlags::all());
        let cfg: MysqlTarget =
            serde_norway::from_str("{user: gw, client_auth: caching_sha2_password}").unwrap();
        write_greeting(&mut a, &server, 4242, &cfg).await.unwrap();
        let (p, seq) = wire::read_packet(&mut b, "greeting").await.unwrap();
        assert_eq!(seq, 0);
        let seen = ServerHello::parse(&p).unwrap();
        assert_eq!(
            seen.thread_id, 4242,
            "the client sees our id, not the server's"
        );
        assert_eq!(seen.plugin, b"caching_sha2_password");
        assert_eq!(seen.nonce.len(), 20);
        assert!(seen.nonce.iter().all(|&b| b != 0));
        assert!(seen.mariadb);
        assert!(
            !seen
                .capabilities
                .contains(CapabilityFlags::CLIENT_LOCAL_FILES)
        );
        assert!(!seen.capabilities.contains(CapabilityFlags::CLIENT_COMPRESS));
    }

    #[test]
    fn wide_charsets_are_told_apart_from_ascii_compatible_ones() {
        // utf8mb3_general_ci, utf8mb4_general_ci, latin1, binary, utf8mb4_0900_ai_ci,
        // MariaDB's utf8mb4_nopad_bin, utf8mb4_croatian_mysql561_ci, utf8mb4_uca1400_ai_ci.
        for id in [33, 45, 8, 63, 255, 1070, 608, 2048 + 256] {
            assert_eq!(wide_charset(id), None, "{id}");
        }
        // ucs2_general_ci, utf16_general_ci, utf16le_general_ci, utf32_general_ci,
        // utf16_unicode_ci, MariaDB's ucs2_nopad_bin, utf16_croatian_mysql561_ci,
        // utf32_uca1400_ai_ci.
        for (id, set) in [
            (35, "ucs2"),
            (54, "utf16"),
            (56, "utf16le"),
            (60, "utf32"),
            (101, "utf16"),
            (1114, "ucs2"),
            (672, "utf16"),
            (2048 + 4 * 256, "utf32"),
        ] {
            assert_eq!(wide_charset(id), Some(set), "{id}");
        }
        // An id nobody lists: its text is not trusted to be readable.
        assert!(wide_charset(1000).is_some());
    }

    #[test]
    fn backslash_eating_charsets_are_refused() {
        // gbk_chinese_ci, sjis_japanese_ci, big5_bin, cp932_japanese_ci, MariaDB's
        // gbk_chinese_nopad_ci.
        for id in [28, 13, 84, 95, 1052] {
            assert!(unsafe_charset(id).is_some(), "{id}");
        }
        // utf8mb4_general_ci, utf8mb4_0900_ai_ci, latin1_swedish_ci, binary, utf8mb3.
        for id in [45, 255, 8, 63, 33, 224] {
            assert_eq!(unsafe_charset(id), None, "{id}");
        }
    }

    #[test]
    fn auto_offers_what_the_servers_family_expects() {
        let mut server = hello(CapabilityFlags::all());
        assert_eq!(
            offered_plugin(&server, MysqlClientAuth::Auto),
            b"mysql_native_password"
        );
        server.mariadb = false;
        server.plugin = b"caching_sha2_password".to_vec();
        assert_eq!(
            offered_plugin(&server, MysqlClientAuth::Auto),
            b"caching_sha2_password"
        );
        assert_eq!(
            offered_plugin(&server, MysqlClientAuth::MysqlNativePassword),
            b"mysql_native_password"
        );
    }
}
