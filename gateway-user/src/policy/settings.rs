//! `[daemon]`, `[guard]` and `[recording]`: the gateway's own settings, validated with their defaults.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use toml::Spanned;

use super::{
    approval::{self, ApprovalKeysCompiled, ApprovalStoreSettings},
    load::{At, Located, Report, Source},
    masking_config::{MIN_KEY_BYTES, MaskingKey},
    model::{ApprovalsSection, DaemonSection, GuardSection, Int, RecordingSection},
    secret_file,
};

/// How the gateway process runs; from `[daemon]`, every key defaulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    /// Names the bpffs pins: `/sys/fs/bpf/chokepoint/<instance>/`.
    pub instance: String,
    /// The gateway listens on `127.0.0.1` and `[::1]` at this port.
    pub listen_port: u16,
    /// The gateway's DNS listener (UDP) on the same addresses.
    pub dns_port: u16,
    /// The gateway's UDP relay (datagrams to `protocol = "udp"` targets)
    /// on the same addresses.
    pub udp_port: u16,
    /// A relayed UDP flow (one sender socket and destination) ends after
    /// this long without a datagram either way.
    pub udp_idle_timeout: std::time::Duration,
    /// Connections one job (one cgroup) may have open through the
    /// gateway at once; beyond, new ones are refused, so one job cannot
    /// take the gateway's file descriptors and memory from the others.
    pub max_connections_per_job: u32,
    /// Bytes of partly received messages one job's connections may make
    /// the gateway hold at once (`max_buffered_mb_per_job`).
    pub max_buffered_per_job: usize,
    pub mode: Mode,
    /// `SO_MARK` of the gateway's own sockets, for host firewall rules (and
    /// for kernel programs of releases before the exemption by cgroup,
    /// still attached during an upgrade). Never 0, since 0 is every
    /// unmarked socket. The kernel programs no longer exempt by it: a job
    /// with `CAP_NET_RAW` can set a mark.
    pub exempt_mark: u32,
    /// The key of `strategy = "hash"` masking (mode 0600); the key itself
    /// is in each target's masking policy, never here.
    pub masking_key_file: Option<PathBuf>,
    pub copy_out_masked: CopyOutMasked,
    /// The admin API (`chokepoint approvals`, `job`): a Unix socket whose
    /// callers are identified by their peer credentials.
    pub admin_socket: PathBuf,
    /// Members of this group may connect to the admin socket (mode 0660);
    /// `None`: root only (0600).
    pub admin_group: Option<(String, u32)>,
    /// Where `GET /metrics` is served (a loopback address); `None`: off.
    pub metrics_listen: Option<SocketAddr>,
}

/// Where the admin socket lives unless `admin_socket` says otherwise.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/chokepoint/admin.sock";

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            instance: "default".to_owned(),
            listen_port: 15001,
            dns_port: 15053,
            udp_port: 15054,
            udp_idle_timeout: std::time::Duration::from_secs(30),
            max_connections_per_job: DEFAULT_CONNECTIONS_PER_JOB,
            max_buffered_per_job: DEFAULT_BUFFERED_MB_PER_JOB << 20,
            mode: Mode::Enforce,
            exempt_mark: 0x4350_0001,
            masking_key_file: None,
            copy_out_masked: CopyOutMasked::Mask,
            admin_socket: PathBuf::from(DEFAULT_ADMIN_SOCKET),
            admin_group: None,
            metrics_listen: None,
        }
    }
}

/// What `COPY ... TO STDOUT` does when its result has masked columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CopyOutMasked {
    /// The copied rows are masked like query results.
    #[default]
    Mask,
    /// The COPY is refused.
    Deny,
}

impl fmt::Display for CopyOutMasked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CopyOutMasked::Mask => "mask",
            CopyOutMasked::Deny => "deny",
        })
    }
}

/// What the gateway does with a denied flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Denied flows are refused.
    #[default]
    Enforce,
    /// Denied flows are logged as denied, then forwarded: for rolling a
    /// policy out without breaking jobs.
    Audit,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        })
    }
}

