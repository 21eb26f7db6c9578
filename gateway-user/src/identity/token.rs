//! OIDC ID token validation: signature against the issuer's JWKS, then every time and audience claim, each failure named precisely.
use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde_json::Value;

use super::JobIdentity;

/// Signature algorithms accepted: asymmetric only, so a JWKS (public)
/// can never double as a shared secret.
const ALLOWED: [&str; 3] = ["RS256", "ES256", "EdDSA"];
/// Longest token read.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// One configured issuer and the keys it signs with.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// Policy name, e.g. `github`.
    pub name: String,
    /// The `iss` value, e.g. `https://token.actions.githubusercontent.com`.
    pub issuer: String,
    /// At least one must be in the token's `aud`.
    pub audiences: Vec<String>,
    pub keys: JwkSet,
    /// Where the keys came from, for errors.
    pub jwks_file: String,
    /// Claims every token must carry (beyond iss, aud, exp, iat, sub).
    pub required: Vec<String>,
    pub leeway: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT: {0}")]
    Malformed(String),
    #[error("alg {0:?} is refused: only RS256, ES256 and EdDSA are accepted")]
    Algorithm(String),
    #[error("issuer {0:?} is not configured (configured: {1})")]
    UnknownIssuer(String, String),
    #[error("unknown kid {kid:?} for issuer {issuer} (its JWKS {file} has: {known})")]
    UnknownKey {
        kid: String,
        issuer: String,
        file: String,
        known: String,
    },
    #[error("key {kid:?} of issuer {issuer} is for {key_alg}, but the token says {alg}")]
    KeyMismatch {
        kid: String,
        issuer: String,
        key_alg: String,
        alg: String,
    },
    #[error("bad signature: the token was not signed by key {kid:?} of issuer {issuer}")]
    Signature { kid: String, issuer: String },
    #[error("the token expired at {0}")]
    Expired(String),
    #[error("the token is not valid before {0}")]
    NotYetValid(String),
    #[error("the token was issued in the future ({0})")]
    IssuedInFuture(String),
    #[error("audience {found} is not {expected}")]
    Audience { found: String, expected: String },
    #[error("the token lacks the claim {0:?}")]
    MissingClaim(String),
    #[error(
        "the token has no jti (nor a run or pipeline id and job): it could not be bound only once"
    )]
    NoReplayKey,
}

fn b64(part: &str) -> Result<Value, TokenError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| TokenError::Malformed(format!("bad base64: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| TokenError::Malformed(format!("bad JSON: {e}")))
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z): humantime
/// fails to format anything later, and `to_string` turns that into a panic.
const LAST_WRITABLE: i64 = 253_402_300_799;

/// A claim's time for an error message. Claims are the issuer's, but any
/// i64 (or f64, saturated) can be written there: one past the year 9999 is
/// shown as the number it is.
fn time(secs: i64) -> String {
    if secs > LAST_WRITABLE {
        return format!("{secs} (seconds since 1970, past the year 9999)");
    }
    let t = UNIX_EPOCH + Duration::from_secs(secs.max(0).unsigned_abs());
    humantime::format_rfc3339_seconds(t).to_string()
}

fn seconds(payload: &Value, claim: &str) -> Result<i64, TokenError> {
    payload[claim]
        .as_i64()
        .or_else(|| payload[claim].as_f64().map(|f| f as i64))
        .ok_or_else(|| TokenError::MissingClaim(claim.to_owned()))
}

/// Validates `token` against the configured issuers at `now`.
pub fn validate(
    issuers: &[Issuer],
    token: &str,
    now: SystemTime,
) -> Result<JobIdentity, TokenError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed(format!(
            "longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(TokenError::Malformed(format!(
            "{} dot-separated parts, not 3",
            parts.len()
        )));
    }
    let header = b64(parts[0])?;
    let alg = header["alg"].as_str().unwrap_or("(none)").to_owned();
    if !ALLOWED.contains(&alg.as_str()) {
        return Err(TokenError::Algorithm(alg));
    }
    // Unverified, only to choose the issuer's keys.
    let unverified = b64(parts[1])?;
    let iss = unverified["iss"]
        .as_str()
        .ok_or_else(|| TokenError::MissingClaim("iss".to_owned()))?;
    let issuer = issuers.iter().find(|i| i.issuer == iss).ok_or_else(|| {
        let names: Vec<&str> = issuers.iter().map(|i| i.issuer.as_str()).collect();
        TokenError::UnknownIssuer(
            iss.to_owned(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            },
        )
    })?;
    let kid = header["kid"].as_str().unwrap_or("").to_owned();
    let jwk = if kid.is_empty() && issuer.keys.keys.len() == 1 {
        &issuer.keys.keys[0]
    } else {
        issuer
            .keys
            .find(&kid)
            .ok_or_else(|| TokenError::UnknownKey {
                kid: kid.clone(),
                issuer: issuer.name.clone(),
                file: issuer.jwks_file.clone(),
                known: issuer
                    .keys
                    .keys
                    .iter()
                    .filter_map(|k| k.common.key_id.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?
    };
    let algorithm: Algorithm = alg
        .parse()
        .map_err(|_| TokenError::Algorithm(alg.clone()))?;
    let mismatch = |key_alg: &str| TokenError::KeyMismatch {
        kid: kid.clone(),
        issuer: issuer.name.clone(),
        key_alg: key_alg.to_owned(),
        alg: alg.clone(),
    };
    if let Some(key_alg) = jwk.common.key_algorithm {
        let key_alg = format!("{key_alg:?}");
        if key_alg != alg {
            return Err(mismatch(&key_alg));
        }
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| mismatch("another key type"))?;
    let mut validation = Validation::new(algorithm);
    // Claims are checked below, each with its own message.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let payload = match jsonwebtoken::decode::<Value>(token, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            return Err(match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::Signature {
                    kid,
                    issuer: issuer.name.clone(),
                },
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
                | jsonwebtoken::errors::ErrorKind::InvalidKeyFormat
                | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
                | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_) => mismatch("another key type"),
                _ => TokenError::Malformed(e.to_string()),
            });
        }
    };
    let exp = check_claims(issuer, &payload, now)?;
    let job = identity(issuer, &payload, exp);
    if job.replay_key.is_empty() {
        return Err(TokenError::NoReplayKey);
    }
    Ok(job)
}

