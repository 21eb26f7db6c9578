//! What a recording holds: one [`Event`] per line, its kind in `type`.
use serde::{Deserialize, Serialize};

/// One recorded event, before the chain fields are wrapped around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// 0 for the session start, then +1 per event, seal included.
    pub seq: u64,
    pub session: String,
    /// Wall-clock time, RFC 3339 with microseconds (UTC).
    pub wall: String,
    /// Monotonic microseconds since the session started: replay timing
    /// that a wall-clock step cannot distort.
    pub mono_us: u64,
    #[serde(flatten)]
    pub body: Body,
}

/// The process behind a session, from the kernel's flow record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// The CI job bound to the cgroup (issuer, subject, claims); absent
    /// for an unidentified process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::identity::JobIdentity>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// A guarded connection reached the gateway.
    SessionStart {
        identity: Identity,
        /// The original destination.
        dst: String,
        /// `tcp` or `postgres`.
        protocol: String,
        target: Option<String>,
        decision: String,
        rule: String,
        mode: String,
    },
    /// The gateway logged in upstream on the job's behalf.
    Login {
        role: String,
        database: String,
        upstream: String,
    },
    /// A statement as the job sent it (password literals redacted) and
    /// what policy decided.
    Statement {
        text: String,
        class: String,
        decision: String,
        rule: String,
        reason: String,
    },
    /// How a statement ended, and the first rows as the job received them
    /// (masked; binary values as `\x` hex).
    Result {
        /// The statement again when it ran as an Execute of a prepared
        /// statement (its `statement` event came at Parse).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        rows: u64,
        duration_us: u64,
        error: Option<String>,
        masked: bool,
        columns: Vec<String>,
        sample: super::sample::Sample,
    },
    /// A step of a held statement's approval: `requested`, `notified`,
    /// `notify_failed`, `approved`, `denied`, `expired`, `cancelled`,
    /// `grant_used`.
    Approval {
        id: String,
        event: String,
        /// The approvers who decided.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        detail: String,
    },
    /// A DNS question, what policy decided, and the answer the job got.
    Dns {
        name: String,
        qtype: String,
        decision: String,
        rule: String,
        /// The response code: NOERROR, NXDOMAIN, REFUSED, SERVFAIL (why).
        answer: String,
        /// `address ttl N` of each A/AAAA record.
        addresses: Vec<String>,
    },
    /// The connection closed.
    SessionEnd {
        bytes_up: u64,
        bytes_down: u64,
        statements: u64,
        denied: u64,
        error: Option<String>,
    },
    /// The final hash (the `hash` of the session end), signed with the
    /// host's ed25519 key.
    Seal {
        final_hash: String,
        public_key: String,
        signature: String,
        /// Set when the gateway sealed the recording at its next start,
        /// having stopped mid-session: why, and the final hash is then
        /// the last event's (there is no session end). The signature
        /// covers whether it is set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<String>,
    },
}

impl Body {
    /// About how many bytes the event holds: its texts and sample, which a
    /// job chooses; a fixed allowance for the rest.
    pub(crate) fn weight(&self) -> usize {
        const FIXED: usize = 256;
        FIXED
            + match self {
                Body::Statement { text, reason, .. } => text.len() + reason.len(),
                Body::Result {
                    text,
                    error,
                    columns,
                    sample,
                    ..
                } => {
                    text.as_ref().map_or(0, String::len)
                        + error.as_ref().map_or(0, String::len)
                        + columns.iter().map(String::len).sum::<usize>()
                        + sample.byte_len()
                }
                Body::Approval { detail, .. } => detail.len(),
                _ => 0,
            }
    }
}

impl Body {
    /// The `type` name, for tables and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::SessionStart { .. } => "session_start",
            Body::Login { .. } => "login",
            Body::Statement { .. } => "statement",
            Body::Result { .. } => "result",
            Body::Approval { .. } => "approval",
            Body::Dns { .. } => "dns",
            Body::SessionEnd { .. } => "session_end",
            Body::Seal { .. } => "seal",
        }
    }
}