/// Where sessions are recorded; from `[recording]`, every key defaulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingSettings {
    /// `enabled = false` turns recording off for the whole daemon: for
    /// measuring what it costs, never for a host jobs run on.
    pub enabled: bool,
    /// `<dir>/YYYY/MM/DD/<session-id>.jsonl`.
    pub dir: PathBuf,
    /// The host's ed25519 sealing key (made on first start).
    pub keys_dir: PathBuf,
    /// Result rows kept per statement, as the client received them.
    pub result_rows: usize,
    /// `max_age_days` and `max_total_mb`; unlimited by default.
    pub retention: crate::recording::retention::Limits,
    /// `postgres` (+ `postgres_password_file`): the fleet copy.
    pub sink: Option<crate::recording::sink::SinkSettings>,
    /// `postgres_backlog`: rows kept in memory while the fleet database
    /// does not answer; past it, the sessions they belong to are sent
    /// again from their files once it does.
    pub sink_backlog: usize,
}

/// Most rows a recording keeps per statement; beyond, only the count.
const MAX_RESULT_ROWS: i64 = 100_000;
/// Most rows `postgres_backlog` may keep in memory (each holds its
/// event's bytes: at ~1 KiB, about 1 GiB); past it, sessions are sent
/// again from their files anyway.
const MAX_SINK_BACKLOG: i64 = 1_000_000;
/// Longest retention: a century, so the age in seconds cannot overflow.
const MAX_AGE_DAYS: u64 = 36_500;
/// Largest size limit: a pebibyte, so the size in bytes cannot overflow.
const MAX_TOTAL_MB: u64 = 1 << 30;
/// Enough for a test suite's connection pools; each connection costs the
/// gateway up to six descriptors, so the default leaves room for many jobs
/// under the unit's `LimitNOFILE`.
const DEFAULT_CONNECTIONS_PER_JOB: u32 = 1024;
/// Sixteen of the largest messages a target allows by default, held at once.
const DEFAULT_BUFFERED_MB_PER_JOB: usize = 256;
/// Largest `max_buffered_mb_per_job`: 64 GiB, past any runner's memory.
const MAX_BUFFERED_MB_PER_JOB: i64 = 64 << 10;
/// Largest `max_connections_per_job`: past this, the limit protects nothing.
const MAX_CONNECTIONS_PER_JOB: i64 = 1_000_000;
/// Longest `udp_idle_timeout`: each idle flow holds a socket until then.
const MAX_UDP_IDLE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Default for RecordingSettings {
    fn default() -> Self {
        RecordingSettings {
            enabled: true,
            dir: PathBuf::from("/var/lib/chokepoint/sessions"),
            keys_dir: PathBuf::from("/var/lib/chokepoint/keys"),
            result_rows: 100,
            retention: crate::recording::retention::Limits::default(),
            sink: None,
            sink_backlog: crate::recording::sink::DEFAULT_BACKLOG,
        }
    }
}

