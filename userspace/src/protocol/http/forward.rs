//! The upstream leg: a connection pool to the target per client connection, the request
//! rewritten for it (hop-by-hop headers removed, the client's credentials stripped, the
//! gateway's injected), plaintext or TLS verified against the target's CA.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::body::ProxyBody;
use crate::config::http::{CredentialKind, HttpCredential, HttpTarget};

/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors preparing the upstream request.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the gateway's credential for this target is unavailable: {0}")]
    Credential(String),
    #[error("invalid request target: {0}")]
    Uri(String),
}

/// Connects every request to the session's upstream address: the request keeps the name the
/// client used (Host, `:authority`, SNI), the connection goes where the client was headed,
/// from a socket marked as the daemon's (else the kernel programs would send it back to the
/// proxy).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamConnector(SocketAddr);

impl tower_service::Service<http::Uri> for UpstreamConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let stream =
                tokio::time::timeout(CONNECT_TIMEOUT, crate::intercept::sockets::connect(addr))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("connecting to {addr} timed out"),
                        )
                    })??;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The connection pool of one client connection to its target.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<UpstreamConnector>, ProxyBody>,
    scheme: &'static str,
    port: u16,
}

impl Upstream {
    /// A pool to `addr`; with `tls`, every connection is TLS verified by that configuration
    /// (HTTP/2 when the target offers it), named `server_name` when set (else the request's
    /// host). Without it, plaintext HTTP/1.1.
    pub fn new(
        addr: SocketAddr,
        tls: Option<(rustls::ClientConfig, Option<String>)>,
    ) -> Result<Self, ForwardError> {
        let http = UpstreamConnector(addr);
        let (connector, scheme) = match tls {
            Some((config, server_name)) => {
                let b = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only();
                let b = match server_name {
                    Some(n) => {
                        let name = rustls::pki_types::ServerName::try_from(n)
                            .map_err(|e| ForwardError::Uri(format!("server name: {e}")))?;
                        b.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
                            name,
                        ))
                    }
                    None => b,
                };
                (b.enable_all_versions().wrap_connector(http), "https")
            }
            None => {
                // Plaintext URIs never use this configuration (it trusts nothing).
                let unused = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| ForwardError::Uri(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
                let c = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(unused)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                (c, "http")
            }
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            // A request that policy allowed once is sent once: never replayed on a fresh
            // connection behind the gateway's back.
            .retry_canceled_requests(false)
            .build(connector);
        Ok(Upstream {
            client,
            scheme,
            port: addr.port(),
        })
    }

    /// Sends a prepared request.
    pub fn send(
        &self,
        req: http::Request<ProxyBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        self.client.request(req)
    }

    /// The upstream URI for a request to `host` (port `port` as the client named it) with
    /// `path_and_query`. The URI's authority becomes the Host header (HTTP/1.1) or
    /// `:authority` (HTTP/2); the connection goes to the session's upstream address whatever
    /// the name, on its port (a client port that differs from it is left out of the name).
    pub fn uri(
        &self,
        host: &str,
        port: Option<u16>,
        path_and_query: &str,
    ) -> Result<http::Uri, ForwardError> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let port = match port {
            Some(p) if p == self.port => format!(":{p}"),
            _ => String::new(),
        };
        format!("{}://{host}{port}{path_and_query}", self.scheme)
            .parse()
            .map_err(|e: http::uri::InvalidUri| ForwardError::Uri(e.to_string()))
    }
}

/// Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection and never cross the
/// gateway, except the upgrade pair of an upgrade request.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// The headers that carry client credentials on this target.
pub fn credential_headers(cfg: &HttpTarget) -> Vec<HeaderName> {
    let mut names = vec![header::AUTHORIZATION, header::PROXY_AUTHORIZATION];
    let extra = cfg
        .credential
        .iter()
        .map(HttpCredential::header_name)
        .chain(cfg.strip_headers.iter().map(|s| s.to_ascii_lowercase()));
    for name in extra {
        if let Ok(h) = HeaderName::from_bytes(name.as_bytes())
            && !names.contains(&h)
        {
            names.push(h);
        }
    }
    names
}

/// Removes the client's credentials; returns the names of those it had sent (never values).
pub fn strip_credentials(headers: &mut HeaderMap, names: &[HeaderName]) -> Vec<String> {
    names
        .iter()
        .filter(|n| headers.remove(*n).is_some())
        .map(|n| n.as_str().to_owned())
        .collect()
}

/// The header the gateway injects for `cred`, read now (a rotated file takes effect on the
/// next connection).
pub fn credential(cred: &HttpCredential) -> Result<(HeaderName, HeaderValue), ForwardError> {
    let secret = match (&cred.env, &cred.file) {
        (Some(var), _) => std::env::var(var).map_err(|_| {
            ForwardError::Credential(format!("environment variable {var} is not set"))
        })?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| ForwardError::Credential(format!("{}: {e}", path.display())))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, None) => return Err(ForwardError::Credential("no source configured".into())),
    };
    let value = match cred.kind {
        CredentialKind::Bearer => format!("Bearer {secret}"),
        CredentialKind::Basic => {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(secret.as_bytes())
            )
        }
        CredentialKind::Header => secret,
    };
    let name = HeaderName::from_bytes(cred.header_name().as_bytes())
        .map_err(|e| ForwardError::Credential(e.to_string()))?;
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| ForwardError::Credential("the secret is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok((name, value))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_credentials() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("authorization", HeaderValue::from_static("Bearer mine"));
        h.insert("x-api-key", HeaderValue::from_static("k"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-private").is_none() && h.get("te").is_none());
        assert!(h.get("connection").is_none());
        let cfg = HttpTarget {
            strip_headers: vec!["X-Api-Key".into()],
            ..HttpTarget::default()
        };
        let stripped = strip_credentials(&mut h, &credential_headers(&cfg));
        assert_eq!(stripped, ["authorization", "x-api-key"]);
        assert_eq!(h.len(), 1);
        let basic = HttpCredential {
            kind: CredentialKind::Basic,
            header: None,
            env: Some("AIRLOCK_TEST_BASIC_CRED".into()),
            file: None,
        };
        // SAFETY: single-threaded test setup; no other thread reads this variable.
        unsafe { std::env::set_var("AIRLOCK_TEST_BASIC_CRED", "gw:pw") };
        let (n, v) = credential(&basic).unwrap();
        assert_eq!(n, "authorization");
        assert_eq!(v, "Basic Z3c6cHc=");
        assert!(v.is_sensitive());
    }
}
