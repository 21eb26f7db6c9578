use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::JwkSet};
use serde_json::{Value, json};

use super::{token::*, *};

const ISS: &str = "https://token.example.test";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key and its JWK.
struct Key {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
    public: Vec<u8>,
}

fn ed25519(kid: &str) -> Key {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let public = pair.public_key_raw().to_vec();
    Key {
        alg: Algorithm::EdDSA,
        kid: kid.into(),
        encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&public)}),
        public,
    }
}

fn p256(kid: &str) -> Key {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public = pair.public_key_raw().to_vec();
    Key {
        alg: Algorithm::ES256,
        kid: kid.into(),
        encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                    "x": b64(&public[1..33]), "y": b64(&public[33..])}),
        public,
    }
}

/// RSA keys come from the openssl command: ring cannot generate them.
fn rsa(kid: &str) -> Key {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&path)
        .arg("2048")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let modulus = std::process::Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8(modulus.stdout).unwrap();
    let n = hex::decode(text.trim().trim_start_matches("Modulus=")).unwrap();
    let pem = std::fs::read(&path).unwrap();
    Key {
        alg: Algorithm::RS256,
        kid: kid.into(),
        encoding: EncodingKey::from_rsa_pem(&pem).unwrap(),
        jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS256", "n": b64(&n), "e": "AQAB"}),
        public: n,
    }
}

fn issuer(keys: &[&Key]) -> Issuer {
    let set: JwkSet = serde_json::from_value(
        json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}),
    )
    .unwrap();
    Issuer {
        name: "ci".into(),
        issuer: ISS.into(),
        audiences: vec!["chokepoint".into()],
        keys: set,
        jwks_file: "/etc/chokepoint/jwks/ci.json".into(),
        required: vec!["repository".into()],
        leeway: Duration::from_secs(30),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims() -> Value {
    json!({
        "iss": ISS, "aud": "chokepoint", "sub": "repo:acme/app:ref:refs/heads/main",
        "iat": now() - 10, "nbf": now() - 10, "exp": now() + 600,
        "jti": "d5a3c2", "repository": "acme/app", "ref": "refs/heads/main",
        "run_id": 42, "environment": "production",
    })
}

fn sign(key: &Key, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

fn check(issuers: &[Issuer], token: &str) -> Result<JobIdentity, TokenError> {
    validate(issuers, token, SystemTime::now())
}

#[test]
fn rs256_es256_and_eddsa_tokens_are_accepted_with_their_claims() {
    let keys = [rsa("r1"), p256("e1"), ed25519("d1")];
    let issuers = [issuer(&keys.iter().collect::<Vec<_>>())];
    for key in &keys {
        let job =
            check(&issuers, &sign(key, &claims())).unwrap_or_else(|e| panic!("{:?}: {e}", key.alg));
        assert_eq!(job.issuer, "ci");
        assert_eq!(job.subject, "repo:acme/app:ref:refs/heads/main");
        assert_eq!(job.claims["repository"], "acme/app");
        assert_eq!(job.claims["run_id"], "42");
        assert_eq!(job.replay_key, "jti:d5a3c2");
        assert_eq!(job.describe(), "ci:repo:acme/app:ref:refs/heads/main");
    }
}

#[test]
fn every_bad_token_is_refused_with_a_precise_error() {
    let key = p256("e1");
    let issuers = [issuer(&[&key])];
    let with = |k: &str, v: Value| {
        let mut c = claims();
        c[k] = v;
        sign(&key, &c)
    };
    let expired = check(&issuers, &with("exp", json!(now() - 120))).unwrap_err();
    assert!(matches!(expired, TokenError::Expired(_)), "{expired}");
    assert!(
        expired.to_string().starts_with("the token expired at "),
        "{expired}"
    );
    let early = check(&issuers, &with("nbf", json!(now() + 600))).unwrap_err();
    assert!(
        early
            .to_string()
            .starts_with("the token is not valid before "),
        "{early}"
    );
    let future = check(&issuers, &with("iat", json!(now() + 600))).unwrap_err();
    assert!(matches!(future, TokenError::IssuedInFuture(_)), "{future}");
    let aud = check(&issuers, &with("aud", json!("someone-else"))).unwrap_err();
    assert_eq!(
        aud.to_string(),
        "audience [\"someone-else\"] is not [\"chokepoint\"]"
    );
    let iss = check(&issuers, &with("iss", json!("https://evil.test"))).unwrap_err();
    assert_eq!(
        iss.to_string(),
        "issuer \"https://evil.test\" is not configured (configured: https://token.example.test)"
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("repository");
    let missing = check(&issuers, &sign(&key, &c)).unwrap_err();
    assert_eq!(
        missing.to_string(),
        "the token lacks the claim \"repository\""
    );
    let mut c = claims();
    for k in ["jti", "run_id"] {
        c.as_object_mut().unwrap().remove(k);
    }
    assert_eq!(
        check(&issuers, &sign(&key, &c)).unwrap_err(),
        TokenError::NoReplayKey
    );

    // Unknown kid; a key that is not the issuer's under a known kid.
    let stranger = p256("e2");
    let unknown = check(&issuers, &sign(&stranger, &claims())).unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "unknown kid \"e2\" for issuer ci (its JWKS /etc/chokepoint/jwks/ci.json has: e1)"
    );
    let impostor = Key {
        kid: "e1".into(),
        ..p256("x")
    };
    let forged = check(&issuers, &sign(&impostor, &claims())).unwrap_err();
    assert_eq!(
        forged.to_string(),
        "bad signature: the token was not signed by key \"e1\" of issuer ci"
    );

    // alg=none, and HS256 keyed with the (public) JWK.
    let payload = b64(claims().to_string().as_bytes());
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","kid":"e1"}"#));
    assert_eq!(
        check(&issuers, &none).unwrap_err().to_string(),
        "alg \"none\" is refused: only RS256, ES256 and EdDSA are accepted"
    );
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("e1".into());
    let hs =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&key.public)).unwrap();
    assert_eq!(
        check(&issuers, &hs).unwrap_err(),
        TokenError::Algorithm("HS256".into())
    );
    // An ES256 key cannot verify an EdDSA token carrying its kid.
    let ed = Key {
        kid: "e1".into(),
        ..ed25519("y")
    };
    let mismatch = check(&issuers, &sign(&ed, &claims())).unwrap_err();
    assert!(
        matches!(mismatch, TokenError::KeyMismatch { .. }),
        "{mismatch}"
    );

    assert!(matches!(
        check(&issuers, "a.b").unwrap_err(),
        TokenError::Malformed(_)
    ));
    assert!(matches!(
        check(&issuers, "!!.??.##").unwrap_err(),
        TokenError::Malformed(_)
    ));
}

