//! Identity against a real OIDC provider (npm `oidc-provider`, started by each test over HTTPS
//! with a CA made for the test): token verification, key rotation, every refusal reason, and
//! the reviewer device-flow login.

#![allow(clippy::unwrap_used)]

#[path = "support/oidc/mod.rs"]
mod oidc_support;

use std::time::Duration;

use airlock::config::policy::{IdentitySpec, OidcSpec};
use airlock::identity::login::{LoginOptions, cached_token_at, login_with};
use airlock::identity::oidc::{OidcVerifier, TokenError, VerifierOptions};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use oidc_support::{Pki, Provider};
use openidconnect::PrivateSigningKey;
use openidconnect::core::{CoreHmacKey, CoreJwsSigningAlgorithm};

const AUDIENCE: &str = "https://airlock.test";

fn spec(name: &str, issuer: &str, audience: &str, pki: &Pki) -> IdentitySpec {
    IdentitySpec {
        name: name.into(),
        oidc: Some(OidcSpec {
            issuer: issuer.into(),
            audience: audience.into(),
            groups_claim: "groups".into(),
            algorithms: vec![],
            ca_file: Some(pki.ca.clone()),
        }),
        workload: None,
        groups: vec!["ci-jobs".into()],
    }
}

fn options() -> VerifierOptions {
    VerifierOptions {
        leeway: Duration::from_secs(5),
        min_refresh_interval: Duration::ZERO,
        http_timeout: Duration::from_secs(5),
        ..VerifierOptions::default()
    }
}

fn verifier(specs: &[IdentitySpec]) -> OidcVerifier {
    OidcVerifier::with_options(specs, options()).unwrap()
}

fn parts(token: &str) -> (serde_json::Value, serde_json::Value, String) {
    let mut it = token.split('.');
    let h = serde_json::from_slice(&B64.decode(it.next().unwrap()).unwrap()).unwrap();
    let p = serde_json::from_slice(&B64.decode(it.next().unwrap()).unwrap()).unwrap();
    (h, p, it.next().unwrap().to_string())
}

fn encode(v: &serde_json::Value) -> String {
    B64.encode(serde_json::to_vec(v).unwrap())
}

#[tokio::test]
async fn valid_token_yields_subject_groups_and_ci_claims() {
    let pki = Pki::new("valid");
    let idp = Provider::start(&pki, "k1", 0);
    let v = verifier(&[spec("ci", &idp.issuer, AUDIENCE, &pki)]);
    assert!(v.warm_up().await.is_empty());
    let token = idp.client_token(&pki, "ci", None).await;

    let claims = v.verify(&token).await.unwrap();
    assert_eq!(claims.subject, "ci");
    assert_eq!(claims.issuer, idp.issuer);
    assert_eq!(claims.identity, "ci");
    // Token groups first, then the groups the identity grants.
    assert_eq!(claims.groups, ["agents", "ci", "ci-jobs"]);
    assert_eq!(claims.claims["repository"], "acme/app");
    assert_eq!(claims.claims["ref"], "refs/heads/main");
    assert_eq!(claims.claims["workflow"], "deploy");
    assert_eq!(claims.claims["run_attempt"], "1");
    assert!(claims.expires_at > std::time::SystemTime::now());
    // The same token, as psql would send it in the password field with a trailing newline.
    assert_eq!(v.verify(&format!("{token}\n")).await.unwrap().subject, "ci");
    let identity = claims.into_identity(None);
    assert_eq!(identity.subject, "ci");
    assert_eq!(identity.groups, ["agents", "ci", "ci-jobs"]);
}

#[tokio::test]
async fn key_rotation_is_picked_up_from_the_jwks() {
    let pki = Pki::new("rotation");
    let idp = Provider::start(&pki, "old", 0);
    let v = verifier(&[spec("ci", &idp.issuer, AUDIENCE, &pki)]);
    let old_token = idp.client_token(&pki, "ci", None).await;
    v.verify(&old_token).await.unwrap();

    // The provider restarts on the same address with a new signing key.
    let port = idp.port;
    idp.stop();
    let idp = Provider::start(&pki, "new", port);
    let new_token = idp.client_token(&pki, "ci", None).await;
    assert_ne!(parts(&new_token).0["kid"], parts(&old_token).0["kid"]);

    let claims = v.verify(&new_token).await.unwrap();
    assert_eq!(claims.subject, "ci");
    // The JWKS was replaced, so a token signed by the retired key no longer verifies.
    let err = v.verify(&old_token).await.unwrap_err();
    assert!(matches!(err, TokenError::UnknownKey { .. }), "{err}");
}