/// `[recording]`, relative paths taken from the file that holds it.
pub(super) fn recording(
    section: Option<&Located<RecordingSection>>,
    sources: &[Source],
    report: &mut Report,
) -> RecordingSettings {
    let mut settings = RecordingSettings::default();
    let Some(Located { at, value: section }) = section else {
        return settings;
    };
    let file = at.file;
    settings.enabled = section.enabled.unwrap_or(true);
    for (key, value, slot) in [
        ("dir", &section.dir, &mut settings.dir),
        ("keys_dir", &section.keys_dir, &mut settings.keys_dir),
    ] {
        if let Some(path) = value {
            if path.get_ref().trim().is_empty() {
                report.error(
                    At::of(file, path),
                    format!("{key} is empty: name a directory (it is created if missing)"),
                );
            } else {
                *slot = secret_file::resolve(sources, file, path.get_ref());
            }
        }
    }
    if let Some(rows) = &section.result_rows {
        let Int(n) = *rows.get_ref();
        match usize::try_from(n) {
            Ok(n) if n as i64 <= MAX_RESULT_ROWS => settings.result_rows = n,
            _ => report.error(
                At::of(file, rows),
                format!("result_rows must be 0 to {MAX_RESULT_ROWS}, not {n}"),
            ),
        }
    }
    if let Some(days) = &section.max_age_days {
        let Int(n) = *days.get_ref();
        match u64::try_from(n) {
            Ok(d) if (1..=MAX_AGE_DAYS).contains(&d) => {
                settings.retention.max_age = Some(std::time::Duration::from_secs(d * 86_400));
            }
            _ => report.error(
                At::of(file, days),
                format!("max_age_days must be 1 to {MAX_AGE_DAYS}, not {n} (leave it out to keep recordings forever)"),
            ),
        }
    }
    settings.sink = fleet_postgres(
        section.postgres.as_ref(),
        section.postgres_password_file.as_ref(),
        file,
        sources,
        report,
    );
    if let Some(rows) = &section.postgres_backlog {
        let Int(n) = *rows.get_ref();
        match usize::try_from(n) {
            Ok(r) if r >= 1 && n <= MAX_SINK_BACKLOG => settings.sink_backlog = r,
            _ => report.error(
                At::of(file, rows),
                format!("postgres_backlog must be 1 to {MAX_SINK_BACKLOG} rows, not {n}"),
            ),
        }
        if section.postgres.is_none() {
            report.error(
                At::of(file, rows),
                "postgres_backlog is only used with postgres = \"...\": add the connection string, or remove it",
            );
        }
    }
    if let Some(mb) = &section.max_total_mb {
        let Int(n) = *mb.get_ref();
        match u64::try_from(n) {
            Ok(m) if (1..=MAX_TOTAL_MB).contains(&m) => {
                settings.retention.max_total_bytes = Some(m * 1024 * 1024);
            }
            _ => report.error(
                At::of(file, mb),
                format!("max_total_mb must be 1 to {MAX_TOTAL_MB}, not {n} (leave it out for no size limit)"),
            ),
        }
    }
    settings
}

/// `postgres = "..."` (+ `postgres_password_file`) of `[recording]` or
/// `[approvals]`: a connection string checked for syntax only, since the
/// server may not be up yet.
fn fleet_postgres(
    conninfo: Option<&Spanned<String>>,
    password_file: Option<&Spanned<String>>,
    file: usize,
    sources: &[Source],
    report: &mut Report,
) -> Option<crate::recording::sink::SinkSettings> {
    let Some(conninfo) = conninfo else {
        if let Some(f) = password_file {
            report.error(
                At::of(file, f),
                "postgres_password_file is only used with postgres = \"...\": add the connection string, or remove it",
            );
        }
        return None;
    };
    let password_file = password_file.and_then(|f| {
        let path = secret_file::resolve(sources, file, f.get_ref());
        match secret_file::read_secret(&path, "postgres_password_file") {
            Ok(_) => Some(path),
            Err(message) => {
                report.error(At::of(file, f), message);
                None
            }
        }
    });
    match <tokio_postgres::Config as std::str::FromStr>::from_str(conninfo.get_ref()) {
        Ok(_) => Some(crate::recording::sink::SinkSettings {
            conninfo: conninfo.get_ref().clone(),
            password_file,
        }),
        Err(e) => {
            report.error(
                At::of(file, conninfo),
                format!("postgres {:?} is not a connection string ({e}): write e.g. \"host=db.internal port=5432 user=chokepoint dbname=chokepoint\"", conninfo.get_ref()),
            );
            None
        }
    }
}

