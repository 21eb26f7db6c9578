//! What each job resolved: address → names, per cgroup, each for its TTL, so a connection to an address can be matched by the names behind it.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tracing::warn;

/// Shortest time an answer counts: a TTL of 0 would expire before the
/// job connects.
const MIN_TTL: Duration = Duration::from_secs(30);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Addresses remembered per job; beyond, the ones expiring first go.
const MAX_PER_JOB: usize = 4096;
/// Live names remembered per address of a job. A zone with a wildcard
/// record answers every name below it with the same address, so a job
/// could pile up names without end. Beyond this many the address is
/// [`UNKEPT`] (matches no `hosts` target) until the names not kept would
/// have expired: dropping a live name instead would widen the access the
/// address is given, as every name must be among a target's hosts.
pub const MAX_NAMES_PER_ADDRESS: usize = 64;
/// Stands, among an address's names, for the ones not kept past
/// [`MAX_NAMES_PER_ADDRESS`]. Spaces and parentheses are in no host
/// pattern, so no `hosts` target matches an address that has it.
pub const UNKEPT: &str = "(more names than the gateway keeps)";

/// What one job resolved to one address. Shared, not copied, by the
/// readers: a connection takes the `Arc` under the lock and looks at it
/// after.
#[derive(Debug, Clone)]
struct Resolved {
    /// Each name once, with when it stops counting.
    names: BTreeMap<Arc<str>, Instant>,
    /// When the last name not kept (the address was full) would have
    /// expired; until then the address is ambiguous.
    unkept_until: Option<Instant>,
    /// When the last of all of them stops counting: a sweep looks at
    /// this alone, not at every name.
    until: Instant,
}

impl Resolved {
    fn new(now: Instant) -> Self {
        Self {
            names: BTreeMap::new(),
            unkept_until: None,
            until: now,
        }
    }

    fn prune(&mut self, now: Instant) {
        self.names.retain(|_, until| *until > now);
        if self.unkept_until.is_some_and(|u| u <= now) {
            self.unkept_until = None;
        }
    }

    fn is_live(&self, now: Instant) -> bool {
        self.until > now
    }

    fn live_names(&self, now: Instant) -> Vec<Arc<str>> {
        let mut live: Vec<Arc<str>> = self
            .names
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(n, _)| n.clone())
            .collect();
        if self.unkept_until.is_some_and(|u| u > now) {
            live.push(Arc::from(UNKEPT));
        }
        live
    }
}

type Table = HashMap<IpAddr, Arc<Resolved>>;

#[derive(Debug, Default)]
pub struct NameTable {
    jobs: Mutex<HashMap<u64, Table>>,
}

impl NameTable {
    /// `name` resolved to `ip` for the job in cgroup `job`.
    pub fn learn(&self, job: u64, ip: IpAddr, name: &str, ttl: u32, now: Instant) {
        let ip = normalise(ip);
        let until = now + Duration::from_secs(ttl.into()).clamp(MIN_TTL, MAX_TTL);
        let overflowed = {
            let mut jobs = self.lock();
            let table = jobs.entry(job).or_default();
            if table.len() >= MAX_PER_JOB && !table.contains_key(&ip) {
                make_room(table, now);
            }
            // Copied only while a reader still holds the old one, and
            // then at most MAX_NAMES_PER_ADDRESS names.
            let resolved = Arc::make_mut(
                table
                    .entry(ip)
                    .or_insert_with(|| Arc::new(Resolved::new(now))),
            );
            resolved.prune(now);
            resolved.until = resolved.until.max(until);
            if let Some(t) = resolved.names.get_mut(name) {
                *t = (*t).max(until);
                false
            } else if resolved.names.len() < MAX_NAMES_PER_ADDRESS {
                resolved.names.insert(Arc::from(name), until);
                false
            } else {
                let first = resolved.unkept_until.is_none();
                resolved.unkept_until = Some(resolved.unkept_until.map_or(until, |u| u.max(until)));
                first
            }
        };
        // Once per episode, outside the lock: a job resolving random names
        // below a wildcard would otherwise log each one.
        if overflowed {
            warn!(
                cgroup_id = job,
                address = %ip,
                limit = MAX_NAMES_PER_ADDRESS,
                "a job resolved more names to one address than are kept; connections to it match no hosts target until they expire"
            );
        }
    }

    /// The live names of `ip` for the job in cgroup `job`; [`UNKEPT`]
    /// among them when the job resolved more than are kept.
    pub fn names(&self, job: u64, ip: IpAddr, now: Instant) -> Vec<Arc<str>> {
        let resolved = self
            .lock()
            .get(&job)
            .and_then(|t| t.get(&normalise(ip)))
            .cloned();
        resolved.map(|r| r.live_names(now)).unwrap_or_default()
    }

    /// Forgets every expired name, and the jobs (cgroups) left with none:
    /// a job that ended, or stopped resolving, holds no memory.
    pub fn sweep(&self, now: Instant) {
        self.lock().retain(|_, table| {
            table.retain(|_, resolved| resolved.is_live(now));
            !table.is_empty()
        });
    }