#[tokio::test]
async fn refetch_on_unknown_key_is_rate_limited() {
    let pki = Pki::new("ratelimit");
    let idp = Provider::start(&pki, "a", 0);
    let v = OidcVerifier::with_options(
        &[spec("ci", &idp.issuer, AUDIENCE, &pki)],
        VerifierOptions {
            min_refresh_interval: Duration::from_secs(3600),
            ..options()
        },
    )
    .unwrap();
    v.verify(&idp.client_token(&pki, "ci", None).await)
        .await
        .unwrap();
    let port = idp.port;
    idp.stop();
    let idp = Provider::start(&pki, "b", port);
    // A key the cache does not know, but the last fetch was just now: no refetch, refused.
    let err = v
        .verify(&idp.client_token(&pki, "ci", None).await)
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::UnknownKey { .. }), "{err}");
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused() {
    let pki = Pki::new("expired");
    let idp = Provider::start(&pki, "k1", 0);
    let v = verifier(&[spec("ci", &idp.issuer, AUDIENCE, &pki)]);

    let expired = idp.client_token(&pki, "expired", None).await;
    let err = v.verify(&expired).await.unwrap_err();
    assert!(matches!(err, TokenError::Expired { .. }), "{err}");
    assert_eq!(err.kind(), "expired");

    let future = idp.client_token(&pki, "future", None).await;
    let err = v.verify(&future).await.unwrap_err();
    assert!(matches!(err, TokenError::NotYetValid { .. }), "{err}");
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let pki = Pki::new("aud");
    let idp = Provider::start(&pki, "k1", 0);
    let v = verifier(&[spec("ci", &idp.issuer, AUDIENCE, &pki)]);
    let token = idp
        .client_token(&pki, "ci", Some("https://other.test"))
        .await;
    assert_eq!(parts(&token).1["aud"], "https://other.test");
    let err = v.verify(&token).await.unwrap_err();
    assert!(
        matches!(&err, TokenError::WrongAudience { found, .. } if found == &["https://other.test"]),
        "{err}"
    );
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let pki = Pki::new("iss");
    let trusted = Provider::start(&pki, "trusted", 0);
    let other = Provider::start(&pki, "other", 0);
    let v = verifier(&[spec("ci", &trusted.issuer, AUDIENCE, &pki)]);
    // Make sure the trusted issuer's keys are cached, so the refusals below are not about
    // reachability.
    v.verify(&trusted.client_token(&pki, "ci", None).await)
        .await
        .unwrap();

    let foreign = other.client_token(&pki, "ci", None).await;
    let err = v.verify(&foreign).await.unwrap_err();
    assert!(
        matches!(&err, TokenError::WrongIssuer { issuer } if *issuer == other.issuer),
        "{err}"
    );

    // The other provider's token relabelled with the trusted issuer: its key is not the
    // trusted issuer's.
    let (h, mut p, sig) = parts(&foreign);
    p["iss"] = trusted.issuer.clone().into();
    let relabelled = format!("{}.{}.{sig}", encode(&h), encode(&p));
    let err = v.verify(&relabelled).await.unwrap_err();
    assert!(matches!(err, TokenError::UnknownKey { .. }), "{err}");
}

#[tokio::test]
async fn forged_signatures_are_refused() {
    let pki = Pki::new("forged");
    let idp = Provider::start(&pki, "k1", 0);
    let v = verifier(&[spec("ci", &idp.issuer, AUDIENCE, &pki)]);
    let token = idp.client_token(&pki, "ci", None).await;
    let (h, p, sig) = parts(&token);

    // One signature byte flipped.
    let mut raw = B64.decode(&sig).unwrap();
    raw[10] ^= 0x01;
    let tampered = format!("{}.{}.{}", encode(&h), encode(&p), B64.encode(&raw));
    let err = v.verify(&tampered).await.unwrap_err();
    assert!(matches!(err, TokenError::BadSignature(_)), "{err}");

    // The claims changed (granting `dba`), signature kept.
    let mut p2 = p.clone();
    p2["groups"] = serde_json::json!(["agents", "dba"]);
    let escalated = format!("{}.{}.{sig}", encode(&h), encode(&p2));
    let err = v.verify(&escalated).await.unwrap_err();
    assert!(matches!(err, TokenError::BadSignature(_)), "{err}");

    // No signature at all.
    let unsigned = format!("{}.{}.", encode(&h), encode(&p));
    assert!(v.verify(&unsigned).await.is_err());
}

