//! Just-in-time approval end to end: a job's psql in a guarded cgroup is held on a dangerous statement until an approver decides over the admin socket (run as root).
//!
//! The job runs as root inside the cgroup, so root is the requester and
//! may never approve its own statement; the approver is `nobody`, reaching
//! the admin socket through its group `nogroup`. Each test has its own
//! server, cgroup, gateway and 127.0.0.8x address.
use std::{
    collections::HashMap,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use chokepoint_tests::{
    Gateway, GatewayConfig, PgServer, TestCgroup, WebhookReceiver, chokepoint_bin_for_anyone, cli,
    job_command, job_psql, message,
    metrics::scrape,
    postgres::{cstrings, frame},
    run_with_timeout, wait_for,
};
use serde_json::{Value, json};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);
const PGCLIENT: &str = env!("CARGO_BIN_EXE_cp-pgclient");
/// Hang guard for a request to show up, or a recording event to be written.
const WAIT: Duration = Duration::from_secs(60);
const NOBODY: u32 = 65534;
/// A uid with no passwd entry and no approver rights.
const STRANGER: u32 = 65533;

/// Writes to `public.orders` are held; deleting everything is too.
fn rules(approval: &str) -> String {
    format!(
        r#"
[[rule]]
name = "ci-orders"
action = "allow"
targets = ["orders-db"]

[rule.postgres]
roles = ["app_rw"]
allow = ["read", "write", "transaction", "other"]
deny = ["drop", "truncate"]

[[rule.postgres.tables]]
tables = ["public.orders"]
approve = ["write"]

[rule.approval]
{approval}
"#
    )
}

struct Setup {
    gw: Gateway,
    /// Where the gateway serves its metrics.
    metrics_port: u16,
    cg: TestCgroup,
    pg: PgServer,
    address: String,
    /// A copy of the binary `nobody` may execute.
    bin: PathBuf,
    _bin_dir: tempfile::TempDir,
}

impl Setup {
    fn start(hint: &str, last: u8, approval: &str) -> Result<Self> {
        Self::start_with(hint, last, approval, None)
    }

    /// With `store` lines in `[approvals]` (the fleet store).
    fn start_with(
        hint: &str,
        last: u8,
        approval: &str,
        store: Option<&dyn Fn(&PgServer) -> String>,
    ) -> Result<Self> {
        let pg = PgServer::start()?;
        let cg = TestCgroup::new(hint)?;
        let address = format!("127.0.0.{last}");
        pg.admin_psql(
            "app_rw",
            "orders",
            &["CREATE TABLE orders (id int PRIMARY KEY, item text); \
               INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 40) AS g"],
        )?;
        let metrics_port = chokepoint_tests::gateway_port()?;
        let mut config = GatewayConfig::new(hint, &cg)?
            .daemon_setting("admin_group = \"nogroup\"")
            .daemon_setting(&format!("metrics_listen = \"127.0.0.1:{metrics_port}\""))
            .raw_toml(&pg.target_toml("orders-db", &address))
            .raw_toml(&rules(approval));
        if let Some(store) = store {
            config = config.approvals_setting(&store(&pg));
        }
        let gw =
            Gateway::start(&config).with_context(|| format!("config:\n{}", config.to_toml()))?;
        let (bin_dir, bin) = chokepoint_bin_for_anyone()?;
        Ok(Self {
            gw,
            metrics_port,
            cg,
            pg,
            address,
            bin,
            _bin_dir: bin_dir,
        })
    }

    /// psql in the cgroup, running in the background.
    fn spawn_psql(&self, commands: &[&str]) -> Result<Job> {
        let conninfo = format!("host={} port=5432 dbname=orders user=app_rw", self.address);
        let child = job_psql(&self.cg, &conninfo, commands)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning psql")?;
        Ok(Job::new(child))
    }

