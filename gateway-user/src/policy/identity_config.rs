//! `[identity]`: the OIDC issuers whose tokens bind jobs (each with its JWKS file, read at every load and reload), and the runner users who may bind.
use std::{path::PathBuf, time::Duration};

use jsonwebtoken::jwk::JwkSet;
use toml::Spanned;

use super::{
    approval,
    load::{At, Located, Report, Source},
    model::{IdentitySection, IssuerEntry},
    secret_file,
};
use crate::identity::Issuer;

/// Clock skew tolerated on exp, nbf and iat unless `leeway` says otherwise.
const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
const MAX_LEEWAY: Duration = Duration::from_secs(600);
/// An issuer's JWKS is a few keys: a few KiB. Anything near this is not one.
const JWKS_MAX_BYTES: u64 = 1 << 20;
/// How long a binding lasts without `job end` unless `max_job` says: a
/// job, not its token (GitHub's expire after minutes). GitHub Actions
/// stops a job after 6 hours by default.
pub const DEFAULT_MAX_JOB: Duration = Duration::from_secs(6 * 3600);
const MIN_MAX_JOB: Duration = Duration::from_secs(60);
const MAX_MAX_JOB: Duration = Duration::from_secs(30 * 24 * 3600);
/// Where bindings and spent tokens outlive a restart.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/chokepoint/identity/jobs.json";

/// What `[identity]` configures.
pub(super) struct IdentitySettings {
    pub issuers: Vec<Issuer>,
    pub runner_uids: Vec<u32>,
    pub max_job: Duration,
    pub state_file: PathBuf,
}

/// The issuers, runner uids and binding lifetime; problems reported at
/// their keys.
pub(super) fn identity(
    section: Option<&Located<IdentitySection>>,
    sources: &[Source],
    users: super::compile::UserLookup<'_>,
    report: &mut Report,
) -> IdentitySettings {
    let Some(Located { at, value: section }) = section else {
        return IdentitySettings {
            issuers: Vec::new(),
            runner_uids: Vec::new(),
            max_job: DEFAULT_MAX_JOB,
            state_file: PathBuf::from(DEFAULT_STATE_FILE),
        };
    };
    let file = at.file;
    let mut runners = Vec::new();
    for user in section
        .runner_users
        .as_ref()
        .map(|l| l.get_ref().as_slice())
        .unwrap_or_default()
    {
        match users(user.get_ref()) {
            Ok(Some(uid)) => runners.push(uid),
            Ok(None) => report.error(
                At::of(file, user),
                format!(
                    "runner user {:?} does not exist on this host",
                    user.get_ref()
                ),
            ),
            Err(e) => report.error(
                At::of(file, user),
                format!("runner user {:?}: {e}", user.get_ref()),
            ),
        }
    }
    let mut leeway = DEFAULT_LEEWAY;
    if let Some(text) = &section.leeway {
        match approval::duration(text.get_ref()) {
            Ok(d) if d <= MAX_LEEWAY => leeway = d,
            Ok(_) => report.error(
                At::of(file, text),
                "leeway is longer than 10m: clocks are not that far apart",
            ),
            Err(message) => report.error(At::of(file, text), format!("leeway: {message}")),
        }
    }
    let mut max_job = DEFAULT_MAX_JOB;
    if let Some(text) = &section.max_job {
        match approval::duration(text.get_ref()) {
            Ok(d) if (MIN_MAX_JOB..=MAX_MAX_JOB).contains(&d) => max_job = d,
            Ok(_) => report.error(
                At::of(file, text),
                "max_job must be between 1m and 30d: how long a bound job may run without `chokepoint job end`",
            ),
            Err(message) => report.error(At::of(file, text), format!("max_job: {message}")),
        }
    }
    let mut state_file = PathBuf::from(DEFAULT_STATE_FILE);
    if let Some(path) = &section.state_file {
        if path.get_ref().trim().is_empty() {
            report.error(
                At::of(file, path),
                "state_file is empty: name the file that keeps job bindings across restarts",
            );
        } else {
            state_file = secret_file::resolve(sources, file, path.get_ref());
        }
    }
    let mut issuers: Vec<Issuer> = Vec::new();
    for entry in section.issuer.iter().flatten() {
        if let Some(issuer) = issuer(entry, file, sources, leeway, report) {
            if issuers
                .iter()
                .any(|i| i.issuer == issuer.issuer || i.name == issuer.name)
            {
                report.error(
                    At::of(file, entry),
                    format!(
                        "issuer {:?} ({}) is configured twice: keep one",
                        issuer.name, issuer.issuer
                    ),
                );
                continue;
            }
            issuers.push(issuer);
        }
    }
    IdentitySettings {
        issuers,
        runner_uids: runners,
        max_job,
        state_file,
    }
}