#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let pki = Pki::new("alg");
    let idp = Provider::start(&pki, "k1", 0);
    let v = verifier(&[spec("ci", &idp.issuer, AUDIENCE, &pki)]);
    let token = idp.client_token(&pki, "ci", None).await;
    let (h, p, _) = parts(&token);

    // HS256 "signed" with the provider's RSA public key (PEM, as published) as the secret.
    let public_pem = std::fs::read(pki.dir.join("k1.pub.pem")).unwrap();
    let mut h_hs = h.clone();
    h_hs["alg"] = "HS256".into();
    let input = format!("{}.{}", encode(&h_hs), encode(&p));
    let mac = CoreHmacKey::new(public_pem)
        .sign(&CoreJwsSigningAlgorithm::HmacSha256, input.as_bytes())
        .unwrap();
    let hs = format!("{input}.{}", B64.encode(mac));
    let err = v.verify(&hs).await.unwrap_err();
    assert!(
        matches!(&err, TokenError::AlgorithmNotAllowed { alg, .. } if alg == "HS256"),
        "{err}"
    );

    // alg none, in any spelling.
    for none in ["none", "None", "NONE"] {
        let mut h_none = h.clone();
        h_none["alg"] = none.into();
        let t = format!("{}.{}.", encode(&h_none), encode(&p));
        let err = v.verify(&t).await.unwrap_err();
        assert!(
            matches!(err, TokenError::AlgorithmNotAllowed { .. }),
            "{none}: {err}"
        );
    }

    // An allowed-by-default algorithm the issuer did not use, with the RSA key: refused by the
    // key type check, never accepted.
    let mut h_es = h.clone();
    h_es["alg"] = "ES256".into();
    let t = format!("{}.{}.{}", encode(&h_es), encode(&p), B64.encode([0u8; 64]));
    assert!(v.verify(&t).await.is_err());
}

#[tokio::test]
async fn unreachable_issuer_fails_closed() {
    let pki = Pki::new("down");
    let idp = Provider::start(&pki, "k1", 0);
    let token = idp.client_token(&pki, "ci", None).await;
    let v = verifier(&[spec("ci", &idp.issuer, AUDIENCE, &pki)]);
    idp.stop();
    let warm = v.warm_up().await;
    assert!(
        matches!(warm.as_slice(), [TokenError::IssuerUnreachable { .. }]),
        "{warm:?}"
    );
    let err = v.verify(&token).await.unwrap_err();
    assert!(matches!(err, TokenError::IssuerUnreachable { .. }), "{err}");
}

#[tokio::test]
async fn reviewer_device_flow_login_caches_a_verifiable_token() {
    let pki = Pki::new("login");
    let idp = std::sync::Arc::new(Provider::start(&pki, "k1", 0));
    let pki = std::sync::Arc::new(pki);
    let token_path = pki.dir.join("home/.config/airlock/token");

    let (idp2, pki2) = (idp.clone(), pki.clone());
    let cached = login_with(
        &idp.issuer,
        "cli",
        &LoginOptions {
            ca_file: Some(pki.ca.clone()),
            token_path: Some(token_path.clone()),
            ..LoginOptions::default()
        },
        move |d| {
            assert!(d.verification_uri.ends_with("/device"));
            let code = d.user_code.clone();
            // The reviewer approves in "their browser" a moment later, while login polls.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                idp2.approve_device(&pki2, &code, "alice").await;
            });
        },
    )
    .await
    .unwrap();
    assert!(cached.id_token.is_some());

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // What the CLI would send as Bearer, checked the way the API checks it.
    let bearer = cached_token_at(&token_path).unwrap();
    let mut reviewers = spec("reviewers", &idp.issuer, "cli", &pki);
    reviewers.groups = vec![];
    let claims = verifier(&[reviewers]).verify(&bearer).await.unwrap();
    assert_eq!(claims.subject, "alice");
    assert_eq!(claims.identity, "reviewers");
    assert!(
        claims.groups.contains(&"dba".to_string()),
        "{:?}",
        claims.groups
    );
}

