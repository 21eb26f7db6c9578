//! Validation of targets and rules into the form evaluation needs: parsed nets, port ranges, uid sets, globs.
use std::{collections::HashMap, fmt, net::IpAddr, sync::Arc};

use glob::Pattern;
use ipnet::IpNet;
use toml::Spanned;

use super::{
    approval::{self, ApprovalKeysCompiled, ApprovalRule},
    eval::{COMM_MAX, DEFAULT_DENY, Protocol, Verdict, as_kernel_keeps},
    load::{At, Entry, Located, Report, Source, describe},
    masking_config::{self, MaskingKey, MaskingRules},
    model::{ClaimPatterns, Int, MaskingEntry, PortValue, RuleEntry, TargetEntry},
    postgres::{self, Place, PostgresRule, PostgresTarget, RuleScope},
};

/// Targets, rules and masking, ready for evaluation, in load order.
#[derive(Debug)]
pub(super) struct Compiled {
    pub targets: Vec<Target>,
    pub rules: Vec<Rule>,
    pub masking: MaskingRules,
}

#[derive(Debug)]
pub(super) struct Target {
    pub name: Arc<str>,
    pub nets: Vec<IpNet>,
    /// DNS names; a destination matches through the names the job
    /// resolved to it.
    pub hosts: Vec<HostPattern>,
    pub ports: Vec<PortRange>,
    /// `Some` exactly when `protocol = "postgres"`.
    pub postgres: Option<Arc<PostgresTarget>>,
    /// `protocol = "udp"`: the target holds datagram destinations, relayed
    /// by the gateway; TCP flows never match it, nor UDP flows others.
    pub udp: bool,
}

impl Target {
    pub fn protocol(&self) -> Protocol {
        match (&self.postgres, self.udp) {
            (Some(_), _) => Protocol::Postgres,
            (None, true) => Protocol::Udp,
            (None, false) => Protocol::Tcp,
        }
    }
}

/// `db.internal` (that name) or `*.corp.example` (any name below it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostPattern {
    Exact(String),
    /// Stored with its leading dot: `.corp.example`.
    Below(String),
}

impl HostPattern {
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        match self {
            HostPattern::Exact(n) => name.eq_ignore_ascii_case(n),
            HostPattern::Below(suffix) => {
                name.len() > suffix.len()
                    && name.is_char_boundary(name.len() - suffix.len())
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Below(s) => write!(f, "*{s}"),
        }
    }
}

/// `db.internal` or `*.corp.example`, lower-cased.
fn parse_host(text: &str) -> Result<HostPattern, String> {
    let lower = text.trim_end_matches('.').to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(format!(
            "host {text:?} is not a DNS name: write e.g. \"db.internal\" or \"*.corp.example\" (a \"*.\" prefix only)"
        ));
    }
    Ok(if wild {
        HostPattern::Below(format!(".{name}"))
    } else {
        HostPattern::Exact(name.to_owned())
    })
}

/// Inclusive; a single port is `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TargetRef {
    /// `"*"`: any destination.
    Any,
    /// Index into [`Compiled::targets`].
    Named(usize),
}

#[derive(Debug)]
pub(super) struct Rule {
    pub name: Arc<str>,
    pub action: Verdict,
    pub targets: Vec<TargetRef>,
    /// `None`: any uid.
    pub uids: Option<UidSet>,
    /// `None`: any process.
    pub processes: Option<Vec<Pattern>>,
    /// `file:line:col` of the `[[rule]]` header, for `explain`.
    pub origin: String,
    /// `[rule.postgres]` of an allow rule; `None` when absent.
    pub postgres: Option<Arc<PostgresRule>>,
    /// `[rule.approval]` over `[approvals]`: `Some` when the rule holds
    /// statements for approval.
    pub approval: Option<Arc<ApprovalRule>>,
    /// `[rule.claims]`: each claim must match one of its globs; `None`:
    /// the rule does not look at the job's identity.
    pub claims: Option<Vec<ClaimRule>>,
}

/// One `[rule.claims]` entry.
#[derive(Debug)]
pub(super) struct ClaimRule {
    pub claim: String,
    pub patterns: Vec<Pattern>,
}