fn issuer(
    entry: &Spanned<IssuerEntry>,
    file: usize,
    sources: &[Source],
    leeway: Duration,
    report: &mut Report,
) -> Option<Issuer> {
    let at = At::of(file, entry);
    let e = entry.get_ref();
    let mut missing = Vec::new();
    if e.name.is_none() {
        missing.push("name = \"github\"");
    }
    if e.issuer.is_none() {
        missing.push("issuer = \"https://token.actions.githubusercontent.com\"");
    }
    if e.audience.is_none() {
        missing.push("audience = [\"chokepoint\"]");
    }
    if e.jwks_file.is_none() {
        missing.push("jwks_file = \"/etc/chokepoint/jwks/github.json\"");
    }
    if !missing.is_empty() {
        report.error(
            at,
            format!("this [[identity.issuer]] needs {}", missing.join(", ")),
        );
        return None;
    }
    let (name, iss, audience, jwks) = (
        e.name.as_ref()?,
        e.issuer.as_ref()?,
        e.audience.as_ref()?,
        e.jwks_file.as_ref()?,
    );
    // Every problem of the entry is reported before it is given up.
    let mut valid =
        super::compile::check_name("issuer", name.get_ref(), At::of(file, name), report);
    if let Err(message) = check_issuer(iss.get_ref()) {
        report.error(At::of(file, iss), message);
        valid = false;
    }
    valid &= check_audience(audience, file, report);
    let required = required_claims(e, file, report);
    let (true, Some(required)) = (valid, required) else {
        return None;
    };
    let path = secret_file::resolve(sources, file, jwks.get_ref());
    let keys = match crate::regular_file::read_bounded(&path, JWKS_MAX_BYTES) {
        Err(err) => {
            report.error(At::of(file, jwks), jwks_unreadable(&path, &err));
            return None;
        }
        Ok(bytes) => match serde_json::from_slice::<JwkSet>(&bytes) {
            Ok(set) if !set.keys.is_empty() => set,
            Ok(_) => {
                report.error(
                    At::of(file, jwks),
                    format!("jwks_file {} holds no keys", path.display()),
                );
                return None;
            }
            Err(err) => {
                report.error(
                    At::of(file, jwks),
                    format!("jwks_file {} is not a JWKS ({err}): save the issuer's /.well-known/jwks endpoint there", path.display()),
                );
                return None;
            }
        },
    };
    Some(Issuer {
        name: name.get_ref().clone(),
        issuer: iss.get_ref().clone(),
        audiences: audience
            .get_ref()
            .iter()
            .map(|a| a.get_ref().clone())
            .collect(),
        keys,
        jwks_file: path.display().to_string(),
        required,
        leeway,
    })
}

/// `required_claims`: a token must carry each, so a blank name is a claim
/// no token has.
fn required_claims(e: &IssuerEntry, file: usize, report: &mut Report) -> Option<Vec<String>> {
    let mut required = Vec::new();
    let mut named = true;
    for claim in e.required_claims.iter().flat_map(|l| l.get_ref()) {
        if claim.get_ref().trim().is_empty() {
            report.error(
                At::of(file, claim),
                format!(
                    "required claim {:?} has no name: name claims every token must carry, e.g. \"repository\"",
                    claim.get_ref()
                ),
            );
            named = false;
        }
        required.push(claim.get_ref().clone());
    }
    named.then_some(required)
}

/// A token is taken when one of its `aud` values is listed here: an
/// empty list takes none, and an empty value only a token made for no one.
/// Why `jwks_file` could not be read, and what to do about it.
fn jwks_unreadable(path: &std::path::Path, err: &std::io::Error) -> String {
    let shown = path.display();
    match err.kind() {
        std::io::ErrorKind::NotFound => format!(
            "jwks_file {shown} does not exist: save the issuer's JWKS (its /.well-known/jwks document) there"
        ),
        std::io::ErrorKind::FileTooLarge => format!(
            "jwks_file {shown} is larger than {} KiB: it should hold only the issuer's JWKS document",
            JWKS_MAX_BYTES >> 10
        ),
        std::io::ErrorKind::InvalidInput => {
            format!("jwks_file {shown}: {err}: name the JWKS file itself")
        }
        _ => format!("jwks_file {shown} cannot be read: {err}"),
    }
}

fn check_audience(list: &Spanned<Vec<Spanned<String>>>, file: usize, report: &mut Report) -> bool {
    if list.get_ref().is_empty() {
        report.error(
            At::of(file, list),
            "audience is empty: list the aud values of tokens meant for this gateway, e.g. [\"chokepoint\"]",
        );
        return false;
    }
    let mut ok = true;
    for value in list.get_ref() {
        if value.get_ref().trim().is_empty() {
            report.error(
                At::of(file, value),
                format!(
                    "audience {:?} is empty: write the aud value tokens for this gateway carry, e.g. \"chokepoint\"",
                    value.get_ref()
                ),
            );
            ok = false;
        }
    }
    ok
}

/// Tokens are matched to their issuer by `iss`, compared exactly as
/// written here, so a value no issuer can put there (no scheme, spaces,
/// a query) would refuse every token. OpenID Connect makes `iss` an https
/// URL with a host and no query or fragment; plain http is taken only on
/// loopback, for a local test issuer.
fn check_issuer(text: &str) -> Result<(), String> {
    const EXAMPLE: &str =
        "write it as its tokens' iss, e.g. \"https://token.actions.githubusercontent.com\"";
    // The URL parser forgives what an exact comparison does not.
    if text.trim() != text {
        return Err(format!("issuer {text:?} has spaces around it: {EXAMPLE}"));
    }
    let https = "is not an https URL (http only on localhost, for a test issuer)";
    // Checked on the text: the parser also reads `https:host` and `HTTPS://`.
    let plain = match text {
        t if t.starts_with("https://") => false,
        t if t.starts_with("http://") => true,
        _ => return Err(format!("issuer {text:?} {https}: {EXAMPLE}")),
    };
    let url = reqwest::Url::parse(text)
        .map_err(|e| format!("issuer {text:?} is not a URL ({e}): {EXAMPLE}"))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if plain && !loopback {
        return Err(format!("issuer {text:?} {https}: {EXAMPLE}"));
    }
    let user = !url.username().is_empty() || url.password().is_some();
    if user || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "issuer {text:?} has a user, query or fragment, which an OpenID Connect issuer never has: {EXAMPLE}"
        ));
    }
    Ok(())
}
