//! A real OIDC provider (npm `oidc-provider`, see provider.mjs) for the identity tests: installed
//! once into the cargo target dir, served over HTTPS with a CA made for the test run, started
//! and stopped by PID.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use openidconnect::reqwest;

const PACKAGE_JSON: &str = include_str!("package.json");
const PROVIDER_MJS: &str = include_str!("provider.mjs");

/// The directory holding node_modules/oidc-provider and provider.mjs; installs on first use.
fn node_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oidc-node");
        std::fs::create_dir_all(&dir).unwrap();
        let pkg = dir.join("package.json");
        let changed = std::fs::read_to_string(&pkg).ok().as_deref() != Some(PACKAGE_JSON);
        std::fs::write(dir.join("provider.mjs"), PROVIDER_MJS).unwrap();
        if changed || !dir.join("node_modules/oidc-provider/package.json").exists() {
            std::fs::write(&pkg, PACKAGE_JSON).unwrap();
            let out = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .output()
                .unwrap_or_else(|e| {
                    panic!("cannot run npm (needed to install oidc-provider): {e}")
                });
            assert!(
                out.status.success(),
                "`npm install oidc-provider` in {} failed (is the npm registry reachable?):\n{}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir
    })
}

/// A scratch directory with a test CA and a TLS certificate for 127.0.0.1; removed on drop.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "airlock-oidc-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=airlock-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "tls.key",
            "-out",
            "tls.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "tls.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ]);
        let ca = dir.join("ca.pem");
        Pki { dir, ca }
    }

    /// An HTTP client trusting the test CA.
    pub fn http(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running provider process.
pub struct Provider {
    child: Child,
    pub issuer: String,
    pub port: u16,
    /// The signing key's name; its public PEM is `<pki.dir>/<key>.pub.pem`.
    pub key: String,
}

impl Provider {
    /// Starts the provider signing with key `key` (created on first use) on `port` (0: any).
    pub fn start(pki: &Pki, key: &str, port: u16) -> Provider {
        Self::start_in(pki, key, port, None)
    }

    /// As [`start`](Self::start), inside network namespace `netns` (its 127.0.0.1 is that
    /// namespace's loopback, e.g. where the daemon runs). `nsenter` execs node, so the PID
    /// stopped on drop is the provider's.
    pub fn start_in(pki: &Pki, key: &str, port: u16, netns: Option<&str>) -> Provider {
        Self::start_with(pki, key, port, netns, None)
    }

    /// As [`start`](Self::start), also registering the console's authorization-code client
    /// with `console_redirect` and serving the provider's login and consent pages.
    pub fn start_for_console(pki: &Pki, key: &str, console_redirect: &str) -> Provider {
        Self::start_with(pki, key, 0, None, Some(console_redirect))
    }

    fn start_with(
        pki: &Pki,
        key: &str,
        port: u16,
        netns: Option<&str>,
        console_redirect: Option<&str>,
    ) -> Provider {
        let dir = node_dir();
        let log = std::fs::File::create(pki.dir.join(format!("provider-{key}.log"))).unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("node");
                c
            }
            None => Command::new("node"),
        };
        let mut child = cmd
            .arg(dir.join("provider.mjs"))
            .args(["--dir", pki.dir.to_str().unwrap(), "--key", key, "--port"])
            .arg(port.to_string())
            .args(
                console_redirect
                    .map(|r| vec!["--console-redirect", r])
                    .unwrap_or_default(),
            )
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node (needed for oidc-provider): {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // Node loads oidc-provider and makes its key first: with a dozen providers starting at
        // once on two cores that once took over 30 s in CI, so the wait is generous.
        let line = rx.recv_timeout(Duration::from_secs(90)).unwrap_or_default();
        let Some(issuer) = line.trim().strip_prefix("READY ").map(str::to_string) else {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(pki.dir.join(format!("provider-{key}.log")));
            panic!(
                "oidc-provider did not start: {line:?}\n{}",
                log.unwrap_or_default()
            );
        };
        let port = issuer.rsplit(':').next().unwrap().parse().unwrap();
        Provider {
            child,
            issuer,
            port,
            key: key.to_string(),
        }
    }

    /// Stops the process (by its PID) and waits for it, so the port is free again.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A JWT access token for `client` via client_credentials, for `resource` (the audience;
    /// default `https://airlock.test`).
    pub async fn client_token(&self, pki: &Pki, client: &str, resource: Option<&str>) -> String {
        let mut body = format!(
            "grant_type=client_credentials&client_id={client}&client_secret={client}-secret&scope=api"
        );
        if let Some(r) = resource {
            body.push_str("&resource=");
            body.push_str(r);
        }
        let resp = pki
            .http()
            .post(format!("{}/token", self.issuer))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let json: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert!(status.is_success(), "token request failed: {json}");
        json["access_token"].as_str().unwrap().to_string()
    }

    /// As [`client_token`](Self::client_token) for a provider started in network namespace
    /// `netns`: the request is made by curl inside that namespace.
    pub fn client_token_in(
        &self,
        pki: &Pki,
        client: &str,
        resource: Option<&str>,
        netns: &str,
    ) -> String {
        let mut body = format!(
            "grant_type=client_credentials&client_id={client}&client_secret={client}-secret&scope=api"
        );
        if let Some(r) = resource {
            body.push_str("&resource=");
            body.push_str(r);
        }
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .args(["curl", "-sS", "--max-time", "10", "--cacert"])
            .arg(&pki.ca)
            .args([
                "-H",
                "content-type: application/x-www-form-urlencoded",
                "--data",
                &body,
            ])
            .arg(format!("{}/token", self.issuer))
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
        assert!(
            out.status.success(),
            "token request failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "token response {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        json["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {json}"))
            .to_string()
    }

    /// Completes a pending device authorization for `account`.
    pub async fn approve_device(&self, pki: &Pki, user_code: &str, account: &str) {
        let resp = pki
            .http()
            .post(format!(
                "{}/test/approve?user_code={user_code}&account={account}",
                self.issuer
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204, "device approval failed");
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.kill();
    }
}