/// `uids` ∪ the uids of `users`.
#[derive(Debug)]
pub(super) struct UidSet {
    /// Sorted, without repeats.
    pub uids: Vec<u32>,
    /// The users as written with the uid each resolved to, for `explain`.
    pub users: Vec<(String, u32)>,
}

/// Resolves a user name to its uid: `Ok(None)` when there is no such user.
pub(super) type UserLookup<'a> = &'a dyn Fn(&str) -> Result<Option<u32>, String>;

/// The policy files' `[[target]]`, `[[rule]]` and `[[masking]]` entries.
pub(super) struct Entries {
    pub targets: Vec<Located<Entry<TargetEntry>>>,
    pub rules: Vec<Located<Entry<RuleEntry>>>,
    pub masking: Vec<Located<Entry<MaskingEntry>>>,
    /// Whether any `[[identity.issuer]]` is configured: without one no
    /// connection is ever identified, and `[rule.claims]` means nothing.
    pub issuers: bool,
}

pub(super) fn compile(
    entries: Entries,
    masking_key: &MaskingKey,
    approval_defaults: &ApprovalKeysCompiled,
    sources: &[Source],
    report: &mut Report,
    users: UserLookup<'_>,
) -> Compiled {
    let Entries {
        targets,
        rules,
        masking,
        issuers,
    } = entries;
    let mut compiled_targets = Vec::new();
    let mut compiled_rules = Vec::new();
    // Every target name that was declared, even by an invalid target, so
    // that rules naming it are not also reported as unknown.
    let mut names: Vec<String> = Vec::new();
    let mut by_name: HashMap<String, (At, Option<usize>)> = HashMap::new();
    for Located { at, value } in targets {
        let (name, entry) = split(value);
        let target = entry.and_then(|entry| target(at, entry, sources, report));
        let Some(name) = name else { continue };
        let name_at = At::of(at.file, &name);
        let text = name.into_inner();
        if let Some((first, _)) = by_name.get(&text) {
            let first = describe(sources, *first);
            report.error(
                name_at,
                format!(
                    "target {text:?} is already defined at {first}: target names must be unique"
                ),
            );
            continue;
        }
        let valid = check_name("target", &text, name_at, report);
        let index = target.filter(|_| valid).map(|t| {
            compiled_targets.push(t);
            compiled_targets.len() - 1
        });
        names.push(text.clone());
        by_name.insert(text, (name_at, index));
    }

    let mut rule_names: HashMap<String, At> = HashMap::new();
    for Located { at, value } in rules {
        let (name, entry) = split(value);
        let name_ok = name.as_ref().is_some_and(|name| {
            let name_at = At::of(at.file, name);
            let text = name.get_ref();
            if !check_name("rule", text, name_at, report) {
                return false;
            }
            if text == DEFAULT_DENY {
                report.error(
                    name_at,
                    format!(
                        "rule name {text:?} is reserved for the built-in default: choose another"
                    ),
                );
                return false;
            }
            if let Some(first) = rule_names.get(text) {
                let first = describe(sources, *first);
                report.error(
                    name_at,
                    format!(
                        "rule {text:?} is already defined at {first}: rule names must be unique"
                    ),
                );
                return false;
            }
            rule_names.insert(text.clone(), name_at);
            true
        });
        let Some(entry) = entry else { continue };
        let context = RuleContext {
            names: &names,
            by_name: &by_name,
            targets: &compiled_targets,
            users,
            origin: describe(sources, at),
            sources,
            approval_defaults,
            issuers,
        };
        if let Some(rule) = rule(at, entry, &context, report).filter(|_| name_ok) {
            compiled_rules.push(rule);
        }
    }
    let masking = masking_config::compile(
        masking,
        &masking_config::Context {
            sources,
            targets: &compiled_targets,
            by_name: &by_name,
            key: masking_key,
        },
        report,
    );
    Compiled {
        targets: compiled_targets,
        rules: compiled_rules,
        masking,
    }
}

/// An entry's name, and its body when it deserialized.
fn split<T: Named>(entry: Entry<T>) -> (Option<Spanned<String>>, Option<T>) {
    match entry {
        Entry::Valid(entry) => (entry.name().cloned(), Some(entry)),
        Entry::Broken { name } => (name, None),
    }
}

trait Named {
    fn name(&self) -> Option<&Spanned<String>>;
}