/// Time claims are the issuer's to write, and any JSON number fits there:
/// none of them may overflow the checks or the error's date.
#[test]
fn extreme_time_claims_are_checked_without_overflow() {
    let key = ed25519("d1");
    let issuers = [issuer(&[&key])];
    let with = |pairs: &[(&str, Value)]| {
        let mut c = claims();
        for (k, v) in pairs {
            c[*k] = v.clone();
        }
        sign(&key, &c)
    };
    // Far in the future, as an integer and as a float: valid.
    for exp in [json!(i64::MAX), json!(1e300)] {
        let job = check(&issuers, &with(&[("exp", exp.clone())]))
            .unwrap_or_else(|e| panic!("exp {exp}: {e}"));
        assert!(job.expires > SystemTime::now());
    }
    // Far in the past: valid for nbf and iat, expired for exp.
    check(
        &issuers,
        &with(&[("nbf", json!(i64::MIN)), ("iat", json!(i64::MIN))]),
    )
    .unwrap();
    let e = check(&issuers, &with(&[("exp", json!(i64::MIN))])).unwrap_err();
    assert_eq!(e.to_string(), "the token expired at 1970-01-01T00:00:00Z");
    // Not yet valid past the year 9999: named as a number.
    let e = check(&issuers, &with(&[("nbf", json!(1e15))])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the token is not valid before 1000000000000000 (seconds since 1970, past the year 9999)"
    );
    let e = check(&issuers, &with(&[("iat", json!(i64::MAX))])).unwrap_err();
    assert!(matches!(e, TokenError::IssuedInFuture(_)), "{e}");
}

