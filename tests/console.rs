//! The reviewer console end to end, in a real browser: Debian's chromium (headless) driven by
//! Playwright (`playwright-core` from npm, tests/console/browser.mjs), logging in through a real
//! OIDC provider (npm `oidc-provider`, its own login and consent pages), against the console
//! served over TLS by the daemon's web stack, with the PostgreSQL handler in process, a real
//! PostgreSQL 15 as the target, real psql as the client, the SQLite approval store and the
//! audit log on. The REST API of the same instance is checked against its own OpenAPI document
//! by schemathesis (PyPI, pinned, installed by `cargo xtask setup`).

#[path = "support/postgres.rs"]
mod support;

#[path = "support/oidc/mod.rs"]
mod oidc_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use airlock::approval::Approvals;
use airlock::audit::Recorder;
use airlock::config::Config;
use airlock::metrics::Metrics;
use airlock::policy::Engine;
use airlock::protocol::postgres::Hooks;
use airlock::runtime::Context;
use airlock::web::TlsFiles;
use support::{DATABASE, GATEWAY_USER, PgServer, TempDir, dsn, free_port, serve_gateway};

/// Reads pass; writes wait for one approval from `dba`; DDL for one from `viewers` (which
/// makes them readers by default, reviewers who may not decide writes).
const RULES: &str = r#"
rules:
  - name: reads
    targets: [demo-db]
    classes: [read, session, transaction]
    action: allow
  - name: write-review
    targets: [demo-db]
    classes: [write]
    action: review
    review: { approvers: [dba], ttl: 15m, timeout: 120s, dry_run: true }
"#;

/// The rule that makes `viewers` readers; the browser scenario has it reloaded away.
const VIEWERS_RULE: &str = r#"  - name: ddl-review
    targets: [demo-db]
    classes: [ddl]
    action: review
    review: { approvers: [viewers] }
"#;

