//! Who may see and decide a request: configured approvers only, never the requester.
use std::time::{Duration, SystemTime};

use super::request::{self, Request, State, Vote};
use crate::policy::ApprovalRule;

/// The process on the other end of the admin socket, from `SO_PEERCRED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub pid: Option<u32>,
    /// User name of `uid` on the deciding host (`uid <n>` without one).
    pub name: String,
    /// Names of the caller's groups: primary and supplementary.
    pub groups: Vec<String>,
}

impl Caller {
    /// Looks up the names of a peer's uid and groups. Supplementary groups
    /// come from the process itself (`/proc/<pid>/status`), which is what
    /// the kernel would check, not from the group database.
    pub fn from_peer(uid: u32, gid: u32, pid: Option<u32>) -> Caller {
        let name = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map_or_else(|| format!("uid {uid}"), |u| u.name);
        let mut gids = vec![gid];
        if let Some(pid) = pid
            && let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(line) = status.lines().find(|l| l.starts_with("Groups:"))
        {
            gids.extend(
                line["Groups:".len()..]
                    .split_whitespace()
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        }
        let groups = gids
            .into_iter()
            .filter_map(|g| nix::unistd::Group::from_gid(g.into()).ok().flatten())
            .map(|g| g.name)
            .collect();
        Caller {
            uid,
            pid,
            name,
            groups,
        }
    }

    /// True when the rule's approvers name this caller or one of its groups.
    pub fn is_approver(&self, approvers: &[String]) -> bool {
        approvers.iter().any(|a| match a.strip_prefix("group:") {
            Some(group) => self.groups.iter().any(|g| g == group),
            None => a.strip_prefix("user:").unwrap_or(a) == self.name,
        })
    }
}

/// What an approver decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approve {
        comment: Option<String>,
        /// `--for`.
        grant: Option<Duration>,
        /// `--cgroup-wide`: the approver accepts that a grant for an
        /// unidentified process covers its whole cgroup, the next job
        /// there included.
        cgroup_wide: bool,
    },
    Deny {
        reason: String,
    },
}

/// Who may list and show requests: root and anyone who approves something.
pub fn may_view(caller: &Caller, request: &Request) -> bool {
    caller.uid == 0 || caller.is_approver(&request.approvers)
}

/// Records `caller`'s verdict on a pending request; `Err` says, in one
/// line, why the caller may not decide it.
pub fn vote(
    caller: &Caller,
    request: &mut Request,
    verdict: &Verdict,
    digest: Option<&str>,
    now: SystemTime,
) -> Result<(), String> {
    let id = &request.id;
    if request.state != State::Pending {
        return Err(format!(
            "request {id} is already {} ({}): nothing to decide",
            request.state,
            request.outcome()
        ));
    }
    if request.is_past(now) {
        return Err(format!(
            "request {id} expired at {}: nothing to decide",
            request.expires
        ));
    }
    // The uid only means the same person on the same host; the name is
    // what approvers are configured by, and holds across a fleet.
    if caller.uid == request.who.uid || is_requester(&caller.name, request) {
        return Err(format!(
            "request {id} was made by uid {} ({}), which is you: someone else must decide it",
            request.who.uid, request.who.identity
        ));
    }
    if !caller.is_approver(&request.approvers) {
        return Err(format!(
            "{} is not an approver of request {id} (rule {} names: {})",
            caller.name,
            request.rule,
            request.approvers.join(", ")
        ));
    }
    // An empty prefix starts every digest: it would check nothing while
    // the approver believes it checked the statement.
    if digest.is_some_and(|d| d.trim().is_empty()) {
        return Err(format!(
            "the digest to check for request {id} is empty: give the one `chokepoint approvals show` printed, or none"
        ));
    }
    if let Some(digest) = digest
        && !request.digest.starts_with(&digest.to_ascii_lowercase())
    {
        return Err(format!(
            "request {id} holds a different statement (digest {}, not {digest}): show it again before deciding",
            // From the store, which every approver host can write: a digest
            // edited short (or not hex) is shown whole, not sliced.
            request.digest.get(..12).unwrap_or(&request.digest)
        ));
    }
    // By name: one person deciding from two hosts (two uids) is one vote.
    if request.votes.iter().any(|v| v.by == caller.name) {
        return Err(format!("{} has already decided request {id}", caller.name));
    }
    let at = request::format_time(now);
    match verdict {
        Verdict::Approve {
            comment,
            grant,
            cgroup_wide,
        } => {
            let grant_secs = match grant {
                None => None,
                Some(_) if request.who.scope.is_empty() => {
                    return Err(format!(
                        "request {id} was stored by an older gateway that did not say whom a grant would cover: approve without --for"
                    ));
                }
                Some(_) if request.who.scope.starts_with("cgroup ") && !cgroup_wide => {
                    return Err(format!(
                        "request {id} comes from an unidentified process, so a grant would let every process in {} run such statements, whichever job runs there next included: approve without --for, or add --cgroup-wide to accept that",
                        request.who.scope
                    ));
                }
                Some(d) => match request.max_grant_secs {
                    None => {
                        return Err(format!(
                            "rule {} allows no grants (it sets no max_grant): approve without --for",
                            request.rule
                        ));
                    }
                    Some(max) if d.as_secs() > max => {
                        return Err(format!(
                            "--for {} is longer than rule {}'s max_grant of {}",
                            humantime::format_duration(*d),
                            request.rule,
                            humantime::format_duration(Duration::from_secs(max))
                        ));
                    }
                    Some(_) => Some(d.as_secs().max(1)),
                },
            };
            request.votes.push(Vote {
                by: caller.name.clone(),
                uid: caller.uid,
                approve: true,
                text: comment.clone(),
                grant_secs,
                at,
            });
            if request.approvals() >= request.min_approvals {
                request.state = State::Approved;
                // The shortest grant any approver agreed to.
                let grant = request
                    .votes
                    .iter()
                    .map(|v| v.grant_secs)
                    .try_fold(u64::MAX, |min, g| g.map(|g| min.min(g)));
                request.grant_until =
                    grant.map(|secs| request::after(now, Duration::from_secs(secs)));
            }
        }
        Verdict::Deny { reason } => {
            request.votes.push(Vote {
                by: caller.name.clone(),
                uid: caller.uid,
                approve: false,
                text: Some(reason.clone()),
                grant_secs: None,
                at,
            });
            request.state = State::Denied;
        }
    }
    Ok(())
}

