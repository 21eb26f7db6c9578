//! The policy files as written: serde types that keep every value's position.
//!
//! Everything is optional and loosely typed (integers as `i64`, enums as
//! strings) so that `compile` can reject bad values with messages that say
//! what to write instead, rather than serde's generic ones.
use std::{collections::BTreeMap, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{self, Visitor},
};
use toml::Spanned;

/// `[daemon]`: settings of the gateway process itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DaemonSection {
    pub instance: Option<Spanned<String>>,
    pub listen_port: Option<Spanned<Int>>,
    pub dns_port: Option<Spanned<Int>>,
    pub udp_port: Option<Spanned<Int>>,
    pub udp_idle_timeout: Option<Spanned<String>>,
    pub max_connections_per_job: Option<Spanned<Int>>,
    pub max_buffered_mb_per_job: Option<Spanned<Int>>,
    pub mode: Option<Spanned<String>>,
    pub exempt_mark: Option<Spanned<Int>>,
    pub include: Option<Vec<Spanned<String>>>,
    pub masking_key_file: Option<Spanned<String>>,
    pub copy_out_masked: Option<Spanned<String>>,
    pub admin_socket: Option<Spanned<String>>,
    pub admin_group: Option<Spanned<String>>,
    pub metrics_listen: Option<Spanned<String>>,
}

/// `[approvals]`: the defaults of every rule's `[rule.approval]`, and where
/// approval requests are kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApprovalsSection {
    pub approvers: Option<Spanned<Vec<Spanned<String>>>>,
    pub min_approvals: Option<Spanned<Int>>,
    pub timeout: Option<Spanned<String>>,
    pub max_grant: Option<Spanned<String>>,
    pub notify: Option<Spanned<Vec<Spanned<WebhookEntry>>>>,
    pub dir: Option<Spanned<String>>,
    pub keep: Option<Spanned<String>>,
    pub postgres: Option<Spanned<String>>,
    pub postgres_password_file: Option<Spanned<String>>,
}

impl ApprovalsSection {
    /// The rule defaults, apart from where requests are kept.
    pub fn defaults(&mut self) -> ApprovalKeys {
        ApprovalKeys {
            approvers: self.approvers.take(),
            min_approvals: self.min_approvals.take(),
            timeout: self.timeout.take(),
            max_grant: self.max_grant.take(),
            notify: self.notify.take(),
        }
    }
}

/// The keys `[approvals]` and `[rule.approval]` share.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApprovalKeys {
    pub approvers: Option<Spanned<Vec<Spanned<String>>>>,
    pub min_approvals: Option<Spanned<Int>>,
    pub timeout: Option<Spanned<String>>,
    pub max_grant: Option<Spanned<String>>,
    pub notify: Option<Spanned<Vec<Spanned<WebhookEntry>>>>,
}

/// One element of `notify`: a webhook that receives each request as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WebhookEntry {
    pub url: Option<Spanned<String>>,
    pub bearer_file: Option<Spanned<String>>,
}

/// `[recording]`: where session recordings and the sealing key live.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecordingSection {
    pub enabled: Option<bool>,
    pub dir: Option<Spanned<String>>,
    pub keys_dir: Option<Spanned<String>>,
    pub result_rows: Option<Spanned<Int>>,
    pub max_age_days: Option<Spanned<Int>>,
    pub max_total_mb: Option<Spanned<Int>>,
    pub postgres: Option<Spanned<String>>,
    pub postgres_password_file: Option<Spanned<String>>,
    pub postgres_backlog: Option<Spanned<Int>>,
}

/// `[guard]`: which cgroup the kernel programs guard.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GuardSection {
    pub cgroup: Option<Spanned<String>>,
    pub create: Option<bool>,
    pub require_family_guard: Option<bool>,
    pub loopback_clients_only: Option<bool>,
}

/// One `[[target]]`: a named set of destinations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetEntry {
    pub name: Option<Spanned<String>>,
    pub addresses: Option<Spanned<Vec<Spanned<String>>>>,
    /// DNS names (`db.internal`, `*.corp.example`) matched through the
    /// answers the gateway's DNS forwarder gave the job.
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    pub ports: Option<Spanned<Vec<Spanned<PortValue>>>>,
    pub protocol: Option<Spanned<String>>,
    pub postgres: Option<Spanned<PostgresTargetSection>>,
}