/// `[approvals]`: the rule defaults and where requests are kept.
pub(super) fn approvals(
    section: Option<Located<ApprovalsSection>>,
    sources: &[Source],
    report: &mut Report,
) -> (ApprovalKeysCompiled, ApprovalStoreSettings) {
    let mut store = ApprovalStoreSettings::default();
    let Some(Located {
        at,
        value: mut section,
    }) = section
    else {
        return (ApprovalKeysCompiled::default(), store);
    };
    let file = at.file;
    let defaults = approval::keys(&section.defaults(), file, sources, report);
    if let Some(dir) = &section.dir {
        if dir.get_ref().trim().is_empty() {
            report.error(
                At::of(file, dir),
                "dir is empty: name a directory (it is created if missing)",
            );
        } else {
            store.dir = secret_file::resolve(sources, file, dir.get_ref());
        }
    }
    if let Some(text) = &section.keep {
        match approval::duration(text.get_ref()) {
            Ok(d) if (approval::MIN_KEEP..=approval::MAX_KEEP).contains(&d) => store.keep = d,
            Ok(_) => report.error(
                At::of(file, text),
                "keep must be between 1h and 10y: how long a settled approval request stays in the store",
            ),
            Err(message) => report.error(At::of(file, text), format!("keep: {message}")),
        }
    }
    // Found in review: dir was ignored when postgres was set, so an
    // operator could believe requests were kept where they were not.
    if let (Some(dir), Some(_)) = (&section.dir, &section.postgres) {
        report.error(
            At::of(file, dir),
            "dir is not used with postgres = \"...\": requests are kept in the fleet store; remove one of them",
        );
    }
    store.postgres = fleet_postgres(
        section.postgres.as_ref(),
        section.postgres_password_file.as_ref(),
        file,
        sources,
        report,
    );
    (defaults, store)
}

/// Which cgroup the kernel programs guard; from `[guard]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardSettings {
    /// As written: relative to the cgroup2 mount, or absolute. Resolved by
    /// the `ebpf` module.
    pub cgroup: PathBuf,
    /// Create the cgroup if it is missing (demos and tests).
    pub create: bool,
    /// Refuse to start where the socket-family LSM hook cannot run,
    /// instead of warning: for hosts where nothing else (systemd's
    /// `RestrictAddressFamilies`) keeps vsock and packet sockets from jobs.
    pub require_family_guard: bool,
    /// TCP servers in the guarded cgroup answer loopback clients only:
    /// every other packet of a (non-gateway) TCP socket there is dropped,
    /// so a job cannot listen on a routable address and hand data to
    /// whoever connects. Off by default: with the cgroup2 root guarded it
    /// would also cut the host's own servers (sshd) off.
    pub loopback_clients_only: bool,
}

