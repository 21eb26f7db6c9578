//! Unit tests: loading, diagnostics with positions, evaluation and explanations.
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use super::*;
use std::sync::Arc;

/// A temporary directory of policy files.
pub(super) struct Files(tempfile::TempDir);

impl Files {
    pub(super) fn new() -> Files {
        Files(tempfile::tempdir().expect("tempdir"))
    }

    pub(super) fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).expect("mkdir");
        }
        fs::write(&path, text).expect("write");
        path
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// Users known to the tests, independent of the host's passwd.
pub(super) fn users(name: &str) -> Result<Option<u32>, String> {
    Ok(match name {
        "root" => Some(0),
        "runner" => Some(1000),
        "deploy" => Some(1001),
        _ => None,
    })
}

pub(super) fn load(paths: &[PathBuf]) -> Result<Policy, PolicyErrors> {
    Policy::load_with(paths, &users)
}

pub(super) fn load_one(files: &Files, text: &str) -> Result<Policy, PolicyErrors> {
    load(&[files.write("policy.toml", text)])
}

pub(super) fn errors(result: Result<Policy, PolicyErrors>) -> Vec<Diagnostic> {
    match result {
        Ok(policy) => panic!("expected errors, loaded {}", policy.summary()),
        Err(PolicyErrors(diagnostics)) => diagnostics,
    }
}

pub(super) fn only_error(result: Result<Policy, PolicyErrors>) -> Diagnostic {
    let mut all = errors(result);
    assert_eq!(all.len(), 1, "{all:#?}");
    all.remove(0)
}

pub(super) fn flow<'a>(dst: &str, uid: u32, comm: &'a str) -> FlowFacts<'a> {
    FlowFacts {
        dst: dst.parse::<SocketAddr>().expect("dst"),
        pid: 1,
        uid,
        gid: uid,
        comm,
        claims: None,
        names: &[],
        udp: false,
    }
}

const EXAMPLE: &str = r#"[daemon]
instance = "demo"
listen_port = 15002
mode = "audit"
exempt_mark = 0x43500002

[guard]
cgroup = "chokepoint-demo"
create = true

[[target]]
name = "echo"
addresses = ["127.0.0.2", "::1", "fd00::/8"]
ports = [7000, "7100-7200"]
protocol = "tcp"

[[target]]
name = "db"
addresses = ["10.0.0.0/8"]
ports = [5432]

[[rule]]
name = "builds-reach-echo"
action = "allow"
targets = ["echo"]
users = ["runner"]
processes = ["curl", "python3*"]

[[rule]]
name = "root-anywhere"
action = "allow"
targets = ["*"]
uids = [0]

[[rule]]
name = "deny-db"
action = "deny"
targets = ["db"]
"#;

#[test]
fn the_example_loads_with_its_settings() {
    let files = Files::new();
    let path = files.write("chokepoint.toml", EXAMPLE);
    let policy = load(std::slice::from_ref(&path)).expect("loads");
    assert_eq!(
        policy.daemon(),
        &DaemonSettings {
            instance: "demo".into(),
            listen_port: 15002,
            dns_port: 15053,
            udp_port: 15054,
            udp_idle_timeout: std::time::Duration::from_secs(30),
            max_connections_per_job: 1024,
            max_buffered_per_job: 256 << 20,
            mode: Mode::Audit,
            exempt_mark: 0x4350_0002,
            masking_key_file: None,
            copy_out_masked: CopyOutMasked::Mask,
            admin_socket: PathBuf::from(crate::policy::DEFAULT_ADMIN_SOCKET),
            admin_group: None,
            metrics_listen: None,
        }
    );
    assert_eq!(
        policy.guard(),
        Some(&GuardSettings {
            cgroup: PathBuf::from("chokepoint-demo"),
            create: true,
            require_family_guard: false,
            loopback_clients_only: false,
        })
    );
    assert_eq!(policy.sources(), &[path]);
    assert_eq!(policy.summary(), "2 targets, 3 rules from 1 file");
}

#[test]
fn files_without_daemon_or_guard_get_defaults() {
    let files = Files::new();
    let policy = load_one(&files, "").expect("an empty file is a valid, deny-all policy");
    assert_eq!(policy.daemon(), &DaemonSettings::default());
    assert_eq!(policy.daemon().instance, "default");
    assert_eq!(policy.daemon().listen_port, 15001);
    assert_eq!(policy.daemon().mode, Mode::Enforce);
    assert_eq!(policy.daemon().exempt_mark, 0x4350_0001);
    assert_eq!(policy.guard(), None);
    assert_eq!(policy.summary(), "0 targets, 0 rules from 1 file");
}

#[test]
fn load_resolves_users_on_this_host() {
    let files = Files::new();
    let path = files.write(
        "c.toml",
        "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"*\"]\nusers = [\"root\"]\n",
    );
    let policy = Policy::load(&path).expect("root exists on every Linux host");
    assert_eq!(
        policy.evaluate(&flow("10.0.0.1:1", 0, "sh")).verdict,
        Verdict::Allow
    );
    assert_eq!(
        policy.evaluate(&flow("10.0.0.1:1", 1, "sh")).verdict,
        Verdict::Deny
    );

    let bad = files.write(
        "d.toml",
        "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"*\"]\nusers = [\"no-such-user-chokepoint\"]\n",
    );
    let e = only_error(Policy::load(&bad));
    assert_eq!((e.line, e.col), (5, 10));
    assert!(
        e.message
            .contains("unknown user \"no-such-user-chokepoint\""),
        "{}",
        e.message
    );
}

// ---- diagnostics ----

#[test]
fn diagnostics_display_file_line_col_or_file_alone() {
    let positioned = Diagnostic {
        file: "a.toml".into(),
        line: 3,
        col: 7,
        message: "bad".into(),
    };
    assert_eq!(positioned.to_string(), "a.toml:3:7: bad");
    let whole = Diagnostic {
        file: "a.toml".into(),
        line: 0,
        col: 0,
        message: "cannot read".into(),
    };
    assert_eq!(whole.to_string(), "a.toml: cannot read");
    let errors = PolicyErrors(vec![positioned, whole]);
    assert_eq!(errors.to_string(), "a.toml:3:7: bad\na.toml: cannot read");
}

#[test]
fn a_syntax_error_points_at_its_line_and_column() {
    let files = Files::new();
    let e = only_error(load_one(
        &files,
        "[daemon]\ninstance = \"demo\"\nlisten_port = = 1\n",
    ));
    assert_eq!(e.file, files.path("policy.toml"));
    assert_eq!((e.line, e.col), (3, 15));
    assert!(e.message.starts_with("invalid TOML"), "{}", e.message);
}

#[test]
fn a_key_defined_twice_in_one_file_is_named() {
    let files = Files::new();
    let e = only_error(load_one(&files, "[daemon]\nmode = \"audit\"\n\n[daemon]\n"));
    assert_eq!((e.line, e.col), (4, 2));
    assert!(
        e.message.contains("duplicate key `daemon`"),
        "{}",
        e.message
    );
}

#[test]
fn unknown_keys_are_errors_at_the_key() {
    let files = Files::new();
    let all = errors(load_one(
        &files,
        "[daemon]\nlisten = 1\n\n[[target]]\nname = \"t\"\naddresses = [\"10.0.0.1\"]\nports = [1]\n  colour = \"red\"\n\n[extra]\n",
    ));
    let found: Vec<(usize, usize)> = all.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(found, vec![(2, 1), (8, 3), (10, 2)], "{all:#?}");
    assert!(
        all[0].message.contains("unknown field `listen`"),
        "{}",
        all[0].message
    );
    assert!(
        all[0].message.contains("listen_port"),
        "lists the valid keys: {}",
        all[0].message
    );
    assert!(
        all[1].message.contains("unknown field `colour`"),
        "{}",
        all[1].message
    );
    assert!(
        all[2].message.contains("unknown section \"extra\""),
        "{}",
        all[2].message
    );
}

#[test]
fn type_errors_point_at_the_value() {
    let files = Files::new();
    let e = only_error(load_one(&files, "[daemon]\nlisten_port = \"15001\"\n"));
    assert_eq!((e.line, e.col), (2, 15));
    assert!(e.message.contains("expected an integer"), "{}", e.message);
    let e = only_error(load_one(
        &files,
        "[[target]]\nname = \"t\"\naddresses = \"10.0.0.1\"\nports = [1]\n",
    ));
    assert_eq!((e.line, e.col), (3, 13));
    assert!(e.message.contains("expected an array"), "{}", e.message);
}

#[test]
fn daemon_values_are_checked_with_advice() {
    let files = Files::new();
    let all = errors(load_one(
        &files,
        "[daemon]\ninstance = \"Demo!\"\nlisten_port = 70000\nmode = \"enforcing\"\nexempt_mark = 0\n",
    ));
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        all.iter().map(|d| (d.line, d.col)).collect::<Vec<_>>(),
        vec![(2, 12), (3, 15), (4, 8), (5, 15)]
    );
    assert!(
        messages[0].contains("instance \"Demo!\" must be 1 to 32 characters"),
        "{}",
        messages[0]
    );
    assert_eq!(messages[1], "listen_port must be 1..=65535, not 70000");
    assert_eq!(
        messages[2],
        "mode must be \"enforce\" or \"audit\", not \"enforcing\""
    );
    assert!(
        messages[3].starts_with("exempt_mark must be a non-zero"),
        "{}",
        messages[3]
    );

    let e = only_error(load_one(&files, "[daemon]\nlisten_port = 0\n"));
    assert_eq!(e.message, "listen_port must be 1..=65535, not 0");
    let e = only_error(load_one(
        &files,
        "[daemon]\ninstance = \"abcdefghijklmnopqrstuvwxyz0123456\"\n",
    ));
    assert!(
        e.message.contains("1 to 32"),
        "33 characters: {}",
        e.message
    );
    let long_ok = load_one(
        &files,
        "[daemon]\ninstance = \"abcdefghijklmnopqrstuvwxyz_-0123\"\n",
    );
    assert_eq!(long_ok.expect("32 characters").daemon().instance.len(), 32);
}

