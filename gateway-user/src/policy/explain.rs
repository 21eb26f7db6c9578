//! `chokepoint policy explain`: every rule's outcome for one flow, and exactly why it did not match.
use std::{fmt, net::SocketAddr, sync::Arc};

use ipnet::IpNet;

use super::{
    compile::{Compiled, Rule, Target, TargetRef},
    eval::{Decision, FlowFacts, Protocol, TargetMatch, Verdict, destination, evaluate},
    postgres::{PostgresRule, PostgresTarget},
    session::SessionRule,
    settings::Mode,
    statement_kinds::{ACCESS_NAMES, CLASS_NAMES},
};

/// How every rule, in load order, relates to one flow, and the decision.
///
/// Its `Display` is the text `policy explain` prints: one line per rule,
/// then `decision: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub rules: Vec<RuleTrace>,
    /// Exactly what [`Policy::evaluate`](super::Policy::evaluate) returns.
    pub decision: Decision,
    pub mode: Mode,
}

/// One rule's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTrace {
    pub rule: Arc<str>,
    pub action: Verdict,
    /// `file:line:col` of the rule.
    pub origin: String,
    pub outcome: RuleOutcome,
    /// For a matched allow rule of a flow to a postgres target: the roles
    /// and statements it lets the session use, as one line.
    pub postgres: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleOutcome {
    /// `target` is the first of the rule's targets containing the
    /// destination; `None` for `"*"`.
    Matched { target: Option<Arc<str>> },
    /// Every condition the flow fails, as sentences.
    NotMatched { reasons: Vec<String> },
}

pub(super) fn explain(compiled: &Compiled, mode: Mode, flow: &FlowFacts<'_>) -> Explanation {
    let decision = evaluate(compiled, flow);
    let postgres_target = match (&decision.target, decision.protocol) {
        (Some(name), Protocol::Postgres) => compiled.targets.iter().find(|t| t.name == *name),
        _ => None,
    };
    let rules = compiled
        .rules
        .iter()
        .map(|rule| {
            let mut trace = trace(compiled, rule, flow);
            if let Some(target) = postgres_target
                && rule.action == Verdict::Allow
                && matches!(trace.outcome, RuleOutcome::Matched { .. })
                && reaches(rule, compiled, target)
            {
                trace.postgres = target.postgres.as_deref().map(|t| summary(rule, t));
            }
            trace
        })
        .collect();
    Explanation {
        rules,
        decision,
        mode,
    }
}

/// Whether a matched rule is one of the session's rules for `target`, as
/// [`Policy::session_rules`](super::Policy::session_rules) picks them.
fn reaches(rule: &Rule, compiled: &Compiled, target: &Target) -> bool {
    rule.targets.iter().any(|r| match *r {
        TargetRef::Any => true,
        TargetRef::Named(i) => compiled.targets[i].name == target.name,
    })
}

/// `postgres: roles app_ro; allow read, transaction; deny ddl, drop; ...`
fn summary(rule: &Rule, target: &PostgresTarget) -> String {
    let session_rule = SessionRule {
        name: rule.name.clone(),
        postgres: rule.postgres.clone(),
        approval: rule.approval.clone(),
    };
    let statements: &PostgresRule = session_rule.statements();
    let mut parts = Vec::new();
    let with_credentials: Vec<&str> = target.credentials.keys().map(String::as_str).collect();
    parts.push(match &statements.roles {
        Some(roles) => format!("roles {}", roles.join(", ")),
        None => format!(
            "roles {} (every role with credentials)",
            with_credentials.join(", ")
        ),
    });
    parts.push(
        if statements.allow == super::statement_kinds::Set::all(CLASS_NAMES.len()) {
            "allow every class".to_owned()
        } else if statements.allow.is_empty() {
            "allow no class".to_owned()
        } else {
            format!("allow {}", statements.allow.names(&CLASS_NAMES))
        },
    );
    if !statements.deny.is_empty() {
        parts.push(format!("deny {}", statements.deny));
    }
    if !statements.approve.is_empty() {
        parts.push(format!("approve {}", statements.approve));
    }
    for table in &statements.tables {
        let patterns: Vec<&str> = table.patterns.iter().map(|p| p.text.as_str()).collect();
        let mut what = Vec::new();
        if !table.deny.is_empty() {
            what.push(format!("deny {}", table.deny.names(&ACCESS_NAMES)));
        }
        if !table.approve.is_empty() {
            what.push(format!("approve {}", table.approve.names(&ACCESS_NAMES)));
        }
        parts.push(format!(
            "tables {}: {}",
            patterns.join(", "),
            what.join(", ")
        ));
    }
    for (verb, list) in [
        ("deny", &statements.deny_functions),
        ("approve", &statements.approve_functions),
    ] {
        if !list.is_empty() {
            let patterns: Vec<&str> = list.iter().map(|p| p.text.as_str()).collect();
            parts.push(format!("{verb} calls of {}", patterns.join(", ")));
        }
    }
    if let Some(approval) = &rule.approval {
        let approvers: Vec<String> = approval.approvers.iter().map(ToString::to_string).collect();
        let grants = approval.max_grant.map_or_else(
            || "no grants".to_owned(),
            |g| format!("grants up to {}", humantime::format_duration(g)),
        );
        let notify = match approval.notify.len() {
            0 => String::new(),
            1 => ", notifies 1 webhook".to_owned(),
            n => format!(", notifies {n} webhooks"),
        };
        parts.push(format!(
            "approvers {} ({} needed), waits {}, {grants}{notify}",
            approvers.join(", "),
            approval.min_approvals,
            humantime::format_duration(approval.timeout),
        ));
    }
    format!("postgres: {}", parts.join("; "))
}

