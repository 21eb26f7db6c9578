//! `[approvals]` and `[rule.approval]`: who may approve a held statement, how many must, for how long it waits, and whom to notify.
use std::{path::PathBuf, time::Duration};

use toml::Spanned;

use super::{
    load::{At, Report, Source},
    model::{ApprovalKeys, Int, WebhookEntry},
    secret_file,
};

/// How long a held statement waits for a decision unless a rule says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Most approvals a rule may require.
const MAX_MIN_APPROVALS: i64 = 10;
/// Longest a statement may be held: a client's session must not hang for days.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Longest `max_grant`: a grant lets statements through without asking, so
/// it is for hours or days, not a standing exemption.
const MAX_GRANT: Duration = Duration::from_secs(30 * 86_400);
/// Longest duration any setting or `--for` takes: past every sensible value,
/// and short enough that adding it to the clock cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Someone allowed to decide: a unix user, or every member of a unix group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approver {
    User { name: String, uid: u32 },
    Group { name: String, gid: u32 },
}

impl std::fmt::Display for Approver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Approver::User { name, .. } => f.write_str(name),
            Approver::Group { name, .. } => write!(f, "group:{name}"),
        }
    }
}

/// A webhook that receives every request of a rule as a JSON POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `http://` or `https://`, checked at load.
    pub url: String,
    /// Sent as `Authorization: Bearer <contents>`; read at each POST so
    /// a rotated secret needs no reload.
    pub bearer_file: Option<PathBuf>,
}

/// What happens when a rule holds a statement for approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRule {
    pub approvers: Vec<Approver>,
    /// Distinct approvers needed; one denial is enough to deny.
    pub min_approvals: usize,
    pub timeout: Duration,
    /// Longest `approve --for`; `None`: grants are refused.
    pub max_grant: Option<Duration>,
    pub notify: Vec<Webhook>,
}

impl ApprovalRule {
    /// Whether `min_approvals` distinct approvers can exist: a group may
    /// hold any number of users; listed users are each one. Found in
    /// review: `approvers = ["alice"]` with `min_approvals = 2` loaded, and
    /// every held statement waited out its timeout.
    pub fn can_be_met(&self) -> bool {
        let mut users: Vec<&str> = Vec::new();
        for approver in &self.approvers {
            match approver {
                Approver::Group { .. } => return true,
                Approver::User { name, .. } => {
                    if !users.contains(&name.as_str()) {
                        users.push(name);
                    }
                }
            }
        }
        users.len() >= self.min_approvals
    }
}

/// `[approvals]` or `[rule.approval]` as written, validated; unset keys
/// fall back to `[approvals]`, then to the defaults.
#[derive(Debug, Clone, Default)]
pub(super) struct ApprovalKeysCompiled {
    approvers: Option<Vec<Approver>>,
    min_approvals: Option<usize>,
    timeout: Option<Duration>,
    max_grant: Option<Duration>,
    notify: Option<Vec<Webhook>>,
}

impl ApprovalKeysCompiled {
    /// This rule's keys over the `[approvals]` defaults; `None` when no
    /// approver is named anywhere.
    pub fn over(&self, defaults: &ApprovalKeysCompiled) -> Option<ApprovalRule> {
        let approvers = self
            .approvers
            .clone()
            .or_else(|| defaults.approvers.clone())?;
        Some(ApprovalRule {
            approvers,
            min_approvals: self.min_approvals.or(defaults.min_approvals).unwrap_or(1),
            timeout: self.timeout.or(defaults.timeout).unwrap_or(DEFAULT_TIMEOUT),
            max_grant: self.max_grant.or(defaults.max_grant),
            notify: self
                .notify
                .clone()
                .or_else(|| defaults.notify.clone())
                .unwrap_or_default(),
        })
    }
}