#[test]
fn guard_needs_a_cgroup_when_present() {
    let files = Files::new();
    let e = only_error(load_one(&files, "[guard]\ncreate = true\n"));
    assert_eq!((e.line, e.col), (1, 2));
    assert!(e.message.contains("add cgroup = "), "{}", e.message);
    let e = only_error(load_one(&files, "[guard]\ncgroup = \"\"\n"));
    assert_eq!((e.line, e.col), (2, 10));
    let e = only_error(load_one(&files, "[guard]\ncgroup = \"ci/../../etc\"\n"));
    assert_eq!((e.line, e.col), (2, 10));
    assert!(
        e.message.starts_with("cgroup contains `..`"),
        "{}",
        e.message
    );
    let absolute =
        load_one(&files, "[guard]\ncgroup = \"/sys/fs/cgroup/ci\"\n").expect("absolute cgroup");
    assert_eq!(
        absolute.guard().map(|g| g.cgroup.as_path()),
        Some(Path::new("/sys/fs/cgroup/ci"))
    );
    assert_eq!(absolute.guard().map(|g| g.create), Some(false));
}

#[test]
fn metrics_listen_is_a_loopback_address_the_gateway_does_not_use() {
    let files = Files::new();
    let load_with = |value: &str| {
        load_one(
            &files,
            &format!("[daemon]\nlisten_port = 15001\nmetrics_listen = {value:?}\n"),
        )
    };
    let listen = |value: &str| load_with(value).map(|p| p.daemon().metrics_listen).ok();
    assert_eq!(
        listen("127.0.0.1:9464"),
        Some(Some("127.0.0.1:9464".parse().unwrap()))
    );
    assert_eq!(
        listen("[::1]:9464"),
        Some(Some("[::1]:9464".parse().unwrap()))
    );
    // Another loopback address may share the gateway's port number.
    assert!(listen("127.0.0.9:15001").is_some());
    for (value, says) in [
        ("0.0.0.0:9464", "not a loopback address"),
        ("[::]:9464", "not a loopback address"),
        ("127.0.0.1:0", "port 0"),
        ("127.0.0.1:15001", "the gateway's own listener"),
        ("[::1]:15001", "the gateway's own listener"),
        ("localhost:9464", "not an address and port"),
        ("127.0.0.1", "not an address and port"),
    ] {
        let e = only_error(load_with(value));
        assert_eq!(e.line, 3, "{value}: {}", e.message);
        assert!(e.message.contains(says), "{value}: {}", e.message);
    }
    assert_eq!(
        load_one(&files, "[daemon]\n")
            .unwrap()
            .daemon()
            .metrics_listen,
        None
    );
}

#[test]
fn the_family_guard_is_required_only_when_asked() {
    let files = Files::new();
    let required =
        |text: &str| load_one(&files, text).map(|p| p.guard().map(|g| g.require_family_guard));
    assert_eq!(
        required("[guard]\ncgroup = \"ci\"\n").ok(),
        Some(Some(false))
    );
    assert_eq!(
        required("[guard]\ncgroup = \"ci\"\nrequire_family_guard = true\n").ok(),
        Some(Some(true))
    );
    let e = only_error(load_one(
        &files,
        "[guard]\ncgroup = \"ci\"\nrequire_family_guard = \"yes\"\n",
    ));
    assert_eq!(e.line, 3, "{}", e.message);
    assert!(e.message.contains("boolean"), "{}", e.message);
}

#[test]
fn loopback_clients_only_is_off_unless_asked() {
    let files = Files::new();
    let only =
        |text: &str| load_one(&files, text).map(|p| p.guard().map(|g| g.loopback_clients_only));
    assert_eq!(only("[guard]\ncgroup = \"ci\"\n").ok(), Some(Some(false)));
    assert_eq!(
        only("[guard]\ncgroup = \"ci\"\nloopback_clients_only = true\n").ok(),
        Some(Some(true))
    );
    let e = only_error(load_one(
        &files,
        "[guard]\ncgroup = \"ci\"\nloopback_clients_only = 1\n",
    ));
    assert_eq!(e.line, 3, "{}", e.message);
}

#[test]
fn reversed_port_ranges_say_how_to_write_them() {
    let files = Files::new();
    let e = only_error(load_one(
        &files,
        "[[target]]\nname = \"echo\"\naddresses = [\"127.0.0.2\"]\nports = [7000, \"7200-7100\"]\n",
    ));
    assert_eq!((e.line, e.col), (4, 16));
    assert_eq!(
        e.message,
        "port range \"7200-7100\" is reversed: write \"7100-7200\""
    );
}

#[test]
fn bad_ports_and_addresses_are_each_reported() {
    let files = Files::new();
    let all = errors(load_one(
        &files,
        "[[target]]\nname = \"t\"\naddresses = [\"10.0.0.300\", \"10.1.2.3/8\", \"::1\"]\nports = [0, 65536, \"http\", \"0-10\", 1.5]\nprotocol = \"udp\"\n",
    ));
    // The float is a type error, which stops the entry before the others.
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!((all[0].line, all[0].col), (4, 36));

    let all = errors(load_one(
        &files,
        "[[target]]\nname = \"t\"\naddresses = [\"10.0.0.300\", \"10.1.2.3/8\", \"::1\"]\nports = [0, 65536, \"http\", \"0-10\"]\nprotocol = \"sctp\"\n",
    ));
    let at: Vec<(usize, usize)> = all.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(
        at,
        vec![
            (3, 14),
            (3, 28),
            (4, 10),
            (4, 13),
            (4, 20),
            (4, 28),
            (5, 12)
        ],
        "{all:#?}"
    );
    assert!(
        all[0]
            .message
            .contains("\"10.0.0.300\" is not an IP address or CIDR"),
        "{}",
        all[0].message
    );
    assert!(
        all[1]
            .message
            .contains("host bits set: write \"10.0.0.0/8\""),
        "{}",
        all[1].message
    );
    assert!(
        all[2].message.contains("port 0 in ports is out of range"),
        "{}",
        all[2].message
    );
    assert!(all[3].message.contains("port 65536"), "{}", all[3].message);
    assert!(
        all[4].message.contains("\"http\" is not a port"),
        "{}",
        all[4].message
    );
    assert!(
        all[5].message.contains("port 0 in \"0-10\""),
        "{}",
        all[5].message
    );
    assert_eq!(
        all[6].message,
        "protocol \"sctp\" is not supported; valid protocols: tcp, postgres, udp"
    );
}

#[test]
fn udp_targets_match_udp_flows_only_and_star_matches_both() {
    let files = Files::new();
    let policy = load_one(
        &files,
        r#"
[[target]]
name = "ntp"
addresses = ["127.0.0.0/24"]
ports = [123]
protocol = "udp"

[[target]]
name = "web"
addresses = ["127.0.0.0/24"]
ports = [123]

[[rule]]
name = "time"
action = "allow"
targets = ["ntp"]
uids = [1000]

[[rule]]
name = "web"
action = "allow"
targets = ["web"]
uids = [1001]

[[rule]]
name = "anything"
action = "allow"
targets = ["*"]
uids = [1002]
"#,
    )
    .expect("valid");
    let udp = |uid| FlowFacts {
        udp: true,
        ..flow("127.0.0.5:123", uid, "ntpdate")
    };
    let d = policy.evaluate(&udp(1000));
    assert_eq!(
        (d.verdict, d.rule_name(), d.target.as_deref(), d.protocol),
        (Verdict::Allow, "time", Some("ntp"), Protocol::Udp)
    );
    // The TCP target on the same address and port allows TCP only.
    assert_eq!(policy.evaluate(&udp(1001)).verdict, Verdict::Deny);
    assert_eq!(
        policy
            .evaluate(&flow("127.0.0.5:123", 1001, "curl"))
            .verdict,
        Verdict::Allow
    );
    assert_eq!(
        policy
            .evaluate(&flow("127.0.0.5:123", 1000, "curl"))
            .verdict,
        Verdict::Deny,
        "a udp target does not allow TCP"
    );
    let d = policy.evaluate(&udp(1002));
    assert_eq!((d.verdict, d.protocol), (Verdict::Allow, Protocol::Udp));
    let text = policy.explain(&udp(1001)).to_string();
    assert!(
        text.contains("not a udp target, and this is a UDP flow"),
        "{text}"
    );
}

#[test]
fn udp_relay_settings_are_checked() {
    let files = Files::new();
    let all = errors(load_one(
        &files,
        "[daemon]\nlisten_port = 15054\nudp_idle_timeout = \"soon\"\n",
    ));
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    assert!(
        messages[0].contains("the default udp_port: set udp_port"),
        "{messages:?}"
    );
    assert!(
        messages[1].starts_with("udp_idle_timeout: \"soon\" is not a duration"),
        "{messages:?}"
    );
    let all = errors(load_one(
        &files,
        "[daemon]\ndns_port = 15100\nudp_port = 15100\n",
    ));
    assert!(
        all[0]
            .message
            .starts_with("udp_port must be 1..=65535 and differ"),
        "{all:#?}"
    );
    let ok = load_one(
        &files,
        "[daemon]\nudp_port = 15200\nudp_idle_timeout = \"2m\"\n",
    )
    .expect("valid");
    assert_eq!(
        (ok.daemon().udp_port, ok.daemon().udp_idle_timeout),
        (15200, std::time::Duration::from_secs(120))
    );
}