/// A token still validates for the issuer's leeway past `exp`, so its
/// replay record must last as long, however `exp` is written.
#[test]
fn a_token_stays_spent_for_as_long_as_it_validates() {
    let key = ed25519("d1");
    let issuers = [issuer(&[&key])]; // leeway 30 s
    for exp in [json!(now() + 5), json!((now() + 5) as f64 + 0.5)] {
        let mut c = claims();
        c["exp"] = exp.clone();
        let token = sign(&key, &c);
        let bindings = Bindings::default();
        let t0 = SystemTime::now();
        let job = validate(&issuers, &token, t0).unwrap();
        let long = Duration::from_secs(6 * 3600);
        bindings.bind(7, "/ci/job-a", job, t0, t0 + long).unwrap();
        // Past exp, inside the leeway: still valid, so still spent.
        let t1 = t0 + Duration::from_secs(20);
        let again = validate(&issuers, &token, t1).expect("valid within the leeway");
        let r = bindings.bind(8, "/ci/job-b", again, t1, t1 + long);
        assert!(
            matches!(r, Err(BindError::Replayed(_))),
            "exp {exp}: bound twice: {r:?}"
        );
        // Past the leeway the token itself is refused.
        assert!(validate(&issuers, &token, t0 + Duration::from_secs(40)).is_err());
    }
}

#[test]
fn a_token_binds_once_and_a_cgroup_runs_one_job_at_a_time() {
    let key = ed25519("d1");
    let issuers = [issuer(&[&key])];
    let job = check(&issuers, &sign(&key, &claims())).unwrap();
    let bindings = Bindings::default();
    let now = SystemTime::now();
    // Bound for longer than the token lives: a job outlasts its token.
    let until = job.expires + Duration::from_secs(6 * 3600);
    bindings
        .bind(7, "/ci/job-a", job.clone(), now, until)
        .unwrap();
    let again = bindings
        .bind(8, "/ci/job-b", job.clone(), now, until)
        .unwrap_err();
    assert!(
        again
            .to_string()
            .starts_with("this token was already bound (to cgroup /ci/job-a at "),
        "{again}"
    );
    let mut other = claims();
    other["jti"] = json!("second");
    let second = check(&issuers, &sign(&key, &other)).unwrap();
    let busy = bindings
        .bind(7, "/ci/job-a", second.clone(), now, until)
        .unwrap_err();
    assert!(
        busy.to_string()
            .contains("is already bound to ci:repo:acme/app"),
        "{busy}"
    );
    assert_eq!(
        bindings.job(7, now).unwrap().claims["repository"],
        "acme/app"
    );
    assert!(bindings.job(8, now).is_none());
    // Past the token's expiry it is still the job's; past `until`, as if
    // unbound.
    assert!(
        bindings
            .job(7, job.expires + Duration::from_secs(60))
            .is_some()
    );
    assert!(bindings.job(7, until).is_none());
    bindings.end(7, "/ci/job-a").unwrap();
    assert!(bindings.job(7, now).is_none());
    assert_eq!(
        bindings.end(7, "/ci/job-a").unwrap_err().to_string(),
        "no job is bound to cgroup /ci/job-a"
    );
    // The first token stays spent even after its job ended.
    assert!(bindings.bind(9, "/ci/job-c", job, now, until).is_err());
}

#[test]
fn a_runner_user_binds_only_in_its_own_cgroup_subtree() {
    let runner = "/system.slice/runner1.service";
    assert!(is_within(runner, runner));
    assert!(is_within(runner, "/system.slice/runner1.service/job-7"));
    assert!(is_within("/", "/system.slice/runner2.service"));
    assert!(!is_within(runner, "/system.slice/runner2.service"));
    // A sibling whose name merely starts the same.
    assert!(!is_within(runner, "/system.slice/runner1.service-evil"));
    assert!(!is_within(runner, "/system.slice"));
    // Root may name any cgroup; a runner uid is checked against its own.
    assert!(within_own(0, None, "/system.slice/runner2.service").is_ok());
    let e = scope_check(1000, runner, "/system.slice/runner2.service").unwrap_err();
    assert_eq!(
        e,
        "uid 1000 may bind or end jobs only in its own cgroup /system.slice/runner1.service and below, not /system.slice/runner2.service"
    );
    assert!(scope_check(1000, runner, "/system.slice/runner1.service/job-7").is_ok());
    // Its own cgroup is read from /proc.
    let own = own_cgroup(std::process::id()).expect("this test's cgroup");
    assert!(within_own(1000, Some(std::process::id()), &own).is_ok());
}

