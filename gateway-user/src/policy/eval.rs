//! Evaluating a flow against the compiled rules: deny overrides allow, and no match is a deny.
//!
//! A destination inside a postgres target is always that target's, whatever
//! rule decided, so that a broader rule (`"*"`, or a tcp target overlapping
//! the database) cannot turn a mediated database into a plain TCP pipe.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::compile::{Compiled, Rule, Target, TargetRef};

/// The name a decision shows when no rule matched.
pub const DEFAULT_DENY: &str = "default-deny";

/// Bytes of a process name the kernel keeps (`comm`, TASK_COMM_LEN 16
/// with its NUL).
pub const COMM_MAX: usize = 15;

/// `comm` as the gateway sees it for a process of that name, when that
/// differs: the kernel cuts the name at [`COMM_MAX`] bytes, not characters,
/// and the daemon reads those bytes lossily, so a character cut in half
/// ends in U+FFFD there as it does here. A rule is matched against that.
pub fn as_kernel_keeps(comm: &str) -> Option<String> {
    let bytes = comm.as_bytes();
    (bytes.len() > COMM_MAX).then(|| String::from_utf8_lossy(&bytes[..COMM_MAX]).into_owned())
}

/// What the policy knows about a connection when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowFacts<'a> {
    /// The original destination the process connected to.
    pub dst: SocketAddr,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The process name as the kernel keeps it (at most 15 bytes).
    pub comm: &'a str,
    /// The claims of the job bound to the process's cgroup; `None`:
    /// unidentified.
    pub claims: Option<&'a Claims>,
    /// The names the job resolved (through the gateway) to the
    /// destination's address, still within their TTL.
    pub names: &'a [Arc<str>],
    /// A UDP datagram flow (relayed) rather than a TCP connection: only
    /// `protocol = "udp"` targets (and `"*"`) match it.
    pub udp: bool,
}

/// A job token's claims, as text.
pub type Claims = std::collections::BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// The protocol the gateway speaks with a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// Bytes are passed through after the connection is allowed.
    #[default]
    Tcp,
    /// Every message is decoded and decided; credentials are injected.
    Postgres,
    /// Datagrams are relayed after the flow is allowed.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
            Protocol::Udp => "udp",
        })
    }
}

/// The verdict on one flow and what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The deciding rule; `None` for the default deny.
    pub rule: Option<Arc<str>>,
    /// The postgres target the destination is in, if any (the first in load
    /// order); else the deciding rule's first target the destination is in;
    /// `None` for the default deny and for `"*"` outside postgres targets.
    pub target: Option<Arc<str>>,
    /// [`Protocol::Postgres`] exactly when `target` is a postgres target;
    /// a denied postgres flow is refused with a PostgreSQL error.
    pub protocol: Protocol,
}

impl Decision {
    /// The deciding rule's name, `"default-deny"` when no rule matched.
    pub fn rule_name(&self) -> &str {
        self.rule.as_deref().unwrap_or(DEFAULT_DENY)
    }

    fn new(verdict: Verdict, rule: Option<&Rule>, target: Option<&Target>, udp: bool) -> Decision {
        let fallback = if udp { Protocol::Udp } else { Protocol::Tcp };
        Decision {
            verdict,
            rule: rule.map(|r| r.name.clone()),
            target: target.map(|t| t.name.clone()),
            protocol: target.map_or(fallback, Target::protocol),
        }
    }
}

/// The first postgres target, in load order, that holds the destination:
/// by address, or by **any** name the job resolved to it. Allowing takes
/// every name ([`Target::dest_matches`]); mediating takes one, since here
/// the safe direction is the other way round: resolving a second name of
/// the database's address must not turn it into a plain TCP pipe.
pub(super) fn postgres_target_of<'t>(
    targets: &'t [Target],
    (ip, port): (IpAddr, u16),
    names: &[Arc<str>],
) -> Option<&'t Target> {
    targets.iter().find(|t| {
        t.postgres.is_some()
            && (t.address_matches(ip) || names.iter().any(|n| t.name_matches(n)))
            && t.port_matches(port)
    })
}

/// The destination as rules see it: IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what
/// a dual-stack socket reports) is the IPv4 address it carries.
pub(super) fn destination(dst: SocketAddr) -> (IpAddr, u16) {
    (dst.ip().to_canonical(), dst.port())
}

