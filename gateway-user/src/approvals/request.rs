//! An approval request as it is stored, listed and sent to webhooks.
use std::{
    fmt,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where a request stands. Only `Pending` ever changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved,
    Denied,
    /// No decision before `expires`.
    Expired,
    /// The client went away, or its gateway stopped, before a decision.
    Cancelled,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
        })
    }
}

/// Who asked: the job's identity and the process behind the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    /// What policy knows the job as, e.g. `uid 1001 (runner)`.
    pub identity: String,
    pub uid: u32,
    /// The user name of `uid` on the holding gateway's host: approvers are
    /// named by name, so that is what "not the requester" compares across
    /// hosts whose uids differ. Empty in requests from older gateways.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// The recording of the session that holds the statement.
    pub session: String,
    /// Who a grant from this request covers: `job <key>` for a bound CI
    /// job (that job alone, not every job sharing its `sub`), else
    /// `cgroup <id> on <gateway>`. Requests stored before it existed have
    /// none, and their grants cover nothing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

/// What a held statement must share with an approved request for that
/// request's grant to let it run unasked: the same job, target, login,
/// and the same rule holding it for the same reason, so a grant for one
/// kind of statement never covers another that the rule (or another
/// rule) holds.
#[derive(Debug, Clone, Copy)]
pub struct GrantQuery<'a> {
    pub scope: &'a str,
    pub identity: &'a str,
    pub target: &'a str,
    pub role: &'a str,
    pub database: &'a str,
    pub class: &'a str,
    pub rule: &'a str,
    pub reason: &'a str,
    /// The holding rule's `max_grant` as it is now: a reload that shortens
    /// it shortens the grants already given.
    pub max_grant: Duration,
}

/// One approver's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The approver's user name, from the admin socket's peer credentials.
    pub by: String,
    pub uid: u32,
    pub approve: bool,
    /// `--comment` of an approval, `--reason` of a denial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `--for`: how long the same identity may run the same class on the
    /// same target without asking again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_secs: Option<u64>,
    /// RFC 3339.
    pub at: String,
}

/// A held statement waiting for (or past) a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Short and typable: `apr-` and six characters.
    pub id: String,
    pub state: State,
    pub who: Requester,
    /// The policy target, the database role and database logged in as.
    pub target: String,
    pub role: String,
    pub database: String,
    /// The statement exactly as sent, password literals redacted.
    pub statement: String,
    /// SHA-256 of the exact statement: a decision holds for this text only.
    pub digest: String,
    /// Statement classes, e.g. `delete` or `ddl,drop`.
    pub class: String,
    /// The rule that held it and what in it matched.
    pub rule: String,
    pub reason: String,
    /// As the rule names them: `alice`, `group:dba`.
    pub approvers: Vec<String>,
    pub min_approvals: usize,
    /// The rule's `max_grant` in seconds; absent: no grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grant_secs: Option<u64>,
    /// RFC 3339.
    pub created: String,
    pub expires: String,
    /// The gateway holding the statement: `<hostname>/<instance>`.
    pub gateway: String,
    #[serde(default)]
    pub votes: Vec<Vote>,
    /// Set when approved with `--for`: RFC 3339 end of the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_until: Option<String>,
    /// Why it ended when no vote says: timeout, client gone, gateway stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Request {
    /// True when `expires` has passed.
    pub fn is_past(&self, now: SystemTime) -> bool {
        parse_time(&self.expires).is_none_or(|t| t <= now)
    }

    /// When the grant this request carries stops covering statements: its
    /// `grant_until`, or `max_grant` after its last approval when that
    /// comes first; `None` without a grant. A time that does not read
    /// ends it at once.
    pub fn grant_end(&self, max_grant: Option<Duration>) -> Option<SystemTime> {
        let until = parse_time(self.grant_until.as_deref()?).unwrap_or(SystemTime::UNIX_EPOCH);
        let Some(max_grant) = max_grant else {
            return Some(until);
        };
        let decided = self.last_approval();
        let cap = decided
            .and_then(|at| at.checked_add(max_grant))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Some(until.min(cap))
    }

    /// When the last approval was given.
    fn last_approval(&self) -> Option<SystemTime> {
        self.votes
            .iter()
            .filter(|v| v.approve)
            .filter_map(|v| parse_time(&v.at))
            .max()
    }

    /// True while this request is approved with a grant that has not run out.
    pub fn grant_is_live(&self, now: SystemTime) -> bool {
        self.state == State::Approved
            && self
                .grant_until
                .as_deref()
                .and_then(parse_time)
                .is_some_and(|until| until > now)
    }

    /// True while an approved grant covers the statement `query` describes
    /// and is no older than the query's `max_grant`.
    pub fn grant_covers(&self, query: &GrantQuery<'_>, now: SystemTime) -> bool {
        let decided = self.last_approval();
        self.grant_is_live(now)
            && decided
                .is_some_and(|at| at.checked_add(query.max_grant).is_some_and(|end| end > now))
            && !self.who.scope.is_empty()
            && self.who.scope == query.scope
            && self.who.identity == query.identity
            && self.target == query.target
            && self.role == query.role
            && self.database == query.database
            && self.class == query.class
            && self.rule == query.rule
            && self.reason == query.reason
    }

    /// When the request stopped mattering: for a decided one, the latest
    /// of its expiry, its grant's end and its last vote; `None` while it
    /// is pending, or when none of those times reads (kept, not guessed).
    pub fn settled_at(&self) -> Option<SystemTime> {
        if self.state == State::Pending {
            return None;
        }
        [Some(self.expires.as_str()), self.grant_until.as_deref()]
            .into_iter()
            .flatten()
            .chain(self.votes.iter().map(|v| v.at.as_str()))
            .filter_map(parse_time)
            .max()
    }

    /// The approvals so far.
    pub fn approvals(&self) -> usize {
        self.votes.iter().filter(|v| v.approve).count()
    }

    /// The denial's reason, or what ended the request, for the client.
    pub fn outcome(&self) -> String {
        if let Some(vote) = self.votes.iter().find(|v| !v.approve) {
            return format!(
                "denied by {}: {}",
                vote.by,
                vote.text.as_deref().unwrap_or("no reason given")
            );
        }
        match (&self.note, self.state) {
            (Some(note), _) => note.clone(),
            (None, state) => state.to_string(),
        }
    }
}