fn trace(compiled: &Compiled, rule: &Rule, flow: &FlowFacts<'_>) -> RuleTrace {
    let (ip, port) = destination(flow.dst);
    let mut reasons = Vec::new();
    let target = rule.target_for(&compiled.targets, (ip, port), flow.names, flow.udp);
    if let TargetMatch::None = target {
        let misses: Vec<String> = rule
            .targets
            .iter()
            .filter_map(|r| match *r {
                TargetRef::Any => None,
                TargetRef::Named(i) => Some(&compiled.targets[i]),
            })
            .map(|t| {
                let mut why = Vec::new();
                if t.udp != flow.udp {
                    why.push(if t.udp {
                        "a udp target, and this is a TCP connection".to_owned()
                    } else {
                        "not a udp target, and this is a UDP flow".to_owned()
                    });
                }
                if !t.dest_matches(ip, flow.names) {
                    let nets: Vec<String> = t.nets.iter().map(short_net).collect();
                    why.push(format!("address not in [{}]", nets.join(", ")));
                }
                if !t.port_matches(port) {
                    why.push(format!("port {port} not in [{}]", join(&t.ports)));
                }
                format!("{} ({})", t.name, why.join(", "))
            })
            .collect();
        let dst = SocketAddr::new(ip, port);
        reasons.push(format!(
            "destination {dst} not in targets {}",
            misses.join(", ")
        ));
    }
    if !rule.uid_matches(flow.uid)
        && let Some(set) = &rule.uids
    {
        let mut why = format!("uid {} not in [{}]", flow.uid, join(&set.uids));
        if !set.users.is_empty() {
            let users: Vec<String> = set
                .users
                .iter()
                .map(|(name, uid)| format!("{name}={uid}"))
                .collect();
            why.push_str(&format!(" (users: {})", users.join(", ")));
        }
        reasons.push(why);
    }
    if let Some(claims) = &rule.claims
        && !rule.claims_match(flow.claims)
    {
        match flow.claims {
            None => reasons.push(
                "the connection is unidentified (no job is bound to its cgroup), and this allow rule names job claims (a deny rule that names claims matches unidentified connections)".to_owned(),
            ),
            Some(job) => {
                for c in claims {
                    let patterns: Vec<&str> = c.patterns.iter().map(|p| p.as_str()).collect();
                    match job.get(&c.claim) {
                        Some(v) if c.patterns.iter().any(|p| p.matches(v)) => {}
                        Some(v) => reasons.push(format!("claim {} = {v:?} matches none of {patterns:?}", c.claim)),
                        None => reasons.push(format!("the job's token has no claim {}", c.claim)),
                    }
                }
            }
        }
    }
    if !rule.comm_matches(flow.comm)
        && let Some(patterns) = &rule.processes
    {
        let patterns: Vec<&str> = patterns.iter().map(|p| p.as_str()).collect();
        reasons.push(format!("comm {:?} matches none of {patterns:?}", flow.comm));
    }
    let outcome = match target {
        TargetMatch::Named(t) if reasons.is_empty() => RuleOutcome::Matched {
            target: Some(t.name.clone()),
        },
        TargetMatch::Any if reasons.is_empty() => RuleOutcome::Matched { target: None },
        _ => RuleOutcome::NotMatched { reasons },
    };
    RuleTrace {
        rule: rule.name.clone(),
        action: rule.action,
        origin: rule.origin.clone(),
        outcome,
        postgres: None,
    }
}

/// A single address without its /32 or /128, as it is usually written.
fn short_net(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    items.join(", ")
}

impl fmt::Display for RuleTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {} ({}, {}): ", self.rule, self.action, self.origin)?;
        match &self.outcome {
            RuleOutcome::Matched { target: Some(t) } => write!(f, "matched (target {t})")?,
            RuleOutcome::Matched { target: None } => f.write_str("matched (any destination)")?,
            RuleOutcome::NotMatched { reasons } => write!(f, "no match: {}", reasons.join("; "))?,
        }
        if let Some(postgres) = &self.postgres {
            write!(f, "\n    {postgres}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for rule in &self.rules {
            writeln!(f, "{rule}")?;
        }
        let d = &self.decision;
        // Before the decision, which stays the last line.
        if d.verdict == Verdict::Deny && self.mode == Mode::Audit {
            writeln!(
                f,
                "mode audit: this denied connection would be logged, then forwarded"
            )?;
        }
        let verdict = d.verdict;
        let protocol = match d.protocol {
            Protocol::Tcp => "",
            Protocol::Postgres => ", protocol postgres",
            Protocol::Udp => ", protocol udp",
        };
        match (&d.rule, &d.target) {
            (None, Some(target)) => writeln!(
                f,
                "decision: {verdict} ({}: no rule matched; target {target}{protocol})",
                d.rule_name()
            ),
            (None, None) => writeln!(
                f,
                "decision: {verdict} ({}: no rule matched)",
                d.rule_name()
            ),
            (Some(rule), Some(target)) => {
                writeln!(
                    f,
                    "decision: {verdict} by rule {rule} (target {target}{protocol})"
                )
            }
            (Some(rule), None) => {
                writeln!(f, "decision: {verdict} by rule {rule} (any destination)")
            }
        }
    }
}