#[test]
fn the_per_job_connection_limit_is_checked_and_defaulted() {
    let files = Files::new();
    let ok = load_one(&files, "[daemon]\n").expect("valid");
    assert_eq!(ok.daemon().max_connections_per_job, 1024);
    let ok = load_one(&files, "[daemon]\nmax_connections_per_job = 3\n").expect("valid");
    assert_eq!(ok.daemon().max_connections_per_job, 3);
    for bad in ["0", "-1", "1000001", "99999999999"] {
        let all = errors(load_one(
            &files,
            &format!("[daemon]\nmax_connections_per_job = {bad}\n"),
        ));
        assert_eq!(
            all[0].message,
            format!("max_connections_per_job must be 1..=1000000, not {bad}"),
            "{all:#?}"
        );
        assert_eq!((all[0].line, all[0].col), (2, 27), "{all:#?}");
    }
    let ok = load_one(&files, "[daemon]\nmax_buffered_mb_per_job = 64\n").expect("valid");
    assert_eq!(ok.daemon().max_buffered_per_job, 64 << 20);
    for bad in ["0", "65537"] {
        let all = errors(load_one(
            &files,
            &format!("[daemon]\nmax_buffered_mb_per_job = {bad}\n"),
        ));
        assert_eq!(
            all[0].message,
            format!("max_buffered_mb_per_job must be 1..=65536 (MiB), not {bad}"),
            "{all:#?}"
        );
    }
}

#[test]
fn settings_that_would_overflow_at_runtime_are_rejected_where_written() {
    let files = Files::new();
    let text = "[daemon]\nudp_idle_timeout = \"400000000000y\"\n\n\
                [recording]\nmax_age_days = 9223372036854775807\nmax_total_mb = 17592186044416\n\n\
                [approvals]\napprovers = [\"root\"]\nmax_grant = \"400000000000y\"\n";
    let all = errors(load_one(&files, text));
    let found: Vec<(usize, &str)> = all.iter().map(|d| (d.line, d.message.as_str())).collect();
    let expect = [
        (
            2,
            "udp_idle_timeout: \"400000000000y\" is longer than 100 years",
        ),
        (
            5,
            "max_age_days must be 1 to 36500, not 9223372036854775807",
        ),
        (
            6,
            "max_total_mb must be 1 to 1073741824, not 17592186044416",
        ),
        (10, "max_grant: \"400000000000y\" is longer than 100 years"),
    ];
    assert_eq!(found.len(), expect.len(), "{found:#?}");
    for ((line, message), (want_line, want)) in found.iter().zip(expect) {
        assert_eq!(*line, want_line, "{message}");
        assert!(message.starts_with(want), "{message}");
    }

    let text = "[daemon]\nudp_idle_timeout = \"2d\"\n\n[approvals]\napprovers = [\"root\"]\nmax_grant = \"31d\"\n";
    let messages: Vec<String> = errors(load_one(&files, text))
        .into_iter()
        .map(|d| d.message)
        .collect();
    assert!(messages[0].contains("longer than 24h"), "{messages:?}");
    assert!(messages[1].contains("longer than 30 days"), "{messages:?}");
}

#[test]
fn required_target_and_rule_keys_are_named_at_the_header() {
    let files = Files::new();
    let all = errors(load_one(
        &files,
        "[[target]]\naddresses = []\n\n[[rule]]\nname = \"r\"\n",
    ));
    let found: Vec<(usize, usize, &str)> = all
        .iter()
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (1, 1, "this [[target]] has no name: add name = \"...\""),
            (
                1,
                1,
                "this [[target]] has no ports: add ports = [443] (numbers, or ranges such as \"7100-7200\")"
            ),
            (
                2,
                13,
                "addresses is empty: list at least one IP address or CIDR"
            ),
            (
                4,
                1,
                "rule \"r\" has no action: add action = \"allow\" or action = \"deny\""
            ),
            (
                4,
                1,
                "rule \"r\" has no targets: add targets = [\"name\"], or [\"*\"] for any destination"
            ),
        ]
    );
}

#[test]
fn unknown_targets_list_the_defined_ones() {
    let files = Files::new();
    let e = only_error(load_one(
        &files,
        "[[target]]\nname = \"echo\"\naddresses = [\"127.0.0.2\"]\nports = [7000]\n\n[[target]]\nname = \"db\"\naddresses = [\"10.0.0.1\"]\nports = [5432]\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"echo\", \"ech\"]\n",
    ));
    assert_eq!((e.line, e.col), (14, 20));
    assert_eq!(
        e.message,
        "unknown target \"ech\"; defined targets: echo, db"
    );
}

#[test]
fn rule_actions_names_and_subjects_are_checked() {
    let files = Files::new();
    let all = errors(load_one(
        &files,
        r#"[[rule]]
name = "default-deny"
action = "permit"
targets = ["*"]
uids = [-1, 4294967296]
users = ["nobody-here"]
processes = ["[a", "python3.11-config", "averyverylongname*"]

[[rule]]
name = "has space"
action = "deny"
targets = ["*"]
uids = []
"#,
    ));
    let found: Vec<(usize, usize)> = all.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(
        found,
        vec![
            (2, 8),
            (3, 10),
            (5, 9),
            (5, 13),
            (6, 10),
            (7, 14),
            (7, 20),
            (7, 41),
            (10, 8),
            (13, 8)
        ],
        "{all:#?}"
    );
    let m = |i: usize| all[i].message.as_str();
    assert!(m(0).contains("reserved"), "{}", m(0));
    assert_eq!(m(1), "action must be \"allow\" or \"deny\", not \"permit\"");
    assert!(m(2).contains("uid -1 is out of range"), "{}", m(2));
    assert!(m(3).contains("uid 4294967296 is out of range"), "{}", m(3));
    assert!(m(4).contains("unknown user \"nobody-here\""), "{}", m(4));
    assert!(m(5).contains("not a valid glob"), "{}", m(5));
    assert!(
        m(6).contains("truncates process names to 15 bytes; write \"python3.11-conf\""),
        "{}",
        m(6)
    );
    assert!(m(7).contains("needs at least 17 bytes"), "{}", m(7));
    assert!(m(8).contains("rule name \"has space\" must be"), "{}", m(8));
    assert!(m(9).contains("uids is empty"), "{}", m(9));
}

#[test]
fn a_fifteen_byte_process_name_is_fine() {
    let files = Files::new();
    let policy = load_one(
        &files,
        "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"*\"]\nprocesses = [\"python3.11-conf\", \"[!]x]bcdefghijklmn\"]\n",
    )
    .expect("15 bytes match a truncated comm");
    assert_eq!(
        policy
            .evaluate(&flow("10.0.0.1:1", 5, "python3.11-conf"))
            .verdict,
        Verdict::Allow
    );
    assert_eq!(
        policy
            .evaluate(&flow("10.0.0.1:1", 5, "abcdefghijklmn"))
            .verdict,
        Verdict::Allow
    );
}

/// Found in review: the hint cut a long multibyte name at a character
/// boundary ("ééééééé", 14 bytes), but the kernel keeps 15 bytes, half a
/// character included, which the gateway reads as U+FFFD.
#[test]
fn a_long_multibyte_process_name_is_hinted_as_the_kernel_keeps_it() {
    let files = Files::new();
    let rule = |process: &str| {
        format!(
            "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"*\"]\nprocesses = [\"{process}\"]\n"
        )
    };
    let all = errors(load_one(&files, &rule("ééééééééé")));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].message.contains("write \"ééééééé\u{FFFD}\""),
        "{}",
        all[0].message
    );
    // The suggestion loads and matches what the gateway sees.
    let policy = load_one(&files, &rule("ééééééé\u{FFFD}")).expect("the hinted name loads");
    let seen = crate::policy::as_kernel_keeps("ééééééééé").unwrap();
    assert_eq!(
        policy.evaluate(&flow("10.0.0.1:1", 5, &seen)).verdict,
        Verdict::Allow
    );
}

#[test]
fn duplicate_names_point_at_the_second_and_name_the_first() {
    let files = Files::new();
    let target = "[[target]]\nname = \"echo\"\naddresses = [\"127.0.0.2\"]\nports = [7000]\n";
    let rule = "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"echo\"]\n";
    let a = files.write("a.toml", &format!("{target}\n{rule}"));
    let b = files.write("b.toml", &format!("{rule}\n{target}"));
    let all = errors(load(&[a.clone(), b.clone()]));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(
        (all[0].file.as_path(), all[0].line, all[0].col),
        (b.as_path(), 2, 8)
    );
    assert_eq!(
        all[0].message,
        format!(
            "rule \"r\" is already defined at {}:7:8: rule names must be unique",
            a.display()
        )
    );
    assert_eq!(
        (all[1].file.as_path(), all[1].line, all[1].col),
        (b.as_path(), 7, 8)
    );
    assert!(
        all[1]
            .message
            .contains(&format!("already defined at {}:2:8", a.display())),
        "{}",
        all[1].message
    );
}