fn is_requester(name: &str, request: &Request) -> bool {
    !request.who.user.is_empty() && request.who.user == name
}

/// Checks a request the store reports approved against the request as
/// this gateway made it (`asked`, kept in memory): distinct approvers it
/// names, none of them the requester, as many as it needs, for the same
/// statement. A shared store is writable by every gateway and approver
/// host, and a row edited there to say `approved` must not release a
/// statement. Votes through a group approver are taken as the deciding
/// host checked them: group membership elsewhere is not visible here.
pub fn check_approved(asked: &Request, decided: &Request) -> Result<(), String> {
    if decided.digest != asked.digest {
        return Err("it approves a different statement".to_owned());
    }
    check_votes(
        &asked.approvers,
        asked.min_approvals,
        &asked.who.user,
        decided,
    )
}

/// Checks an approved `--for` grant from the store against the rule that
/// holds the statement now (`approvers`, `min_approvals`) and the job
/// asking now (`requester`, its user name): the same checks as
/// [`check_approved`], since a grant row releases statements just as an
/// approved request does, and the store is as writable.
pub fn check_grant(rule: &ApprovalRule, requester: &str, grant: &Request) -> Result<(), String> {
    let approvers: Vec<String> = rule.approvers.iter().map(ToString::to_string).collect();
    check_votes(&approvers, rule.min_approvals, requester, grant)
}

