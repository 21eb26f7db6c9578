//! What the kernel may refuse on its own: the destinations no rule could
//! ever allow.
//!
//! The connect hooks look a destination up in an LPM trie (longest prefix
//! wins) and refuse the connect when it is missing or its port is not
//! listed, so `connect()` fails with EPERM instead of reaching the gateway
//! only to be reset. The set is a superset of what the policy allows: every
//! prefix and port range an allow rule names, whoever the rule is for (uid,
//! process, job claims and resolved names are the gateway's to check after
//! accept). Because only the longest matching prefix is consulted, each
//! prefix carries the ports of every prefix that contains it.
//!
//! Targets matched by DNS name, rules naming `"*"`, audit mode and a
//! policy too large for the trie all make the whole address space
//! reachable on their ports: the gateway decides those, as before.
//!
//! UDP has a trie of its own, built the same way from `protocol = "udp"`
//! targets (and `"*"`, and audit mode): a datagram it allows goes to the
//! gateway's relay, which decides; any other is refused at `sendmsg()`.

use std::net::IpAddr;

use gateway_common::{REACH_CAPACITY, REACH_SPANS};

use super::{Mode, Policy, compile::TargetRef, eval::Verdict};

/// One trie entry: a prefix of the 16-byte address (IPv4 as
/// `::ffff:a.b.c.d`) and the ports that may be reachable under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReachEntry {
    pub addr: [u8; 16],
    pub prefix_len: u8,
    /// Sorted, disjoint, non-adjacent inclusive ranges; at most
    /// [`REACH_SPANS`].
    pub ports: Vec<(u16, u16)>,
}

const ALL_PORTS: (u16, u16) = (0, u16::MAX);

impl Policy {
    /// The kernel's reachable set for TCP connects (see the module docs).
    pub fn reach(&self) -> Vec<ReachEntry> {
        self.reach_for(false)
    }

    /// The kernel's reachable set for UDP outside DNS.
    pub fn udp_reach(&self) -> Vec<ReachEntry> {
        self.reach_for(true)
    }

    fn reach_for(&self, udp: bool) -> Vec<ReachEntry> {
        let mut raw: Vec<ReachEntry> = Vec::new();
        let everywhere = |raw: &mut Vec<ReachEntry>, ports: Vec<(u16, u16)>| {
            raw.push(ReachEntry {
                addr: [0; 16],
                prefix_len: 0,
                ports,
            });
        };
        if self.daemon.mode == Mode::Audit {
            everywhere(&mut raw, vec![ALL_PORTS]);
        }
        if self.dns.is_some() && !udp {
            // DNS over TCP goes to the gateway's forwarder, whatever the server.
            everywhere(&mut raw, vec![(53, 53)]);
        }
        let targets = &self.compiled.targets;
        for rule in self
            .compiled
            .rules
            .iter()
            .filter(|r| r.action == Verdict::Allow)
        {
            for target in &rule.targets {
                let TargetRef::Named(i) = target else {
                    everywhere(&mut raw, vec![ALL_PORTS]);
                    continue;
                };
                let Some(t) = targets.get(*i).filter(|t| t.udp == udp) else {
                    continue;
                };
                let ports: Vec<(u16, u16)> = t.ports.iter().map(|p| (p.first, p.last)).collect();
                if !t.hosts.is_empty() {
                    everywhere(&mut raw, ports.clone());
                }
                for net in &t.nets {
                    let (addr, len) = match net.network() {
                        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 96 + net.prefix_len()),
                        IpAddr::V6(v6) => (v6.octets(), net.prefix_len()),
                    };
                    raw.push(ReachEntry {
                        addr,
                        prefix_len: len,
                        ports: ports.clone(),
                    });
                }
            }
        }
        flatten(raw)
    }
}