#[test]
fn every_error_in_every_file_is_reported() {
    let files = Files::new();
    let a = files.write(
        "a.toml",
        "[[target]]\nname = \"echo\"\naddresses = [\"127.0.0.2\"]\nports = [\"9-1\"]\n\n[[target]]\nname = \"x\"\nbogus = 1\n\n[[target]]\nname = \"y\"\naddresses = [\"nope\"]\nports = [1]\n",
    );
    let b = files.write("b.toml", "[[rule]\nname = \"broken\"\n");
    let c = files.write(
        "c.toml",
        "[[rule]]\nname = \"r1\"\naction = \"allow\"\ntargets = [\"ech\"]\n\n[[rule]]\nname = \"r2\"\naction = \"maybe\"\ntargets = [\"echo\"]\n",
    );
    let missing = files.path("missing.toml");
    let all = errors(load(&[a.clone(), b.clone(), c.clone(), missing.clone()]));
    let found: Vec<(&Path, usize, usize)> = all
        .iter()
        .map(|d| (d.file.as_path(), d.line, d.col))
        .collect();
    assert_eq!(
        found,
        vec![
            (a.as_path(), 4, 10),
            (a.as_path(), 8, 1),
            (a.as_path(), 12, 14),
            (b.as_path(), 1, 8),
            (c.as_path(), 4, 12),
            (c.as_path(), 8, 10),
            (missing.as_path(), 0, 0),
        ],
        "{all:#?}"
    );
    assert!(
        all[6].message.starts_with("cannot read this file"),
        "{}",
        all[6].message
    );
    assert!(
        all[6]
            .to_string()
            .starts_with(&format!("{}: cannot read", missing.display()))
    );
    // The target with a bad port was declared, so the rule naming it is not
    // also reported; a misspelt name is.
    assert!(
        all[4]
            .message
            .contains("unknown target \"ech\"; defined targets: echo, x, y"),
        "{}",
        all[4].message
    );
}

#[test]
fn a_second_daemon_or_guard_across_files_is_an_error_at_the_second() {
    let files = Files::new();
    let a = files.write(
        "a.toml",
        "[daemon]\nmode = \"audit\"\n[guard]\ncgroup = \"ci\"\n",
    );
    let b = files.write(
        "b.toml",
        "# policy\n\n[guard]\ncgroup = \"other\"\n\n  [daemon]\n",
    );
    let all = errors(load(&[a.clone(), b.clone()]));
    let found: Vec<(&Path, usize, usize)> = all
        .iter()
        .map(|d| (d.file.as_path(), d.line, d.col))
        .collect();
    assert_eq!(found, vec![(b.as_path(), 3, 2), (b.as_path(), 6, 4)]);
    assert!(
        all[0].message.starts_with("second [guard] section"),
        "{}",
        all[0].message
    );
    assert!(
        all[1]
            .message
            .contains(&format!("the first is at {}:1:2", a.display())),
        "{}",
        all[1].message
    );
}

#[test]
fn target_must_be_an_array_of_tables() {
    let files = Files::new();
    let e = only_error(load_one(&files, "[target]\nname = \"t\"\n"));
    assert_eq!((e.line, e.col), (1, 1));
    assert!(
        e.message.contains("write [[target]] (double brackets)"),
        "{}",
        e.message
    );
    let e = only_error(load_one(&files, "rule = [1]\n"));
    assert_eq!((e.line, e.col), (1, 9));
}

#[test]
fn inline_arrays_of_tables_work_too() {
    let files = Files::new();
    let policy = load_one(
        &files,
        "target = [{ name = \"t\", addresses = [\"10.0.0.1\"], ports = [1] }]\nrule = [{ name = \"r\", action = \"allow\", targets = [\"t\"] }]\n",
    )
    .expect("inline tables");
    assert_eq!(
        policy.evaluate(&flow("10.0.0.1:1", 5, "x")).rule_name(),
        "r"
    );
}

// ---- includes ----

#[test]
fn include_globs_load_relative_to_the_file_in_sorted_order() {
    let files = Files::new();
    let config = files.write(
        "etc/chokepoint.toml",
        "[daemon]\ninclude = [\"policy.d/*.toml\", \"empty.d/*.toml\", \"extra.toml\"]\n\n[[target]]\nname = \"any\"\naddresses = [\"0.0.0.0/0\"]\nports = [\"1-65535\"]\n",
    );
    let rule = |name: &str| {
        format!("[[rule]]\nname = \"{name}\"\naction = \"allow\"\ntargets = [\"any\"]\n")
    };
    let b = files.write("etc/policy.d/20-b.toml", &rule("b"));
    let a = files.write("etc/policy.d/10-a.toml", &rule("a"));
    files.write("etc/policy.d/.#10-a.toml", "not toml at all [");
    files.write("etc/policy.d/notes.txt", "not toml at all [");
    let extra = files.write("etc/extra.toml", &rule("extra"));
    fs::create_dir_all(files.path("etc/empty.d")).expect("mkdir");

    // Run from elsewhere: includes must not depend on the working directory.
    let policy = load(std::slice::from_ref(&config)).expect("loads");
    assert_eq!(policy.sources(), &[config, a, b, extra]);
    assert_eq!(policy.summary(), "1 target, 3 rules from 4 files");
    assert_eq!(
        policy.evaluate(&flow("10.0.0.1:80", 5, "x")).rule_name(),
        "a"
    );
}

#[test]
fn a_missing_plain_include_is_an_error_at_its_entry() {
    let files = Files::new();
    let e = only_error(load_one(
        &files,
        "[daemon]\ninclude = [\"x/*.toml\", \"policy.d/extra.toml\"]\n",
    ));
    assert_eq!((e.line, e.col), (2, 24));
    assert!(e.message.contains("policy.d/extra.toml"), "{}", e.message);
    assert!(e.message.contains("does not exist"), "{}", e.message);
    let e = only_error(load_one(&files, "[daemon]\ninclude = [\"[a.toml\"]\n"));
    assert!(e.message.contains("not a valid glob"), "{}", e.message);
}

#[test]
fn a_fifo_named_or_included_as_a_policy_is_refused_without_blocking() {
    let files = Files::new();
    fs::create_dir_all(files.path("p")).unwrap();
    let fifo = files.path("p/a.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let e = only_error(load(std::slice::from_ref(&fifo)));
    assert_eq!(e.file, fifo);
    assert_eq!(
        e.message,
        "cannot read this file: it is a FIFO, not a regular file"
    );
    let config = files.write("c.toml", "[daemon]\ninclude = [\"p/*.toml\"]\n");
    let e = only_error(load(&[config]));
    assert_eq!(e.file, fifo);
}

#[test]
fn errors_in_included_files_name_those_files() {
    let files = Files::new();
    let config = files.write("c.toml", "[daemon]\ninclude = [\"p/*.toml\"]\n");
    let bad = files.write(
        "p/a.toml",
        "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"nope\"]\n",
    );
    let e = only_error(load(&[config]));
    assert_eq!((e.file, e.line, e.col), (bad, 4, 12));
    assert_eq!(
        e.message,
        "unknown target \"nope\"; no targets are defined; use \"*\" for any destination"
    );
}

#[test]
fn a_file_named_twice_is_read_once() {
    let files = Files::new();
    let config = files.write("c.toml", "[daemon]\ninclude = [\"p/*.toml\"]\n");
    let policy_file = files.write(
        "p/a.toml",
        "[[rule]]\nname = \"r\"\naction = \"deny\"\ntargets = [\"*\"]\n",
    );
    let policy = load(&[config.clone(), policy_file.clone()]).expect("no duplicate rule error");
    assert_eq!(policy.sources(), &[config, policy_file]);
}

#[test]
fn no_files_is_an_error() {
    let all = errors(load(&[]));
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].to_string(),
        "no policy files given: name at least one file"
    );
}

// ---- evaluation ----

fn example() -> Policy {
    let files = Files::new();
    load_one(&files, EXAMPLE).expect("example loads")
}

#[test]
fn an_allow_rule_names_itself_and_its_target() {
    let policy = example();
    let d = policy.evaluate(&flow("127.0.0.2:7000", 1000, "curl"));
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.rule_name(), "builds-reach-echo");
    assert_eq!(d.target.as_deref(), Some("echo"));
}

#[test]
fn nothing_matching_is_a_default_deny() {
    let policy = example();
    let d = policy.evaluate(&flow("192.0.2.1:443", 1000, "curl"));
    assert_eq!(
        d,
        Decision {
            verdict: Verdict::Deny,
            rule: None,
            target: None,
            protocol: Protocol::Tcp,
        }
    );
    assert_eq!(d.rule_name(), "default-deny");
}

#[test]
fn deny_overrides_allow_whatever_the_order() {
    let policy = example();
    // root-anywhere allows (before deny-db in load order), deny-db denies.
    let d = policy.evaluate(&flow("10.1.2.3:5432", 0, "psql"));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rule_name(), "deny-db");
    assert_eq!(d.target.as_deref(), Some("db"));
    // root elsewhere: allowed by "*", so no target name.
    let d = policy.evaluate(&flow("10.1.2.3:5433", 0, "psql"));
    assert_eq!(
        (d.verdict, d.rule_name(), d.target.as_deref()),
        (Verdict::Allow, "root-anywhere", None)
    );
}

#[test]
fn the_first_matching_deny_is_named() {
    let files = Files::new();
    let policy = load_one(
        &files,
        "[[rule]]\nname = \"allow-all\"\naction = \"allow\"\ntargets = [\"*\"]\n\n[[rule]]\nname = \"deny-1\"\naction = \"deny\"\ntargets = [\"*\"]\nuids = [7]\n\n[[rule]]\nname = \"deny-2\"\naction = \"deny\"\ntargets = [\"*\"]\n",
    )
    .expect("loads");
    assert_eq!(
        policy.evaluate(&flow("10.0.0.1:1", 7, "x")).rule_name(),
        "deny-1"
    );
    assert_eq!(
        policy.evaluate(&flow("10.0.0.1:1", 8, "x")).rule_name(),
        "deny-2"
    );
}