    /// cp-pgclient in the cgroup running `steps`, in the background.
    fn spawn_pgclient(&self, steps: &Value) -> Result<Job> {
        let conninfo = format!("host={} port=5432 dbname=orders user=app_rw", self.address);
        let child = job_command(&self.cg, PGCLIENT)
            .arg(&conninfo)
            .arg(steps.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning cp-pgclient")?;
        Ok(Job::new(child))
    }

    /// `chokepoint approvals --socket … <args>` as `uid`:`gid`.
    fn approvals_as(&self, uid: u32, gid: u32, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("approvals")
            .arg("--socket")
            .arg(self.gw.admin_socket())
            .args(args)
            .uid(uid)
            .gid(gid);
        run_with_timeout(&mut cmd, CLIENT_TIMEOUT)
    }

    /// Pending requests as root sees them.
    fn pending(&self) -> Result<Vec<Value>> {
        let out = self.gw.approvals(&["list", "--json"])?;
        ensure!(out.status.success(), "list failed: {}", text(&out));
        Ok(serde_json::from_slice::<Vec<Value>>(&out.stdout)?)
    }

    /// Waits for `n` pending requests; returns them.
    fn wait_pending(&self, n: usize) -> Result<Vec<Value>> {
        wait_for(&format!("{n} pending requests"), WAIT, || {
            self.pending().ok().filter(|p| p.len() == n)
        })
    }

    /// Waits for exactly one pending request; returns its id.
    fn first_pending_id(&self) -> Result<String> {
        Ok(self.wait_pending(1)?[0]["id"]
            .as_str()
            .context("id")?
            .to_owned())
    }

    /// Waits until the gateway's metrics say `n` statements are held.
    fn wait_waiting(&self, n: u64) -> Result<()> {
        wait_for(&format!("chokepoint_approvals_waiting {n}"), WAIT, || {
            (scrape(self.metrics_port, "chokepoint_approvals_waiting") == Some(n)).then_some(())
        })
    }

    fn orders(&self) -> Result<String> {
        Ok(self
            .pg
            .admin_psql("app_rw", "orders", &["SELECT count(*) FROM orders"])?
            .trim()
            .to_owned())
    }

    /// The recorded approval events of request `id`.
    fn approval_events(&self, id: &str) -> Vec<Value> {
        self.gw
            .recorded("approval")
            .into_iter()
            .filter(|e| e["id"] == id)
            .collect()
    }

    fn wait_events(&self, id: &str, kinds: &[&str]) -> Result<Vec<Value>> {
        wait_for(
            &format!("recorded approval events {kinds:?} of {id}"),
            WAIT,
            || {
                let events = self.approval_events(id);
                let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
                kinds.iter().all(|k| names.contains(k)).then_some(events)
            },
        )
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A background psql whose output is collected by a thread.
struct Job {
    rx: mpsc::Receiver<std::io::Result<Output>>,
    pid: u32,
}

impl Job {
    fn new(child: Child) -> Self {
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        Self { rx, pid }
    }

    fn finish(self) -> Result<Output> {
        match self.rx.recv_timeout(CLIENT_TIMEOUT) {
            Ok(out) => Ok(out?),
            Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                bail!(
                    "psql (pid {}) did not finish within {CLIENT_TIMEOUT:?}",
                    self.pid
                )
            }
        }
    }

    /// Ends the client (it goes away while held), and reaps it.
    fn kill(self) -> Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let _ = self.finish();
        Ok(())
    }

    /// Still running (held), checked without waiting.
    fn running(&self) -> bool {
        matches!(self.rx.try_recv(), Err(mpsc::TryRecvError::Empty))
    }
}

#[test]
fn a_held_delete_runs_once_an_approver_approves_and_nobody_else_can() -> Result<()> {
    let hooks = WebhookReceiver::start()?;
    let secret_dir = tempfile::tempdir()?;
    let bearer = secret_dir.path().join("hook-token");
    std::fs::write(&bearer, "s3cret-token\n")?;
    std::fs::set_permissions(&bearer, std::fs::Permissions::from_mode(0o600))?;
    let s = Setup::start(
        "apr-approve",
        81,
        &format!(
            "approvers = [\"nobody\", \"root\"]\ntimeout = \"10m\"\nmax_grant = \"1h\"\nnotify = [{{ url = {:?}, bearer_file = {:?} }}]",
            hooks.url("/hook"),
            bearer.display().to_string()
        ),
    )?;
    let job = s.spawn_psql(&["DELETE FROM orders", "SELECT count(*) FROM orders"])?;
    let pending = s.wait_pending(1)?;
    let r = &pending[0];
    let id = r["id"].as_str().context("id")?.to_owned();
    assert_eq!(r["statement"], "DELETE FROM orders", "{r}");
    assert_eq!(r["state"], "pending");
    assert_eq!(r["who"]["uid"], 0);
    assert_eq!(r["who"]["comm"], "psql");
    assert_eq!(r["target"], "orders-db");
    assert_eq!(r["role"], "app_rw");
    assert_eq!(r["database"], "orders");
    assert_eq!(r["rule"], "ci-orders");
    assert!(
        r["reason"].as_str().unwrap_or("").contains("public.orders"),
        "{r}"
    );
    assert!(job.running(), "psql must wait while the statement is held");
    assert_eq!(s.orders()?, "40", "nothing may run before the decision");

    // The webhook got the same request, with the bearer secret.
    let hook = wait_for("the webhook POST", WAIT, || hooks.received().pop())?;
    assert_eq!(hook.path, "/hook");
    assert_eq!(hook.body["id"], id.as_str());
    assert_eq!(hook.body["statement"], "DELETE FROM orders");
    assert_eq!(hook.header("authorization"), Some("Bearer s3cret-token"));

    // Refusals, each one line and a non-zero exit.
    let own = s.gw.approvals(&["approve", &id])?;
    assert!(!own.status.success());
    assert!(
        text(&own).contains("which is you: someone else must decide it"),
        "{}",
        text(&own)
    );
    let stranger = s.approvals_as(STRANGER, NOBODY, &["approve", &id])?;
    assert!(!stranger.status.success());
    assert!(
        text(&stranger).contains("uid 65533 is not an approver"),
        "{}",
        text(&stranger)
    );
    let outsider = s.approvals_as(STRANGER, STRANGER, &["list"])?;
    assert!(!outsider.status.success());
    assert!(
        text(&outsider).contains("permission denied on the admin socket"),
        "{}",
        text(&outsider)
    );
    let unknown = s.approvals_as(NOBODY, NOBODY, &["approve", "apr-zzzzzz"])?;
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("approval request apr-zzzzzz does not exist"),
        "{}",
        text(&unknown)
    );
    let too_long = s.approvals_as(
        NOBODY,
        NOBODY,
        &["approve", &id, "--for", "3h", "--cgroup-wide"],
    )?;
    assert!(
        text(&too_long).contains("longer than rule ci-orders's max_grant of 1h"),
        "{}",
        text(&too_long)
    );
    assert!(job.running());