/// One entry per distinct prefix, each with the ports of every prefix
/// containing it. Too many prefixes for the trie: everything reachable.
fn flatten(raw: Vec<ReachEntry>) -> Vec<ReachEntry> {
    let raw: Vec<ReachEntry> = raw
        .into_iter()
        .map(|e| ReachEntry {
            addr: masked(e.addr, e.prefix_len),
            ..e
        })
        .collect();
    let mut prefixes: Vec<([u8; 16], u8)> = raw.iter().map(|e| (e.addr, e.prefix_len)).collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    if prefixes.len() > REACH_CAPACITY as usize {
        return vec![ReachEntry {
            addr: [0; 16],
            prefix_len: 0,
            ports: vec![ALL_PORTS],
        }];
    }
    prefixes
        .into_iter()
        .map(|(addr, len)| {
            let ports = raw
                .iter()
                .filter(|e| e.prefix_len <= len && masked(addr, e.prefix_len) == e.addr)
                .flat_map(|e| e.ports.iter().copied())
                .collect();
            ReachEntry {
                addr,
                prefix_len: len,
                ports: merge(ports),
            }
        })
        .collect()
}

/// `addr` with every bit past `len` cleared.
fn masked(addr: [u8; 16], len: u8) -> [u8; 16] {
    let bits = u128::from_be_bytes(addr);
    let keep = match len {
        0 => 0,
        l if l >= 128 => u128::MAX,
        l => u128::MAX << (128 - u32::from(l)),
    };
    (bits & keep).to_be_bytes()
}