#[test]
fn mapped_ipv4_destinations_match_ipv4_cidrs() {
    let policy = example();
    let d = policy.evaluate(&flow("[::ffff:10.9.8.7]:5432", 1000, "psql"));
    assert_eq!((d.verdict, d.rule_name()), (Verdict::Deny, "deny-db"));
    let d = policy.evaluate(&flow("[::ffff:127.0.0.2]:7000", 1000, "curl"));
    assert_eq!(
        (d.verdict, d.rule_name()),
        (Verdict::Allow, "builds-reach-echo")
    );
    // Not mapped: 10.9.8.7 embedded elsewhere is plain IPv6.
    let d = policy.evaluate(&flow("[64:ff9b::10.9.8.7]:5432", 1000, "psql"));
    assert_eq!(d.rule_name(), "default-deny");
}

#[test]
fn mapped_addresses_in_the_policy_are_ipv4() {
    let files = Files::new();
    let policy = load_one(
        &files,
        "[[target]]\nname = \"t\"\naddresses = [\"::ffff:10.0.0.0/104\"]\nports = [1]\n[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"t\"]\n",
    )
    .expect("loads");
    assert_eq!(
        policy.evaluate(&flow("10.2.3.4:1", 5, "x")).verdict,
        Verdict::Allow
    );
    assert_eq!(
        policy
            .evaluate(&flow("[::ffff:10.2.3.4]:1", 5, "x"))
            .verdict,
        Verdict::Allow
    );
    assert_eq!(
        policy.evaluate(&flow("11.2.3.4:1", 5, "x")).verdict,
        Verdict::Deny
    );
}

#[test]
fn ipv6_loopback_and_prefixes_match() {
    let policy = example();
    assert_eq!(
        policy
            .evaluate(&flow("[::1]:7000", 1000, "curl"))
            .rule_name(),
        "builds-reach-echo"
    );
    assert_eq!(
        policy
            .evaluate(&flow("[fd12::5]:7150", 1000, "curl"))
            .rule_name(),
        "builds-reach-echo"
    );
    assert_eq!(
        policy
            .evaluate(&flow("[::2]:7000", 1000, "curl"))
            .rule_name(),
        "default-deny"
    );
    assert_eq!(
        policy
            .evaluate(&flow("[fe80::1]:7000", 1000, "curl"))
            .rule_name(),
        "default-deny"
    );
}

#[test]
fn port_ranges_include_both_edges_and_nothing_beyond() {
    let policy = example();
    let verdict = |port: u16| {
        policy
            .evaluate(&flow(&format!("127.0.0.2:{port}"), 1000, "curl"))
            .verdict
    };
    for port in [7000, 7100, 7150, 7200] {
        assert_eq!(verdict(port), Verdict::Allow, "port {port}");
    }
    for port in [6999, 7001, 7099, 7201, 1, 65535] {
        assert_eq!(verdict(port), Verdict::Deny, "port {port}");
    }

    let files = Files::new();
    let full = load_one(
        &files,
        "[[target]]\nname = \"t\"\naddresses = [\"0.0.0.0/0\", \"::/0\"]\nports = [\"1-65535\"]\n[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"t\"]\n",
    )
    .expect("full range");
    assert_eq!(
        full.evaluate(&flow("1.2.3.4:65535", 5, "x")).verdict,
        Verdict::Allow
    );
    assert_eq!(
        full.evaluate(&flow("1.2.3.4:1", 5, "x")).verdict,
        Verdict::Allow
    );
    assert_eq!(
        full.evaluate(&flow("[2001:db8::1]:443", 5, "x")).verdict,
        Verdict::Allow
    );
}

#[test]
fn subjects_uids_users_and_process_globs() {
    let files = Files::new();
    let policy = load_one(
        &files,
        "[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"*\"]\nuids = [42]\nusers = [\"runner\"]\nprocesses = [\"curl\", \"python3*\"]\n",
    )
    .expect("loads");
    let verdict = |uid: u32, comm: &str| policy.evaluate(&flow("10.0.0.1:80", uid, comm)).verdict;
    assert_eq!(verdict(42, "curl"), Verdict::Allow);
    assert_eq!(
        verdict(1000, "curl"),
        Verdict::Allow,
        "runner resolves to 1000"
    );
    assert_eq!(verdict(1000, "python3"), Verdict::Allow);
    assert_eq!(verdict(1000, "python3.12"), Verdict::Allow);
    assert_eq!(verdict(1000, "python"), Verdict::Deny);
    assert_eq!(
        verdict(1000, "curl2"),
        Verdict::Deny,
        "a literal pattern is not a prefix"
    );
    assert_eq!(verdict(1000, "Curl"), Verdict::Deny, "case matters");
    assert_eq!(verdict(1001, "curl"), Verdict::Deny);
    assert_eq!(verdict(0, "curl"), Verdict::Deny);
}

#[test]
fn the_verdict_does_not_depend_on_file_order() {
    let files = Files::new();
    let a = files.write(
        "a.toml",
        "[[target]]\nname = \"web\"\naddresses = [\"10.0.0.0/8\"]\nports = [80, 443]\n\n[[rule]]\nname = \"web-ok\"\naction = \"allow\"\ntargets = [\"web\"]\n",
    );
    let b = files.write(
        "b.toml",
        "[[rule]]\nname = \"no-root\"\naction = \"deny\"\ntargets = [\"*\"]\nuids = [0]\n\n[[rule]]\nname = \"curl-anywhere\"\naction = \"allow\"\ntargets = [\"*\"]\nprocesses = [\"curl\"]\n",
    );
    let c = files.write(
        "c.toml",
        "[[rule]]\nname = \"no-443-for-wget\"\naction = \"deny\"\ntargets = [\"web\"]\nprocesses = [\"wget\"]\n",
    );
    let orders = [
        vec![a.clone(), b.clone(), c.clone()],
        vec![c.clone(), b.clone(), a.clone()],
        vec![b.clone(), a.clone(), c.clone()],
        vec![c.clone(), a.clone(), b.clone()],
    ];
    let policies: Vec<Policy> = orders.iter().map(|o| load(o).expect("loads")).collect();
    let flows = [
        ("10.0.0.1:80", 0, "curl"),
        ("10.0.0.1:80", 1000, "curl"),
        ("10.0.0.1:443", 1000, "wget"),
        ("10.0.0.1:22", 1000, "wget"),
        ("192.0.2.1:22", 1000, "curl"),
        ("192.0.2.1:22", 1000, "ssh"),
        ("[::ffff:10.0.0.1]:443", 1000, "sh"),
    ];
    let mut allowed = 0;
    for (dst, uid, comm) in flows {
        let facts = flow(dst, uid, comm);
        let verdicts: Vec<Verdict> = policies
            .iter()
            .map(|p| p.evaluate(&facts).verdict)
            .collect();
        assert!(
            verdicts.iter().all(|v| *v == verdicts[0]),
            "{dst} {uid} {comm}: {verdicts:?}"
        );
        allowed += usize::from(verdicts[0] == Verdict::Allow);
    }
    assert_eq!(allowed, 3, "the flows exercise both verdicts");
}

// ---- explain ----

#[test]
fn explain_says_why_each_rule_did_not_match_and_what_decided() {
    let policy = example();
    let facts = flow("10.1.2.3:5432", 1000, "sh");
    let explanation = policy.explain(&facts);
    assert_eq!(explanation.decision, policy.evaluate(&facts));
    let text = explanation.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[0].starts_with("rule builds-reach-echo (allow, "),
        "{text}"
    );
    assert!(
        lines[0].ends_with(
            "no match: destination 10.1.2.3:5432 not in targets echo (address not in [127.0.0.2, ::1, fd00::/8], port 5432 not in [7000, 7100-7200]); comm \"sh\" matches none of [\"curl\", \"python3*\"]"
        ),
        "{text}"
    );
    assert!(
        lines[1].ends_with("no match: uid 1000 not in [0]"),
        "{text}"
    );
    assert!(lines[2].starts_with("rule deny-db (deny, "), "{text}");
    assert!(lines[2].ends_with("matched (target db)"), "{text}");
    assert_eq!(
        lines[3],
        "mode audit: this denied connection would be logged, then forwarded"
    );
    assert_eq!(lines[4], "decision: deny by rule deny-db (target db)");
    assert!(text.ends_with('\n'));
}

#[test]
fn explain_shows_default_deny_and_users() {
    let policy = example();
    let facts = flow("127.0.0.2:7000", 1001, "curl");
    let text = policy.explain(&facts).to_string();
    assert!(
        text.contains("uid 1001 not in [1000] (users: runner=1000)"),
        "{text}"
    );
    assert!(
        text.ends_with("mode audit: this denied connection would be logged, then forwarded\ndecision: deny (default-deny: no rule matched)\n"),
        "the example runs in audit mode: {text}"
    );
    let allowed = policy.explain(&flow("192.0.2.9:22", 0, "ssh")).to_string();
    assert!(
        allowed.ends_with("decision: allow by rule root-anywhere (any destination)\n"),
        "{allowed}"
    );
    assert!(allowed.contains("root-anywhere (allow, "), "{allowed}");
    assert!(allowed.contains("matched (any destination)"), "{allowed}");
}

#[test]
fn explain_points_at_where_each_rule_is_written() {
    let files = Files::new();
    let path = files.write(
        "p.toml",
        "\n\n[[rule]]\nname = \"r\"\naction = \"deny\"\ntargets = [\"*\"]\n",
    );
    let policy = load(std::slice::from_ref(&path)).expect("loads");
    let text = policy.explain(&flow("10.0.0.1:1", 1, "x")).to_string();
    assert_eq!(
        text,
        format!(
            "rule r (deny, {}:3:1): matched (any destination)\ndecision: deny by rule r (any destination)\n",
            path.display()
        )
    );
}

#[test]
fn policies_can_be_shared_across_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Policy>();
    shared::<Decision>();
    shared::<Explanation>();
    shared::<PolicyErrors>();
}