/// Where schemathesis lives (`cargo xtask setup` makes this virtualenv).
const SCHEMATHESIS: &str = "/opt/airlock-tools/schemathesis/bin/schemathesis";
/// Debian's chromium (`cargo xtask setup` installs it).
const CHROMIUM: &str = "/usr/bin/chromium";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// tests/console with its node_modules (installed by `cargo xtask setup`; installed here from
/// the lockfile when missing).
fn browser_dir() -> PathBuf {
    let dir = repo().join("tests/console");
    if !dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run npm (needed for playwright-core): {e}"));
        assert!(
            out.status.success(),
            "`npm ci` in {} failed (run `cargo xtask setup`):\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// One instance: the PostgreSQL handler, the API and the console, in process.
struct Instance {
    proxy: SocketAddr,
    api: SocketAddr,
    console: String,
    ctx: Arc<Context>,
    state: TempDir,
    config_path: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Instance {
    fn start(
        target: &PgServer,
        pki: &oidc_support::Pki,
        idp: &oidc_support::Provider,
        console_port: u16,
    ) -> Self {
        let state = TempDir::new("airlock-console");
        let api_port = free_port();
        let yaml = format!(
            "daemon:
  state_dir: {state}
  api: 127.0.0.1:{api_port}
  approvals: {{ store: sqlite }}
  console:
    listen: 127.0.0.1:{console_port}
    tls: {{ cert_file: {pki}/tls.pem, key_file: {pki}/tls.key }}
    oidc: {{ issuer: \"{issuer}\", client_id: console, ca_file: {ca} }}
identities:
  - name: reviewers
    oidc: {{ issuer: \"{issuer}\", audience: console, ca_file: {ca} }}
  # The provider's client-credentials tokens (groups `agents`, `ci`): for the default
  # audience in no reader group, for `https://bots.airlock.test` also in `dba`.
  - name: agents
    oidc: {{ issuer: \"{issuer}\", audience: \"https://airlock.test\", ca_file: {ca} }}
  - name: review-bots
    oidc: {{ issuer: \"{issuer}\", audience: \"https://bots.airlock.test\", ca_file: {ca} }}
    groups: [dba]
targets:
  - name: demo-db
    protocol: postgres
    addresses: [\"198.18.0.2/32\"]
    ports: [5432]
    postgres: {{ user: {user}, password: \"{password}\", database: {DATABASE} }}
{RULES}{VIEWERS_RULE}default: deny
",
            state = state.path().display(),
            pki = pki.dir.display(),
            ca = pki.ca.display(),
            issuer = idp.issuer,
            user = GATEWAY_USER.0,
            password = GATEWAY_USER.1,
        );
        let config_path = state.path().join("airlock.yaml");
        std::fs::write(&config_path, &yaml).expect("write config");
        let config = Config::load(&config_path).expect("config");
        let engine = Engine::new(&config).expect("engine");
        let target_cfg = Arc::clone(&config.targets[0]);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let ctx = {
            let _guard = rt.enter();
            let audit =
                Recorder::open(&config.daemon.audit, &config.daemon.state_dir).expect("audit log");
            Arc::new(
                Context::with_parts(
                    config.clone(),
                    engine,
                    audit,
                    Arc::new(Metrics::new()),
                    vec![7; 32],
                )
                .expect("context"),
            )
        };
        let svc = rt
            .block_on(Approvals::open(
                &config.daemon.approvals,
                &config.daemon.state_dir,
                ctx.metrics.clone(),
            ))
            .expect("approvals");
        ctx.approvals.set(svc).expect("set approvals");
        let console_cfg = config.daemon.console.clone().expect("console config");
        let api = SocketAddr::from(([127, 0, 0, 1], api_port));
        let api_listener = rt
            .block_on(tokio::net::TcpListener::bind(api))
            .expect("bind api");
        rt.spawn(airlock::api::serve_listener(api_listener, ctx.clone()));
        let app = rt
            .block_on(airlock::web::console::router(ctx.clone(), &console_cfg))
            .expect("console router");
        let console_listener = rt
            .block_on(tokio::net::TcpListener::bind(console_cfg.listen))
            .expect("bind console");
        rt.spawn(airlock::web::serve_listener(
            console_listener,
            app,
            console_cfg.tls.clone().map(TlsFiles),
        ));
        let proxy = serve_gateway(
            &rt,
            target_cfg,
            target.addr(),
            ctx.clone(),
            Hooks::default(),
        );
        Instance {
            proxy,
            api,
            console: console_cfg.base_url(),
            ctx,
            state,
            config_path,
            rt,
        }
    }

    /// Rewrites the configuration file with `edit` and swaps it in, as the daemon's reload does.
    fn reload(&self, edit: impl FnOnce(String) -> String) {
        let yaml = edit(std::fs::read_to_string(&self.config_path).expect("read config"));
        std::fs::write(&self.config_path, yaml).expect("write config");
        let config = Config::load(&self.config_path).expect("reloaded config");
        let engine = Engine::new(&config).expect("engine");
        let _guard = self.rt.enter();
        self.ctx.replace(config, engine).expect("reload");
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.state.path().join("api.token"))
            .expect("api token")
            .trim()
            .to_owned()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Records still queued reach the log before the runtime goes.
        let _ = self.rt.block_on(self.ctx.audit.close());
    }
}

fn prepare_target(pg: &PgServer) {
    pg.admin_db(
        DATABASE,
        &format!(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); \
             INSERT INTO accounts VALUES (1, 100); ALTER TABLE accounts OWNER TO {};",
            GATEWAY_USER.0
        ),
    );
}

fn balance(pg: &PgServer) -> i64 {
    pg.admin_db(DATABASE, "SELECT balance FROM accounts WHERE id = 1")
        .trim()
        .parse()
        .expect("balance")
}

/// One server set for the file (CI time): PostgreSQL, the OIDC provider and one instance serve
/// the browser scenario first and then schemathesis, which may decide and submit anything.
#[test]
fn reviewer_console_and_api_on_one_instance() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run `cargo xtask setup` (Debian's chromium package)"
    );
    assert!(
        Path::new(SCHEMATHESIS).exists(),
        "{SCHEMATHESIS} is missing: run `cargo xtask setup` (schemathesis from PyPI)"
    );
    let pg = PgServer::start(None);
    prepare_target(&pg);
    let pki = oidc_support::Pki::new("console");
    let console_port = free_port();
    let idp = oidc_support::Provider::start_for_console(
        &pki,
        "k1",
        &format!("https://127.0.0.1:{console_port}/auth/callback"),
    );
    let inst = Instance::start(&pg, &pki, &idp, console_port);
    reviewer_console_in_a_real_browser(&pg, &inst);
    api_tokens_outside_the_readers_are_refused(&inst, &pki, &idp);
    openapi_document_matches_the_api(&inst);
    idp.stop();
}

/// Log in through the provider, watch held commands arrive live, approve one (the psql session
/// completes), deny another (the client gets the reason), self-approval, a reviewer outside the
/// approver groups and forged POSTs refused, a login outside the readers refused at the
/// callback, a reload dropping a reader group refusing its logged-in reviewer everywhere (the
/// test performs the reload when the scenario asks), markup in commands and reasons shown as
/// text, the replay page plays the recorded session; plus the audit and policy pages and logout.
fn reviewer_console_in_a_real_browser(pg: &PgServer, inst: &Instance) {
    use std::io::{BufRead, Read, Write};
    let shots = std::env::var("AIRLOCK_CONSOLE_SCREENSHOTS").unwrap_or_default();
    let dir = browser_dir();
    let mut child = Command::new("node")
        .arg(dir.join("browser.mjs"))
        .current_dir(&dir)
        .env("CONSOLE_URL", &inst.console)
        .env("PSQL_DSN", dsn(inst.proxy, ""))
        .env("CHROMIUM", CHROMIUM)
        .env("SCREENSHOT_DIR", &shots)
        .env("ADMIN_TOKEN", inst.token())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node (Node.js 18+ runs the browser tests): {e}"));
    let mut control = child.stdin.take().expect("node stdin");
    let mut child_err = child.stderr.take().expect("node stderr");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = child_err.read_to_string(&mut text);
        text
    });
    // The scenario's steps as they happen; `RELOAD …` lines are reloads it asks for.
    let mut stdout = String::new();
    for line in std::io::BufReader::new(child.stdout.take().expect("node stdout")).lines() {
        let line = line.expect("node output");
        eprintln!("{line}");
        if let Some(what) = line.strip_prefix("RELOAD ") {
            match what {
                "without-viewers" => inst.reload(|yaml| {
                    assert!(yaml.contains(VIEWERS_RULE), "{yaml}");
                    yaml.replace(VIEWERS_RULE, "")
                }),
                other => panic!("the scenario asked for an unknown reload {other:?}"),
            }
            writeln!(control, "reloaded").expect("answer the scenario");
        }
        stdout.push_str(&line);
        stdout.push('\n');
    }
    drop(control);
    let status = child.wait().expect("node exit");
    let stderr = errors.join().expect("node stderr");
    eprintln!("{stderr}");
    assert!(
        status.success(),
        "browser scenario failed ({status}):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("browser scenario passed"), "{stdout}");
    // What the browser did reached the database: the approved UPDATE ran, the denied ones
    // did not.
    assert_eq!(balance(pg), 42);
    let list = inst
        .rt
        .block_on(inst.ctx.approvals.get().expect("svc").list(false))
        .expect("requests");
    let by = |text: &str| {
        list.iter()
            .find(|r| r.commands[0].text.contains(text))
            .unwrap_or_else(|| panic!("no request for {text}"))
    };
    let approved = by("balance = 42");
    assert_eq!(approved.votes[0].by, "alice");
    assert_eq!(
        approved.votes[0].reason.as_deref(),
        Some("checked the ticket")
    );
    assert!(
        approved.votes[0].via.starts_with("console:"),
        "{:?}",
        approved.votes[0]
    );
    let denied = by("balance = 13");
    assert_eq!(denied.state, airlock::approval::State::Denied);
    // Neither the requester nor the reviewer outside `dba` got a vote in; alice's denial ended it.
    let own = by("balance = 7");
    let voters: Vec<&str> = own.votes.iter().map(|v| v.by.as_str()).collect();
    assert_eq!(voters, ["alice"], "{:?}", own.votes);
    assert_eq!(own.state, airlock::approval::State::Denied);
}

/// OIDC bearer tokens on the REST API (its own listener and the console's): one whose groups
/// are among no reader group gets 403 on every `/v1` call, reads and writes, and changes
/// nothing; one in a reader group (`dba`, granted by its identity entry) reads; the admin
/// token keeps full access.
fn api_tokens_outside_the_readers_are_refused(
    inst: &Instance,
    pki: &oidc_support::Pki,
    idp: &oidc_support::Provider,
) {
    let svc = inst.ctx.approvals.get().expect("svc").clone();
    let list = inst.rt.block_on(svc.list(false)).expect("requests");
    let id = list.first().expect("the scenario left requests").id.clone();
    let before = inst.rt.block_on(svc.get(&id)).expect("request");
    let outsider = inst.rt.block_on(idp.client_token(pki, "ci", None));
    let bot = inst
        .rt
        .block_on(idp.client_token(pki, "ci", Some("https://bots.airlock.test")));
    let http = pki.http();
    let call = |base: &str, method: &str, path: &str, token: &str, body: &str| {
        inst.rt.block_on(async {
            let url = format!("{base}{path}");
            let req = match method {
                "GET" => http.get(url),
                _ => http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_owned()),
            };
            let resp = req.bearer_auth(token).send().await.expect("API call");
            let status = resp.status().as_u16();
            (status, resp.text().await.expect("API answer"))
        })
    };
    let api = format!("http://{}", inst.api);
    let plan =
        r#"{"target": "demo-db", "commands": ["UPDATE accounts SET balance = 1 WHERE id = 1"]}"#;
    for base in [api.as_str(), inst.console.as_str()] {
        for (method, path, body) in [
            ("GET", "/v1/requests".to_owned(), ""),
            ("GET", "/v1/requests?pending=true".to_owned(), ""),
            ("GET", format!("/v1/requests/{id}"), ""),
            ("POST", format!("/v1/requests/{id}/approve"), "{}"),
            ("POST", format!("/v1/requests/{id}/deny"), "{}"),
            ("POST", format!("/v1/requests/{id}/revoke"), "{}"),
            ("POST", "/v1/plans".to_owned(), plan),
            (
                "POST",
                "/v1/targets/demo-db/rotate-credentials".to_owned(),
                "",
            ),
        ] {
            let (status, text) = call(base, method, &path, &outsider, body);
            assert_eq!(status, 403, "{method} {base}{path}: {text}");
            assert!(
                text.contains(
                    "not a reviewer of this gateway: the token's groups (agents, ci) are not among the readers"
                ),
                "{method} {path}: {text}"
            );
        }
        let (status, text) = call(base, "GET", "/v1/requests", &bot, "");
        assert_eq!(status, 200, "a reader's token on {base}: {text}");
        let seen: Vec<airlock::approval::ApprovalRequest> =
            serde_json::from_str(&text).expect("requests json");
        assert!(seen.iter().any(|r| r.id == id), "{text}");
        let (status, _) = call(
            base,
            "GET",
            &format!("/v1/requests/{id}"),
            &inst.token(),
            "",
        );
        assert_eq!(status, 200, "the admin token on {base}");
    }
    // Nothing the refused token tried happened.
    let after = inst.rt.block_on(svc.get(&id)).expect("request");
    assert_eq!(
        (after.state, after.votes.len()),
        (before.state, before.votes.len())
    );
    assert_eq!(
        inst.rt.block_on(svc.list(false)).expect("requests").len(),
        list.len(),
        "the refused token submitted a plan"
    );
}

/// The REST API against its own OpenAPI document: every operation, generated inputs, the
/// admin token; schemathesis checks status codes, content types, response schemas, that
/// undocumented methods are refused and that calls without the token are.
fn openapi_document_matches_the_api(inst: &Instance) {
    let report = inst.state.path().join("schemathesis.xml");
    let out = Command::new(SCHEMATHESIS)
        .arg("--no-color")
        .arg("--config-file")
        .arg(repo().join("tests/console/schemathesis.toml"))
        .arg("run")
        .arg(format!("http://{}/openapi.json", inst.api))
        .args([
            "--header",
            &format!("Authorization: Bearer {}", inst.token()),
        ])
        .args([
            "--checks",
            "all",
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--no-color",
        ])
        .arg("--report=junit")
        .arg(format!("--report-junit-path={}", report.display()))
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "schemathesis found the API and its OpenAPI document disagree:\n{stdout}"
    );
    // It did run every operation (a document it could not read would test nothing): each is a
    // test case of the JUnit report.
    let junit = std::fs::read_to_string(&report).expect("schemathesis JUnit report");
    for op in [
        "GET /v1/requests",
        "GET /v1/requests/{id}",
        "POST /v1/requests/{id}/approve",
        "POST /v1/requests/{id}/deny",
        "POST /v1/requests/{id}/revoke",
        "POST /v1/plans",
        "GET /healthz",
    ] {
        assert!(
            junit.contains(&format!("name=\"{op}\"")),
            "{op} not exercised:\n{junit}"
        );
    }
    assert!(!junit.contains("<failure"), "{junit}");
}

/// An instance with the console but no identity provider: the benchmarks open sessions in
/// process (`Auth::open_session`, what the login callback does after verifying a token).
#[cfg(feature = "bench-harness")]
struct BenchConsole {
    inst: Instance,
    console: Arc<airlock::web::console::Console>,
}

#[cfg(feature = "bench-harness")]
impl BenchConsole {
    fn start(pg: &PgServer) -> Self {
        // Discovery happens at the first login, which the benchmarks never make.
        let pki = oidc_support::Pki::new("console-bench");
        let idp = oidc_support::Provider::start_for_console(
            &pki,
            "k1",
            "https://127.0.0.1:1/auth/callback",
        );
        let inst = Instance::start(pg, &pki, &idp, free_port());
        let cfg = inst
            .ctx
            .config
            .load()
            .daemon
            .console
            .clone()
            .expect("console");
        let console = {
            let _guard = inst.rt.enter();
            Arc::new(airlock::web::console::state(inst.ctx.clone(), &cfg).expect("console state"))
        };
        drop(idp);
        std::mem::forget(pki);
        BenchConsole { inst, console }
    }

    fn cookie(&self, subject: &str) -> String {
        let id = self
            .console
            .auth
            .open_session(
                airlock::approval::Principal {
                    subject: subject.into(),
                    groups: vec!["dba".into()],
                    admin: false,
                    via: "bench".into(),
                },
                u64::MAX,
            )
            .expect("session");
        format!("__Host-airlock-session={id}")
    }
}

#[cfg(feature = "bench-harness")]
fn pending_request(i: usize) -> airlock::approval::ApprovalRequest {
    use airlock::approval::{ApprovalRequest, CommandEntry, Kind, State, now_ms};
    let now = now_ms();
    ApprovalRequest {
        id: format!("bench{i:06}"),
        kind: Kind::Command,
        state: State::Pending,
        commands: vec![CommandEntry::new(
            &format!("UPDATE accounts SET balance = balance + {i} WHERE id = {i} AND note <> 'x'"),
            1,
        )],
        protocol: Some(airlock::model::Protocol::Postgres),
        classes: vec!["write".into()],
        kinds: vec!["update".into()],
        tables: vec!["accounts".into()],
        tables_read: Vec::new(),
        functions: Vec::new(),
        objects: Vec::new(),
        notes: Vec::new(),
        dry_run: None,
        subject: format!("unix:agent{}", i % 17),
        groups: vec!["agents".into()],
        workload: None,
        target: "demo-db".into(),
        session: Some(i as u64),
        instance: "bench".into(),
        rule: "write-review".into(),
        requested_by: None,
        task: None,
        approvers: vec!["dba".into()],
        escalate_to: Vec::new(),
        escalated: false,
        quorum: 1,
        ttl_ms: 900_000,
        timeout_ms: 3_600_000,
        on_timeout: airlock::model::OnTimeout::Deny,
        mode: airlock::model::ReviewMode::Hold,
        mask: Vec::new(),
        created_ms: now - 1000u64.saturating_sub(i as u64) * 1000,
        deadline_ms: now + 3_600_000,
        decided_ms: None,
        expires_ms: None,
        votes: Vec::new(),
        reason: None,
        age_ms: None,
        deadline_in_ms: None,
    }
}

/// `bench/console.sh`: server time to render the inbox with 1,000 pending requests (the
/// router called in process: reading the store, building and rendering the page), p50 and
/// p99 over `AIRLOCK_BENCH_N` renders. The budget is 300 ms.
#[test]
#[cfg(feature = "bench-harness")]
fn bench_inbox_render() {
    use tower::ServiceExt;
    let n: usize = std::env::var("AIRLOCK_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let pg = PgServer::start(None);
    prepare_target(&pg);
    let b = BenchConsole::start(&pg);
    let svc = b.inst.ctx.approvals.get().expect("svc").clone();
    b.inst.rt.block_on(async {
        for i in 0..1000 {
            svc.store()
                .insert(&pending_request(i))
                .await
                .expect("insert");
        }
    });
    let cookie = b.cookie("reviewer");
    let app = airlock::web::console::routes(b.console.clone());
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let req = axum::http::Request::get("/")
            .header("cookie", &cookie)
            .body(axum::body::Body::empty())
            .expect("request");
        let t = std::time::Instant::now();
        let body = b.inst.rt.block_on(async {
            let resp = app.clone().oneshot(req).await.expect("response");
            assert_eq!(resp.status(), 200);
            axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .expect("body")
        });
        times.push(t.elapsed());
        bytes = body.len();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(text.matches("<tr id=\"req-").count(), 1000);
    }
    times.sort();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!(
        "inbox render, 1000 pending: n={n} p50={:?} p90={:?} p99={:?} max={:?}, {bytes} bytes, load {}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        times[n - 1],
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

/// The name of the reviewers' client threads in the SSE benchmark.
#[cfg(feature = "bench-harness")]
const REVIEWER_THREADS: &str = "reviewers";

/// Clock ticks per second of /proc's CPU times.
#[cfg(feature = "bench-harness")]
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .expect("getconf");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("CLK_TCK")
    })
}

/// User and system CPU of a /proc `stat` line, in microseconds.
#[cfg(feature = "bench-harness")]
fn stat_cpu_us(stat: &str) -> u64 {
    // After the command name (which may hold spaces): utime and stime, fields 14 and 15.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    (f[11] + f[12]) * 1_000_000 / clock_ticks()
}

/// This process's CPU so far, microseconds.
#[cfg(feature = "bench-harness")]
fn process_cpu_us() -> u64 {
    stat_cpu_us(&std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat"))
}

/// CPU so far of this process's threads named `name`, microseconds.
#[cfg(feature = "bench-harness")]
fn threads_cpu_us(name: &str) -> u64 {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(Result::ok)
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .map(|s| stat_cpu_us(&s))
        .sum()
}

/// `bench/console.sh`: pgbench -S (8 clients, simple protocol) through the gateway, in
/// interleaved rounds without and with 100 reviewers connected to the live inbox while an
/// approval request is created and decided every 50 ms (each change is rendered once and
/// sent to every reviewer), the arm that goes first alternating. Prints per round the TPS and
/// the gateway's CPU per transaction (this process less the reviewers' client threads), and
/// the median with/without ratios.
#[test]
#[cfg(feature = "bench-harness")]
fn bench_sse_reviewers_pgbench() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let reviewers: usize = std::env::var("REVIEWERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let pg = PgServer::start(None);
    prepare_target(&pg);
    let b = BenchConsole::start(&pg);
    let app = airlock::web::console::routes(b.console.clone());
    let listener = b
        .inst
        .rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    b.inst
        .rt
        .spawn(airlock::web::serve_listener(listener, app, None));
    // pgbench's tables, through the admin connection.
    let init = Command::new("pgbench")
        .args([
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            DATABASE,
        ])
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    pg.admin_db(
        DATABASE,
        &format!(
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}",
            GATEWAY_USER.0
        ),
    );
    // Approval traffic in both arms: a request created and denied every 50 ms.
    let svc = b.inst.ctx.approvals.get().expect("svc").clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (svc, stop) = (svc.clone(), stop.clone());
        b.inst.rt.spawn(async move {
            let admin = airlock::approval::Principal::admin();
            let mut i = 10_000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let req = pending_request(i);
                if svc.store().insert(&req).await.is_ok() {
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                    let _ = svc
                        .decide(&req.id, &admin, airlock::approval::Ruling::Deny, None)
                        .await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
        });
    }
    let cookies: Vec<String> = (0..reviewers)
        .map(|i| b.cookie(&format!("reviewer{i}")))
        .collect();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let pgbench = |tag: &str| -> f64 {
        let out = Command::new("pgbench")
            .args([
                "-S",
                "-n",
                "-M",
                "simple",
                "-c",
                "8",
                "-j",
                "2",
                "-T",
                &secs.to_string(),
            ])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &b.inst.proxy.port().to_string(),
                "-U",
                "someone",
                DATABASE,
            ])
            .output()
            .expect("pgbench");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{tag}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("tps line")
    };
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (mut without, mut with) = (Vec::new(), Vec::new());
    // The gateway's CPU per transaction in each arm: this process's CPU (the gateway, its
    // console and the approval churn; pgbench and PostgreSQL are other processes) less the
    // reviewers' clients' threads, which only share the machine.
    let (mut cpu_without, mut cpu_with) = (Vec::new(), Vec::new());
    let mut reviewers_cpu = Vec::new();
    // The reviewers' browsers, played by HTTP clients on a runtime of their own (reviewers
    // are not on the gateway's host; here they share its two cores, but not its workers).
    let browsers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(REVIEWER_THREADS)
        .enable_all()
        .build()
        .expect("reviewers' runtime");
    let connect = |tasks: &mut Vec<tokio::task::JoinHandle<()>>| {
        for cookie in &cookies {
            let (cookie, received) = (cookie.clone(), received.clone());
            tasks.push(browsers.spawn(async move {
                let client = openidconnect::reqwest::Client::new();
                let Ok(mut resp) = client
                    .get(format!("http://{addr}/events"))
                    .header("cookie", cookie)
                    .send()
                    .await
                else {
                    eprintln!("reviewer stream: request failed");
                    return;
                };
                if resp.status() != 200 {
                    eprintln!("reviewer stream: HTTP {}", resp.status());
                }
                while let Ok(Some(chunk)) = resp.chunk().await {
                    received.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    println!("load start: {}", load());
    for r in 0..rounds {
        // The arm that goes first alternates, so a drift within a round hits both alike.
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut line = String::new();
        for reviewing in order {
            let mut tasks = Vec::new();
            if reviewing {
                connect(&mut tasks);
            }
            let listeners = b.console.hub.listeners();
            let before = received.load(std::sync::atomic::Ordering::Relaxed);
            let (own0, theirs0) = (process_cpu_us(), threads_cpu_us(REVIEWER_THREADS));
            let tps = pgbench(if reviewing { "with" } else { "without" });
            let theirs = threads_cpu_us(REVIEWER_THREADS) - theirs0;
            let gateway = (process_cpu_us() - own0).saturating_sub(theirs);
            let per_tx = gateway as f64 / (tps * secs as f64);
            let share = theirs as f64 / secs as f64 / 1e4;
            let streamed = received.load(std::sync::atomic::Ordering::Relaxed) - before;
            tasks.iter().for_each(|t| t.abort());
            if reviewing {
                assert!(
                    listeners >= reviewers,
                    "only {listeners} reviewers connected"
                );
                // REVIEWERS=0 runs the two arms alike: the harness's own noise.
                assert!(
                    streamed > 0 || reviewers == 0,
                    "the reviewers received nothing"
                );
                with.push(tps);
                cpu_with.push(per_tx);
                reviewers_cpu.push(share);
                line += &format!(
                    "with {listeners} reviewers {tps:.0} TPS, gateway {per_tx:.1} µs CPU per transaction, their clients {share:.1}% of a core, {streamed} bytes streamed to them; "
                );
            } else {
                without.push(tps);
                cpu_without.push(per_tx);
                line +=
                    &format!("without {tps:.0} TPS, gateway {per_tx:.1} µs CPU per transaction; ");
            }
        }
        println!(
            "round {}: {line}TPS with/without {:.3}, gateway CPU per transaction with/without {:.3}; load {}",
            r + 1,
            with[r] / without[r],
            cpu_with[r] / cpu_without[r],
            load()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratios: Vec<f64> = with.iter().zip(&without).map(|(w, o)| w / o).collect();
    let cpu_ratios: Vec<f64> = cpu_with
        .iter()
        .zip(&cpu_without)
        .map(|(w, o)| w / o)
        .collect();
    let rounded = |v: &[f64]| {
        v.iter()
            .map(|r| (r * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    };
    println!(
        "pgbench -S -c 8 simple, {reviewers} reviewers on the live inbox: median with/without TPS {:.3} (per round {:?}); medians {:.0} / {:.0} TPS; gateway CPU per transaction with/without median {:.3} (per round {:?}; {:.1} / {:.1} µs); the reviewers' clients used a median {:.1}% of a core; load end {}",
        med(&ratios),
        rounded(&ratios),
        med(&with),
        med(&without),
        med(&cpu_ratios),
        rounded(&cpu_ratios),
        med(&cpu_with),
        med(&cpu_without),
        med(&reviewers_cpu),
        load()
    );
}