    // The approver sees it and approves it: the statement runs, psql goes on.
    let shown = s.approvals_as(NOBODY, NOBODY, &["show", &id])?;
    assert!(shown.status.success(), "{}", text(&shown));
    assert!(
        text(&shown).contains("what:      DELETE FROM orders"),
        "{}",
        text(&shown)
    );
    let approved = s.approvals_as(
        NOBODY,
        NOBODY,
        &["approve", &id, "--comment", "cleanup ticket 42"],
    )?;
    assert!(approved.status.success(), "{}", text(&approved));
    assert!(
        text(&approved).contains("approved; the held statement runs"),
        "{}",
        text(&approved)
    );
    let out = job.finish()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "waiting for approval {id}: run \"chokepoint approvals approve {id}\""
        )),
        "{stderr}"
    );
    assert!(stdout.contains("DELETE 40"), "{stdout}{stderr}");
    assert_eq!(stdout.lines().last(), Some("0"), "{stdout}");
    assert_eq!(s.orders()?, "0");

    let again = s.approvals_as(NOBODY, NOBODY, &["deny", &id, "--reason", "late"])?;
    assert!(!again.status.success());
    assert!(
        text(&again).contains("is already approved"),
        "{}",
        text(&again)
    );

    let events = s.wait_events(&id, &["requested", "notified", "approved"])?;
    let approved = events.iter().find(|e| e["event"] == "approved").unwrap();
    assert_eq!(approved["by"], "nobody");
    assert!(
        approved["detail"]
            .as_str()
            .unwrap_or("")
            .contains("cleanup ticket 42"),
        "{approved}"
    );
    Ok(())
}