/// The daemon's settings, and the masking key when `masking_key_file`
/// names a valid one.
pub(super) fn daemon(
    section: Option<&Located<DaemonSection>>,
    sources: &[Source],
    report: &mut Report,
) -> (DaemonSettings, MaskingKey) {
    let mut settings = DaemonSettings::default();
    let Some(Located { at, value: section }) = section else {
        return (settings, MaskingKey::Absent);
    };
    let file = at.file;
    if let Some(instance) = &section.instance {
        let name = instance.get_ref();
        if crate::ebpf::is_instance_name(name) {
            settings.instance.clone_from(name);
        } else {
            report.error(
                At::of(file, instance),
                format!(
                    "instance {name:?} must be {} (it names /sys/fs/bpf/chokepoint/<instance>/)",
                    crate::ebpf::INSTANCE_NAME_RULE
                ),
            );
        }
    }
    if let Some(port) = &section.listen_port {
        match u16::try_from(port.get_ref().0) {
            Ok(p) if p != 0 => settings.listen_port = p,
            _ => report.error(
                At::of(file, port),
                format!("listen_port must be 1..=65535, not {}", port.get_ref().0),
            ),
        }
    }
    if let Some(port) = &section.dns_port {
        match u16::try_from(port.get_ref().0) {
            Ok(p) if p != 0 && p != settings.listen_port => settings.dns_port = p,
            _ => report.error(
                At::of(file, port),
                format!(
                    "dns_port must be 1..=65535 and differ from listen_port, not {}",
                    port.get_ref().0
                ),
            ),
        }
    }
    if let Some(port) = &section.udp_port {
        match u16::try_from(port.get_ref().0) {
            Ok(p) if p != 0 && p != settings.listen_port && p != settings.dns_port => {
                settings.udp_port = p;
            }
            _ => report.error(
                At::of(file, port),
                format!(
                    "udp_port must be 1..=65535 and differ from listen_port and dns_port, not {}",
                    port.get_ref().0
                ),
            ),
        }
    } else if settings.udp_port == settings.listen_port || settings.udp_port == settings.dns_port {
        report.error(
            *at,
            format!(
                "listen_port or dns_port is {}, the default udp_port: set udp_port to another free port",
                settings.udp_port
            ),
        );
    }
    if let Some(idle) = &section.udp_idle_timeout {
        match approval::duration(idle.get_ref()) {
            Ok(d) if d <= MAX_UDP_IDLE => settings.udp_idle_timeout = d,
            Ok(_) => report.error(
                At::of(file, idle),
                format!(
                    "udp_idle_timeout {:?} is longer than 24h: an idle flow would hold its socket that long",
                    idle.get_ref()
                ),
            ),
            Err(e) => report.error(At::of(file, idle), format!("udp_idle_timeout: {e}")),
        }
    }
    if let Some(max) = &section.max_connections_per_job {
        match max.get_ref().0 {
            n @ 1..=MAX_CONNECTIONS_PER_JOB => {
                settings.max_connections_per_job = u32::try_from(n).unwrap_or(u32::MAX);
            }
            n => report.error(
                At::of(file, max),
                format!("max_connections_per_job must be 1..={MAX_CONNECTIONS_PER_JOB}, not {n}"),
            ),
        }
    }
    if let Some(max) = &section.max_buffered_mb_per_job {
        match max.get_ref().0 {
            n @ 1..=MAX_BUFFERED_MB_PER_JOB => {
                settings.max_buffered_per_job = usize::try_from(n).unwrap_or(usize::MAX) << 20;
            }
            n => report.error(
                At::of(file, max),
                format!(
                    "max_buffered_mb_per_job must be 1..={MAX_BUFFERED_MB_PER_JOB} (MiB), not {n}"
                ),
            ),
        }
    }
    if let Some(mode) = &section.mode {
        match mode.get_ref().as_str() {
            "enforce" => settings.mode = Mode::Enforce,
            "audit" => settings.mode = Mode::Audit,
            other => report.error(
                At::of(file, mode),
                format!("mode must be \"enforce\" or \"audit\", not {other:?}"),
            ),
        }
    }
    if let Some(mark) = &section.exempt_mark {
        settings.exempt_mark = exempt_mark(file, mark, report).unwrap_or(settings.exempt_mark);
    }
    if let Some(copy) = &section.copy_out_masked {
        match copy.get_ref().as_str() {
            "mask" => settings.copy_out_masked = CopyOutMasked::Mask,
            "deny" => settings.copy_out_masked = CopyOutMasked::Deny,
            other => report.error(
                At::of(file, copy),
                format!("copy_out_masked must be \"mask\" or \"deny\", not {other:?}"),
            ),
        }
    }
    if let Some(path) = &section.admin_socket {
        if path.get_ref().trim().is_empty() {
            report.error(
                At::of(file, path),
                "admin_socket is empty: name the socket's path",
            );
        } else {
            settings.admin_socket = secret_file::resolve(sources, file, path.get_ref());
        }
    }
    if let Some(group) = &section.admin_group {
        match nix::unistd::Group::from_name(group.get_ref()) {
            Ok(Some(g)) => settings.admin_group = Some((group.get_ref().clone(), g.gid.as_raw())),
            Ok(None) => report.error(
                At::of(file, group),
                format!("admin_group {:?} does not exist on this host: create it (groupadd) or leave admin_group out for root only", group.get_ref()),
            ),
            Err(e) => report.error(At::of(file, group), format!("admin_group {:?}: {e}", group.get_ref())),
        }
    }
    if let Some(written) = &section.metrics_listen {
        match metrics_listen(written.get_ref(), settings.listen_port) {
            Ok(addr) => settings.metrics_listen = Some(addr),
            Err(why) => report.error(At::of(file, written), why),
        }
    }
    let key = match &section.masking_key_file {
        None => MaskingKey::Absent,
        Some(written) => {
            let path = secret_file::resolve(sources, file, written.get_ref());
            let key = masking_key(&path, &At::of(file, written), report);
            settings.masking_key_file = Some(path);
            key
        }
    };
    (settings, key)
}