/// Every spelling of a cgroup path names one cgroup: the root stays
/// unbindable however it is written.
#[test]
fn the_root_cgroup_is_refused_however_it_is_spelled() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("ci/job-1")).unwrap();
    let jobs = Jobs::new(
        vec![],
        vec![],
        Duration::from_secs(3600),
        Some(root.path().to_path_buf()),
        Bindings::default(),
    );
    for spelling in ["/", "/.", "//", "/./.", "."] {
        let r = jobs.resolve(Some(spelling), None);
        assert!(
            r.as_ref().is_err_and(|e| e.contains("root cgroup")),
            "{spelling:?}: {r:?}"
        );
    }
    for spelling in ["/ci/job-1", "/ci/./job-1/", "//ci//job-1"] {
        let (_, path) = jobs.resolve(Some(spelling), None).unwrap();
        assert_eq!(path, "/ci/job-1", "{spelling:?}");
    }
    let up = jobs.resolve(Some("/ci/../ci/job-1"), None);
    assert!(up.is_err(), "{up:?}");
}

/// Bindings and spent tokens read back by the next start, on this boot.
fn reopen(state: &StateFile, live: &[u64]) -> (Bindings, Vec<String>) {
    Bindings::open(state.clone(), SystemTime::now(), |_, id| live.contains(&id)).unwrap()
}

#[test]
fn a_restart_keeps_bound_jobs_and_spent_tokens() {
    let key = ed25519("d1");
    let issuers = [issuer(&[&key])];
    let job = check(&issuers, &sign(&key, &claims())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity/jobs.json");
    let state = StateFile::with_boot(path.clone(), "boot-1");
    let (bindings, dropped) = reopen(&state, &[7]);
    assert!(bindings.list().is_empty() && dropped.is_empty());
    let now = SystemTime::now();
    let until = now + Duration::from_secs(3600);
    bindings
        .bind(7, "/ci/job-a", job.clone(), now, until)
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the state names jobs' claims");

    // A restart: the job is still bound and its token still spent.
    let (after, dropped) = reopen(&state, &[7]);
    assert!(dropped.is_empty(), "{dropped:?}");
    let restored = after.job(7, SystemTime::now()).expect("restored");
    assert_eq!(*restored, job);
    let again = after.bind(8, "/ci/job-b", job.clone(), now, until);
    assert!(
        matches!(again, Err(BindError::Replayed(_))),
        "a restart made a spent token new: {again:?}"
    );

    // Ended, then restarted: unbound, and the token stays spent.
    after.end(7, "/ci/job-a").unwrap();
    let (ended, _) = reopen(&state, &[7]);
    assert!(ended.job(7, SystemTime::now()).is_none());
    assert!(ended.bind(9, "/ci/job-c", job.clone(), now, until).is_err());

    // Another boot hands cgroup ids out again: the binding is dropped,
    // the token is not forgotten.
    let (bindings, _) = reopen(&state, &[7]);
    let mut second = claims();
    second["jti"] = json!("second");
    let second = check(&issuers, &sign(&key, &second)).unwrap();
    bindings.bind(7, "/ci/job-a", second, now, until).unwrap();
    let rebooted = StateFile::with_boot(path.clone(), "boot-2");
    let (after, dropped) = reopen(&rebooted, &[7]);
    assert!(after.job(7, SystemTime::now()).is_none());
    assert_eq!(
        dropped,
        ["ci:repo:acme/app:ref:refs/heads/main in /ci/job-a: the host rebooted since it was bound"]
    );
    assert!(after.bind(10, "/ci/job-d", job, now, until).is_err());

    // The same boot, but the cgroup was removed (and maybe made again).
    let (gone, dropped) = reopen(&state, &[]);
    assert!(gone.job(7, SystemTime::now()).is_none());
    assert!(
        dropped[0].ends_with("in /ci/job-a: its cgroup is gone"),
        "{dropped:?}"
    );
}

#[test]
fn a_binding_that_cannot_be_saved_is_not_made() {
    let key = ed25519("d1");
    let issuers = [issuer(&[&key])];
    let job = check(&issuers, &sign(&key, &claims())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("identity");
    let state = StateFile::with_boot(blocker.join("jobs.json"), "boot-1");
    let (bindings, _) = reopen(&state, &[7]);
    // Its directory is a file now: every save fails.
    std::fs::write(&blocker, "").unwrap();
    let now = SystemTime::now();
    let until = now + Duration::from_secs(3600);
    let e = bindings
        .bind(7, "/ci/job-a", job.clone(), now, until)
        .unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "job state {} could not be saved: ",
            blocker.join("jobs.json").display()
        )) && e.to_string().ends_with("; nothing changed"),
        "{e}"
    );
    assert!(bindings.job(7, now).is_none(), "bound though unsaved");
    // Saving works again: the token was not spent by the failed attempt.
    std::fs::remove_file(&blocker).unwrap();
    bindings.bind(7, "/ci/job-a", job, now, until).unwrap();
}