impl Named for TargetEntry {
    fn name(&self) -> Option<&Spanned<String>> {
        self.name.as_ref()
    }
}

impl Named for RuleEntry {
    fn name(&self) -> Option<&Spanned<String>> {
        self.name.as_ref()
    }
}

/// Names are identifiers in logs and in the errors clients see.
pub(super) fn check_name(kind: &str, name: &str, at: At, report: &mut Report) -> bool {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !valid {
        report.error(
            at,
            format!(
                "{kind} name {name:?} must be one or more of A-Z, a-z, 0-9, \"_\", \".\" and \"-\""
            ),
        );
    }
    valid
}

fn label(kind: &str, name: Option<&Spanned<String>>) -> String {
    match name {
        Some(name) => format!("{kind} {:?}", name.get_ref()),
        None => format!("this [[{kind}]]"),
    }
}

/// A required, non-empty list: reports when it is missing or empty.
fn required_list<'v, T>(
    list: Option<&'v Spanned<Vec<T>>>,
    at: At,
    missing: impl FnOnce() -> String,
    empty: &str,
    report: &mut Report,
) -> Option<&'v [T]> {
    match list {
        None => {
            report.error(at, missing());
            None
        }
        Some(list) if list.get_ref().is_empty() => {
            report.error(At::of(at.file, list), empty);
            None
        }
        Some(list) => Some(list.get_ref()),
    }
}

/// An optional list that, when present, must not be empty: an empty subject
/// list would silently make the rule match nobody.
fn optional_list<'v, T>(
    list: Option<&'v Spanned<Vec<T>>>,
    file: usize,
    key: &str,
    report: &mut Report,
) -> Result<Option<&'v [T]>, ()> {
    match list {
        Some(list) if list.get_ref().is_empty() => {
            report.error(
                At::of(file, list),
                format!("{key} is empty, so this rule could never match: list at least one, or remove {key} to match any"),
            );
            Err(())
        }
        other => Ok(other.map(|l| l.get_ref().as_slice())),
    }
}

fn target(at: At, entry: TargetEntry, sources: &[Source], report: &mut Report) -> Option<Target> {
    let file = at.file;
    let label = label("target", entry.name.as_ref());
    let mut ok = true;
    if entry.name.is_none() {
        report.error(at, "this [[target]] has no name: add name = \"...\"");
        ok = false;
    }
    let protocol = match &entry.protocol {
        None => Some(Protocol::Tcp),
        Some(protocol) => match protocol.get_ref().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "postgres" => Some(Protocol::Postgres),
            "udp" => Some(Protocol::Udp),
            other => {
                report.error(
                    At::of(file, protocol),
                    format!(
                        "protocol {other:?} is not supported; valid protocols: tcp, postgres, udp"
                    ),
                );
                ok = false;
                None
            }
        },
    };
    let postgres = match (protocol, &entry.postgres, &entry.name) {
        (Some(Protocol::Postgres), Some(section), Some(name)) => {
            let place = Place { sources, file };
            let compiled =
                postgres::target(&Arc::from(name.get_ref().as_str()), section, &place, report);
            ok &= compiled.is_some();
            compiled.map(Arc::new)
        }
        (Some(Protocol::Postgres), None, _) => {
            let at = entry.protocol.as_ref().map_or(at, |p| At::of(file, p));
            report.error(
                at,
                format!("{label} has protocol = \"postgres\" but no [target.postgres]: add [target.postgres] with a [target.postgres.credentials.<role>] password_file = \"...\" for each role jobs may use"),
            );
            ok = false;
            None
        }
        (Some(p @ (Protocol::Tcp | Protocol::Udp)), Some(section), _) => {
            report.error(
                At::of(file, section),
                format!("[target.postgres] needs protocol = \"postgres\" in {label} (its protocol is {p}): add protocol = \"postgres\", or remove this section"),
            );
            ok = false;
            None
        }
        _ => None,
    };
    let addresses = nonempty(
        entry.addresses.as_ref(),
        file,
        "addresses",
        "IP address or CIDR",
        report,
    );
    let hosts_list = nonempty(entry.hosts.as_ref(), file, "hosts", "DNS name", report);
    let (addresses, hosts_list) = match (addresses, hosts_list) {
        (Ok(None), Ok(None)) => {
            report.error(
                at,
                format!("{label} has no addresses or hosts: add addresses = [\"10.0.0.1\", \"10.1.0.0/16\"] or hosts = [\"db.internal\"]"),
            );
            (None, None)
        }
        (Ok(a), Ok(h)) => (Some(a.unwrap_or_default()), Some(h.unwrap_or_default())),
        _ => (None, None),
    };
    let mut nets = Vec::new();
    for address in addresses.unwrap_or_default() {
        match parse_net(address.get_ref()) {
            Ok(net) => nets.push(net),
            Err(message) => {
                report.error(At::of(file, address), message);
                ok = false;
            }
        }
    }
    let mut hosts = Vec::new();
    for host in hosts_list.unwrap_or_default() {
        match parse_host(host.get_ref()) {
            Ok(h) => hosts.push(h),
            Err(message) => {
                report.error(At::of(file, host), message);
                ok = false;
            }
        }
    }
    let ports_list = required_list(
        entry.ports.as_ref(),
        at,
        || {
            format!(
                "{label} has no ports: add ports = [443] (numbers, or ranges such as \"7100-7200\")"
            )
        },
        "ports is empty: list at least one port or range such as \"7100-7200\"",
        report,
    );
    let mut ports = Vec::new();
    for port in ports_list.unwrap_or_default() {
        match parse_port(port.get_ref()) {
            Ok(range) => ports.push(range),
            Err(message) => {
                report.error(At::of(file, port), message);
                ok = false;
            }
        }
    }
    let name = entry.name?;
    (ok && addresses.is_some() && ports_list.is_some()).then(|| Target {
        name: postgres
            .as_ref()
            .map_or_else(|| Arc::from(name.into_inner()), |p| p.name.clone()),
        nets,
        hosts,
        ports,
        postgres,
        udp: protocol == Some(Protocol::Udp),
    })
}