/// `[target.postgres]`: how the gateway reaches and logs in to the database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PostgresTargetSection {
    pub upstream: Option<Spanned<String>>,
    pub tls: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub client_tls: Option<Spanned<bool>>,
    pub max_message_bytes: Option<Spanned<Int>>,
    /// Database role name (the key keeps its position) → its secret.
    pub credentials: Option<Spanned<BTreeMap<Spanned<String>, Spanned<CredentialEntry>>>>,
}

/// `[target.postgres.credentials.<role>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialEntry {
    pub password_file: Option<Spanned<String>>,
}

/// One `[[rule]]`: who may (or may not) reach which targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleEntry {
    pub name: Option<Spanned<String>>,
    pub action: Option<Spanned<String>>,
    pub targets: Option<Spanned<Vec<Spanned<String>>>>,
    pub uids: Option<Spanned<Vec<Spanned<Int>>>>,
    pub users: Option<Spanned<Vec<Spanned<String>>>>,
    pub processes: Option<Spanned<Vec<Spanned<String>>>>,
    pub postgres: Option<Spanned<PostgresRuleSection>>,
    pub approval: Option<Spanned<ApprovalKeys>>,
    /// `[rule.claims]`: job token claim → glob(s).
    pub claims: Option<Spanned<BTreeMap<Spanned<String>, Spanned<ClaimPatterns>>>>,
}

/// A `[rule.claims]` value: one glob or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum ClaimPatterns {
    One(String),
    Many(Vec<String>),
}

/// `[dns]`: where the gateway's DNS forwarder sends allowed queries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DnsSection {
    pub upstream: Option<Spanned<Vec<Spanned<String>>>>,
    pub denied_answer: Option<Spanned<String>>,
}

/// `[identity]`: who may bind jobs, and the OIDC issuers whose tokens bind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IdentitySection {
    pub runner_users: Option<Spanned<Vec<Spanned<String>>>>,
    pub leeway: Option<Spanned<String>>,
    pub max_job: Option<Spanned<String>>,
    pub state_file: Option<Spanned<String>>,
    pub issuer: Option<Vec<Spanned<IssuerEntry>>>,
}

/// `[[identity.issuer]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssuerEntry {
    pub name: Option<Spanned<String>>,
    pub issuer: Option<Spanned<String>>,
    pub audience: Option<Spanned<Vec<Spanned<String>>>>,
    pub jwks_file: Option<Spanned<String>>,
    pub required_claims: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[rule.postgres]`: what an allowed flow may do inside a PostgreSQL session.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PostgresRuleSection {
    pub roles: Option<Spanned<Vec<Spanned<String>>>>,
    pub allow: Option<Spanned<Vec<Spanned<String>>>>,
    pub deny: Option<Spanned<Vec<Spanned<String>>>>,
    pub approve: Option<Spanned<Vec<Spanned<String>>>>,
    pub tables: Option<Vec<Spanned<TableRuleEntry>>>,
    pub deny_functions: Option<Spanned<Vec<Spanned<String>>>>,
    pub approve_functions: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[[rule.postgres.tables]]`: accesses to some tables that are denied or held.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TableRuleEntry {
    pub tables: Option<Spanned<Vec<Spanned<String>>>>,
    pub deny: Option<Spanned<Vec<Spanned<String>>>>,
    pub approve: Option<Spanned<Vec<Spanned<String>>>>,
}

/// One `[[masking]]`: which result values of which targets are masked, and how.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MaskingEntry {
    pub name: Option<Spanned<String>>,
    pub targets: Option<Spanned<Vec<Spanned<String>>>>,
    pub columns: Option<Spanned<Vec<Spanned<String>>>>,
    pub names: Option<Spanned<Vec<Spanned<String>>>>,
    pub detectors: Option<Spanned<Vec<Spanned<String>>>>,
    pub strategy: Option<Spanned<String>>,
    pub keep: Option<Spanned<Int>>,
}

/// A TOML integer, kept wide so range errors can quote the value written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;
        impl Visitor<'_> for IntVisitor {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                Ok(Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        deserializer.deserialize_i64(IntVisitor)
    }
}

/// An element of `ports`: `7000` or `"7100-7200"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PortValue {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for PortValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = PortValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a port number or a range string like "7100-7200""#)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortValue, E> {
                Ok(PortValue::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortValue, E> {
                Ok(PortValue::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortValue, E> {
                Ok(PortValue::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}