/// `apr-` and six characters of `[a-z0-9]` without look-alikes.
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 6];
    // getrandom only fails without an OS entropy source, where nothing
    // else of the gateway could work either; fall back to the clock.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes.copy_from_slice(&nanos.to_le_bytes()[..6]);
    }
    let tail: String = bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    format!("apr-{tail}")
}

/// True for text shaped like an id, checked before it names a file.
pub fn is_id(text: &str) -> bool {
    text.strip_prefix("apr-").is_some_and(|t| {
        (4..=16).contains(&t.len())
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// Hex SHA-256 of the statement's exact bytes.
pub fn digest(statement: &str) -> String {
    hex::encode(Sha256::digest(statement.as_bytes()))
}

/// RFC 3339 with milliseconds: requests made in the same second still
/// list in the order they were made.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(text).ok()
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z): humantime
/// fails to format anything later, and `to_string` turns that into a panic.
const LAST_WRITABLE: Duration = Duration::from_secs(253_402_300_799);

/// `now + d`, formatted. The policy caps every duration far below overflow,
/// but a stored request's `max_grant_secs` is only as sane as its file (and
/// an admin-socket `grant_secs` is any u64): a grant that overflows, or ends
/// past what RFC 3339 can write, ends now rather than panicking.
pub fn after(now: SystemTime, d: Duration) -> String {
    let end = now.checked_add(d).filter(|t| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .is_ok_and(|since| since <= LAST_WRITABLE)
    });
    format_time(end.unwrap_or(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflowing_grant_ends_now_instead_of_panicking() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(after(now, Duration::MAX), format_time(now));
        // Within SystemTime's range, but past the year 9999.
        let far = Duration::from_secs(400_000_000_000);
        assert!(now.checked_add(far).is_some());
        assert_eq!(after(now, far), format_time(now));
        // The last writable second is still written.
        let last = LAST_WRITABLE - Duration::from_secs(1_800_000_000);
        assert_eq!(after(now, last), "9999-12-31T23:59:59.000Z");
    }

    #[test]
    fn ids_are_short_typable_and_recognised() {
        let id = new_id();
        assert_eq!(id.len(), 10, "{id}");
        assert!(is_id(&id), "{id}");
        assert!(!is_id("apr-../../etc"));
        assert!(!is_id("apr-"));
        assert!(!is_id("xyz-abcdef"));
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn digests_differ_for_any_change_of_the_text() {
        assert_eq!(digest("DELETE FROM orders"), digest("DELETE FROM orders"));
        assert_ne!(digest("DELETE FROM orders"), digest("DELETE FROM orders "));
    }
}