/// A target's `addresses` or `hosts`: absent is fine, empty is not.
fn nonempty<'v>(
    list: Option<&'v Spanned<Vec<Spanned<String>>>>,
    file: usize,
    what: &str,
    one: &str,
    report: &mut Report,
) -> Result<Option<&'v [Spanned<String>]>, ()> {
    match list {
        Some(l) if l.get_ref().is_empty() => {
            report.error(
                At::of(file, l),
                format!("{what} is empty: list at least one {one}"),
            );
            Err(())
        }
        other => Ok(other.map(|l| l.get_ref().as_slice())),
    }
}

/// An IP (a /32 or /128) or a CIDR. IPv4-mapped IPv6 nets become IPv4 nets,
/// because destinations are compared after the same normalisation.
fn parse_net(text: &str) -> Result<IpNet, String> {
    let net = match (text.parse::<IpAddr>(), text.parse::<IpNet>()) {
        (Ok(ip), _) => IpNet::from(ip),
        (_, Ok(net)) if net.trunc() != net => {
            return Err(format!(
                "address {text:?} has host bits set: write \"{}\" for the network, or \"{}\" alone for the single address",
                net.trunc(),
                net.addr()
            ));
        }
        (_, Ok(net)) => net,
        (Err(_), Err(_)) => {
            return Err(format!(
                "{text:?} is not an IP address or CIDR: write e.g. \"10.0.0.1\", \"10.0.0.0/8\" or \"fd00::/8\""
            ));
        }
    };
    Ok(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        _ => net,
    })
}

fn parse_port(value: &PortValue) -> Result<PortRange, String> {
    let one = |n: i64, written: &str| match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!(
            "port {n} in {written} is out of range: ports are 1..=65535"
        )),
    };
    match value {
        PortValue::Number(n) => {
            let port = one(*n, "ports")?;
            Ok(PortRange {
                first: port,
                last: port,
            })
        }
        PortValue::Text(text) => {
            let not_a_port = || {
                format!(
                    "{text:?} is not a port: write a number 1..=65535 (unquoted) or a range such as \"7100-7200\""
                )
            };
            let number = |s: &str| s.trim().parse::<i64>().map_err(|_| not_a_port());
            let written = format!("{text:?}");
            let (first, last) = match text.split_once('-') {
                Some((a, b)) => (one(number(a)?, &written)?, one(number(b)?, &written)?),
                None => {
                    let port = one(number(text)?, &written)?;
                    (port, port)
                }
            };
            if first > last {
                return Err(format!(
                    "port range {text:?} is reversed: write \"{last}-{first}\""
                ));
            }
            Ok(PortRange { first, last })
        }
    }
}

