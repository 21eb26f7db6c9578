//! Job identity end to end: OIDC tokens minted by the test, bound to guarded cgroups with `chokepoint job begin`, decide what psql in each cgroup may reach (run as root).
//!
//! The gateway guards one test cgroup; the two jobs run in two cgroups
//! inside it, so both are guarded and each has its own cgroup id. Keys and
//! the JWKS file are made by the test; the target is 127.0.0.91.
use std::{
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use base64::Engine;
use chokepoint_tests::{
    Gateway, GatewayConfig, PgServer, TestCgroup, chokepoint_bin, chokepoint_bin_for_anyone,
    job_psql, run_with_timeout, wait_for,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const ISS: &str = "https://token.ci.test";
const ADDRESS: &str = "127.0.0.91";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The CI provider of the test: its signing keys and JWKS.
struct Provider {
    es256: EncodingKey,
    eddsa: EncodingKey,
    /// Not in the JWKS.
    stranger: EncodingKey,
    es256_public: Vec<u8>,
    jwks: Value,
}

impl Provider {
    fn new() -> Result<Self> {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let p = ec.public_key_raw().to_vec();
        let jwks = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "x": b64(&p[1..33]), "y": b64(&p[33..])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": b64(ed.public_key_raw())},
        ]});
        Ok(Self {
            es256: EncodingKey::from_ec_der(&ec.serialize_der()),
            eddsa: EncodingKey::from_ed_der(&ed.serialize_der()),
            stranger: EncodingKey::from_ec_der(&other.serialize_der()),
            es256_public: p,
            jwks,
        })
    }

    fn sign(&self, alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, key).expect("sign")
    }

    /// A GitHub-like token for `repository`, unique by `jti`.
    fn token(&self, repository: &str, jti: &str) -> String {
        self.sign(
            Algorithm::ES256,
            "ec-1",
            &self.es256,
            &claims(repository, jti),
        )
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(repository: &str, jti: &str) -> Value {
    json!({
        "iss": ISS, "aud": "chokepoint", "jti": jti,
        "sub": format!("repo:{repository}:ref:refs/heads/main"),
        "repository": repository, "ref": "refs/heads/main", "environment": "production",
        "iat": now() - 5, "nbf": now() - 5, "exp": now() + 600,
    })
}

struct Setup {
    gw: Gateway,
    // Children drop (emptied, removed) before their parent.
    job_a: TestCgroup,
    job_b: TestCgroup,
    _guarded: TestCgroup,
    _pg: PgServer,
    provider: Provider,
    dir: tempfile::TempDir,
    jwks: PathBuf,
}

impl Setup {
    fn start(hint: &str) -> Result<Self> {
        let pg = PgServer::start()?;
        let guarded = TestCgroup::new(hint)?;
        let job_a = guarded.child("job-a")?;
        let job_b = guarded.child("job-b")?;
        let provider = Provider::new()?;
        let dir = tempfile::tempdir()?;
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, provider.jwks.to_string())?;
        let rules = format!(
            r#"
[identity]
leeway = "5s"
state_file = "jobs.json"

[[identity.issuer]]
name = "ci"
issuer = "{ISS}"
audience = ["chokepoint"]
jwks_file = {jwks:?}
required_claims = ["repository", "ref"]

[[rule]]
name = "acme-main"
action = "allow"
targets = ["orders-db"]
[rule.claims]
repository = "acme/*"
ref = "refs/heads/main"
[rule.postgres]
roles = ["app_rw"]
"#,
            jwks = jwks.display().to_string()
        );
        let config = GatewayConfig::new(hint, &guarded)?
            .daemon_setting("admin_group = \"nogroup\"")
            .raw_toml(&pg.target_toml("orders-db", ADDRESS))
            .raw_toml(&rules);
        let gw =
            Gateway::start(&config).with_context(|| format!("config:\n{}", config.to_toml()))?;
        Ok(Self {
            gw,
            job_a,
            job_b,
            _guarded: guarded,
            _pg: pg,
            provider,
            dir,
            jwks,
        })
    }

    fn token_file(&self, name: &str, token: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, token)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Ok(path)
    }

    /// `chokepoint job <args>` as root, from outside every test cgroup.
    fn job(&self, args: &[&str]) -> Result<Output> {
        let socket = self.gw.admin_socket();
        let mut cmd = Command::new(chokepoint_bin()?);
        cmd.arg("job").arg("--socket").arg(&socket).args(args);
        run_with_timeout(&mut cmd, CLIENT_TIMEOUT)
    }

    /// `chokepoint job begin --token-file` with `token`, `--cgroup job-a`.
    fn begin_a(&self, name: &str, token: &str) -> Result<Output> {
        self.begin(&self.job_a, name, token)
    }

    /// `chokepoint job begin --token-file` with `token`, `--cgroup <cgroup>`.
    fn begin(&self, cgroup: &TestCgroup, name: &str, token: &str) -> Result<Output> {
        let file = self.token_file(name, token)?;
        let cgroup = cgroup.path().display().to_string();
        self.job(&[
            "begin",
            "--token-file",
            &file.display().to_string(),
            "--cgroup",
            &cgroup,
        ])
    }

    fn psql(&self, cgroup: &TestCgroup) -> Result<Output> {
        let conninfo = format!("host={ADDRESS} port=5432 dbname=orders user=app_rw");
        run_with_timeout(
            &mut job_psql(cgroup, &conninfo, &["SELECT 'reached'"]),
            CLIENT_TIMEOUT,
        )
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn reached(out: &Output) -> bool {
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("reached")
}

#[test]
fn bound_jobs_reach_what_their_repository_may_and_keep_apart() -> Result<()> {
    let s = Setup::start("id-bind")?;
    // Unidentified: the rule speaks of repositories only.
    let out = s.psql(&s.job_a)?;
    assert!(!reached(&out), "{}", text(&out));

    let bound = s.begin_a("a.jwt", &s.provider.token("acme/app", "job-a-1"))?;
    assert!(bound.status.success(), "{}", text(&bound));
    assert!(
        text(&bound).contains("bound ci:repo:acme/app:ref:refs/heads/main to cgroup /"),
        "{}",
        text(&bound)
    );
    let out = s.psql(&s.job_a)?;
    assert!(reached(&out), "{}", text(&out));
    // The identical connection from the other cgroup has no job.
    let out = s.psql(&s.job_b)?;
    assert!(!reached(&out), "{}", text(&out));

    // A second job binds its own cgroup (the default: where `job begin`
    // runs) with an EdDSA token of another repository.
    let other = s.provider.sign(
        Algorithm::EdDSA,
        "ed-1",
        &s.provider.eddsa,
        &claims("evil/tool", "job-b-1"),
    );
    let file = s.token_file("b.jwt", &other)?;
    let mut cmd = s.job_b.command(chokepoint_bin()?);
    cmd.arg("job")
        .arg("--socket")
        .arg(s.gw.admin_socket())
        .args(["begin", "--token-file"])
        .arg(&file);
    let out = run_with_timeout(&mut cmd, CLIENT_TIMEOUT)?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("job-b"), "{}", text(&out));
    let listed = s.job(&["list"])?;
    let list = text(&listed);
    assert!(
        list.contains("ci:repo:acme/app") && list.contains("ci:repo:evil/tool"),
        "{list}"
    );

    // Both at once: each cgroup keeps its own identity.
    let (a, b) = (s.psql(&s.job_a)?, s.psql(&s.job_b)?);
    assert!(reached(&a), "{}", text(&a));
    assert!(!reached(&b), "{}", text(&b));
    // A flow's event is logged after its connection closed, which can be
    // just after psql has exited: wait for the three, then check them.
    let flows_now = || -> Vec<Value> {
        s.gw.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["decision"].is_string())
            .collect()
    };
    let seen = |flows: &[Value], identity: &str, decision: &str| {
        flows
            .iter()
            .any(|f| f["fields"]["identity"] == identity && f["fields"]["decision"] == decision)
    };
    let flows = wait_for("the flow events of both jobs", CLIENT_TIMEOUT, || {
        let flows = flows_now();
        seen(&flows, "ci:repo:evil/tool:ref:refs/heads/main", "deny").then_some(flows)
    })
    .unwrap_or_else(|_| flows_now());
    let decided = |identity: &str, decision: &str| seen(&flows, identity, decision);
    assert!(decided("unidentified", "deny"), "{flows:#?}");
    assert!(
        decided("ci:repo:acme/app:ref:refs/heads/main", "allow"),
        "{flows:#?}"
    );
    assert!(
        decided("ci:repo:evil/tool:ref:refs/heads/main", "deny"),
        "{flows:#?}"
    );

    // `job end`: the next connection from job-a is unidentified again.
    let cgroup = s.job_a.path().display().to_string();
    let ended = s.job(&["end", "--cgroup", &cgroup])?;
    assert!(ended.status.success(), "{}", text(&ended));
    let out = s.psql(&s.job_a)?;
    assert!(!reached(&out), "{}", text(&out));

    let jobs: Vec<Value> =
        s.gw.recorded("session_start")
            .into_iter()
            .map(|e| e["identity"]["job"].clone())
            .collect();
    assert!(
        jobs.iter()
            .any(|j| j["claims"]["repository"] == "acme/app" && j["issuer"] == "ci"),
        "{jobs:?}"
    );
    assert!(
        jobs.iter().any(|j| j.is_null()),
        "unidentified sessions carry no job"
    );
    Ok(())
}