fn masking_key(path: &std::path::Path, at: &At, report: &mut Report) -> MaskingKey {
    let bytes = match secret_file::read_secret(path, "masking_key_file") {
        Ok(bytes) => bytes,
        Err(message) => {
            report.error(*at, message);
            return MaskingKey::Broken;
        }
    };
    if bytes.len() < MIN_KEY_BYTES {
        let shown = path.display();
        report.error(
            *at,
            format!(
                "masking_key_file {shown} holds {} bytes; a hash key needs at least {MIN_KEY_BYTES}: head -c 32 /dev/urandom > {shown} && chmod 600 {shown}",
                bytes.len()
            ),
        );
        return MaskingKey::Broken;
    }
    // The whole file is the key, newline included: a random key may end
    // in any byte.
    MaskingKey::Valid(bytes.into())
}

fn exempt_mark(file: usize, mark: &Spanned<Int>, report: &mut Report) -> Option<u32> {
    let value = mark.get_ref().0;
    let problem = match u32::try_from(value) {
        Ok(0) => "0 is the mark of every unmarked socket, so it would exempt the jobs too",
        Ok(m) => return Some(m),
        Err(_) => "it must fit in 32 bits",
    };
    report.error(
        At::of(file, mark),
        format!(
            "exempt_mark must be a non-zero 32-bit value such as 0x43500001, not {value}: {problem}"
        ),
    );
    None
}

pub(super) fn guard(
    section: Option<Located<GuardSection>>,
    report: &mut Report,
) -> Option<GuardSettings> {
    let Located { at, value: section } = section?;
    let create = section.create.unwrap_or(false);
    let require_family_guard = section.require_family_guard.unwrap_or(false);
    let loopback_clients_only = section.loopback_clients_only.unwrap_or(false);
    match section.cgroup {
        None => {
            report.error(
                at,
                "[guard] has no cgroup: add cgroup = \"...\" (relative to the cgroup2 mount, or absolute)",
            );
            None
        }
        Some(cgroup) if cgroup.get_ref().trim().is_empty() => {
            report.error(
                At::of(at.file, &cgroup),
                "cgroup is empty: name the cgroup to guard, relative to the cgroup2 mount or absolute",
            );
            None
        }
        // Found in review: `policy check` passed it, and only `run` refused.
        Some(cgroup)
            if std::path::Path::new(cgroup.get_ref())
                .components()
                .any(|c| c == std::path::Component::ParentDir) =>
        {
            report.error(
                At::of(at.file, &cgroup),
                "cgroup contains `..`, which could name a cgroup outside the guarded tree: write the path without it",
            );
            None
        }
        Some(cgroup) => Some(GuardSettings {
            cgroup: PathBuf::from(cgroup.into_inner()),
            create,
            require_family_guard,
            loopback_clients_only,
        }),
    }
}

/// What a denied name gets from the gateway's DNS forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeniedAnswer {
    /// NXDOMAIN: as if the name did not exist (what most tools report best).
    #[default]
    NxDomain,
    /// REFUSED: says a policy stands in the way.
    Refused,
}

/// `[dns]`: the forwarder's upstream resolvers and its answer to denied names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    pub upstream: Vec<std::net::SocketAddr>,
    pub denied_answer: DeniedAnswer,
}

/// `[daemon] metrics_listen`: a loopback `address:port` the gateway does
/// not already listen on.
fn metrics_listen(text: &str, listen_port: u16) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text.parse().map_err(|_| {
        format!("metrics_listen {text:?} is not an address and port such as \"127.0.0.1:9464\" or \"[::1]:9464\"")
    })?;
    let ip = addr.ip().to_canonical();
    if !ip.is_loopback() {
        return Err(format!(
            "metrics_listen {addr} is not a loopback address: the metrics name rules and targets, so they stay on this host (scrape through a local agent or an SSH tunnel)"
        ));
    }
    if addr.port() == 0 {
        return Err(format!(
            "metrics_listen {addr} has port 0: name the port to scrape"
        ));
    }
    let gateway = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    if addr.port() == listen_port && gateway.contains(&ip) {
        return Err(format!(
            "metrics_listen {addr} is the gateway's own listener (listen_port {listen_port}): pick another port"
        ));
    }
    Ok(addr)
}