struct RuleContext<'a> {
    names: &'a [String],
    by_name: &'a HashMap<String, (At, Option<usize>)>,
    /// The targets compiled so far: every one, since targets come first.
    targets: &'a [Target],
    users: UserLookup<'a>,
    origin: String,
    sources: &'a [Source],
    approval_defaults: &'a ApprovalKeysCompiled,
    issuers: bool,
}

fn rule(at: At, entry: RuleEntry, context: &RuleContext<'_>, report: &mut Report) -> Option<Rule> {
    let file = at.file;
    let label = label("rule", entry.name.as_ref());
    let mut ok = true;
    if entry.name.is_none() {
        report.error(at, "this [[rule]] has no name: add name = \"...\"");
        ok = false;
    }
    let action = match &entry.action {
        None => {
            report.error(
                at,
                format!("{label} has no action: add action = \"allow\" or action = \"deny\""),
            );
            None
        }
        Some(action) => match action.get_ref().as_str() {
            "allow" => Some(Verdict::Allow),
            "deny" => Some(Verdict::Deny),
            other => {
                report.error(
                    At::of(file, action),
                    format!("action must be \"allow\" or \"deny\", not {other:?}"),
                );
                None
            }
        },
    };
    let targets = required_list(
        entry.targets.as_ref(),
        at,
        || {
            format!(
                "{label} has no targets: add targets = [\"name\"], or [\"*\"] for any destination"
            )
        },
        "targets is empty: list target names, or \"*\" for any destination",
        report,
    );
    let mut refs = Vec::new();
    let mut targets_known = true;
    for name in targets.unwrap_or_default() {
        let text = name.get_ref();
        if text == "*" {
            refs.push(TargetRef::Any);
            continue;
        }
        match context.by_name.get(text) {
            Some((_, Some(index))) => refs.push(TargetRef::Named(*index)),
            // Declared but invalid: already reported where it is declared.
            Some((_, None)) => {
                ok = false;
                targets_known = false;
            }
            None => {
                targets_known = false;
                let defined = if context.names.is_empty() {
                    "no targets are defined; use \"*\" for any destination".to_owned()
                } else {
                    format!("defined targets: {}", context.names.join(", "))
                };
                report.error(
                    At::of(file, name),
                    format!("unknown target {text:?}; {defined}"),
                );
                ok = false;
            }
        }
    }
    let uids = uid_set(&entry, file, context.users, report);
    let processes = processes(&entry, file, report);
    let postgres = match &entry.postgres {
        None => Ok(None),
        Some(section) => {
            let scope = RuleScope {
                action,
                rule_label: &label,
                targets_known: targets_known && targets.is_some(),
                postgres_targets: refs
                    .iter()
                    .filter_map(|r| match *r {
                        TargetRef::Named(i) => context.targets[i].postgres.as_deref(),
                        TargetRef::Any => None,
                    })
                    .collect(),
            };
            postgres::rule(section, &scope, file, report)
                .map(|rule| Some(Arc::new(rule)))
                .ok_or(())
        }
    };
    let approval = approval_of(&entry, &postgres, at, &label, context, report);
    let claims = claims(&entry, file, context.issuers, report);
    let name = entry.name?;
    let (Some(action), Some(_), Ok(uids), Ok(processes), Ok(postgres), Ok(approval), Ok(claims)) =
        (action, targets, uids, processes, postgres, approval, claims)
    else {
        return None;
    };
    ok.then(|| Rule {
        name: Arc::from(name.into_inner()),
        action,
        targets: refs,
        uids,
        processes,
        origin: context.origin.clone(),
        postgres,
        approval,
        claims,
    })
}

