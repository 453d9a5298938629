//! The gateway's login against scripted servers: the exchanges of MySQL 8's
//! `caching_sha2_password` (which MariaDB 10.11, the test server, does not have), built byte
//! for byte from the protocol documentation: fast authentication, full authentication over
//! TLS (the password in clear) and without it (the password RSA-encrypted with the key the
//! server sends), an auth switch to `mysql_native_password`, and a refusal. The server side
//! checks every answer with its own implementation of the documented formulas (SHA-256 and
//! SHA-1 here, RSA-OAEP decryption by the `openssl` CLI).

use super::*;
use mysql_common::packets::HandshakeResponse;
use sha2::{Digest, Sha256};
use tokio::io::DuplexStream;

const PASSWORD: &[u8] = b"s3cret-pw";
const NONCE: &[u8; 20] = b"0123456789abcdefghij";

fn hello(plugin: &[u8]) -> ServerHello {
    ServerHello {
        version: b"8.0.36".to_vec(),
        capabilities: CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | CapabilityFlags::CLIENT_DEPRECATE_EOF,
        collation: 255,
        status: 2,
        thread_id: 11,
        nonce: NONCE.to_vec(),
        plugin: plugin.to_vec(),
        mariadb: false,
    }
}

fn request() -> LoginRequest {
    LoginRequest {
        capabilities: hello(b"").capabilities,
        collation: 45,
        max_packet: 1 << 24,
        database: Some("app".into()),
        attributes: None,
        no_database: false,
    }
}

/// caching_sha2_password's scramble: XOR(SHA256(pw), SHA256(SHA256(SHA256(pw)), nonce)).
fn sha2_scramble(nonce: &[u8], pw: &[u8]) -> Vec<u8> {
    let h1 = Sha256::digest(pw);
    let h2 = Sha256::digest(h1);
    let mut h = Sha256::new();
    h.update(h2);
    h.update(nonce);
    let h3 = h.finalize();
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

/// mysql_native_password's scramble: XOR(SHA1(pw), SHA1(nonce, SHA1(SHA1(pw)))).
fn native_scramble(nonce: &[u8], pw: &[u8]) -> Vec<u8> {
    use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY as SHA1, digest};
    let h1 = digest(&SHA1, pw);
    let h2 = digest(&SHA1, h1.as_ref());
    let mut cat = nonce.to_vec();
    cat.extend_from_slice(h2.as_ref());
    let h3 = digest(&SHA1, &cat);
    h1.as_ref()
        .iter()
        .zip(h3.as_ref())
        .map(|(a, b)| a ^ b)
        .collect()
}

/// The server end: reads packets and checks their sequence ids.
struct Server {
    s: DuplexStream,
    seq: u8,
}

impl Server {
    async fn read(&mut self) -> Vec<u8> {
        let (p, seq) = wire::read_packet(&mut self.s, "client").await.unwrap();
        assert_eq!(
            seq, self.seq,
            "client packet numbered {seq}, expected {}",
            self.seq
        );
        self.seq = seq.wrapping_add(1);
        p
    }
    async fn send(&mut self, payload: &[u8]) {
        wire::write_packet(&mut self.s, &mut self.seq, payload)
            .await
            .unwrap();
    }
    /// Reads the handshake response and checks the account and the method.
    async fn handshake_response(&mut self, plugin: &[u8]) -> Vec<u8> {
        let p = self.read().await;
        let r: HandshakeResponse<'_> = ParseBuf(&p).parse(()).unwrap();
        assert_eq!(r.user(), b"gw");
        assert_eq!(r.db_name(), Some(&b"app"[..]));
        assert_eq!(r.auth_plugin().unwrap().as_bytes(), plugin);
        assert_eq!(p[8], 45, "the session's collation");
        r.scramble_buf().to_vec()
    }
}

const OK: &[u8] = &[0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00];

async fn run_login(
    plugin: &[u8],
    tls: bool,
    server: impl FnOnce(Server) -> tokio::task::JoinHandle<()>,
) -> Result<(Vec<u8>, String), BackendError> {
    let (client, srv) = tokio::io::duplex(1 << 16);
    let handle = server(Server { s: srv, seq: 1 });
    let h = hello(plugin);
    let req = request();
    let r = authenticate(
        client,
        &h,
        req.capabilities,
        &req,
        b"gw",
        Some("app"),
        PASSWORD,
        tls,
        1,
    )
    .await
    .map(|(_, ok, method)| (ok, method));
    handle.await.unwrap();
    r
}