/// A crash and restart neither unbinds a running job nor makes its spent
/// token new: the bindings outlive the process, in `[identity] state_file`.
#[test]
fn a_restart_keeps_jobs_bound_and_tokens_spent() -> Result<()> {
    let mut s = Setup::start("id-restart")?;
    let token = s.provider.token("acme/app", "job-r-1");
    let bound = s.begin_a("a.jwt", &token)?;
    assert!(bound.status.success(), "{}", text(&bound));

    s.gw.kill9()?;
    s.gw.restart()?;
    let out = s.psql(&s.job_a)?;
    assert!(reached(&out), "the crash unbound the job: {}", text(&out));
    let listed = text(&s.job(&["list"])?);
    assert!(listed.contains("ci:repo:acme/app"), "{listed}");
    let replayed = s.begin(&s.job_b, "again.jwt", &token)?;
    assert!(
        !replayed.status.success() && text(&replayed).contains("this token was already bound"),
        "{}",
        text(&replayed)
    );

    // Ended, then restarted: it stays ended.
    let cgroup = s.job_a.path().display().to_string();
    let ended = s.job(&["end", "--cgroup", &cgroup])?;
    assert!(ended.status.success(), "{}", text(&ended));
    s.gw.restart()?;
    let out = s.psql(&s.job_a)?;
    assert!(!reached(&out), "{}", text(&out));
    Ok(())
}