#[test]
fn the_repository_example_is_valid() {
    let files = Files::new();
    let policy =
        load_one(&files, include_str!("../../../examples/chokepoint.toml")).expect("example loads");
    assert_eq!(policy.guard().map(|g| g.create), Some(true));
    let verdict = |dst: &str| policy.evaluate(&flow(dst, 1000, "curl")).verdict;
    assert_eq!(verdict("127.0.0.2:8080"), Verdict::Allow);
    assert_eq!(verdict("[::1]:9000"), Verdict::Deny);
    assert_eq!(verdict("127.0.0.2:9001"), Verdict::Deny);
}

#[test]
fn syntax_errors_on_separate_lines_are_all_reported() {
    let files = Files::new();
    let all = errors(load_one(
        &files,
        "[daemon]\nmode = \"audit\nlisten_port = 1\n\n[[rule]]\nname = = \"r\"\n",
    ));
    let lines: Vec<usize> = all.iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![2, 6], "{all:#?}");
}

#[test]
fn a_broken_daemon_section_still_loads_its_includes() {
    let files = Files::new();
    let config = files.write(
        "c.toml",
        "[daemon]\nmod = \"audit\"\ninclude = [\"p/*.toml\"]\n",
    );
    let included = files.write(
        "p/a.toml",
        "[[rule]]\nname = \"r\"\naction = \"alow\"\ntargets = [\"*\"]\n",
    );
    let other = files.write("d.toml", "[daemon]\n");
    let all = errors(load(&[config.clone(), other.clone()]));
    let found: Vec<(&Path, usize, usize)> = all
        .iter()
        .map(|d| (d.file.as_path(), d.line, d.col))
        .collect();
    assert_eq!(
        found,
        vec![
            (config.as_path(), 2, 1),
            (included.as_path(), 3, 10),
            (other.as_path(), 1, 2)
        ],
        "{all:#?}"
    );
    assert!(
        all[2].message.starts_with("second [daemon] section"),
        "{}",
        all[2].message
    );
}

#[test]
fn a_badly_named_target_is_reported_once() {
    let files = Files::new();
    let e = only_error(load_one(
        &files,
        "[[target]]\nname = \"my db\"\naddresses = [\"10.0.0.1\"]\nports = [5432]\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\ntargets = [\"my db\"]\n",
    ));
    assert_eq!((e.line, e.col), (2, 8));
    assert!(
        e.message.starts_with("target name \"my db\" must be"),
        "{}",
        e.message
    );
}

const CLAIM_RULES: &str = r#"
[[target]]
name = "db"
addresses = ["127.0.0.9"]
ports = [5432]

[[rule]]
name = "acme-main"
action = "allow"
targets = ["db"]
[rule.claims]
repository = "acme/*"
ref = ["refs/heads/main", "refs/tags/v*"]
"#;

fn claims(pairs: &[(&str, &str)]) -> Claims {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Pull-request builds may not reach the database; everything the runner
/// user runs otherwise may.
const CLAIM_DENY: &str = r#"
[[target]]
name = "db"
addresses = ["127.0.0.9"]
hosts = ["db.internal"]
ports = [5432]

[[rule]]
name = "runner"
action = "allow"
targets = ["db"]
uids = [1000]

[[rule]]
name = "no-pr-builds"
action = "deny"
targets = ["db"]
[rule.claims]
ref = "refs/pull/*"
"#;

#[test]
fn a_deny_rule_naming_claims_holds_for_unidentified_connections() {
    let files = Files::new();
    files.write("jwks.json", JWKS);
    let text = format!(
        "{}{CLAIM_DENY}",
        issuers(&[("github", "https://token.actions.githubusercontent.com")])
    );
    let policy = load_one(&files, &text).expect("loads");
    let main = claims(&[("ref", "refs/heads/main")]);
    let pr = claims(&[("ref", "refs/pull/7/merge")]);
    let decide = |c: Option<&Claims>| {
        let mut f = flow("127.0.0.9:5432", 1000, "psql");
        f.claims = c;
        let d = policy.evaluate(&f);
        (d.verdict, d.rule_name().to_owned())
    };
    assert_eq!(decide(Some(&main)), (Verdict::Allow, "runner".to_owned()));
    assert_eq!(
        decide(Some(&pr)),
        (Verdict::Deny, "no-pr-builds".to_owned())
    );
    // A PR job that ended its own binding, or whose token ran out, is
    // unidentified: still denied.
    assert_eq!(decide(None), (Verdict::Deny, "no-pr-builds".to_owned()));
    // Names too: the DNS forwarder refuses it for the unidentified.
    let f = flow("127.0.0.9:5432", 1000, "psql");
    assert!(!policy.resolve(&f, "db.internal").allowed);
}

#[test]
fn claim_rules_match_bound_jobs_and_never_unidentified_ones() {
    let files = Files::new();
    files.write("jwks.json", JWKS);
    let text = format!(
        "{}{CLAIM_RULES}",
        issuers(&[("github", "https://token.actions.githubusercontent.com")])
    );
    let policy = load_one(&files, &text).expect("loads");
    let main = claims(&[("repository", "acme/app"), ("ref", "refs/heads/main")]);
    let tag = claims(&[("repository", "acme/app"), ("ref", "refs/tags/v1.2")]);
    let branch = claims(&[("repository", "acme/app"), ("ref", "refs/heads/dev")]);
    let other = claims(&[("repository", "evil/app"), ("ref", "refs/heads/main")]);
    let no_ref = claims(&[("repository", "acme/app")]);
    let with = |c: Option<&Claims>| {
        let mut f = flow("127.0.0.9:5432", 1000, "psql");
        f.claims = c;
        policy.evaluate(&f).verdict
    };
    assert_eq!(with(Some(&main)), Verdict::Allow);
    assert_eq!(with(Some(&tag)), Verdict::Allow);
    assert_eq!(with(Some(&branch)), Verdict::Deny);
    assert_eq!(with(Some(&other)), Verdict::Deny);
    assert_eq!(with(Some(&no_ref)), Verdict::Deny);
    assert_eq!(with(None), Verdict::Deny);

    let mut f = flow("127.0.0.9:5432", 1000, "psql");
    let text = policy.explain(&f).to_string();
    assert!(
        text.contains("no match: the connection is unidentified (no job is bound to its cgroup), and this allow rule names job claims"),
        "{text}"
    );
    f.claims = Some(&branch);
    let text = policy.explain(&f).to_string();
    assert!(
        text.contains(
            r#"claim ref = "refs/heads/dev" matches none of ["refs/heads/main", "refs/tags/v*"]"#
        ),
        "{text}"
    );
    f.claims = Some(&main);
    assert!(
        policy
            .explain(&f)
            .to_string()
            .contains("decision: allow by rule acme-main")
    );
}

#[test]
fn identity_settings_and_claim_rules_are_checked_where_written() {
    let files = Files::new();
    files.write("jwks/bad.json", "{\"not\": \"a jwks\"}");
    files.write("jwks/empty.json", "{\"keys\": []}");
    // A FIFO would block the read for ever (found in review).
    nix::unistd::mkfifo(&files.path("jwks/fifo.json"), nix::sys::stat::Mode::S_IRWXU)
        .expect("mkfifo");
    let text = r#"
[identity]
runner_users = ["runner", "ghost"]
leeway = "1h"
max_job = "45d"

[[identity.issuer]]
name = "github"

[[identity.issuer]]
name = "gitlab"
issuer = "https://gitlab.example"
audience = ["chokepoint"]
jwks_file = "jwks/bad.json"

[[identity.issuer]]
name = "other"
issuer = "https://other.example"
audience = ["chokepoint"]
jwks_file = "jwks/empty.json"

[[identity.issuer]]
name = "fifo"
issuer = "https://fifo.example"
audience = ["chokepoint"]
jwks_file = "jwks/fifo.json"

[[identity.issuer]]
name = "missing"
issuer = "https://missing.example"
audience = ["chokepoint"]
jwks_file = "jwks/missing.json"

[[rule]]
name = "r"
action = "allow"
targets = ["*"]
[rule.claims]
repository = []
ref = "[unclosed"
"#;
    let all = errors(load_one(&files, text));
    assert_reported_at(
        &all,
        text,
        &[
            (
                "\"ghost\"",
                "runner user \"ghost\" does not exist on this host",
            ),
            ("\"1h\"", "leeway is longer than 10m"),
            ("\"45d\"", "max_job must be between 1m and 30d"),
            (
                "[[identity.issuer]]\nname = \"github\"",
                "this [[identity.issuer]] needs issuer = ",
            ),
            ("\"jwks/bad.json\"", "is not a JWKS"),
            ("\"jwks/empty.json\"", "holds no keys"),
            (
                "\"jwks/fifo.json\"",
                "it is a FIFO, not a regular file: name the JWKS file itself",
            ),
            (
                "\"jwks/missing.json\"",
                "does not exist: save the issuer's JWKS",
            ),
            ("[]\nref", "claim \"repository\" lists no pattern"),
            ("\"[unclosed\"", "claim pattern \"[unclosed\""),
        ],
    );
}

/// A JWKS with one Ed25519 key, for issuers that must load.
const JWKS: &str = r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

/// `[[identity.issuer]]` entries, one per `(name, issuer)`, with the
/// other keys valid.
fn issuers(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(name, issuer)| {
            format!(
                "[[identity.issuer]]\nname = \"{name}\"\nissuer = {issuer:?}\naudience = [\"chokepoint\"]\njwks_file = \"jwks.json\"\n\n"
            )
        })
        .collect()
}