#[test]
fn denied_and_timed_out_statements_fail_with_42501_and_the_session_goes_on() -> Result<()> {
    // Nothing listens on port 1: the webhook fails, the request stands.
    let s = Setup::start(
        "apr-deny",
        82,
        "approvers = [\"nobody\"]\ntimeout = \"3s\"\nnotify = [{ url = \"http://127.0.0.1:1/hook\" }]",
    )?;
    // Denied. The comment tries to redraw the approver's screen.
    let job = s.spawn_psql(&[
        "DELETE FROM orders WHERE id = 1 /*\r\x1b[2Kwhat: nothing*/",
        "SELECT 'after'",
    ])?;
    let id = s.first_pending_id()?;
    for command in ["show", "list"] {
        let args: &[&str] = if command == "show" {
            &["show", &id]
        } else {
            &["list"]
        };
        let shown = s.approvals_as(NOBODY, NOBODY, args)?;
        assert!(shown.status.success(), "{}", text(&shown));
        let stdout = String::from_utf8_lossy(&shown.stdout);
        assert!(
            !stdout.contains('\x1b') && !stdout.contains('\r'),
            "{command} obeyed the job's terminal controls: {stdout:?}"
        );
        assert!(stdout.contains("\\u{1b}[2K"), "{command}: {stdout:?}");
    }
    let no_reason = s.approvals_as(NOBODY, NOBODY, &["deny", &id, "--reason", " "])?;
    assert!(!no_reason.status.success());
    let denied = s.approvals_as(
        NOBODY,
        NOBODY,
        &["deny", &id, "--reason", "not during the freeze"],
    )?;
    assert!(denied.status.success(), "{}", text(&denied));
    let out = job.finish()?;
    let all = text(&out);
    assert!(all.contains("ERROR:  42501"), "{all}");
    assert!(
        all.contains(&format!(
            "statement not approved ({id}, rule ci-orders): denied by nobody: not during the freeze"
        )),
        "{all}"
    );
    assert!(all.contains("after"), "the session goes on: {all}");
    assert_eq!(s.orders()?, "40");
    let events = s.wait_events(&id, &["requested", "notify_failed", "denied"])?;
    let failed = events
        .iter()
        .find(|e| e["event"] == "notify_failed")
        .unwrap();
    assert!(
        failed["detail"]
            .as_str()
            .unwrap_or("")
            .contains("127.0.0.1:1"),
        "{failed}"
    );

    // Timed out: nobody decides within 3 s.
    let job = s.spawn_psql(&["UPDATE orders SET item = 'x'", "SELECT 'after'"])?;
    let out = job.finish()?;
    let all = text(&out);
    assert!(all.contains("ERROR:  42501"), "{all}");
    assert!(all.contains("no decision within 3s"), "{all}");
    assert!(all.contains("after"), "{all}");
    assert_eq!(
        s.pg.admin_psql(
            "app_rw",
            "orders",
            &["SELECT count(*) FROM orders WHERE item = 'x'"]
        )?
        .trim(),
        "0"
    );
    // What approvers would see redacted is never held: denied at once.
    let job = s.spawn_psql(&[
        "DELETE FROM orders WHERE id = 2 OR 'password=' = 'password='",
        "SELECT 'after'",
    ])?;
    let out = job.finish()?;
    let all = text(&out);
    assert!(all.contains("ERROR:  42501"), "{all}");
    assert!(all.contains("it holds a password literal"), "{all}");
    assert!(all.contains("after"), "{all}");
    assert_eq!(s.orders()?, "40");

    let listed = s.gw.approvals(&["list", "--all", "--json"])?;
    let all: Vec<Value> = serde_json::from_slice(&listed.stdout)?;
    let mut states: Vec<&str> = all.iter().filter_map(|r| r["state"].as_str()).collect();
    // Listed oldest first; sorted here so the check does not rest on
    // the two requests' timestamps differing.
    states.sort_unstable();
    assert_eq!(states, ["denied", "expired"]);
    Ok(())
}

