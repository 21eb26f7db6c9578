//! What each job resolved: address → names, per cgroup, each for its TTL, so a connection to an address can be matched by the names behind it.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Shortest time an answer counts: a TTL of 0 would expire before the
/// job connects.
const MIN_TTL: Duration = Duration::from_secs(30);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Addresses remembered per job; beyond, the ones expiring first go.
const MAX_PER_JOB: usize = 4096;

type Names = Vec<(Arc<str>, Instant)>;

#[derive(Debug, Default)]
pub struct NameTable {
    jobs: Mutex<HashMap<u64, HashMap<IpAddr, Names>>>,
}

impl NameTable {
    /// `name` resolved to `ip` for the job in cgroup `job`.
    pub fn learn(&self, job: u64, ip: IpAddr, name: &str, ttl: u32, now: Instant) {
        let until = now + Duration::from_secs(ttl.into()).clamp(MIN_TTL, MAX_TTL);
        let mut jobs = self.jobs.lock().expect("name table lock");
        let table = jobs.entry(job).or_default();
        if table.len() >= MAX_PER_JOB && !table.contains_key(&ip) {
            table.retain(|_, names| {
                names.retain(|(_, t)| *t > now);
                !names.is_empty()
            });
            if table.len() >= MAX_PER_JOB
                && let Some(oldest) = table
                    .iter()
                    .min_by_key(|(_, n)| n.iter().map(|(_, t)| *t).max())
                    .map(|(ip, _)| *ip)
            {
                table.remove(&oldest);
            }
        }
        let names = table.entry(normalise(ip)).or_default();
        match names.iter_mut().find(|(n, _)| &**n == name) {
            Some((_, t)) => *t = (*t).max(until),
            None => names.push((Arc::from(name), until)),
        }
    }

    /// The live names of `ip` for the job in cgroup `job`.
    pub fn names(&self, job: u64, ip: IpAddr, now: Instant) -> Vec<Arc<str>> {
        let jobs = self.jobs.lock().expect("name table lock");
        jobs.get(&job)
            .and_then(|t| t.get(&normalise(ip)))
            .map(|names| {
                names
                    .iter()
                    .filter(|(_, t)| *t > now)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_per_job_and_expire_after_their_ttl() {
        let t = NameTable::default();
        let now = Instant::now();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        t.learn(1, ip, "db.internal", 60, now);
        t.learn(1, ip, "db.internal", 10, now);
        t.learn(1, ip, "alias.internal", 3600, now);
        let names = |job, at| -> Vec<String> {
            t.names(job, ip, at).iter().map(|n| n.to_string()).collect()
        };
        assert_eq!(names(1, now), ["db.internal", "alias.internal"]);
        assert!(names(2, now).is_empty(), "another job resolved nothing");
        assert_eq!(names(1, now + Duration::from_secs(61)), ["alias.internal"]);
        // TTL 0 still counts for the minimum.
        t.learn(3, ip, "zero.ttl", 0, now);
        assert_eq!(names(3, now + Duration::from_secs(29)), ["zero.ttl"]);
        // Mapped and plain IPv4 are the same address.
        assert_eq!(
            t.names(1, "::ffff:127.0.0.9".parse().unwrap(), now).len(),
            2
        );
    }
}