fn check_votes(
    approvers: &[String],
    min_approvals: usize,
    requester: &str,
    decided: &Request,
) -> Result<(), String> {
    if decided.state != State::Approved {
        return Err(format!("it is {}", decided.state));
    }
    if let Some(deny) = decided.votes.iter().find(|v| !v.approve) {
        return Err(format!("it also holds a denial by {}", deny.by));
    }
    let groups = approvers.iter().any(|a| a.starts_with("group:"));
    let mut names: Vec<&str> = Vec::new();
    for vote in &decided.votes {
        if !requester.is_empty() && vote.by == requester {
            return Err(format!("{} approved their own statement", vote.by));
        }
        let named = approvers
            .iter()
            .any(|a| a.strip_prefix("user:").unwrap_or(a) == vote.by);
        if !named && !groups {
            return Err(format!(
                "{} is not an approver (the rule names: {})",
                vote.by,
                approvers.join(", ")
            ));
        }
        if !names.contains(&vote.by.as_str()) {
            names.push(&vote.by);
        }
    }
    if names.len() < min_approvals.max(1) {
        return Err(format!(
            "it carries {} distinct approval(s) where {} are needed",
            names.len(),
            min_approvals.max(1)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::request::{GrantQuery, Requester};

    fn request() -> Request {
        let now = SystemTime::now();
        Request {
            id: "apr-abc234".into(),
            state: State::Pending,
            who: Requester {
                identity: "uid 1001 (runner)".into(),
                uid: 1001,
                user: "runner".into(),
                pid: 42,
                comm: "psql".into(),
                cgroup_id: 7,
                session: "s".into(),
                scope: "cgroup 7 on host/default".into(),
            },
            target: "orders-db".into(),
            role: "app".into(),
            database: "shop".into(),
            statement: "DELETE FROM orders".into(),
            digest: request::digest("DELETE FROM orders"),
            class: "delete".into(),
            rule: "ci".into(),
            reason: "class delete needs approval".into(),
            approvers: vec!["alice".into(), "group:dba".into()],
            min_approvals: 1,
            max_grant_secs: Some(3600),
            created: request::format_time(now),
            expires: request::after(now, Duration::from_secs(900)),
            gateway: "host/default".into(),
            votes: vec![],
            grant_until: None,
            note: None,
        }
    }

    fn caller(uid: u32, name: &str, groups: &[&str]) -> Caller {
        Caller {
            uid,
            pid: None,
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    const APPROVE: Verdict = Verdict::Approve {
        comment: None,
        grant: None,
        cgroup_wide: false,
    };

    #[test]
    fn a_named_user_or_group_member_approves() {
        let now = SystemTime::now();
        let mut r = request();
        vote(&caller(1, "alice", &[]), &mut r, &APPROVE, None, now).unwrap();
        assert_eq!(r.state, State::Approved);
        let mut r = request();
        vote(&caller(2, "bob", &["dba"]), &mut r, &APPROVE, None, now).unwrap();
        assert_eq!(r.state, State::Approved);
        assert_eq!(r.grant_until, None);
    }

    /// Across a fleet one person has a uid per host: their name is what
    /// counts, for "distinct approvers" and for "not the requester".
    #[test]
    fn one_person_from_two_hosts_is_one_approver_and_the_requester_by_name_is_refused() {
        let now = SystemTime::now();
        let mut r = request();
        r.min_approvals = 2;
        r.approvers.push("runner".into());
        vote(&caller(1000, "alice", &[]), &mut r, &APPROVE, None, now).unwrap();
        let e = vote(&caller(1005, "alice", &[]), &mut r, &APPROVE, None, now).unwrap_err();
        assert!(e.contains("alice has already decided"), "{e}");
        assert_eq!(r.state, State::Pending);
        // The job's user, under another uid on the deciding host.
        let e = vote(&caller(2001, "runner", &[]), &mut r, &APPROVE, None, now).unwrap_err();
        assert!(e.contains("which is you"), "{e}");
        vote(&caller(2, "bob", &["dba"]), &mut r, &APPROVE, None, now).unwrap();
        assert_eq!(r.state, State::Approved);
    }

    /// A row edited in a shared store to say approved does not release
    /// the statement: the votes must satisfy the request as it was made.
    #[test]
    fn an_approval_is_checked_against_the_request_as_it_was_made() {
        let now = SystemTime::now();
        let mut asked = request();
        asked.min_approvals = 2;
        asked.approvers = vec!["alice".into(), "bob".into()];
        let mut decided = asked.clone();
        vote(&caller(1, "alice", &[]), &mut decided, &APPROVE, None, now).unwrap();
        vote(&caller(2, "bob", &[]), &mut decided, &APPROVE, None, now).unwrap();
        assert_eq!(check_approved(&asked, &decided), Ok(()));

        let edit = |f: &dyn Fn(&mut Request)| {
            let mut r = decided.clone();
            f(&mut r);
            check_approved(&asked, &r).unwrap_err()
        };
        // State flipped with no votes at all.
        let e = edit(&|r| r.votes.clear());
        assert!(e.contains("0 distinct approval(s) where 2"), "{e}");
        // One person's vote written twice.
        let e = edit(&|r| r.votes[1] = r.votes[0].clone());
        assert!(e.contains("1 distinct approval(s)"), "{e}");
        // A name the request does not list, or the requester's own.
        let e = edit(&|r| r.votes[1].by = "mallory".into());
        assert!(e.contains("mallory is not an approver"), "{e}");
        let e = edit(&|r| r.votes[1].by = "runner".into());
        assert!(e.contains("approved their own statement"), "{e}");
        // Approvers or quorum rewritten in the row: the asked copy rules.
        let e = edit(&|r| {
            r.min_approvals = 1;
            r.approvers = vec!["alice".into()];
            r.votes.truncate(1);
        });
        assert!(e.contains("where 2 are needed"), "{e}");
        let e = edit(&|r| r.digest = request::digest("DROP TABLE orders"));
        assert!(e.contains("different statement"), "{e}");
        let e = edit(&|r| r.state = State::Denied);
        assert!(e.contains("denied"), "{e}");
        // With a group approver, a vote by an unlisted name may be a
        // member checked on its host: taken.
        asked.approvers.push("group:dba".into());
        let mut r = decided.clone();
        r.votes[1].by = "carol".into();
        assert_eq!(check_approved(&asked, &r), Ok(()));
    }

    #[test]
    fn strangers_and_the_requester_are_refused() {
        let now = SystemTime::now();
        let mut r = request();
        let e = vote(
            &caller(3, "mallory", &["users"]),
            &mut r,
            &APPROVE,
            None,
            now,
        )
        .unwrap_err();
        assert!(e.contains("mallory is not an approver"), "{e}");
        // Same uid as the job, even under an approver's name.
        let e = vote(
            &caller(1001, "alice", &["dba"]),
            &mut r,
            &APPROVE,
            None,
            now,
        )
        .unwrap_err();
        assert!(e.contains("which is you"), "{e}");
        assert_eq!(r.state, State::Pending);
        assert!(r.votes.is_empty());
    }

    #[test]
    fn two_approvals_when_the_rule_wants_two_and_one_denial_ends_it() {
        let now = SystemTime::now();
        let mut r = request();
        r.min_approvals = 2;
        vote(&caller(1, "alice", &[]), &mut r, &APPROVE, None, now).unwrap();
        assert_eq!(r.state, State::Pending);
        let e = vote(&caller(1, "alice", &[]), &mut r, &APPROVE, None, now).unwrap_err();
        assert!(e.contains("already decided"), "{e}");
        vote(&caller(2, "bob", &["dba"]), &mut r, &APPROVE, None, now).unwrap();
        assert_eq!(r.state, State::Approved);
        let e = vote(&caller(4, "carol", &["dba"]), &mut r, &APPROVE, None, now).unwrap_err();
        assert!(e.contains("already approved"), "{e}");

        let mut r = request();
        r.min_approvals = 2;
        let deny = Verdict::Deny {
            reason: "not during the freeze".into(),
        };
        vote(&caller(1, "alice", &[]), &mut r, &deny, None, now).unwrap();
        assert_eq!(r.state, State::Denied);
        assert_eq!(r.outcome(), "denied by alice: not during the freeze");
    }

    #[test]
    fn grants_are_capped_by_max_grant_and_bound_to_identity_target_class() {
        let now = SystemTime::now();
        let long = Verdict::Approve {
            comment: None,
            grant: Some(Duration::from_secs(7200)),
            cgroup_wide: true,
        };
        let mut r = request();
        let e = vote(&caller(1, "alice", &[]), &mut r, &long, None, now).unwrap_err();
        assert!(e.contains("longer than rule ci's max_grant of 1h"), "{e}");
        // The request is from an unidentified process (cgroup scope): a
        // grant needs the approver to accept the whole cgroup.
        let unaware = Verdict::Approve {
            comment: Some("cleanup".into()),
            grant: Some(Duration::from_secs(1800)),
            cgroup_wide: false,
        };
        let e = vote(&caller(1, "alice", &[]), &mut r, &unaware, None, now).unwrap_err();
        assert!(
            e.contains("unidentified process") && e.contains("--cgroup-wide"),
            "{e}"
        );
        assert!(r.votes.is_empty(), "a refused vote was counted");
        let ok = Verdict::Approve {
            comment: Some("cleanup".into()),
            grant: Some(Duration::from_secs(1800)),
            cgroup_wide: true,
        };
        vote(&caller(1, "alice", &[]), &mut r, &ok, None, now).unwrap();
        let same = GrantQuery {
            scope: "cgroup 7 on host/default",
            identity: "uid 1001 (runner)",
            target: "orders-db",
            role: "app",
            database: "shop",
            class: "delete",
            rule: "ci",
            reason: "class delete needs approval",
            max_grant: Duration::from_secs(3600),
        };
        assert!(r.grant_covers(&same, now));
        assert!(!r.grant_covers(&same, now + Duration::from_secs(1801)));
        // The rule reloaded with a shorter max_grant shortens the grant.
        let shortened = GrantQuery {
            max_grant: Duration::from_secs(600),
            ..same
        };
        assert!(r.grant_covers(&shortened, now + Duration::from_secs(599)));
        assert!(!r.grant_covers(&shortened, now + Duration::from_secs(601)));
        // Each field narrows it: another job or runner cgroup, login,
        // class, or the same class held by another rule or for another
        // reason (a TRUNCATE where a one-row DELETE was approved).
        let others = [
            GrantQuery {
                scope: "cgroup 8 on host/default",
                ..same
            },
            GrantQuery {
                identity: "uid 1002 (other)",
                ..same
            },
            GrantQuery {
                target: "billing-db",
                ..same
            },
            GrantQuery {
                role: "admin",
                ..same
            },
            GrantQuery {
                database: "billing",
                ..same
            },
            GrantQuery {
                class: "ddl",
                ..same
            },
            GrantQuery {
                rule: "billing-strict",
                ..same
            },
            GrantQuery {
                reason: "flag truncate needs approval",
                ..same
            },
        ];
        for other in &others {
            assert!(!r.grant_covers(other, now), "{other:?}");
        }
        // A request stored without a scope covers nothing, and cannot be
        // given a grant.
        let mut unscoped = r.clone();
        unscoped.who.scope.clear();
        assert!(!unscoped.grant_covers(&same, now));
        let mut r = request();
        r.who.scope.clear();
        let e = vote(&caller(1, "alice", &[]), &mut r, &ok, None, now).unwrap_err();
        assert!(e.contains("approve without --for"), "{e}");

        let mut r = request();
        r.max_grant_secs = None;
        let e = vote(&caller(1, "alice", &[]), &mut r, &ok, None, now).unwrap_err();
        assert!(e.contains("allows no grants"), "{e}");
    }

    #[test]
    fn a_decision_is_bound_to_the_statement_digest_and_the_deadline() {
        let now = SystemTime::now();
        let mut r = request();
        let other = request::digest("DELETE FROM orders WHERE id = 1");
        let e = vote(
            &caller(1, "alice", &[]),
            &mut r,
            &APPROVE,
            Some(&other[..12]),
            now,
        )
        .unwrap_err();
        assert!(e.contains("different statement"), "{e}");
        let e = vote(
            &caller(1, "alice", &[]),
            &mut r,
            &APPROVE,
            None,
            now + Duration::from_secs(901),
        )
        .unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let e = vote(&caller(1, "alice", &[]), &mut r, &APPROVE, Some(""), now).unwrap_err();
        assert!(e.contains("is empty"), "{e}");
        let own = r.digest[..12].to_owned();
        vote(&caller(1, "alice", &[]), &mut r, &APPROVE, Some(&own), now).unwrap();
    }

    #[test]
    fn a_grant_past_the_year_9999_ends_now_instead_of_panicking() {
        // A store row edited to allow any grant, and an admin-socket
        // request asking for 12,000 years.
        let now = SystemTime::now();
        let mut r = request();
        r.who.scope = "job github:repo:acme/shop".into();
        r.max_grant_secs = Some(u64::MAX);
        let long = Verdict::Approve {
            comment: None,
            grant: Some(Duration::from_secs(400_000_000_000)),
            cgroup_wide: false,
        };
        vote(&caller(1, "alice", &[]), &mut r, &long, None, now).unwrap();
        assert_eq!(r.state, State::Approved);
        assert_eq!(r.grant_until, Some(request::format_time(now)));
        assert!(!r.grant_is_live(now + Duration::from_secs(1)));
    }

    #[test]
    fn a_stored_digest_too_short_to_shorten_is_refused_not_a_panic() {
        let now = SystemTime::now();
        for stored in ["ab", "01234567890é", ""] {
            let mut r = request();
            r.digest = stored.to_owned();
            let e = vote(&caller(1, "alice", &[]), &mut r, &APPROVE, Some("ff"), now).unwrap_err();
            assert!(e.contains("different statement"), "{e}");
            assert_eq!(r.state, State::Pending);
        }
    }

    #[test]
    fn root_and_approvers_see_requests_others_do_not() {
        let r = request();
        assert!(may_view(&caller(0, "root", &[]), &r));
        assert!(may_view(&caller(2, "bob", &["dba"]), &r));
        assert!(!may_view(&caller(3, "mallory", &[]), &r));
    }
}