/// Validates the shared keys; problems are reported and their keys left unset.
pub(super) fn keys(
    keys: &ApprovalKeys,
    file: usize,
    sources: &[Source],
    report: &mut Report,
) -> ApprovalKeysCompiled {
    let mut out = ApprovalKeysCompiled::default();
    if let Some(list) = &keys.approvers {
        if list.get_ref().is_empty() {
            report.error(
                At::of(file, list),
                "approvers is empty: name unix users (\"alice\") or groups (\"group:dba\") who may approve",
            );
        }
        let mut approvers = Vec::new();
        for written in list.get_ref() {
            match approver(written.get_ref()) {
                Ok(a) => approvers.push(a),
                Err(message) => report.error(At::of(file, written), message),
            }
        }
        out.approvers = Some(approvers).filter(|a| !a.is_empty());
    }
    if let Some(n) = &keys.min_approvals {
        let Int(value) = *n.get_ref();
        if (1..=MAX_MIN_APPROVALS).contains(&value) {
            out.min_approvals = Some(value as usize);
        } else {
            report.error(
                At::of(file, n),
                format!("min_approvals must be 1 to {MAX_MIN_APPROVALS}, not {value}"),
            );
        }
    }
    if let Some(t) = &keys.timeout {
        match duration(t.get_ref()) {
            Ok(d) if d <= MAX_TIMEOUT => out.timeout = Some(d),
            Ok(_) => report.error(
                At::of(file, t),
                format!(
                    "timeout {:?} is longer than 24h: a held client would hang that long",
                    t.get_ref()
                ),
            ),
            Err(message) => report.error(At::of(file, t), format!("timeout: {message}")),
        }
    }
    if let Some(t) = &keys.max_grant {
        match duration(t.get_ref()) {
            Ok(d) if d <= MAX_GRANT => out.max_grant = Some(d),
            Ok(_) => report.error(
                At::of(file, t),
                format!(
                    "max_grant {:?} is longer than 30 days: a grant lets statements through unasked that long",
                    t.get_ref()
                ),
            ),
            Err(message) => report.error(At::of(file, t), format!("max_grant: {message}")),
        }
    }
    if let Some(list) = &keys.notify {
        let mut hooks = Vec::new();
        for entry in list.get_ref() {
            if let Some(hook) = webhook(entry, file, sources, report) {
                hooks.push(hook);
            }
        }
        out.notify = Some(hooks);
    }
    out
}

/// `"alice"`, `"user:alice"` or `"group:dba"`, resolved on this host.
fn approver(text: &str) -> Result<Approver, String> {
    let (kind, name) = match text.split_once(':') {
        Some(("group", name)) => ("group", name),
        Some(("user", name)) => ("user", name),
        Some((other, _)) => {
            return Err(format!(
                "approver {text:?}: unknown kind {other:?}; write \"alice\", \"user:alice\" or \"group:dba\""
            ));
        }
        None => ("user", text),
    };
    if name.is_empty() {
        return Err(format!("approver {text:?} names no one"));
    }
    if kind == "group" {
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(Approver::Group {
                name: name.to_owned(),
                gid: g.gid.as_raw(),
            }),
            Ok(None) => Err(format!(
                "approver group {name:?} does not exist on this host"
            )),
            Err(e) => Err(format!("approver group {name:?}: {e}")),
        }
    } else {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(Approver::User {
                name: name.to_owned(),
                uid: u.uid.as_raw(),
            }),
            Ok(None) => Err(format!(
                "approver user {name:?} does not exist on this host"
            )),
            Err(e) => Err(format!("approver user {name:?}: {e}")),
        }
    }
}

/// `"15m"`, `"1h 30m"`, `"90s"`.
pub fn duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err(format!("{text:?} is zero")),
        Ok(d) if d > MAX_DURATION => Err(format!("{text:?} is longer than 100 years")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "{text:?} is not a duration ({e}): write e.g. \"15m\", \"1h\" or \"90s\""
        )),
    }
}

fn webhook(
    entry: &Spanned<WebhookEntry>,
    file: usize,
    sources: &[Source],
    report: &mut Report,
) -> Option<Webhook> {
    let Some(url) = &entry.get_ref().url else {
        report.error(
            At::of(file, entry),
            "this notify entry has no url: write { url = \"https://hooks.example/chokepoint\" }",
        );
        return None;
    };
    if let Err(message) = check_url(url.get_ref()) {
        report.error(At::of(file, url), message);
        return None;
    }
    let bearer_file = match &entry.get_ref().bearer_file {
        None => None,
        Some(written) => {
            let path = secret_file::resolve(sources, file, written.get_ref());
            if let Err(message) = secret_file::read_secret(&path, "bearer_file") {
                report.error(At::of(file, written), message);
                return None;
            }
            Some(path)
        }
    };
    Some(Webhook {
        url: url.get_ref().clone(),
        bearer_file,
    })
}

/// A webhook URL must be absolute `http` or `https` with a host.
pub fn check_url(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| format!("webhook url {text:?} is malformed ({e}): write e.g. \"https://hooks.example/chokepoint\""))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "webhook url {text:?} has scheme {:?}: only http and https are supported",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("webhook url {text:?} has no host"));
    }
    Ok(())
}

/// Where approval requests are kept; from `[approvals]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalStoreSettings {
    /// One JSON file per request (the default store).
    pub dir: PathBuf,
    /// `postgres = "..."`: the fleet store, shared by every gateway using it.
    pub postgres: Option<crate::recording::sink::SinkSettings>,
    /// How long a request stays in the store once it is settled (decided
    /// or expired, and its grant over).
    pub keep: Duration,
}

/// `[approvals] keep` unless set: a month of decisions to look back on
/// with `chokepoint approvals list --all`.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);
pub(super) const MIN_KEEP: Duration = Duration::from_secs(3600);
pub(super) const MAX_KEEP: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

impl Default for ApprovalStoreSettings {
    fn default() -> Self {
        ApprovalStoreSettings {
            dir: PathBuf::from("/var/lib/chokepoint/approvals"),
            postgres: None,
            keep: DEFAULT_KEEP,
        }
    }
}