#[test]
fn a_client_that_leaves_cancels_its_request_and_a_grant_skips_asking() -> Result<()> {
    let s = Setup::start(
        "apr-grant",
        83,
        "approvers = [\"nobody\"]\ntimeout = \"10m\"\nmax_grant = \"30m\"",
    )?;
    // The client goes away while held.
    let job = s.spawn_psql(&["DELETE FROM orders WHERE id = 1"])?;
    let id = s.first_pending_id()?;
    s.wait_waiting(1)?;
    job.kill()?;
    let cancelled = wait_for("the request to be cancelled", WAIT, || {
        let out = s.gw.approvals(&["show", &id, "--json"]).ok()?;
        let r: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
        (r.first()?["state"] == "cancelled").then(|| r[0].clone())
    })?;
    assert!(
        cancelled["note"]
            .as_str()
            .unwrap_or("")
            .contains("disconnected"),
        "{cancelled}"
    );
    s.wait_waiting(0)?;
    assert_eq!(s.orders()?, "40");

    // Approved with --for: later writes of the same class run unasked.
    let job = s.spawn_psql(&["DELETE FROM orders WHERE id = 2"])?;
    let id = s.first_pending_id()?;
    // The job is unidentified, so the grant would reach its whole cgroup:
    // refused unless the approver says that is meant.
    let out = s.approvals_as(NOBODY, NOBODY, &["approve", &id, "--for", "20m"])?;
    assert!(
        !out.status.success() && text(&out).contains("--cgroup-wide"),
        "{}",
        text(&out)
    );
    assert_eq!(s.first_pending_id()?, id, "the refused approval decided it");
    let out = s.approvals_as(
        NOBODY,
        NOBODY,
        &["approve", &id, "--for", "20m", "--cgroup-wide"],
    )?;
    assert!(out.status.success(), "{}", text(&out));
    // The job is unidentified: the approver is told whom the grant covers.
    assert!(
        text(&out).contains("it also lets run write statements held by rule")
            && text(&out).contains("(unidentified: whichever job runs there next too)"),
        "{}",
        text(&out)
    );
    job.finish()?;
    let out = run_with_timeout(
        &mut job_psql(
            &s.cg,
            &format!("host={} port=5432 dbname=orders user=app_rw", s.address),
            &["DELETE FROM orders WHERE id = 3"],
        ),
        CLIENT_TIMEOUT,
    )?;
    assert!(text(&out).contains("DELETE 1"), "{}", text(&out));
    assert!(
        !text(&out).contains("waiting for approval"),
        "{}",
        text(&out)
    );
    assert_eq!(s.orders()?, "38");
    s.wait_events(&id, &["grant_used"])?;

    // Two held statements in one string are asked about whole: the grant
    // covers one statement of its kind, not what rides along with it.
    let job =
        s.spawn_psql(&["DELETE FROM orders WHERE id = 4; DELETE FROM orders WHERE id = 5"])?;
    let pending = s.wait_pending(1)?;
    assert!(
        pending[0]["statement"]
            .as_str()
            .unwrap_or("")
            .contains("id = 5"),
        "{pending:?}"
    );
    job.kill()?;
    assert_eq!(s.orders()?, "38");
    Ok(())
}

