use std::{sync::Arc, time::Duration};

use super::*;
use crate::{
    policy::{Approver, Webhook},
    store::FileStore,
};

fn ask(timeout: Duration, notify: Vec<Webhook>) -> Ask {
    Ask {
        who: Requester {
            identity: "uid 1001".into(),
            uid: 1001,
            user: String::new(),
            pid: 7,
            comm: "psql".into(),
            cgroup_id: 1,
            session: "s1".into(),
            scope: "job run-1".into(),
        },
        target: "db".into(),
        role: "app".into(),
        database: "shop".into(),
        sql: "DELETE FROM orders".into(),
        shown: "DELETE FROM orders".into(),
        class: "delete".into(),
        rule: "ci".into(),
        reason: "class delete needs approval".into(),
        approval: Arc::new(ApprovalRule {
            approvers: vec![Approver::User {
                name: "alice".into(),
                uid: 1,
            }],
            min_approvals: 1,
            timeout,
            max_grant: Some(Duration::from_secs(600)),
            notify,
        }),
    }
}

fn alice() -> Caller {
    Caller {
        uid: 1,
        pid: None,
        name: "alice".into(),
        groups: vec![],
    }
}

fn service(dir: &tempfile::TempDir) -> Arc<Approvals> {
    let store = Arc::new(FileStore::open(dir.path()).unwrap());
    Approvals::with_store(store, "test/default".into())
}

async fn ended(held: &mut Held) -> Request {
    loop {
        if let HeldEvent::Ended(r) = tokio::time::timeout(Duration::from_secs(10), held.next())
            .await
            .expect("an end within 10 s")
        {
            return *r;
        }
    }
}

#[tokio::test]
async fn an_approval_wakes_the_held_statement_and_grants_the_class() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = service(&dir);
    let mut held = approvals
        .hold(ask(Duration::from_secs(60), vec![]))
        .await
        .unwrap();
    let id = held.id().to_owned();
    assert_eq!(approvals.list(&alice(), false).await.unwrap().len(), 1);
    let verdict = Verdict::Approve {
        comment: Some("ok".into()),
        grant: Some(Duration::from_secs(300)),
        cgroup_wide: false,
    };
    approvals
        .decide(&alice(), &id, &verdict, None)
        .await
        .unwrap();
    let r = ended(&mut held).await;
    assert_eq!(r.state, State::Approved);
    assert_eq!(r.digest, digest("DELETE FROM orders"));
    let query = GrantQuery {
        scope: "job run-1",
        identity: "uid 1001",
        target: "db",
        role: "app",
        database: "shop",
        class: "delete",
        rule: "ci",
        reason: "class delete needs approval",
        max_grant: Duration::from_secs(600),
    };
    let rule = ask(Duration::from_secs(60), vec![]).approval;
    assert!(approvals.grant(&query, &rule, "ci-user").await.is_some());
    let ddl = GrantQuery {
        class: "ddl",
        ..query
    };
    assert!(approvals.grant(&ddl, &rule, "ci-user").await.is_none());
    let other_job = GrantQuery {
        scope: "job run-2",
        ..query
    };
    assert!(
        approvals
            .grant(&other_job, &rule, "ci-user")
            .await
            .is_none()
    );
    // The grant's votes must hold up against the rule as it is now (a
    // store row can say anything): not after alice stopped being an
    // approver, not with two approvals needed, not for alice's own job.
    let bob_only = Arc::new(ApprovalRule {
        approvers: vec![Approver::User {
            name: "bob".into(),
            uid: 2,
        }],
        ..(*rule).clone()
    });
    assert!(
        approvals
            .grant(&query, &bob_only, "ci-user")
            .await
            .is_none()
    );
    let two = Arc::new(ApprovalRule {
        min_approvals: 2,
        ..(*rule).clone()
    });
    assert!(approvals.grant(&query, &two, "ci-user").await.is_none());
    assert!(approvals.grant(&query, &rule, "alice").await.is_none());
    // Decided: a second decision is refused, naming the state.
    let e = approvals
        .decide(&alice(), &id, &verdict, None)
        .await
        .unwrap_err();
    assert!(e.contains("already approved"), "{e}");
    let e = approvals
        .decide(&alice(), "apr-zzzzzz", &verdict, None)
        .await
        .unwrap_err();
    assert_eq!(e, "approval request apr-zzzzzz does not exist");
}