/// `[rule.claims]`: claim names and their globs.
fn claims(
    entry: &RuleEntry,
    file: usize,
    issuers: bool,
    report: &mut Report,
) -> Result<Option<Vec<ClaimRule>>, ()> {
    let Some(table) = &entry.claims else {
        return Ok(None);
    };
    if table.get_ref().is_empty() {
        report.error(
            At::of(file, table),
            "[rule.claims] is empty: name claims such as repository = \"acme/*\", or remove it",
        );
        return Err(());
    }
    if !issuers {
        // Every connection is unidentified then: an allow rule naming
        // claims never matches, a deny rule matches every connection.
        report.error(
            At::of(file, table),
            "[rule.claims] needs a token issuer, and no [[identity.issuer]] is configured: add one (see examples/identity/policy.toml) or remove the claims",
        );
        return Err(());
    }
    let mut ok = true;
    let mut out = Vec::new();
    for (claim, value) in table.get_ref() {
        // No token has a claim without a name: the rule would never
        // match a job (or, for a deny rule, only unidentified ones).
        // An empty pattern is fine: GitHub sets head_ref = "" outside
        // pull requests.
        if claim.get_ref().trim().is_empty() {
            report.error(
                At::of(file, claim),
                format!(
                    "claim {:?} has no name: name a token claim, e.g. repository = \"acme/*\"",
                    claim.get_ref()
                ),
            );
            ok = false;
            continue;
        }
        let texts = match value.get_ref() {
            ClaimPatterns::One(t) => vec![t.clone()],
            ClaimPatterns::Many(list) => list.clone(),
        };
        if texts.is_empty() {
            report.error(
                At::of(file, value),
                format!(
                    "claim {:?} lists no pattern: write e.g. {} = \"acme/*\"",
                    claim.get_ref(),
                    claim.get_ref()
                ),
            );
            ok = false;
            continue;
        }
        let mut patterns = Vec::new();
        for text in texts {
            match Pattern::new(&text) {
                Ok(p) => patterns.push(p),
                Err(e) => {
                    report.error(At::of(file, value), format!("claim pattern {text:?}: {e}"));
                    ok = false;
                }
            }
        }
        out.push(ClaimRule {
            claim: claim.get_ref().clone(),
            patterns,
        });
    }
    if ok { Ok(Some(out)) } else { Err(()) }
}