/// A statement held at Parse is asked about once: approved, each Bind of
/// it runs without asking again (the approval was for exactly this text).
#[test]
fn a_statement_approved_at_parse_runs_at_every_bind() -> Result<()> {
    let s = Setup::start(
        "apr-parse",
        86,
        "approvers = [\"nobody\"]\ntimeout = \"10m\"",
    )?;
    // Bind of statement `d` with one text parameter, run at once.
    let bind = |id: &str| {
        let mut tail = vec![0, 0, 0, 1];
        tail.extend_from_slice(&(id.len() as i32).to_be_bytes());
        tail.extend_from_slice(id.as_bytes());
        tail.extend_from_slice(&[0, 0]);
        frame(b'B', &cstrings(&["", "d"], &tail))
    };
    let execute = frame(b'E', &cstrings(&[""], &[0; 4]));
    let sync = frame(b'S', &[]);
    let script = [
        frame(
            b'P',
            &cstrings(&["d", "DELETE FROM orders WHERE id = $1"], &[0, 0]),
        ),
        sync.clone(),
        bind("7"),
        execute.clone(),
        sync.clone(),
        bind("8"),
        execute,
        sync,
    ];
    let steps = json!([{ "raw_until_ready": { "hex": script.concat(), "ready": 3 } }]);
    let job = s.spawn_pgclient(&steps)?;
    let pending = s.wait_pending(1)?;
    let id = pending[0]["id"].as_str().context("id")?.to_owned();
    // The approver is told what a yes to a Parse means.
    assert!(
        pending[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("it runs at each Bind in this session, with any parameter values"),
        "{}",
        pending[0]
    );
    let out = s.approvals_as(NOBODY, NOBODY, &["approve", &id])?;
    assert!(out.status.success(), "{}", text(&out));
    let out = job.finish()?;
    let r: Value = serde_json::from_str(text(&out).lines().next().unwrap_or_default())
        .with_context(|| text(&out))?;
    let tags: String = r["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .filter_map(|m| m["tag"].as_str())
        .filter(|t| *t != "N") // the "waiting for approval" notice
        .collect();
    assert_eq!(tags, "1Z2CZ2CZ", "{r}");
    assert_eq!(s.orders()?, "38");
    // One request in all: the Binds were not asked about.
    let all = s.gw.approvals(&["list", "--all", "--json"])?;
    let all: Vec<Value> = serde_json::from_slice(&all.stdout)?;
    assert_eq!(all.len(), 1, "{all:?}");
    Ok(())
}

/// An approval given at prepare time is the approval of the rule that
/// held the statement: after a reload in which another rule (with its own
/// approvers) holds it, a Bind of it is refused, not run on the old yes.
#[test]
fn a_prepared_approval_does_not_carry_over_to_another_rule_after_a_reload() -> Result<()> {
    let mut s = Setup::start(
        "apr-reheld",
        87,
        "approvers = [\"nobody\"]\ntimeout = \"10m\"",
    )?;
    let marks = tempfile::tempdir()?;
    let (prepared, reloaded) = (marks.path().join("prepared"), marks.path().join("reloaded"));
    let path = |p: &PathBuf| -> Result<String> { Ok(p.to_str().context("path")?.to_owned()) };
    let steps = json!([
        { "prepare": "DELETE FROM orders WHERE id = $1" },
        { "execute": { "statement": 0, "params": [11] } },
        { "touch": path(&prepared)? },
        { "wait_file": path(&reloaded)? },
        { "execute": { "statement": 0, "params": [12] } },
    ]);
    let job = s.spawn_pgclient(&steps)?;
    let reload = (|| -> Result<()> {
        let id = s.first_pending_id()?;
        let out = s.approvals_as(NOBODY, NOBODY, &["approve", &id])?;
        ensure!(out.status.success(), "{}", text(&out));
        wait_for("the first execute", WAIT, || {
            prepared.exists().then_some(())
        })?;
        // The same hold under another rule's name: other approvers.
        let config = std::fs::read_to_string(s.gw.config_path())?;
        let renamed = config.replace(r#"name = "ci-orders""#, r#"name = "ci-orders-v2""#);
        ensure!(renamed != config, "no rule to rename in:\n{config}");
        s.gw.write_config(&renamed)?;
        let outcome = s.gw.reload()?;
        ensure!(message(&outcome) == Some("policy reloaded"), "{outcome}");
        Ok(())
    })();
    // Let the client go on (or fail its wait) whatever happened.
    std::fs::write(&reloaded, b"")?;
    let out = job.finish()?;
    reload?;
    let r: Vec<Value> = text(&out)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| text(&out))?;
    ensure!(r.len() == 5, "{}", text(&out));
    assert_eq!(r[0]["ok"], true, "prepare, held and approved: {}", r[0]);
    assert_eq!(r[1]["ok"], true, "a Bind under the same rule: {}", r[1]);
    assert_eq!(r[4]["error"]["code"], "42501", "{}", r[4]);
    let refusal = r[4]["error"]["message"].as_str().unwrap_or_default();
    assert!(
        refusal.contains("needs approval by rule ci-orders-v2")
            && refusal.contains("prepare it again to ask for approval"),
        "{refusal}"
    );
    assert_eq!(s.orders()?, "39");
    Ok(())
}

/// An approval given with `--for` releases what it prepared only while
/// the grant lasts: a Bind after it ends is refused, not run on the old yes.
#[test]
fn a_statement_prepared_under_a_grant_stops_running_when_the_grant_ends() -> Result<()> {
    let s = Setup::start(
        "apr-grant-end",
        88,
        "approvers = [\"nobody\"]\ntimeout = \"10m\"\nmax_grant = \"1h\"",
    )?;
    let marks = tempfile::tempdir()?;
    let ended = marks.path().join("ended");
    let steps = json!([
        { "prepare": "DELETE FROM orders WHERE id = $1" },
        { "execute": { "statement": 0, "params": [21] } },
        { "wait_file": ended.to_str().context("path")? },
        { "execute": { "statement": 0, "params": [22] } },
    ]);
    let job = s.spawn_pgclient(&steps)?;
    let approve = (|| -> Result<()> {
        let id = s.first_pending_id()?;
        let out = s.approvals_as(
            NOBODY,
            NOBODY,
            &["approve", &id, "--for", "3s", "--cgroup-wide"],
        )?;
        ensure!(out.status.success(), "{}", text(&out));
        Ok(())
    })();
    if let Err(e) = approve {
        job.kill()?;
        return Err(e);
    }
    std::thread::sleep(Duration::from_secs(4));
    std::fs::write(&ended, b"")?;
    let out = job.finish()?;
    let r: Vec<Value> = text(&out)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| text(&out))?;
    ensure!(r.len() == 4, "{}", text(&out));
    assert_eq!(r[1]["ok"], true, "a Bind within the grant: {}", r[1]);
    assert_eq!(r[3]["error"]["code"], "42501", "{}", r[3]);
    let refusal = r[3]["error"]["message"].as_str().unwrap_or_default();
    assert!(
        refusal.contains("the approval grant it was prepared under has ended"),
        "{refusal}"
    );
    assert_eq!(s.orders()?, "39");
    Ok(())
}

#[test]
fn twenty_held_statements_are_decided_in_any_order() -> Result<()> {
    let s = Setup::start(
        "apr-many",
        84,
        "approvers = [\"nobody\"]\ntimeout = \"10m\"",
    )?;
    let mut jobs = HashMap::new();
    for n in 1..=20 {
        let sql = format!("DELETE FROM orders WHERE id = {n}");
        jobs.insert(sql.clone(), s.spawn_psql(&[&sql])?);
    }
    let pending = s.wait_pending(20)?;
    let mut requests: Vec<(String, String)> = pending
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or_default().to_owned(),
                r["statement"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    // A shuffle from the ids themselves, which are random.
    requests.sort_by(|a, b| a.0.cmp(&b.0));
    let mut approved = Vec::new();
    for (i, (id, sql)) in requests.iter().enumerate() {
        let out = if i % 2 == 0 {
            approved.push(sql.clone());
            s.approvals_as(NOBODY, NOBODY, &["approve", id])?
        } else {
            s.approvals_as(NOBODY, NOBODY, &["deny", id, "--reason", "odd one"])?
        };
        ensure!(out.status.success(), "{}", text(&out));
    }
    for (sql, job) in jobs {
        let out = job.finish()?;
        let all = text(&out);
        if approved.contains(&sql) {
            assert!(all.contains("DELETE 1"), "{sql}: {all}");
        } else {
            assert!(all.contains("denied by nobody: odd one"), "{sql}: {all}");
        }
    }
    assert_eq!(s.orders()?, "30");
    Ok(())
}

#[test]
fn a_fleet_store_lets_an_approver_decide_on_another_gateway() -> Result<()> {
    // Both gateways share the fleet store in the test server; the second
    // one guards an empty cgroup of its own and serves only the approver.
    let store = |pg: &PgServer| {
        format!(
            "postgres = \"host=127.0.0.1 port={} user=app_rw dbname=orders\"\npostgres_password_file = {:?}",
            pg.port(),
            pg.password_file("app_rw").display().to_string()
        )
    };
    let s = Setup::start_with(
        "apr-fleet",
        85,
        "approvers = [\"nobody\"]\ntimeout = \"10m\"",
        Some(&store),
    )?;
    let a = &s.gw;
    let cg_b = TestCgroup::new("apr-fleet-b")?;
    let config_b = GatewayConfig::new("apr-fleet-b", &cg_b)?
        .daemon_setting("admin_group = \"nogroup\"")
        .approvals_setting(&store(&s.pg))
        .raw_toml(&s.pg.target_toml("orders-db", &s.address))
        .raw_toml(&rules("approvers = [\"nobody\"]\ntimeout = \"10m\""));
    let b = Gateway::start(&config_b).with_context(|| config_b.to_toml())?;

    let conninfo = format!("host={} port=5432 dbname=orders user=app_rw", s.address);
    let job = Job::new(
        job_psql(
            &s.cg,
            &conninfo,
            &["DELETE FROM orders WHERE id = 7", "SELECT 'after'"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?,
    );
    // Listed through the other gateway.
    let listed = wait_for("the request on gateway b", WAIT, || {
        let out = b.approvals(&["list", "--json"]).ok()?;
        let v: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
        (v.len() == 1).then(|| v[0].clone())
    })?;
    let id = listed["id"].as_str().context("id")?.to_owned();
    assert_eq!(
        listed["gateway"]
            .as_str()
            .map(|g| g.ends_with(a.instance())),
        Some(true),
        "{listed}"
    );
    let mut cmd = Command::new(&s.bin);
    cmd.arg("approvals")
        .arg("--socket")
        .arg(b.admin_socket())
        .args(["approve", &id])
        .uid(NOBODY)
        .gid(NOBODY);
    let out = run_with_timeout(&mut cmd, CLIENT_TIMEOUT)?;
    assert!(out.status.success(), "{}", text(&out));
    let out = job.finish()?;
    let all = text(&out);
    assert!(all.contains("DELETE 1"), "{all}");
    assert!(all.contains("after"), "{all}");
    assert_eq!(s.orders()?, "39");

    // The fleet store directly: an approver with the database's
    // credentials decides without any gateway's socket.
    let direct = format!(
        "host=127.0.0.1 port={} user=app_rw dbname=orders password={}",
        s.pg.port(),
        s.pg.password("app_rw")?
    );
    let job = Job::new(
        job_psql(&s.cg, &conninfo, &["DELETE FROM orders WHERE id = 8"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let pending = wait_for("the second request in the store", WAIT, || {
        let out = cli(&["approvals", "--store", &direct, "list", "--json"]).ok()?;
        let v: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
        (v.len() == 1).then(|| v[0].clone())
    })?;
    let id = pending["id"].as_str().context("id")?.to_owned();
    let mut cmd = Command::new(&s.bin);
    cmd.args(["approvals", "--store", &direct, "approve", &id])
        .uid(NOBODY)
        .gid(NOBODY);
    let out = run_with_timeout(&mut cmd, CLIENT_TIMEOUT)?;
    assert!(out.status.success(), "{}", text(&out));
    let out = job.finish()?;
    assert!(text(&out).contains("DELETE 1"), "{}", text(&out));
    assert_eq!(s.orders()?, "38");

    // Someone who can write the table flips a row to approved without a
    // vote: the holding gateway checks the votes and keeps it refused.
    let job = Job::new(
        job_psql(&s.cg, &conninfo, &["DELETE FROM orders WHERE id = 9"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let id = s.first_pending_id()?;
    s.pg.admin_psql(
        "app_rw",
        "orders",
        &[&format!(
            "UPDATE chokepoint_approvals SET state = 'approved', \
             body = jsonb_set(body::jsonb, '{{state}}', '\"approved\"')::text WHERE id = '{id}'"
        )],
    )?;
    let out = job.finish()?;
    let all = text(&out);
    assert!(
        all.contains("42501") || all.contains("not approved"),
        "{all}"
    );
    assert!(
        all.contains("0 distinct approval(s) where 1 are needed")
            && all.contains("was the store altered?"),
        "{all}"
    );
    assert_eq!(s.orders()?, "38");

    // Settled long ago: removed when a gateway prunes (at start, then
    // hourly); a pending request stays however old.
    for (id, state) in [("apr-old1", "denied"), ("apr-old2", "pending")] {
        s.pg.admin_psql(
            "app_rw",
            "orders",
            &[&format!(
                "INSERT INTO chokepoint_approvals (id, state, created, target, body) \
                 SELECT '{id}', '{state}', created, target, (body::jsonb - 'grant_until' || \
                 '{{\"id\": \"{id}\", \"state\": \"{state}\", \"expires\": \"2020-01-01T00:00:00Z\", \
                 \"votes\": [], \"gateway\": \"elsewhere/x\"}}'::jsonb)::text \
                 FROM chokepoint_approvals LIMIT 1"
            )],
        )?;
    }
    let mut b = b;
    b.restart()?;
    let left = || {
        s.pg.admin_psql(
            "app_rw",
            "orders",
            &["SELECT string_agg(id, ',' ORDER BY id) FROM chokepoint_approvals WHERE id LIKE 'apr-old%'"],
        )
    };
    wait_for("the settled request pruned", WAIT, || {
        left().ok().filter(|l| l.trim() == "apr-old2")
    })
    .with_context(|| format!("left: {:?}\n{}", left(), b.logs().join("\n")))?;
    drop(b);
    Ok(())
}