#[tokio::test]
async fn no_decision_expires_and_a_dropped_handle_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = service(&dir);
    let mut held = approvals
        .hold(ask(Duration::from_millis(300), vec![]))
        .await
        .unwrap();
    let r = ended(&mut held).await;
    assert_eq!(r.state, State::Expired);
    assert_eq!(r.outcome(), "no decision within 300ms");

    let held = approvals
        .hold(ask(Duration::from_secs(60), vec![]))
        .await
        .unwrap();
    let id = held.id().to_owned();
    drop(held);
    for _ in 0..100 {
        let r = approvals.show(&alice(), &id).await.unwrap();
        if r.state == State::Cancelled {
            assert!(r.outcome().contains("disconnected"), "{}", r.outcome());
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the dropped request was not cancelled");
}

#[tokio::test]
async fn one_job_holds_a_bounded_number_of_bounded_statements() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = service(&dir);
    let long = Ask {
        sql: "x".repeat(MAX_HELD_BYTES + 1),
        ..ask(Duration::from_secs(60), vec![])
    };
    let e = approvals.hold(long).await.err().expect("too long");
    assert!(
        matches!(e, HoldError::TooLong { bytes } if bytes == MAX_HELD_BYTES + 1),
        "{e}"
    );

    let mut held = Vec::new();
    for _ in 0..MAX_PENDING_PER_JOB {
        held.push(
            approvals
                .hold(ask(Duration::from_secs(60), vec![]))
                .await
                .unwrap(),
        );
    }
    let e = approvals
        .hold(ask(Duration::from_secs(60), vec![]))
        .await
        .err()
        .expect("one too many");
    assert!(matches!(e, HoldError::TooMany), "{e}");
    assert!(
        e.to_string().contains(&format!(
            "already has {MAX_PENDING_PER_JOB} statements waiting"
        )),
        "{e}"
    );
    // Another job is not held back by this one.
    let mut other = ask(Duration::from_secs(60), vec![]);
    other.who.cgroup_id = 2;
    let other = approvals.hold(other).await.unwrap();
    // A request that ends gives its place back.
    drop(held.pop());
    held.push(
        approvals
            .hold(ask(Duration::from_secs(60), vec![]))
            .await
            .unwrap(),
    );
    drop((held, other));
    assert!(approvals.pending.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_unreachable_webhook_is_reported_and_the_request_still_stands() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = service(&dir);
    // Port 1 on loopback: nothing listens there.
    let hook = Webhook {
        url: "http://127.0.0.1:1/hook".into(),
        bearer_file: None,
    };
    let mut held = approvals
        .hold(ask(Duration::from_secs(60), vec![hook]))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(15), held.next())
        .await
        .unwrap()
    {
        HeldEvent::Notified { url, error } => {
            assert_eq!(url, "http://127.0.0.1:1/hook");
            let e = error.expect("a failure");
            assert!(e.to_lowercase().contains("connect"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let r = approvals.show(&alice(), held.id()).await.unwrap();
    assert_eq!(r.state, State::Pending);
}

#[tokio::test]
async fn settled_requests_leave_the_store_after_keep_and_live_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileStore::open(dir.path()).unwrap());
    let approvals = Approvals::with_store(store.clone(), "test/default".into());
    let timeout = Duration::from_secs(60);
    let pending = approvals.hold(ask(timeout, vec![])).await.unwrap();
    let mut denied = approvals.hold(ask(timeout, vec![])).await.unwrap();
    let mut granted = approvals.hold(ask(timeout, vec![])).await.unwrap();
    let deny = Verdict::Deny {
        reason: "no".into(),
    };
    let (denied_id, granted_id) = (denied.id().to_owned(), granted.id().to_owned());
    approvals
        .decide(&alice(), &denied_id, &deny, None)
        .await
        .unwrap();
    let grant = Verdict::Approve {
        comment: None,
        grant: Some(Duration::from_secs(300)),
        cgroup_wide: false,
    };
    approvals
        .decide(&alice(), &granted_id, &grant, None)
        .await
        .unwrap();
    ended(&mut denied).await;
    ended(&mut granted).await;
    let ids = || async {
        let mut ids: Vec<String> = store
            .list(true)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        ids
    };
    let now = std::time::SystemTime::now();
    // Nothing has settled long enough yet.
    assert_eq!(approvals.prune(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(ids().await.len(), 3);
    // Past the denied request's expiry, before the grant's end: the
    // denial goes, the grant (it still lets statements run) and the
    // pending request stay.
    let removed = store.prune(now + timeout + Duration::from_secs(5)).await;
    assert_eq!(removed.unwrap(), 1);
    let mut left = vec![pending.id().to_owned(), granted_id.clone()];
    left.sort();
    assert_eq!(ids().await, left);
    // Past the grant's end too; a pending request is never removed.
    let removed = store.prune(now + Duration::from_secs(7200)).await;
    assert_eq!(removed.unwrap(), 1);
    assert_eq!(ids().await, [pending.id().to_owned()]);
}