    /// Jobs (cgroups) with a table.
    #[cfg(test)]
    fn jobs(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Table>> {
        // The table holds no invariant a panicking holder could break
        // half-way that matters more than serving connections.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Frees a slot in a job's full table: the expired addresses go, else
/// the one whose names expire first.
fn make_room(table: &mut Table, now: Instant) {
    table.retain(|_, resolved| resolved.is_live(now));
    if table.len() >= MAX_PER_JOB
        && let Some(oldest) = table.iter().min_by_key(|(_, r)| r.until).map(|(ip, _)| *ip)
    {
        table.remove(&oldest);
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

    fn shown(names: Vec<Arc<str>>) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn names_are_per_job_and_expire_after_their_ttl() {
        let t = NameTable::default();
        let now = Instant::now();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        t.learn(1, ip, "db.internal", 60, now);
        t.learn(1, ip, "db.internal", 10, now);
        t.learn(1, ip, "alias.internal", 3600, now);
        let names = |job, at| shown(t.names(job, ip, at));
        assert_eq!(names(1, now), ["alias.internal", "db.internal"]);
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

    #[test]
    fn expired_names_go_when_the_address_learns_again() {
        let t = NameTable::default();
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        // Far more names over time than fit, each gone before the next
        // ones come: none is kept past its TTL, so the address never
        // runs full.
        for round in 0..10u64 {
            let at = now + Duration::from_secs(round * 31);
            for i in 0..MAX_NAMES_PER_ADDRESS {
                t.learn(1, ip, &format!("r{round}-{i}.corp.example"), 0, at);
            }
            assert_eq!(t.names(1, ip, at).len(), MAX_NAMES_PER_ADDRESS);
        }
        let resolved = t.lock()[&1][&ip].clone();
        assert_eq!(resolved.names.len(), MAX_NAMES_PER_ADDRESS);
        assert!(resolved.unkept_until.is_none());
    }

    #[test]
    fn an_address_with_more_names_than_kept_is_ambiguous_until_they_expire() {
        let t = NameTable::default();
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.8".parse().unwrap();
        t.learn(1, ip, "keep.corp.example", 3600, now);
        for i in 1..MAX_NAMES_PER_ADDRESS {
            t.learn(1, ip, &format!("n{i}.corp.example"), 60, now);
        }
        assert!(!shown(t.names(1, ip, now)).contains(&UNKEPT.to_owned()));
        // Full: the next name is not kept, and no live name is dropped
        // for it (that would widen what the address matches).
        t.learn(1, ip, "extra.corp.example", 300, now);
        let names = shown(t.names(1, ip, now));
        assert_eq!(names.len(), MAX_NAMES_PER_ADDRESS + 1);
        assert!(names.contains(&"keep.corp.example".to_owned()));
        assert!(!names.contains(&"extra.corp.example".to_owned()));
        assert_eq!(names.last().map(String::as_str), Some(UNKEPT));
        // A flood of names below a wildcard zone keeps the address at its
        // bound (the review's case: 30,000 names, all kept an hour).
        for i in 0..30_000 {
            t.learn(1, ip, &format!("flood{i}.corp.example"), 300, now);
        }
        assert_eq!(t.lock()[&1][&ip].names.len(), MAX_NAMES_PER_ADDRESS);
        // A name already kept is only refreshed.
        t.learn(1, ip, "n1.corp.example", 60, now);
        assert_eq!(t.names(1, ip, now).len(), MAX_NAMES_PER_ADDRESS + 1);
        // Once the names not kept would have expired, the address is
        // plain again with what it still holds.
        assert_eq!(
            shown(t.names(1, ip, now + Duration::from_secs(301))),
            ["keep.corp.example"]
        );
        // Another job is not affected.
        t.learn(2, ip, "other.corp.example", 60, now);
        assert_eq!(shown(t.names(2, ip, now)), ["other.corp.example"]);
    }

    #[test]
    fn a_sweep_forgets_jobs_with_nothing_live() {
        let t = NameTable::default();
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        t.learn(1, ip, "short.internal", 30, now);
        t.learn(2, ip, "long.internal", 3600, now);
        t.sweep(now);
        assert_eq!(t.jobs(), 2);
        t.sweep(now + Duration::from_secs(31));
        assert_eq!(t.jobs(), 1, "the job with only expired names is gone");
        assert_eq!(
            shown(t.names(2, ip, now + Duration::from_secs(31))),
            ["long.internal"]
        );
    }

    #[test]
    fn a_full_job_table_makes_room_by_expiry() {
        let t = NameTable::default();
        let now = Instant::now();
        let addr = |i: usize| IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
        t.learn(1, addr(0), "first.internal", 30, now);
        for i in 1..MAX_PER_JOB {
            t.learn(1, addr(i), "many.internal", 3600, now);
        }
        // Mapped IPv6 of a known address takes no new slot.
        t.learn(
            1,
            "::ffff:10.1.0.1".parse().unwrap(),
            "many.internal",
            60,
            now,
        );
        assert_eq!(t.lock()[&1].len(), MAX_PER_JOB);
        t.learn(1, "10.2.0.0".parse().unwrap(), "new.internal", 60, now);
        assert_eq!(t.lock()[&1].len(), MAX_PER_JOB);
        assert!(t.names(1, addr(0), now).is_empty(), "first to expire went");
    }
}