#[test]
fn an_issuer_must_be_an_https_url_as_its_tokens_carry_it() {
    let files = Files::new();
    files.write("jwks.json", JWKS);
    let bad = [
        ("bare", "token.actions.githubusercontent.com"),
        ("plain", "http://gitlab.example"),
        ("lenient", "https:gitlab.example"),
        ("upper", "HTTPS://gitlab.example"),
        ("spaced", "https://spaced.example "),
        ("query", "https://query.example/?tenant=a"),
        ("fragment", "https://fragment.example/#x"),
        ("user", "https://ci@user.example"),
        ("nohost", "https://"),
        ("ftp", "ftp://ftp.example"),
    ];
    let text = issuers(&bad);
    let all = errors(load_one(&files, &text));
    assert_eq!(all.len(), bad.len(), "{all:#?}");
    for (_, issuer) in bad {
        let at = position_of(&text, &format!("{issuer:?}"));
        assert!(
            all.iter()
                .any(|d| (d.line, d.col) == at
                    && d.message.starts_with(&format!("issuer {issuer:?}"))),
            "{issuer:?} not reported at {at:?}: {all:#?}"
        );
    }
    assert!(all[0].message.contains("is not an https URL"), "{all:#?}");
    // What real issuers and local test issuers look like.
    let good = [
        ("github", "https://token.actions.githubusercontent.com"),
        ("slash", "https://auth.example/"),
        ("path", "https://sso.example:8443/realms/ci"),
        ("local4", "http://127.0.0.1:8080"),
        ("local6", "http://[::1]:8080/"),
        ("localhost", "http://localhost:9000/issuer"),
    ];
    let policy = load_one(&files, &issuers(&good)).expect("real issuers load");
    let loaded: Vec<&str> = policy.issuers().iter().map(|i| i.issuer.as_str()).collect();
    let written: Vec<&str> = good.iter().map(|(_, i)| *i).collect();
    assert_eq!(loaded, written, "kept exactly as written");
}

#[test]
fn an_issuer_audience_that_no_token_can_meet_is_reported_where_written() {
    let files = Files::new();
    files.write("jwks.json", JWKS);
    let text = r#"
[[identity.issuer]]
name = "none"
issuer = "https://none.example"
audience = []
jwks_file = "jwks.json"

[[identity.issuer]]
name = "blank"
issuer = "https://blank.example"
audience = ["chokepoint", "", " "]
jwks_file = "jwks.json"
"#;
    let all = errors(load_one(&files, text));
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(all.len(), 3, "{messages:#?}");
    assert_reported_at(
        &all,
        text,
        &[
            ("[]", "audience is empty: list the aud values"),
            ("\"\", \" \"", "audience \"\" is empty"),
            ("\" \"]", "audience \" \" is empty"),
        ],
    );
}

#[test]
fn a_claim_without_a_name_is_reported_and_an_empty_pattern_is_not() {
    let files = Files::new();
    files.write("jwks.json", JWKS);
    let text = r#"
[[identity.issuer]]
name = "github"
issuer = "token.actions.githubusercontent.com"
audience = ["chokepoint"]
jwks_file = "jwks.json"
required_claims = ["repository", "", " "]

[[rule]]
name = "r"
action = "allow"
targets = ["*"]
[rule.claims]
"" = "acme/*"
" " = "x"
"#;
    let all = errors(load_one(&files, text));
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(all.len(), 5, "{messages:#?}");
    assert_reported_at(
        &all,
        text,
        &[
            // Each problem of one issuer is reported, not only the first.
            ("\"token.", "is not an https URL"),
            ("\"\", ", "required claim \"\" has no name"),
            ("\" \"]", "required claim \" \" has no name"),
            ("\"\" = ", "claim \"\" has no name"),
            ("\" \" = ", "claim \" \" has no name"),
        ],
    );

    // GitHub sets head_ref and base_ref to "" outside pull requests:
    // matching the empty value is a rule that means something.
    files.write("jwks.json", JWKS);
    let text = format!(
        "{}{}",
        issuers(&[("github", "https://token.actions.githubusercontent.com")]),
        r#"
[[rule]]
name = "not-a-pull-request"
action = "allow"
targets = ["*"]
[rule.claims]
head_ref = ""
"#
    );
    let policy = load_one(&files, &text).expect("an empty pattern loads");
    let decide = |head_ref: &str| {
        let c = claims(&[("head_ref", head_ref)]);
        let mut f = flow("127.0.0.9:5432", 1000, "psql");
        f.claims = Some(&c);
        policy.evaluate(&f).verdict
    };
    assert_eq!(decide(""), Verdict::Allow);
    assert_eq!(decide("feature"), Verdict::Deny);
}

/// 1-based line and column of `needle` in `text`.
/// Asserts that each `(needle, message)` has a diagnostic at the first
/// place `needle` occurs in `text` whose message contains `message`.
fn assert_reported_at(all: &[Diagnostic], text: &str, expected: &[(&str, &str)]) {
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    for &(needle, message) in expected {
        let at = position_of(text, needle);
        assert!(
            all.iter()
                .any(|d| (d.line, d.col) == at && d.message.contains(message)),
            "no {message:?} at {at:?} in {messages:#?}"
        );
    }
}