#[test]
fn a_rotated_jwks_applies_at_the_next_reload() -> Result<()> {
    let mut s = Setup::start("id-rotate")?;
    // The provider rotates to a new key; its tokens are unknown until the
    // gateway re-reads the JWKS file on SIGHUP.
    let new = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let p = new.public_key_raw().to_vec();
    let key = EncodingKey::from_ec_der(&new.serialize_der());
    let token = s.provider.sign(
        Algorithm::ES256,
        "ec-2",
        &key,
        &claims("acme/app", "rotated"),
    );
    let out = s.begin_a("rotated.jwt", &token)?;
    assert!(
        text(&out).contains("token refused: unknown kid \"ec-2\" for issuer ci"),
        "{}",
        text(&out)
    );
    let jwks = json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "ec-2", "alg": "ES256", "x": b64(&p[1..33]), "y": b64(&p[33..])},
    ]});
    std::fs::write(&s.jwks, jwks.to_string())?;
    let reloaded = s.gw.reload()?;
    assert_eq!(
        reloaded["fields"]["message"], "policy reloaded",
        "{reloaded}"
    );
    // A refused token was never bound, so it may bind now.
    let out = s.begin_a("rotated-again.jwt", &token)?;
    assert!(out.status.success(), "{}", text(&out));
    let out = s.psql(&s.job_a)?;
    assert!(reached(&out), "{}", text(&out));
    // The old key is gone: its tokens are refused.
    let old = s.provider.token("acme/app", "old-key");
    let out = s.begin(&s.job_b, "old.jwt", &old)?;
    assert!(
        text(&out).contains("unknown kid \"ec-1\""),
        "{}",
        text(&out)
    );
    Ok(())
}