#[tokio::test]
async fn caching_sha2_fast_authentication() {
    let (ok, method) = run_login(b"caching_sha2_password", false, |mut srv| {
        tokio::spawn(async move {
            let answer = srv.handshake_response(b"caching_sha2_password").await;
            assert_eq!(answer, sha2_scramble(NONCE, PASSWORD));
            // AuthMoreData: fast_auth_success, then OK.
            srv.send(&[0x01, 0x03]).await;
            srv.send(OK).await;
        })
    })
    .await
    .unwrap();
    assert_eq!(ok, OK);
    assert_eq!(method, "caching_sha2_password");
}

#[tokio::test]
async fn caching_sha2_full_authentication_over_tls_sends_the_password() {
    run_login(b"caching_sha2_password", true, |mut srv| {
        tokio::spawn(async move {
            let answer = srv.handshake_response(b"caching_sha2_password").await;
            assert_eq!(answer, sha2_scramble(NONCE, PASSWORD));
            // perform_full_authentication: over TLS the password comes NUL-terminated.
            srv.send(&[0x01, 0x04]).await;
            let clear = srv.read().await;
            let mut expected = PASSWORD.to_vec();
            expected.push(0);
            assert_eq!(clear, expected);
            srv.send(OK).await;
        })
    })
    .await
    .unwrap();
}

/// An RSA key pair made with the openssl CLI (PKCS#8 private key, SPKI public key).
fn rsa_keys(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let key = dir.join("key.pem");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().unwrap(),
    ]);
    let public = run(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    (key, public)
}

#[tokio::test]
async fn caching_sha2_full_authentication_without_tls_uses_the_servers_rsa_key() {
    let dir = std::env::temp_dir().join(format!("airlock-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, public) = rsa_keys(&dir);
    let dir2 = dir.clone();
    run_login(b"caching_sha2_password", false, move |mut srv| {
        tokio::spawn(async move {
            let _ = srv.handshake_response(b"caching_sha2_password").await;
            srv.send(&[0x01, 0x04]).await;
            // Without TLS the client asks for the key (0x02), never sends the password.
            assert_eq!(srv.read().await, [0x02]);
            let mut more = vec![0x01];
            more.extend_from_slice(&public);
            srv.send(&more).await;
            let encrypted = srv.read().await;
            assert_eq!(encrypted.len(), 256, "one RSA-2048 block");
            assert!(!encrypted.windows(PASSWORD.len()).any(|w| w == PASSWORD));
            let blob = dir2.join("blob");
            std::fs::write(&blob, &encrypted).unwrap();
            let out = std::process::Command::new("openssl")
                .args([
                    "pkeyutl",
                    "-decrypt",
                    "-inkey",
                    key.to_str().unwrap(),
                    "-in",
                ])
                .arg(&blob)
                .args([
                    "-pkeyopt",
                    "rsa_padding_mode:oaep",
                    "-pkeyopt",
                    "rsa_oaep_md:sha1",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The plaintext is the NUL-terminated password XOR the nonce.
            let plain: Vec<u8> = out
                .stdout
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ NONCE[i % NONCE.len()])
                .collect();
            let mut expected = PASSWORD.to_vec();
            expected.push(0);
            assert_eq!(plain, expected);
            srv.send(OK).await;
        })
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn auth_switch_to_native_password() {
    let (_, method) = run_login(b"caching_sha2_password", false, |mut srv| {
        tokio::spawn(async move {
            let _ = srv.handshake_response(b"caching_sha2_password").await;
            // AuthSwitchRequest to the account's method, with a new nonce.
            let nonce2 = b"ABCDEFGHIJKLMNOPQRST";
            let mut switch = vec![0xfe];
            switch.extend_from_slice(b"mysql_native_password\0");
            switch.extend_from_slice(nonce2);
            switch.push(0);
            srv.send(&switch).await;
            assert_eq!(srv.read().await, native_scramble(nonce2, PASSWORD));
            srv.send(OK).await;
        })
    })
    .await
    .unwrap();
    assert_eq!(method, "mysql_native_password");
}

#[tokio::test]
async fn a_refusal_carries_the_servers_error() {
    let err = run_login(b"mysql_native_password", false, |mut srv| {
        tokio::spawn(async move {
            let answer = srv.handshake_response(b"mysql_native_password").await;
            assert_eq!(answer, native_scramble(NONCE, PASSWORD));
            let mut e = vec![0xff, 0x15, 0x04, b'#'];
            e.extend_from_slice(b"28000Access denied for user 'gw'");
            srv.send(&e).await;
        })
    })
    .await
    .unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert_eq!(err.client_code(), (1045, "28000"));
    assert!(err.to_string().contains("Access denied"), "{err}");
}

#[test]
fn clear_password_only_over_tls() {
    assert!(plugin_for(b"mysql_clear_password", false).is_err());
    assert!(plugin_for(b"mysql_clear_password", true).is_ok());
    assert!(matches!(
        plugin_for(b"auth_gssapi_client", true),
        Err(BackendError::Unsupported(_))
    ));
}