/// Checks the claims; returns `exp` as [`validate`] reads it.
fn check_claims(issuer: &Issuer, payload: &Value, now: SystemTime) -> Result<i64, TokenError> {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let leeway = issuer.leeway.as_secs() as i64;
    // Saturating: a claim of i64::MIN or i64::MAX (or a huge float) must
    // not overflow, which panics in debug builds and wraps in release.
    let exp = seconds(payload, "exp")?;
    if exp.saturating_add(leeway) <= now {
        return Err(TokenError::Expired(time(exp)));
    }
    if payload.get("nbf").is_some() {
        let nbf = seconds(payload, "nbf")?;
        if nbf.saturating_sub(leeway) > now {
            return Err(TokenError::NotYetValid(time(nbf)));
        }
    }
    let iat = seconds(payload, "iat")?;
    if iat.saturating_sub(leeway) > now {
        return Err(TokenError::IssuedInFuture(time(iat)));
    }
    let audiences: Vec<&str> = match &payload["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
        _ => return Err(TokenError::MissingClaim("aud".to_owned())),
    };
    if !audiences
        .iter()
        .any(|a| issuer.audiences.iter().any(|e| e == a))
    {
        return Err(TokenError::Audience {
            found: format!("{audiences:?}"),
            expected: format!("{:?}", issuer.audiences),
        });
    }
    for claim in std::iter::once("sub").chain(issuer.required.iter().map(String::as_str)) {
        if payload.get(claim).is_none_or(Value::is_null) {
            return Err(TokenError::MissingClaim(claim.to_owned()));
        }
    }
    Ok(exp)
}

/// The token's scalar claims as strings, and the key that makes it single-use.
fn identity(issuer: &Issuer, payload: &Value, exp: i64) -> JobIdentity {
    let mut claims = BTreeMap::new();
    if let Value::Object(map) = payload {
        for (k, v) in map {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            claims.insert(k.clone(), text);
        }
    }
    let get = |k: &str| claims.get(k).cloned();
    // GitHub and GitLab both set jti; run/pipeline ids are the fallback.
    let replay_key = get("jti")
        .map(|j| format!("jti:{j}"))
        .or_else(|| {
            Some(format!(
                "run:{}:{}:{}",
                get("run_id")?,
                get("run_attempt").unwrap_or_default(),
                get("job_workflow_ref").or_else(|| get("sub"))?
            ))
        })
        .or_else(|| Some(format!("job:{}:{}", get("pipeline_id")?, get("job_id")?)));
    // The replay record must outlive every instant the token still
    // validates at, leeway included, whatever type `exp` was written as.
    let accepted_until =
        u64::try_from(exp.saturating_add(issuer.leeway.as_secs() as i64)).unwrap_or(0);
    JobIdentity {
        issuer: issuer.name.clone(),
        subject: get("sub").unwrap_or_default(),
        claims,
        expires: UNIX_EPOCH + Duration::from_secs(accepted_until),
        replay_key: replay_key.unwrap_or_default(),
    }
}