/// Two real processes, under different users and in different cgroup v2 cgroups, resolve to
/// different workload identities from what the kernel reports (uid, cgroup id = inode).
#[test]
fn workload_identity_of_real_processes_in_real_cgroups() {
    use airlock::identity::workload::{WorkloadResolver, cgroup2_mounts, describe};
    use airlock::model::Workload;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (cgroup v2 and a second uid)"
    );
    // Use the host's cgroup v2 mount, or mount the hierarchy on a private directory.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let scratch = std::env::temp_dir().join(format!("airlock-cg2-{}", std::process::id()));
    let (root, mounted) = match cgroup2_mounts(&mountinfo).into_iter().next() {
        Some(root) => (root, false),
        None => {
            std::fs::create_dir_all(&scratch).unwrap();
            let st = Command::new("mount")
                .args(["-t", "cgroup2", "none"])
                .arg(&scratch)
                .status()
                .unwrap();
            assert!(st.success(), "mount -t cgroup2 failed");
            (scratch.clone(), true)
        }
    };
    let base = format!("airlock-test-{}", std::process::id());
    let ci = root.join(&base).join("ci-runner.service");
    let app = root.join(&base).join("app.service");
    std::fs::create_dir_all(&ci).unwrap();
    std::fs::create_dir_all(&app).unwrap();

    let spawn = |uid: u32, cg: &std::path::Path| {
        let child = Command::new("sleep").arg("30").uid(uid).spawn().unwrap();
        std::fs::write(cg.join("cgroup.procs"), child.id().to_string()).unwrap();
        child
    };
    let mut a = spawn(0, &ci);
    let mut b = spawn(65534, &app);

    let r = WorkloadResolver::new(Some(root.clone()));
    let kernel_view = |child: &std::process::Child, uid: u32, cg: &std::path::Path| Workload {
        pid: child.id(),
        tgid: child.id(),
        uid,
        cgroup_id: std::fs::metadata(cg).unwrap().ino(),
        ..Workload::default()
    };
    let mut wa = kernel_view(&a, 0, &ci);
    let mut wb = kernel_view(&b, 65534, &app);
    r.resolve(&mut wa);
    r.resolve(&mut wb);

    let expected_b = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.split(':').nth(2) == Some("65534"))
        .map(|l| l.split(':').next().unwrap().to_string());
    let result = || {
        assert_eq!(wa.user.as_deref(), Some("root"));
        assert_eq!(wb.user, expected_b);
        assert_eq!(
            wa.cgroup_path.as_deref(),
            Some(format!("/{base}/ci-runner.service").as_str())
        );
        assert_eq!(
            wb.cgroup_path.as_deref(),
            Some(format!("/{base}/app.service").as_str())
        );
        assert_eq!(
            describe(wa.cgroup_path.as_deref().unwrap()).unit.as_deref(),
            Some("ci-runner.service")
        );
        assert_ne!(wa, wb);
        // The process gone, the cgroup id still resolves (by walking the hierarchy).
        let fresh = WorkloadResolver::new(Some(root.clone()));
        assert_eq!(
            fresh.cgroup_path(wb.cgroup_id, None).as_deref(),
            Some(format!("/{base}/app.service").as_str())
        );
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(result));

    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    // An emptied cgroup can be removed once the kernel has reaped its last process.
    for cg in [&ci, &app, &root.join(&base)] {
        for _ in 0..50 {
            if std::fs::remove_dir(cg).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if mounted {
        let _ = Command::new("umount").arg(&scratch).status();
        let _ = std::fs::remove_dir(&scratch);
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}

#[tokio::test]
async fn cached_keys_outlive_an_outage_only_up_to_max_stale() {
    let pki = Pki::new("stale");
    let idp = Provider::start(&pki, "k1", 0);
    let token = idp.client_token(&pki, "ci", None).await;
    let specs = [spec("ci", &idp.issuer, AUDIENCE, &pki)];
    // Keys are always past their TTL, so each verification tries to refetch.
    let tolerant = OidcVerifier::with_options(
        &specs,
        VerifierOptions {
            jwks_ttl: Duration::ZERO,
            max_stale: Duration::from_secs(3600),
            ..options()
        },
    )
    .unwrap();
    let strict = OidcVerifier::with_options(
        &specs,
        VerifierOptions {
            jwks_ttl: Duration::ZERO,
            max_stale: Duration::ZERO,
            ..options()
        },
    )
    .unwrap();
    tolerant.verify(&token).await.unwrap();
    strict.verify(&token).await.unwrap();

    idp.stop();
    // The issuer is down: the tolerant verifier keeps using the keys it has…
    assert_eq!(tolerant.verify(&token).await.unwrap().subject, "ci");
    // …the strict one, with no staleness allowed, fails closed.
    let err = strict.verify(&token).await.unwrap_err();
    assert!(matches!(err, TokenError::IssuerUnreachable { .. }), "{err}");
}