fn position_of(text: &str, needle: &str) -> (usize, usize) {
    let offset = text.find(needle).expect("needle");
    let line = text[..offset].matches('\n').count() + 1;
    let col = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[test]
fn the_identity_example_loads_and_decides_by_claims() {
    let files = Files::new();
    let jwks = r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    files.write("jwks/github.json", jwks);
    files.write("jwks/gitlab.json", jwks);
    let example = include_str!("../../../examples/identity/policy.toml").replace(
        "/etc/chokepoint/jwks/",
        &format!("{}/", files.path("jwks").display()),
    );
    // The example names the runner users of a real host; these tests know
    // their own users only.
    let example = example.replace(
        r#"runner_users = ["github-runner", "gitlab-runner"]"#,
        r#"runner_users = ["runner"]"#,
    );
    let policy = load_one(&files, &example).expect("the example loads");
    assert_eq!(policy.issuers().len(), 2);
    assert_eq!(policy.runner_uids(), [1000]);
    assert_eq!(policy.max_job(), std::time::Duration::from_secs(6 * 3600));
    let decide = |dst: &str, pairs: &[(&str, &str)]| {
        let c = claims(pairs);
        let mut f = flow(dst, 1000, "psql");
        f.claims = Some(&c);
        policy.evaluate(&f).rule_name().to_owned()
    };
    let main = [
        ("repository", "acme/app"),
        ("ref", "refs/heads/main"),
        ("environment", "production"),
    ];
    assert_eq!(decide("10.30.0.5:5432", &main), "acme-prod-deploy");
    assert_eq!(decide("10.20.0.5:5432", &main), "acme-staging");
    let branch = [
        ("repository", "acme/app"),
        ("ref", "refs/heads/dev"),
        ("environment", "production"),
    ];
    assert_eq!(decide("10.30.0.5:5432", &branch), DEFAULT_DENY);
    let gitlab = [
        ("project_path", "acme/app"),
        ("ref", "main"),
        ("ref_protected", "true"),
        ("environment", "production"),
    ];
    assert_eq!(decide("10.30.0.5:5432", &gitlab), "gitlab-prod-deploy");
}

const HOST_RULES: &str = r#"
[dns]
upstream = ["127.0.0.53"]

[[target]]
name = "db"
hosts = ["db.internal"]
ports = [5432]

[[target]]
name = "corp"
hosts = ["*.corp.example"]
ports = [443]

[[target]]
name = "secrets"
hosts = ["vault.corp.example"]
ports = [8200]

[[rule]]
name = "jobs"
action = "allow"
targets = ["db", "corp"]

[[rule]]
name = "no-vault"
action = "deny"
targets = ["secrets"]
"#;

#[test]
fn names_resolve_by_target_hosts_and_connections_match_by_them() {
    let files = Files::new();
    let policy = load_one(&files, HOST_RULES).expect("loads");
    let f = flow("127.0.0.1:53", 1000, "getent");
    let resolve = |name: &str| {
        let d = policy.resolve(&f, name);
        (d.allowed, d.rule.to_string())
    };
    assert_eq!(resolve("db.internal"), (true, "jobs".into()));
    assert_eq!(resolve("DB.Internal."), (true, "jobs".into()));
    assert_eq!(resolve("git.corp.example"), (true, "jobs".into()));
    assert_eq!(resolve("corp.example"), (false, DEFAULT_DENY.into()));
    assert_eq!(resolve("vault.corp.example"), (false, "no-vault".into()));
    assert_eq!(resolve("evil.test"), (false, DEFAULT_DENY.into()));

    let connect = |names: &[&str], port: u16| {
        let names: Vec<Arc<str>> = names.iter().map(|n| Arc::from(*n)).collect();
        let dst = format!("127.0.0.9:{port}");
        let mut f = flow(&dst, 1000, "psql");
        f.names = &names;
        policy.evaluate(&f).rule_name().to_owned()
    };
    assert_eq!(
        connect(&[], 5432),
        DEFAULT_DENY,
        "an address nobody resolved"
    );
    assert_eq!(connect(&["db.internal"], 5432), "jobs");
    assert_eq!(
        connect(&["db.internal"], 443),
        DEFAULT_DENY,
        "hosts keep their ports"
    );
    // One address, two names: it matches a target only if every name the
    // job resolved to it does, so the allowance does not widen.
    assert_eq!(
        connect(&["db.internal", "git.corp.example"], 5432),
        DEFAULT_DENY
    );
    assert_eq!(
        connect(&["git.corp.example", "www.corp.example"], 443),
        "jobs"
    );
    let text = policy.explain(&{
        let mut f = flow("127.0.0.9:5432", 1000, "psql");
        f.names = &[];
        f
    });
    assert!(text.to_string().contains("decision: deny"), "{text}");
}

#[test]
fn an_address_with_names_not_kept_matches_no_hosts_target() {
    use crate::protocols::dns::{NameTable, UNKEPT};
    let files = Files::new();
    let policy = load_one(&files, HOST_RULES).expect("loads");
    // The name table's stand-in for names it did not keep can be in no
    // host pattern, wildcard or exact.
    let connect = |names: &[&str], port: u16| {
        let names: Vec<Arc<str>> = names.iter().map(|n| Arc::from(*n)).collect();
        let dst = format!("127.0.0.9:{port}");
        let mut f = flow(&dst, 1000, "curl");
        f.names = &names;
        policy.evaluate(&f).rule_name().to_owned()
    };
    assert_eq!(connect(&["git.corp.example"], 443), "jobs");
    assert_eq!(connect(&["git.corp.example", UNKEPT], 443), DEFAULT_DENY);
    assert_eq!(connect(&[UNKEPT], 443), DEFAULT_DENY);
    assert_eq!(connect(&["db.internal", UNKEPT], 5432), DEFAULT_DENY);

    // End to end with the table: a job resolving random names below a
    // wildcard zone onto one address loses that address's match.
    let table = NameTable::default();
    let now = std::time::Instant::now();
    let ip: std::net::IpAddr = "127.0.0.9".parse().unwrap();
    let decide = |table: &NameTable| {
        let names = table.names(1, ip, now);
        let mut f = flow("127.0.0.9:443", 1000, "curl");
        f.names = &names;
        policy.evaluate(&f).rule_name().to_owned()
    };
    for i in 0..crate::protocols::dns::MAX_NAMES_PER_ADDRESS {
        table.learn(1, ip, &format!("r{i}.corp.example"), 60, now);
    }
    assert_eq!(decide(&table), "jobs");
    table.learn(1, ip, "one-more.corp.example", 60, now);
    assert_eq!(decide(&table), DEFAULT_DENY);
}

#[test]
fn target_hosts_and_dns_settings_are_checked() {
    let files = Files::new();
    let text = r#"
[dns]
upstream = ["nowhere", "10.0.0.2:0", "[fd00::53]:0", "10.0.0.3:53", "127.0.0.1:15053", "[::1]:15053", "0.0.0.0", "224.0.0.251:5353", "10.0.0.3", "127.0.0.53:53"]
denied_answer = "silence"

[[target]]
name = "bad"
hosts = ["under_score.ok", "*.*.twice", "a..b", "*"]
ports = [1]

[[target]]
name = "empty"
hosts = []
ports = [1]

[[target]]
name = "neither"
ports = [1]
"#;
    let all = errors(load_one(&files, text));
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    assert_reported_at(
        &all,
        text,
        &[
            ("\"nowhere\"", "upstream \"nowhere\" is not an address"),
            (
                "\"10.0.0.2:0\"",
                "upstream \"10.0.0.2:0\" has port 0: write the resolver's port, e.g. \"10.0.0.2:53\"",
            ),
            (
                "\"[fd00::53]:0\"",
                "upstream \"[fd00::53]:0\" has port 0: write the resolver's port, e.g. \"[fd00::53]:53\"",
            ),
            (
                "\"silence\"",
                "denied_answer must be \"nxdomain\" or \"refused\"",
            ),
            (
                "\"127.0.0.1:15053\"",
                "is the gateway's own DNS listener ([daemon] dns_port = 15053)",
            ),
            ("\"[::1]:15053\"", "is the gateway's own DNS listener"),
            ("\"0.0.0.0\"", "is the unspecified address"),
            (
                "\"224.0.0.251:5353\"",
                "is a multicast or broadcast address",
            ),
            ("\"10.0.0.3\", ", "upstream \"10.0.0.3\" is listed twice"),
            ("\"*.*.twice\"", "host \"*.*.twice\" is not a DNS name"),
            ("\"a..b\"", "host \"a..b\" is not a DNS name"),
            ("\"*\"]", "host \"*\" is not a DNS name"),
            ("[]\nports", "hosts is empty: list at least one DNS name"),
            (
                "[[target]]\nname = \"neither\"",
                "has no addresses or hosts",
            ),
        ],
    );
    assert!(
        !messages.iter().any(|m| m.contains("under_score")),
        "{messages:#?}"
    );
}

#[test]
fn line_and_column_come_from_the_line_index_as_from_a_rescan() {
    let text = "[[rule]]\nname = \"é\"\r\n\n  x = «ü»\nlast";
    let source = super::load::Source::new("p.toml".into(), text.to_owned());
    for offset in 0..=text.len() + 3 {
        assert_eq!(
            source.line_col(offset),
            super::load::line_col(text, offset),
            "offset {offset}"
        );
    }
    let empty = super::load::Source::new("e.toml".into(), String::new());
    assert_eq!(empty.line_col(0), (1, 1));
    assert_eq!(empty.line_col(5), (1, 1));
}

#[test]
fn claims_without_any_issuer_are_an_error_at_the_claims() {
    let files = Files::new();
    let text = r#"
[[rule]]
name = "no-pr-builds"
action = "deny"
targets = ["*"]
[rule.claims]
ref = "refs/pull/*"
"#;
    let error = only_error(load_one(&files, text));
    assert_eq!((error.line, error.col), position_of(text, "[rule.claims]"));
    assert!(
        error.message.contains(
            "[rule.claims] needs a token issuer, and no [[identity.issuer]] is configured"
        ),
        "{error:?}"
    );
}

#[test]
fn claims_are_not_blamed_on_an_identity_section_with_its_own_error() {
    // An [identity] with an unknown key is checked without it: its issuers
    // are known, and the claims that use them are not blamed.
    let files = Files::new();
    files.write("jwks.json", JWKS);
    let text = r#"
[identity]
runner_user = ["runner"]

[[identity.issuer]]
name = "github"
issuer = "https://token.actions.githubusercontent.com"
audience = ["chokepoint"]
jwks_file = "jwks.json"

[[rule]]
name = "no-pr-builds"
action = "deny"
targets = ["*"]
[rule.claims]
ref = "refs/pull/*"
"#;
    let error = only_error(load_one(&files, text));
    assert!(error.message.contains("runner_user"), "{error:?}");
}

#[test]
fn claims_see_the_issuers_of_another_file() {
    let files = Files::new();
    files.write("jwks.json", JWKS);
    let identity = files.write(
        "identity.toml",
        &issuers(&[("github", "https://token.actions.githubusercontent.com")]),
    );
    let rules = files.write("rules.toml", CLAIM_DENY);
    for order in [[&identity, &rules], [&rules, &identity]] {
        let paths: Vec<PathBuf> = order.into_iter().cloned().collect();
        load(&paths).expect("an issuer in any file lets [rule.claims] load");
    }
}

#[test]
fn a_dns_upstream_is_checked_as_the_address_it_reaches() {
    // An IPv6 socket reaches an IPv4-mapped address over IPv4, and the
    // forwarder asks over TCP: each of these is the gateway itself or no
    // resolver at all, whichever way it is written.
    let files = Files::new();
    let text = r#"
[daemon]
listen_port = 16001
dns_port = 16053
udp_port = 16054

[dns]
upstream = ["[::ffff:127.0.0.1]:16053", "127.0.0.1:16001", "[::1]:16054", "::ffff:0.0.0.0", "::", "::ffff:255.255.255.255", "[ff02::fb]:5353", "10.0.0.3", "[::ffff:10.0.0.3]:53", "127.0.0.1:15053"]
"#;
    let all = errors(load_one(&files, text));
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    assert_reported_at(
        &all,
        text,
        &[
            (
                "\"[::ffff:127.0.0.1]:16053\"",
                "is the gateway's own DNS listener ([daemon] dns_port = 16053)",
            ),
            (
                "\"127.0.0.1:16001\"",
                "is the gateway's own listener ([daemon] listen_port = 16001)",
            ),
            (
                "\"[::1]:16054\"",
                "is the gateway's own UDP relay ([daemon] udp_port = 16054)",
            ),
            ("\"::ffff:0.0.0.0\"", "is the unspecified address"),
            ("\"::\"", "is the unspecified address"),
            (
                "\"::ffff:255.255.255.255\"",
                "is a multicast or broadcast address",
            ),
            ("\"[ff02::fb]:5353\"", "is a multicast or broadcast address"),
            (
                "\"[::ffff:10.0.0.3]:53\"",
                "upstream \"[::ffff:10.0.0.3]:53\" is listed twice",
            ),
        ],
    );
    assert_eq!(
        all.len(),
        8,
        "the default dns_port is no one's: {messages:#?}"
    );
}

/// One refused key (unknown, or of the wrong type) does not hide the
/// problems of the keys beside it (found in review: only the unknown key
/// was reported here).
#[test]
fn every_problem_of_a_section_is_reported_not_only_the_first() {
    let files = Files::new();
    let text = "[daemon]\nlisten_port = 70000\nmode = \"bogus\"\nbogus_key = 1\ndns_port = \"a\"\nudp_port = \"b\"\n";
    let all = errors(load_one(&files, text));
    let messages: Vec<&str> = all.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(messages.len(), 5, "{messages:?}");
    assert!(
        messages[0].starts_with("listen_port must be"),
        "{messages:?}"
    );
    assert!(messages[1].starts_with("mode must be"), "{messages:?}");
    assert!(
        messages[2].starts_with("unknown field `bogus_key`"),
        "{messages:?}"
    );
    assert!(
        messages[3].starts_with("invalid type: string \"a\""),
        "{messages:?}"
    );
    assert!(
        messages[4].starts_with("invalid type: string \"b\""),
        "{messages:?}"
    );
    assert_eq!((all[3].line, all[3].col), (5, 12));
}
