//! The admin socket's messages: one JSON line each way.
use serde::{Deserialize, Serialize};

use crate::approvals::Request;

/// Longest request line the server reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    ApprovalsList {
        all: bool,
    },
    ApprovalsShow {
        id: String,
    },
    ApprovalsDecide {
        id: String,
        approve: bool,
        /// The approval's comment or the denial's reason.
        text: Option<String>,
        /// `approve --for`, in seconds.
        grant_secs: Option<u64>,
        /// `approve --cgroup-wide`; absent from older clients.
        #[serde(default)]
        cgroup_wide: bool,
        /// A prefix of the statement digest the approver saw.
        digest: Option<String>,
    },
    /// Binds an OIDC token to a cgroup (default: the caller's).
    JobBegin {
        token: String,
        cgroup: Option<String>,
    },
    JobEnd {
        cgroup: Option<String>,
    },
    JobList,
}

/// One bound job, as `job begin` and `job list` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub cgroup: String,
    pub cgroup_id: u64,
    pub identity: String,
    pub claims: std::collections::BTreeMap<String, String>,
    /// RFC 3339.
    pub expires: String,
}

/// `error` set: the request failed, and says why in one line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<Request>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobInfo>,
}

impl AdminResponse {
    pub fn error(message: impl Into<String>) -> AdminResponse {
        AdminResponse {
            error: Some(message.into()),
            ..AdminResponse::default()
        }
    }

    pub fn requests(requests: Vec<Request>) -> AdminResponse {
        AdminResponse {
            requests,
            ..AdminResponse::default()
        }
    }
}