#[test]
fn unreadable_job_state_stops_the_start_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.json");
    let state = StateFile::with_boot(path.clone(), "boot-1");
    for (text, why) in [
        ("{\"version\": 1, \"boot_id\"", "not job state: "),
        (
            "{\"version\": 9, \"boot_id\": \"b\", \"jobs\": [], \"spent\": []}",
            "format version 9",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let e = Bindings::open(state.clone(), SystemTime::now(), |_, _| true).unwrap_err();
        let e = e.to_string();
        assert!(
            e.starts_with(&format!("job state {}: {why}", path.display()))
                && e.contains("move the file aside"),
            "{e}"
        );
    }
}

/// `f`, failing the test instead of hanging it.
fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("an answer within 5 s")
}

#[test]
fn a_fifo_or_huge_file_for_job_state_is_refused_not_waited_on() {
    use nix::sys::stat::Mode;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.json");
    let state = StateFile::with_boot(path.clone(), "boot-1");
    nix::unistd::mkfifo(&path, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let opened = state.clone();
    let e = within_5s(move || {
        Bindings::open(opened, SystemTime::now(), |_, _| true)
            .err()
            .unwrap()
            .to_string()
    });
    assert!(
        e.starts_with(&format!(
            "job state {}: it is a FIFO, not a regular file",
            path.display()
        )),
        "{e}"
    );
    std::fs::remove_file(&path).unwrap();
    std::fs::File::create(&path)
        .unwrap()
        .set_len(100 << 30)
        .unwrap();
    let e = Bindings::open(state.clone(), SystemTime::now(), |_, _| true)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with(&format!("job state {}: larger than 64 MiB", path.display())),
        "{e}"
    );
    std::fs::remove_file(&path).unwrap();
    // One where the new state is written before its rename: replaced.
    nix::unistd::mkfifo(
        &dir.path().join("jobs.json.new"),
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .unwrap();
    let saving = state.clone();
    within_5s(move || saving.save(Vec::new(), Vec::new())).unwrap();
    assert!(Bindings::open(state, SystemTime::now(), |_, _| true).is_ok());
    // And one for the lock: refused by name.
    let other = dir.path().join("other.json");
    let lock = dir.path().join("other.json.lock");
    nix::unistd::mkfifo(&lock, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let e = within_5s(move || StateFile::open(other).err().unwrap().to_string());
    assert!(
        e.starts_with(&format!(
            "job state {}: it is a FIFO, not a regular file",
            lock.display()
        )),
        "{e}"
    );
}

#[test]
fn spent_tokens_are_forgotten_once_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.json");
    let state = StateFile::with_boot(path, "boot-1");
    let now = SystemTime::now();
    state
        .save(
            Vec::new(),
            vec![
                state::Spent {
                    key: "jti:old".into(),
                    bound: "to cgroup /ci/a".into(),
                    expires: now - Duration::from_secs(1),
                },
                state::Spent {
                    key: "jti:live".into(),
                    bound: "to cgroup /ci/b".into(),
                    expires: now + Duration::from_secs(60),
                },
            ],
        )
        .unwrap();
    let restored = state.restore(now, |_, _| true).unwrap();
    let keys: Vec<&str> = restored.spent.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["jti:live"]);
}

#[test]
fn one_daemon_at_a_time_keeps_a_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity/jobs.json");
    let first = StateFile::open(path.clone()).unwrap();
    let e = StateFile::open(path.clone()).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("job state {} is locked", path.display()))
            && e.ends_with("give each instance its own [identity] state_file"),
        "{e}"
    );
    drop(first);
    assert!(
        StateFile::open(path).is_ok(),
        "the lock goes with its daemon"
    );
}

#[test]
fn a_gateway_started_without_issuers_binds_nothing_until_it_restarts() {
    let key = ed25519("d1");
    let issuers = [issuer(&[&key])];
    let job = check(&issuers, &sign(&key, &claims())).unwrap();
    let bindings = Bindings::unopened(std::path::Path::new(
        "/var/lib/chokepoint/identity/jobs.json",
    ));
    let now = SystemTime::now();
    let e = bindings
        .bind(7, "/ci/job-a", job, now, now + Duration::from_secs(60))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the gateway started with no [[identity.issuer]], so it keeps no job state: restart it so bindings are kept in /var/lib/chokepoint/identity/jobs.json"
    );
    assert!(bindings.job(7, now).is_none());
}