/// The rule's approval settings when it holds anything for approval;
/// `Err` (reported) when it does but names no approver, or when
/// `[rule.approval]` is on a rule that holds nothing.
fn approval_of(
    entry: &RuleEntry,
    postgres: &Result<Option<Arc<PostgresRule>>, ()>,
    at: At,
    label: &str,
    context: &RuleContext<'_>,
    report: &mut Report,
) -> Result<Option<Arc<ApprovalRule>>, ()> {
    let file = at.file;
    let keys = entry
        .approval
        .as_ref()
        .map(|section| approval::keys(section.get_ref(), file, context.sources, report));
    let holds = match postgres {
        Ok(Some(rule)) => rule.holds_anything(),
        Ok(None) => false,
        // Already reported; whether it holds is unknown.
        Err(()) => return Err(()),
    };
    match (holds, keys) {
        (false, None) => Ok(None),
        (false, Some(_)) => {
            let section = entry.approval.as_ref().expect("keys came from it");
            report.error(
                At::of(file, section),
                format!("[rule.approval] of {label} has nothing to approve: add approve = [...] to its [rule.postgres], or remove [rule.approval]"),
            );
            Err(())
        }
        (true, keys) => match keys.unwrap_or_default().over(context.approval_defaults) {
            Some(rule) if !rule.can_be_met() => {
                let mut names: Vec<String> = Vec::new();
                for name in rule.approvers.iter().map(ToString::to_string) {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                report.error(
                    at,
                    format!(
                        "{label} needs {} approvals but names {} distinct approver{} ({}): no statement it holds could ever be released; add approvers (or a group) or lower min_approvals",
                        rule.min_approvals,
                        names.len(),
                        if names.len() == 1 { "" } else { "s" },
                        names.join(", ")
                    ),
                );
                Err(())
            }
            Some(rule) => Ok(Some(Arc::new(rule))),
            None => {
                report.error(
                    at,
                    format!("{label} holds statements for approval but names no approver: add [rule.approval] approvers = [\"alice\", \"group:dba\"], or approvers in [approvals]"),
                );
                Err(())
            }
        },
    }
}

fn uid_set(
    entry: &RuleEntry,
    file: usize,
    lookup: UserLookup<'_>,
    report: &mut Report,
) -> Result<Option<UidSet>, ()> {
    let uids = optional_list(entry.uids.as_ref(), file, "uids", report);
    let users = optional_list(entry.users.as_ref(), file, "users", report);
    let (uids, users) = (uids?, users?);
    if uids.is_none() && users.is_none() {
        return Ok(None);
    }
    let mut ok = true;
    let mut set = UidSet {
        uids: Vec::new(),
        users: Vec::new(),
    };
    for uid in uids.unwrap_or_default() {
        let Int(n) = *uid.get_ref();
        match u32::try_from(n) {
            Ok(n) => set.uids.push(n),
            Err(_) => {
                report.error(
                    At::of(file, uid),
                    format!("uid {n} is out of range: uids are 0..={}", u32::MAX),
                );
                ok = false;
            }
        }
    }
    for user in users.unwrap_or_default() {
        let name = user.get_ref();
        match lookup(name) {
            Ok(Some(uid)) => {
                set.uids.push(uid);
                set.users.push((name.clone(), uid));
            }
            Ok(None) => {
                report.error(
                    At::of(file, user),
                    format!("unknown user {name:?}: there is no such user on this host; create it, or use uids = [...]"),
                );
                ok = false;
            }
            Err(e) => {
                report.error(
                    At::of(file, user),
                    format!("cannot look up user {name:?}: {e}"),
                );
                ok = false;
            }
        }
    }
    set.uids.sort_unstable();
    set.uids.dedup();
    if ok { Ok(Some(set)) } else { Err(()) }
}

fn processes(
    entry: &RuleEntry,
    file: usize,
    report: &mut Report,
) -> Result<Option<Vec<Pattern>>, ()> {
    let Some(list) = optional_list(entry.processes.as_ref(), file, "processes", report)? else {
        return Ok(None);
    };
    let mut patterns = Vec::new();
    let mut ok = true;
    for text in list {
        match process_pattern(text.get_ref()) {
            Ok(pattern) => patterns.push(pattern),
            Err(message) => {
                report.error(At::of(file, text), message);
                ok = false;
            }
        }
    }
    if ok { Ok(Some(patterns)) } else { Err(()) }
}

fn process_pattern(text: &str) -> Result<Pattern, String> {
    let pattern = Pattern::new(text).map_err(|e| {
        format!(
            "process pattern {text:?} is not a valid glob: {} (at character {})",
            e.msg,
            e.pos + 1
        )
    })?;
    let shortest = shortest_match(text);
    if shortest <= COMM_MAX {
        return Ok(pattern);
    }
    if Pattern::escape(text) == text {
        // What the gateway sees for a process of that name, as `policy
        // explain` shows it. Found in review: cutting at a character
        // boundary suggested a name the kernel does not keep when the
        // 15th byte falls inside a character.
        let kept = as_kernel_keeps(text).unwrap_or_else(|| text.to_owned());
        let half = if kept.ends_with('\u{FFFD}') {
            " (\u{FFFD}, U+FFFD, stands for the character the kernel cut in half)"
        } else {
            ""
        };
        Err(format!(
            "process {text:?} can never match: the kernel truncates process names to {COMM_MAX} bytes; write {kept:?}{half}"
        ))
    } else {
        Err(format!(
            "process pattern {text:?} can never match: it needs at least {shortest} bytes but the kernel truncates process names to {COMM_MAX}; shorten it"
        ))
    }
}

/// Length in bytes of the shortest name a (valid) glob can match.
fn shortest_match(pattern: &str) -> usize {
    let mut chars = pattern.chars().peekable();
    let mut bytes = 0;
    while let Some(c) = chars.next() {
        match c {
            '*' => {}
            '?' => bytes += 1,
            '[' => {
                // A class matches one character; `]` right after `[` or `[!`
                // is a member, not the end.
                chars.next_if_eq(&'!');
                chars.next_if_eq(&']');
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                }
                bytes += 1;
            }
            // The gateway reads a character the kernel cut in half as one
            // U+FFFD: at least one byte of the name, not three.
            '\u{FFFD}' => bytes += 1,
            c => bytes += c.len_utf8(),
        }
    }
    bytes
}