/// Sorted, coalesced ranges; beyond [`REACH_SPANS`], the two closest are
/// joined (the gap between them becomes reachable, never the reverse).
fn merge(mut ports: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ports.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(ports.len());
    for (first, last) in ports {
        match out.last_mut() {
            Some(prev) if u32::from(first) <= u32::from(prev.1) + 1 => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    while out.len() > REACH_SPANS {
        let closest = (1..out.len())
            .min_by_key(|&i| out[i].0 - out[i - 1].1)
            .unwrap_or(1);
        out[closest - 1].1 = out[closest].1;
        out.remove(closest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Files, load_one};
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn policy(text: &str) -> Policy {
        load_one(&Files::new(), text).expect("valid policy")
    }

    fn v4(a: Ipv4Addr) -> [u8; 16] {
        a.to_ipv6_mapped().octets()
    }

    /// What the kernel's lookup would say: longest prefix, then its ports.
    fn reachable(entries: &[ReachEntry], addr: [u8; 16], port: u16) -> bool {
        entries
            .iter()
            .filter(|e| masked(addr, e.prefix_len) == e.addr)
            .max_by_key(|e| e.prefix_len)
            .is_some_and(|e| e.ports.iter().any(|&(f, l)| (f..=l).contains(&port)))
    }

    #[test]
    fn only_what_an_allow_rule_names_is_reachable() {
        let p = policy(
            r#"
[[target]]
name = "db"
addresses = ["127.0.0.0/24"]
ports = [5432]
[[target]]
name = "web"
addresses = ["127.0.0.7", "::1"]
ports = ["8000-8100"]
[[target]]
name = "banned"
addresses = ["127.0.0.9"]
ports = [22]
[[rule]]
name = "db"
action = "allow"
targets = ["db", "web"]
uids = [1000]
[[rule]]
name = "no"
action = "deny"
targets = ["banned"]
"#,
        );
        let r = p.reach();
        let ip = |s: &str| v4(s.parse().unwrap());
        assert!(reachable(&r, ip("127.0.0.3"), 5432));
        assert!(!reachable(&r, ip("127.0.0.3"), 5433));
        assert!(!reachable(&r, ip("127.0.1.3"), 5432));
        // The /32 inside the /24 keeps the /24's port as well as its own.
        assert!(reachable(&r, ip("127.0.0.7"), 5432));
        assert!(reachable(&r, ip("127.0.0.7"), 8050));
        assert!(!reachable(&r, ip("127.0.0.8"), 8050));
        assert!(reachable(&r, Ipv6Addr::LOCALHOST.octets(), 8000));
        assert!(!reachable(&r, Ipv6Addr::LOCALHOST.octets(), 5432));
        // A deny rule's target is not made reachable.
        assert!(!reachable(&r, ip("127.0.0.9"), 22));
    }

    #[test]
    fn names_wildcards_dns_and_audit_open_their_ports_everywhere() {
        let hosts = policy(
            r#"
[[target]]
name = "github"
hosts = ["*.github.com"]
ports = [443]
[[rule]]
name = "gh"
action = "allow"
targets = ["github"]
"#,
        );
        let r = hosts.reach();
        assert!(reachable(&r, v4(Ipv4Addr::new(127, 0, 0, 80)), 443));
        assert!(!reachable(&r, v4(Ipv4Addr::new(127, 0, 0, 80)), 80));

        let any = policy("[[rule]]\nname = \"all\"\naction = \"allow\"\ntargets = [\"*\"]\n");
        assert!(reachable(&any.reach(), Ipv6Addr::LOCALHOST.octets(), 1));

        let audit = policy("[daemon]\nmode = \"audit\"\n");
        assert!(reachable(&audit.reach(), v4(Ipv4Addr::LOCALHOST), 9));

        let dns = policy("[dns]\nupstream = [\"127.0.0.53:53\"]\n");
        assert!(reachable(&dns.reach(), v4(Ipv4Addr::LOCALHOST), 53));
        assert!(!reachable(&dns.reach(), v4(Ipv4Addr::LOCALHOST), 54));

        let nothing = policy("");
        assert!(nothing.reach().is_empty());
    }

    #[test]
    fn udp_targets_fill_the_udp_trie_only() {
        let p = policy(
            r#"
[[target]]
name = "ntp"
addresses = ["127.0.0.44"]
ports = [123]
protocol = "udp"
[[target]]
name = "named-ntp"
hosts = ["time.test"]
ports = [1123]
protocol = "udp"
[[target]]
name = "web"
addresses = ["127.0.0.45"]
ports = [443]
[[rule]]
name = "time"
action = "allow"
targets = ["ntp", "named-ntp", "web"]
"#,
        );
        let (tcp, udp) = (p.reach(), p.udp_reach());
        let ip = |s: &str| v4(s.parse().unwrap());
        assert!(reachable(&udp, ip("127.0.0.44"), 123));
        assert!(!reachable(&tcp, ip("127.0.0.44"), 123));
        assert!(reachable(&tcp, ip("127.0.0.45"), 443));
        assert!(!reachable(&udp, ip("127.0.0.45"), 443));
        // Matched by name: the gateway decides, on that port only.
        assert!(reachable(&udp, ip("127.0.0.99"), 1123));
        assert!(!reachable(&udp, ip("127.0.0.99"), 1124));
        assert!(!reachable(&tcp, ip("127.0.0.99"), 1123));

        let dns = policy("[dns]\nupstream = [\"127.0.0.53:53\"]\n");
        assert!(dns.udp_reach().is_empty(), "DNS has its own listener");
        let any = policy("[[rule]]\nname = \"all\"\naction = \"allow\"\ntargets = [\"*\"]\n");
        assert!(reachable(&any.udp_reach(), v4(Ipv4Addr::LOCALHOST), 9));
        assert!(policy("").udp_reach().is_empty());
    }

    #[test]
    fn port_ranges_merge_and_widen_only() {
        assert_eq!(
            merge(vec![(5, 9), (1, 3), (4, 4), (20, 30), (25, 26)]),
            [(1, 9), (20, 30)]
        );
        let many: Vec<_> = (0..40u16).map(|i| (i * 100, i * 100)).collect();
        let merged = merge(many.clone());
        assert_eq!(merged.len(), REACH_SPANS);
        for (p, _) in many {
            assert!(
                merged.iter().any(|&(f, l)| (f..=l).contains(&p)),
                "{p} lost"
            );
        }
    }
}