/// Why `addr` cannot be a resolver the forwarder asks, if it cannot.
fn upstream_problem(
    addr: SocketAddr,
    daemon: &DaemonSettings,
    earlier: &[SocketAddr],
) -> Option<String> {
    // The forwarder's IPv6 socket reaches an IPv4-mapped address over IPv4.
    let ip = addr.ip().to_canonical();
    // The gateway listens on these two addresses only.
    let own = [
        (daemon.listen_port, "listener", "listen_port"),
        (daemon.dns_port, "DNS listener", "dns_port"),
        (daemon.udp_port, "UDP relay", "udp_port"),
    ]
    .into_iter()
    .find(|&(port, _, _)| port == addr.port())
    .filter(|_| ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(Ipv6Addr::LOCALHOST));
    if let Some((port, what, key)) = own {
        Some(format!(
            "is the gateway's own {what} ([daemon] {key} = {port}), not a resolver: the forwarder would ask itself and every query would fail; name the resolver the host uses, e.g. \"127.0.0.53:53\""
        ))
    } else if ip.is_unspecified() {
        Some(
            "is the unspecified address, which names no resolver: write the resolver's own address"
                .into(),
        )
    } else if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("is a multicast or broadcast address: write one resolver's own address".into())
    } else if earlier
        .iter()
        .any(|e| (e.ip().to_canonical(), e.port()) == (ip, addr.port()))
    {
        Some("is listed twice".into())
    } else {
        None
    }
}

/// `None` without a `[dns]` section: the jobs' DNS is not mediated and
/// stays denied.
pub(super) fn dns(
    section: Option<&Located<super::model::DnsSection>>,
    daemon: &DaemonSettings,
    report: &mut Report,
) -> Option<DnsSettings> {
    let Located { at, value: section } = section?;
    let file = at.file;
    let mut upstream = Vec::new();
    match &section.upstream {
        None => report.error(
            *at,
            "[dns] has no upstream: add upstream = [\"127.0.0.53:53\"], the resolvers the gateway asks",
        ),
        Some(list) if list.get_ref().is_empty() => {
            report.error(At::of(file, list), "upstream is empty: list at least one resolver such as \"127.0.0.53:53\"");
        }
        Some(list) => {
            for entry in list.get_ref() {
                let text = entry.get_ref();
                let parsed = text
                    .parse::<std::net::SocketAddr>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 53)));
                match parsed {
                    // Nothing listens on port 0: every query would fail.
                    Ok(addr) if addr.port() == 0 => report.error(
                        At::of(file, entry),
                        format!("upstream {text:?} has port 0: write the resolver's port, e.g. \"{}:53\", or leave it out for 53", text.rsplit_once(':').map_or(text.as_str(), |(host, _)| host)),
                    ),
                    Ok(addr) => match upstream_problem(addr, daemon, &upstream) {
                        Some(why) => report.error(At::of(file, entry), format!("upstream {text:?} {why}")),
                        None => upstream.push(addr),
                    },
                    Err(_) => report.error(
                        At::of(file, entry),
                        format!("upstream {text:?} is not an address: write \"10.0.0.2\", \"10.0.0.2:53\" or \"[fd00::53]:53\""),
                    ),
                }
            }
        }
    }
    let mut denied_answer = DeniedAnswer::NxDomain;
    if let Some(answer) = &section.denied_answer {
        match answer.get_ref().as_str() {
            "nxdomain" => denied_answer = DeniedAnswer::NxDomain,
            "refused" => denied_answer = DeniedAnswer::Refused,
            other => report.error(
                At::of(file, answer),
                format!("denied_answer must be \"nxdomain\" or \"refused\", not {other:?}"),
            ),
        }
    }
    Some(DnsSettings {
        upstream,
        denied_answer,
    })
}