#[test]
fn bad_tokens_and_callers_are_refused_with_precise_errors() -> Result<()> {
    let s = Setup::start("id-refuse")?;
    let p = &s.provider;
    let with = |k: &str, v: Value| {
        let mut c = claims("acme/app", &format!("bad-{k}"));
        c[k] = v;
        p.sign(Algorithm::ES256, "ec-1", &p.es256, &c)
    };
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","kid":"ec-1"}"#),
        b64(claims("acme/app", "none").to_string().as_bytes())
    );
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("ec-1".into());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims("acme/app", "hs"),
        &EncodingKey::from_secret(&p.es256_public),
    )?;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            with("exp", json!(now() - 60)),
            "token refused: the token expired at ",
        ),
        (
            "early",
            with("nbf", json!(now() + 600)),
            "token refused: the token is not valid before ",
        ),
        (
            "audience",
            with("aud", json!("another-service")),
            "token refused: audience [\"another-service\"] is not [\"chokepoint\"]",
        ),
        (
            "issuer",
            with("iss", json!("https://evil.test")),
            "token refused: issuer \"https://evil.test\" is not configured (configured: https://token.ci.test)",
        ),
        (
            "kid",
            p.sign(
                Algorithm::ES256,
                "ec-9",
                &p.es256,
                &claims("acme/app", "kid"),
            ),
            "token refused: unknown kid \"ec-9\" for issuer ci",
        ),
        (
            "signature",
            p.sign(
                Algorithm::ES256,
                "ec-1",
                &p.stranger,
                &claims("acme/app", "sig"),
            ),
            "token refused: bad signature: the token was not signed by key \"ec-1\" of issuer ci",
        ),
        (
            "none",
            none,
            "token refused: alg \"none\" is refused: only RS256, ES256 and EdDSA are accepted",
        ),
        ("hs256", hs256, "token refused: alg \"HS256\" is refused"),
    ];
    for (name, token, expected) in cases {
        let out = s.begin_a(&format!("{name}.jwt"), &token)?;
        assert!(!out.status.success(), "{name}: {}", text(&out));
        assert!(text(&out).contains(expected), "{name}: {}", text(&out));
        assert_eq!(
            text(&out).lines().count(),
            1,
            "{name}: one line: {}",
            text(&out)
        );
    }
    let out = s.psql(&s.job_a)?;
    assert!(!reached(&out), "nothing was bound: {}", text(&out));

    // Replay: a token binds once, also not into another cgroup.
    let token = p.token("acme/app", "once");
    let out = s.begin_a("once.jwt", &token)?;
    assert!(out.status.success(), "{}", text(&out));
    let out = s.begin(&s.job_b, "once-again.jwt", &token)?;
    let cgroup_b = s.job_b.path().display().to_string();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("this token was already bound (to cgroup /"),
        "{}",
        text(&out)
    );

    // Only root or a configured runner user may bind: nobody reaches the
    // socket through its group, and is refused by the gateway.
    let (_bin_dir, bin) = chokepoint_bin_for_anyone()?;
    let file = s.token_file("nobody.jwt", &p.token("acme/app", "nobody"))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("job")
        .arg("--socket")
        .arg(s.gw.admin_socket())
        .args(["begin", "--token-file"])
        .arg(&file)
        .args(["--cgroup", &cgroup_b]);
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    let out = run_with_timeout(&mut cmd, CLIENT_TIMEOUT)?;
    assert!(!out.status.success());
    assert!(
        text(&out).contains(
            "uid 65534 may not bind or end jobs: only root and [identity] runner_users may"
        ),
        "{}",
        text(&out)
    );
    let out = s.job(&["end", "--cgroup", "/"])?;
    assert!(
        text(&out).contains("the root cgroup holds every process"),
        "{}",
        text(&out)
    );
    let out = s.job(&["begin", "--token-env", "CP_TEST_UNSET_TOKEN"])?;
    assert!(
        text(&out).contains("environment variable CP_TEST_UNSET_TOKEN is not set"),
        "{}",
        text(&out)
    );
    Ok(())
}