impl Target {
    pub(super) fn address_matches(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// By address, or by name: every name the job resolved to `ip` must be
    /// one of the target's hosts. When one address serves several names,
    /// resolving another of them makes the address ambiguous, and it no
    /// longer matches: the job's allowance never widens to a name it was
    /// not given (a shared CDN address, a virtual host).
    pub(super) fn dest_matches(&self, ip: IpAddr, names: &[Arc<str>]) -> bool {
        self.address_matches(ip)
            || (!self.hosts.is_empty()
                && !names.is_empty()
                && names.iter().all(|n| self.name_matches(n)))
    }

    pub(super) fn name_matches(&self, name: &str) -> bool {
        self.hosts.iter().any(|h| h.matches(name))
    }

    pub(super) fn port_matches(&self, port: u16) -> bool {
        self.ports
            .iter()
            .any(|r| (r.first..=r.last).contains(&port))
    }
}

/// Which of a rule's targets a destination falls in.
pub(super) enum TargetMatch<'t> {
    None,
    Any,
    Named(&'t Target),
}

impl Rule {
    /// The first of this rule's targets, in the order written, that
    /// contains the destination.
    pub(super) fn target_for<'t>(
        &self,
        targets: &'t [Target],
        (ip, port): (IpAddr, u16),
        names: &[Arc<str>],
        udp: bool,
    ) -> TargetMatch<'t> {
        for target in &self.targets {
            match *target {
                TargetRef::Any => return TargetMatch::Any,
                TargetRef::Named(i) => {
                    let t = &targets[i];
                    if t.udp == udp && t.dest_matches(ip, names) && t.port_matches(port) {
                        return TargetMatch::Named(t);
                    }
                }
            }
        }
        TargetMatch::None
    }

    pub(super) fn uid_matches(&self, uid: u32) -> bool {
        self.uids
            .as_ref()
            .is_none_or(|set| set.uids.binary_search(&uid).is_ok())
    }

    pub(super) fn comm_matches(&self, comm: &str) -> bool {
        self.processes
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(comm)))
    }

    /// True when the rule names no claims, or the job's claims match every
    /// one it names. An unidentified connection (no job bound, a token
    /// that ran out, a job that ended its own binding) matches no allow
    /// rule that names claims, and every deny rule that does: it may be
    /// the very job the deny rule is about, and losing an identity must
    /// never lift a denial.
    pub(super) fn claims_match(&self, claims: Option<&Claims>) -> bool {
        let Some(rules) = &self.claims else {
            return true;
        };
        let Some(claims) = claims else {
            return self.action == Verdict::Deny;
        };
        rules.iter().all(|r| {
            claims
                .get(&r.claim)
                .is_some_and(|v| r.patterns.iter().any(|p| p.matches(v)))
        })
    }

    /// `Some(target)` when the rule matches the flow (`Some(None)` for `"*"`).
    pub(super) fn matches<'t>(
        &self,
        targets: &'t [Target],
        (ip, port): (IpAddr, u16),
        flow: &FlowFacts<'_>,
    ) -> Option<Option<&'t Target>> {
        if !self.uid_matches(flow.uid) || !self.claims_match(flow.claims) {
            return None;
        }
        let target = match self.target_for(targets, (ip, port), flow.names, flow.udp) {
            TargetMatch::None => return None,
            TargetMatch::Any => None,
            TargetMatch::Named(t) => Some(t),
        };
        self.comm_matches(flow.comm).then_some(target)
    }
}

/// Deny overrides: the verdict does not depend on the order of rules or
/// files; only which rule is named does (the first matching one in load
/// order).
pub(super) fn evaluate(compiled: &Compiled, flow: &FlowFacts<'_>) -> Decision {
    let dst = destination(flow.dst);
    let mut first_allow = None;
    let mut deny = None;
    for rule in &compiled.rules {
        if rule.action == Verdict::Allow && first_allow.is_some() {
            continue;
        }
        let Some(target) = rule.matches(&compiled.targets, dst, flow) else {
            continue;
        };
        match rule.action {
            Verdict::Deny => {
                deny = Some((rule, target));
                break;
            }
            Verdict::Allow => first_allow = Some((rule, target)),
        }
    }
    let (verdict, rule, target) = match deny.or(first_allow) {
        Some((rule, target)) => (rule.action, Some(rule), target),
        None => (Verdict::Deny, None, None),
    };
    let target = match target {
        Some(t) if t.postgres.is_some() || flow.udp => Some(t),
        other => postgres_target_of(&compiled.targets, dst, flow.names).or(other),
    };
    Decision::new(verdict, rule, target, flow.udp)
}

/// What the DNS forwarder may answer for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameDecision {
    pub allowed: bool,
    /// The deciding rule, `"default-deny"` when none names the name.
    pub rule: Arc<str>,
    /// The target whose hosts hold the name (`None` for `"*"`).
    pub target: Option<Arc<str>>,
}

/// A name may be resolved when an allow rule for this job reaches a
/// target whose hosts hold it (or any destination, `"*"`) and no deny rule
/// for the job does; ports do not matter here.
pub(super) fn resolve(compiled: &Compiled, flow: &FlowFacts<'_>, name: &str) -> NameDecision {
    let mut allow: Option<(&Rule, Option<&Target>)> = None;
    for rule in &compiled.rules {
        if !(rule.uid_matches(flow.uid)
            && rule.comm_matches(flow.comm)
            && rule.claims_match(flow.claims))
        {
            continue;
        }
        let hit = rule.targets.iter().find_map(|r| match *r {
            TargetRef::Any => Some(None),
            TargetRef::Named(i) => {
                let t = &compiled.targets[i];
                t.name_matches(name).then_some(Some(t))
            }
        });
        let Some(target) = hit else { continue };
        match rule.action {
            Verdict::Deny => {
                return NameDecision {
                    allowed: false,
                    rule: rule.name.clone(),
                    target: target.map(|t| t.name.clone()),
                };
            }
            Verdict::Allow if allow.is_none() => allow = Some((rule, target)),
            Verdict::Allow => {}
        }
    }
    match allow {
        Some((rule, target)) => NameDecision {
            allowed: true,
            rule: rule.name.clone(),
            target: target.map(|t| t.name.clone()),
        },
        None => NameDecision {
            allowed: false,
            rule: Arc::from(DEFAULT_DENY),
            target: None,
        },
    }
}
