//! The `chokepoint` daemon as a test fixture: config file, process, JSON log capture, READY wait, status, cleanup.
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;
use tempfile::TempDir;

use crate::{TestCgroup, gateway_port, instance_name, run_with_timeout, wait_for};

/// Hang guards, generous on a loaded 2-core machine; never asserted on.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_TIMEOUT: Duration = Duration::from_secs(30);

/// The exemption mark the tests configure (the example config's value).
pub const EXEMPT_MARK: u32 = 0x4350_0001;

/// Path of the `chokepoint` binary under test: `$CHOKEPOINT_BIN`, else the
/// workspace's release build.
pub fn chokepoint_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("CHOKEPOINT_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/chokepoint"),
    };
    if !path.is_file() {
        bail!(
            "chokepoint binary not found at {}: build it with `cargo build --release -p gateway-user` \
             (or run `cargo xtask test`), or point CHOKEPOINT_BIN at it",
            path.display()
        );
    }
    Ok(path)
}

/// A copy of the binary under test that any user may execute (the build
/// tree may sit under a directory other users cannot enter), for CLI calls
/// as an unprivileged approver or runner. Keep the directory alive while
/// the path is used.
pub fn chokepoint_bin_for_anyone() -> Result<(TempDir, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("cp-bin-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let bin = dir.path().join("chokepoint");
    std::fs::copy(chokepoint_bin()?, &bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    Ok((dir, bin))
}

/// Where an instance's links and maps are pinned.
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/chokepoint").join(instance)
}

/// Runs `chokepoint <args>` to completion (one-shot subcommands).
pub fn cli(args: &[&str]) -> Result<Output> {
    run_with_timeout(
        Command::new(chokepoint_bin()?)
            .args(args)
            .env("RUST_LOG", "info"),
        CLI_TIMEOUT,
    )
}

/// `[daemon] mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Audit,
}

/// A `[[target]]`: addresses (IPs or CIDRs) and ports.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub addresses: Vec<String>,
    pub ports: Vec<u16>,
    /// `protocol = "udp"`: datagram destinations, relayed by the gateway.
    pub udp: bool,
}

impl Target {
    pub fn new(name: &str, addresses: &[&str], ports: &[u16]) -> Self {
        Self {
            name: name.to_owned(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            ports: ports.to_vec(),
            udp: false,
        }
    }

    /// A UDP target.
    pub fn udp(name: &str, addresses: &[&str], ports: &[u16]) -> Self {
        Self {
            udp: true,
            ..Self::new(name, addresses, ports)
        }
    }
}

/// A `[[rule]]`.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub allow: bool,
    pub targets: Vec<String>,
    pub uids: Option<Vec<u32>>,
    pub processes: Option<Vec<String>>,
}

impl Rule {
    pub fn allow(name: &str, targets: &[&str]) -> Self {
        Self::new(name, true, targets)
    }

    pub fn deny(name: &str, targets: &[&str]) -> Self {
        Self::new(name, false, targets)
    }

    fn new(name: &str, allow: bool, targets: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            allow,
            targets: targets.iter().map(|t| (*t).to_owned()).collect(),
            uids: None,
            processes: None,
        }
    }

    pub fn uids(mut self, uids: &[u32]) -> Self {
        self.uids = Some(uids.to_vec());
        self
    }

    pub fn processes(mut self, globs: &[&str]) -> Self {
        self.processes = Some(globs.iter().map(|g| (*g).to_owned()).collect());
        self
    }
}

/// One gateway instance's configuration file, unique per test.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub instance: String,
    pub listen_port: u16,
    /// The UDP DNS listener's port, free like `listen_port`.
    pub dns_port: u16,
    /// The UDP relay's port, free like `listen_port`.
    pub udp_port: u16,
    pub mode: Mode,
    pub exempt_mark: u32,
    pub cgroup: PathBuf,
    pub targets: Vec<Target>,
    pub rules: Vec<Rule>,
    /// TOML appended verbatim after the generated sections, for what the
    /// builder does not model (postgres targets, `[rule.postgres]`,
    /// `[[masking]]`).
    pub raw: Vec<String>,
    /// Extra `key = value` lines of the `[daemon]` table.
    pub daemon: Vec<String>,
    /// `[recording] dir`; relative paths are next to the config file, in
    /// the gateway's own temporary directory.
    pub recording_dir: PathBuf,
    /// Extra `key = value` lines of the `[recording]` table.
    pub recording: Vec<String>,
    /// Lines of the `[approvals]` table (`dir = "approvals"` is always
    /// there, in the gateway's own directory).
    pub approvals: Vec<String>,
    /// Extra `key = value` lines of the `[guard]` table.
    pub guard: Vec<String>,
    /// The daemon's `RUST_LOG`. Tests read the per-statement events of
    /// allowed statements, which the daemon logs at debug.
    pub log_filter: String,
}

/// What tests run the daemon with: everything at info, and the
/// gateway's own debug events (allowed statements) too.
const TEST_LOG_FILTER: &str = "info,chokepoint=debug";

impl GatewayConfig {
    /// Guards `cgroup` with a fresh instance name (from `hint`) and a free
    /// listen port, enforcing, with no targets or rules (all denied).
    pub fn new(hint: &str, cgroup: &TestCgroup) -> Result<Self> {
        Ok(Self {
            instance: instance_name(hint),
            listen_port: gateway_port()?,
            dns_port: gateway_port()?,
            udp_port: gateway_port()?,
            mode: Mode::Enforce,
            exempt_mark: EXEMPT_MARK,
            cgroup: cgroup.path().to_path_buf(),
            targets: Vec::new(),
            rules: Vec::new(),
            raw: Vec::new(),
            daemon: Vec::new(),
            recording_dir: PathBuf::from("sessions"),
            recording: Vec::new(),
            approvals: Vec::new(),
            guard: Vec::new(),
            log_filter: TEST_LOG_FILTER.into(),
        })
    }

    /// Runs the daemon with `RUST_LOG=filter` (benchmarks measure the
    /// production default, `info`).
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = filter.into();
        self
    }

    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    pub fn target(mut self, target: Target) -> Self {
        self.targets.push(target);
        self
    }

    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Adds a `key = value` line to the `[daemon]` table.
    pub fn daemon_setting(mut self, line: &str) -> Self {
        self.daemon.push(line.to_owned());
        self
    }

    /// Records sessions under `dir` (e.g. a small tmpfs) instead.
    pub fn recording_dir(mut self, dir: &Path) -> Self {
        self.recording_dir = dir.to_path_buf();
        self
    }

    /// Adds a `key = value` line to the `[recording]` table.
    pub fn recording_setting(mut self, line: &str) -> Self {
        self.recording.push(line.to_owned());
        self
    }

    /// Adds a `key = value` line to the `[guard]` table.
    pub fn guard_setting(mut self, line: &str) -> Self {
        self.guard.push(line.to_owned());
        self
    }

    /// Adds a `key = value` line to the `[approvals]` table.
    pub fn approvals_setting(mut self, line: &str) -> Self {
        self.approvals.push(line.to_owned());
        self
    }

    /// Appends `toml` verbatim at the end of the file (after the targets
    /// and rules), e.g. `[[target]]` tables with a `[target.postgres]`.
    pub fn raw_toml(mut self, toml: &str) -> Self {
        self.raw.push(toml.to_owned());
        self
    }

    /// The file `chokepoint run --config` reads.
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let mode = match self.mode {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        };
        let _ = writeln!(s, "[daemon]");
        let _ = writeln!(s, "instance = {}", quote(&self.instance));
        let _ = writeln!(s, "listen_port = {}", self.listen_port);
        let _ = writeln!(s, "dns_port = {}", self.dns_port);
        let _ = writeln!(s, "udp_port = {}", self.udp_port);
        let _ = writeln!(s, "mode = {}", quote(mode));
        let _ = writeln!(s, "exempt_mark = {:#x}", self.exempt_mark);
        // Next to the config, never the host's /run/chokepoint/admin.sock.
        if !self.daemon.iter().any(|l| l.starts_with("admin_socket")) {
            let _ = writeln!(s, "admin_socket = \"admin.sock\"");
        }
        for line in &self.daemon {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(
            s,
            "\n[recording]\ndir = {}\nkeys_dir = \"keys\"",
            quote(&self.recording_dir.to_string_lossy())
        );
        for line in &self.recording {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(s, "\n[approvals]");
        if !self
            .approvals
            .iter()
            .any(|l| l.starts_with("dir") || l.starts_with("postgres"))
        {
            let _ = writeln!(s, "dir = \"approvals\"");
        }
        for line in &self.approvals {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(
            s,
            "\n[guard]\ncgroup = {}",
            quote(&self.cgroup.to_string_lossy())
        );
        for line in &self.guard {
            let _ = writeln!(s, "{line}");
        }
        for t in &self.targets {
            let _ = writeln!(s, "\n[[target]]\nname = {}", quote(&t.name));
            let _ = writeln!(
                s,
                "addresses = {}",
                list(t.addresses.iter().map(|a| quote(a)))
            );
            let _ = writeln!(s, "ports = {}", list(t.ports.iter().map(u16::to_string)));
            if t.udp {
                let _ = writeln!(s, "protocol = \"udp\"");
            }
        }
        for r in &self.rules {
            let _ = writeln!(s, "\n[[rule]]\nname = {}", quote(&r.name));
            let _ = writeln!(
                s,
                "action = {}",
                quote(if r.allow { "allow" } else { "deny" })
            );
            let _ = writeln!(s, "targets = {}", list(r.targets.iter().map(|t| quote(t))));
            if let Some(uids) = &r.uids {
                let _ = writeln!(s, "uids = {}", list(uids.iter().map(u32::to_string)));
            }
            if let Some(p) = &r.processes {
                let _ = writeln!(s, "processes = {}", list(p.iter().map(|g| quote(g))));
            }
        }
        for raw in &self.raw {
            let _ = writeln!(s, "\n{raw}");
        }
        s
    }
}

/// A TOML basic string (JSON's escaping is a subset TOML accepts).
fn quote(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

fn list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

/// A running `chokepoint run` for one test.
///
/// Logs (`--log-format json`, stderr) are collected across restarts. Drop
/// stops the daemon (SIGTERM to its pid, SIGKILL if it does not exit) and
/// runs `chokepoint detach --instance`, so no test leaves programs attached.
#[derive(Debug)]
pub struct Gateway {
    config: GatewayConfig,
    dir: TempDir,
    config_path: PathBuf,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    /// `cgroup.procs` of the cgroup the daemon runs in, when not the test's.
    home: Option<PathBuf>,
    /// A command the daemon runs under (`nsenter --net=...`), if any.
    prefix: Vec<String>,
}

impl Gateway {
    /// Writes the config, starts the daemon and waits for `READY=1`.
    pub fn start(config: &GatewayConfig) -> Result<Self> {
        Self::start_with_home(config, None, Vec::new())
    }

    /// Like [`start`](Self::start), with the daemon (and its restarts) in
    /// `home` instead of the test's own cgroup. Drop the gateway before
    /// `home`: the cgroup's drop kills what is left in it.
    pub fn start_in(config: &GatewayConfig, home: &TestCgroup) -> Result<Self> {
        Self::start_with_home(config, Some(home.path().join("cgroup.procs")), Vec::new())
    }

    /// Like [`start_in`](Self::start_in), with the daemon run under
    /// `prefix` (such as [`TestNetns::nsenter`](crate::TestNetns::nsenter)).
    pub fn start_under(
        config: &GatewayConfig,
        home: &TestCgroup,
        prefix: Vec<String>,
    ) -> Result<Self> {
        Self::start_with_home(config, Some(home.path().join("cgroup.procs")), prefix)
    }

    fn start_with_home(
        config: &GatewayConfig,
        home: Option<PathBuf>,
        prefix: Vec<String>,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("cp-gateway-").tempdir()?;
        // Traversable (not listable) so an approver who is not root can
        // reach the admin socket inside; every secret in it is 0600.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )?;
        let config_path = dir.path().join("chokepoint.toml");
        std::fs::write(&config_path, config.to_toml())?;
        let mut gw = Self {
            config: config.clone(),
            dir,
            config_path,
            child: None,
            lines: Arc::default(),
            readers: Vec::new(),
            home,
            prefix,
        };
        gw.spawn()?;
        Ok(gw)
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = chokepoint_bin()?;
        let notify_path = self.dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).context("binding the NOTIFY_SOCKET")?;
        // Short so the loop below notices an early exit; not a test timing.
        notify.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut command = match self.prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        if let Some(procs) = &self.home {
            let procs = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes())
                .context("cgroup path contains a NUL byte")?;
            crate::cgroup::enter_before_exec(&mut command, procs);
        }
        let mut child = command
            .args(["run", "--config"])
            .arg(&self.config_path)
            .args(["--log-format", "json"])
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", &self.config.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let lines = self.lines.clone();
        self.readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        }));
        let pid = child.id();
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                self.join_readers();
                bail!(
                    "chokepoint run exited with {status} before READY=1; stderr:\n{}",
                    self.logs().join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "chokepoint run (pid {pid}) sent no READY=1 within {READY_TIMEOUT:?}; stderr so far:\n{}",
                    self.logs().join("\n")
                );
            }
        }
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    pub fn instance(&self) -> &str {
        &self.config.instance
    }

    pub fn listen_port(&self) -> u16 {
        self.config.listen_port
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Where this gateway records sessions.
    pub fn recording_dir(&self) -> PathBuf {
        self.dir.path().join(&self.config.recording_dir)
    }

    /// The admin socket `chokepoint approvals --socket` talks to.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// `chokepoint approvals --socket <this gateway's> <args>` as root.
    pub fn approvals(&self, args: &[&str]) -> Result<Output> {
        let socket = self.admin_socket();
        let mut all = vec![
            "approvals",
            "--socket",
            socket.to_str().context("admin socket path is not UTF-8")?,
        ];
        all.extend_from_slice(args);
        cli(&all)
    }

    /// Every recorded event of type `kind` (`dns`, `approval`,
    /// `session_start`…), unwrapped from its hash-chain line, from every
    /// recording written so far.
    pub fn recorded(&self, kind: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut dirs = vec![self.recording_dir()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|x| x == "jsonl")
                    // The host's ledger of seals holds no session events.
                    && path.file_name().is_some_and(|n| n != "ledger.jsonl")
                    && let Ok(text) = std::fs::read_to_string(&path)
                {
                    out.extend(
                        text.lines()
                            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                            .filter(|v| v["event"]["type"] == kind)
                            .map(|v| v["event"].clone()),
                    );
                }
            }
        }
        out
    }

    /// Where this gateway keeps its sealing key.
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// `chokepoint sessions <args>` against this gateway's recordings.
    pub fn sessions(&self, args: &[&str]) -> Result<Output> {
        let dir = self.recording_dir();
        let keys = self.keys_dir();
        let mut all: Vec<&str> = vec![
            "sessions",
            "--dir",
            dir.to_str().context("recording dir is not UTF-8")?,
            "--keys-dir",
            keys.to_str().context("keys dir is not UTF-8")?,
        ];
        all.extend_from_slice(args);
        cli(&all)
    }

    /// Pid of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGSTOP until the guard drops (SIGCONT, also when the test fails):
    /// what the kernel queues for the gateway meanwhile waits, in order.
    pub fn pause(&self) -> Result<Paused> {
        let pid = Pid::from_raw(self.pid().context("gateway is not running")? as i32);
        kill(pid, Signal::SIGSTOP)?;
        Ok(Paused(pid))
    }

    /// SIGKILL: the crash case. The pins stay, so the host stays closed.
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("gateway is not running")?;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL)?;
        child.wait()?;
        self.join_readers();
        Ok(())
    }

    /// Stops the daemon with SIGTERM if it is running, then starts it again
    /// with the same config file (which adopts the pinned programs).
    pub fn restart(&mut self) -> Result<()> {
        self.terminate()?;
        self.spawn()
    }

    /// Like [`restart`](Self::restart), with the new daemon in `home`, as
    /// systemd restarts a service in a new cgroup.
    pub fn restart_in(&mut self, home: &TestCgroup) -> Result<()> {
        self.terminate()?;
        self.home = Some(home.path().join("cgroup.procs"));
        self.spawn()
    }

    /// SIGTERM and wait for exit; SIGKILL after [`STOP_TIMEOUT`].
    pub fn terminate(&mut self) -> Result<Option<std::process::ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = child.wait();
                self.join_readers();
                bail!("chokepoint run (pid {pid}) ignored SIGTERM for {STOP_TIMEOUT:?}; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.join_readers();
        Ok(Some(status))
    }

    /// Replaces the config file (valid or not) without signalling.
    pub fn write_config(&self, toml: &str) -> Result<()> {
        // Write then rename, so a reload never reads a half-written file.
        let tmp = self.dir.path().join("chokepoint.toml.new");
        std::fs::write(&tmp, toml)?;
        std::fs::rename(&tmp, &self.config_path)?;
        Ok(())
    }

    /// SIGHUP, then waits for the daemon's verdict on the new file: the
    /// next log event whose message starts with "policy reload" (both
    /// "policy reloaded" and "policy reload failed ..."). Returns it. Fails
    /// at once if the daemon exits instead.
    pub fn reload(&mut self) -> Result<Value> {
        let is_reload = |e: &Value| message(e).is_some_and(|m| m.starts_with("policy reload"));
        let before = self.events().iter().filter(|e| is_reload(e)).count();
        let pid = self.pid().context("gateway is not running")?;
        kill(Pid::from_raw(pid as i32), Signal::SIGHUP)?;
        let deadline = Instant::now() + LOG_TIMEOUT;
        loop {
            if let Some(e) = self.events().into_iter().filter(is_reload).nth(before) {
                return Ok(e);
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                self.join_readers();
                bail!(
                    "chokepoint run exited with {status} after SIGHUP instead of reloading; log:\n{}",
                    tail(&self.logs(), 50)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon logged no \"policy reload...\" within {LOG_TIMEOUT:?} of SIGHUP; log:\n{}",
                    tail(&self.logs(), 50)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every stderr line so far, across restarts.
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Takes the stderr lines collected so far, leaving none behind: a
    /// benchmark that logs two events per statement for many minutes would
    /// otherwise hold every one of them in memory.
    pub fn take_logs(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }

    /// Every log line that parses as a JSON event.
    pub fn events(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The per-connection events (`fields.message == "flow"`), in log order.
    pub fn flow_events(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| message(e) == Some("flow"))
            .collect()
    }

    /// Waits until at least `n` flow events have been logged.
    pub fn wait_for_flow_events(&self, n: usize, timeout: Duration) -> Result<Vec<Value>> {
        wait_for(
            &format!("{n} flow events from {}", self.config.instance),
            timeout,
            || {
                // A cheap count first: parsing 10,000 lines on every poll would
                // slow the daemon's own CPU share on a 2-core machine.
                let likely = self
                    .lines
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|l| l.contains("\"flow\""))
                    .count();
                if likely < n {
                    return None;
                }
                let events = self.flow_events();
                (events.len() >= n).then_some(events)
            },
        )
        .with_context(|| format!("daemon log:\n{}", tail(&self.logs(), 50)))
    }

    /// Waits until the daemon has logged an outcome for `n` accepted
    /// connections: a flow event, or the refusal of a connection it found
    /// no kernel record for (a warning carrying `fields.peer`). Lets a test
    /// count missing flow events without waiting for a timeout.
    pub fn wait_for_accepted(&self, n: usize, timeout: Duration) -> Result<Vec<Value>> {
        wait_for(
            &format!("outcomes of {n} accepted connections"),
            timeout,
            || {
                let outcomes: Vec<Value> = self
                    .events()
                    .into_iter()
                    .filter(|e| message(e) == Some("flow") || !e["fields"]["peer"].is_null())
                    .collect();
                (outcomes.len() >= n).then_some(outcomes)
            },
        )
        .with_context(|| format!("daemon log:\n{}", tail(&self.logs(), 50)))
    }

    /// Waits for the flow event of the process `pid` and returns its fields.
    pub fn wait_for_flow(&self, pid: u32) -> Result<Value> {
        wait_for(&format!("a flow event with pid {pid}"), LOG_TIMEOUT, || {
            self.flow_events()
                .into_iter()
                .find(|e| e["fields"]["pid"] == pid)
                .map(|e| e["fields"].clone())
        })
        .with_context(|| format!("daemon log:\n{}", tail(&self.logs(), 50)))
    }

    /// Fields of every flow event of the process `pid` so far.
    pub fn flows_of(&self, pid: u32) -> Vec<Value> {
        self.flow_events()
            .into_iter()
            .filter(|e| e["fields"]["pid"] == pid)
            .map(|e| e["fields"].clone())
            .collect()
    }

    /// `chokepoint status --instance <instance>`, parsed.
    pub fn status(&self) -> Result<Value> {
        status(&self.config.instance)
    }
}

/// `chokepoint status --instance <instance>`, parsed.
pub fn status(instance: &str) -> Result<Value> {
    let out = cli(&["status", "--instance", instance])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "chokepoint status failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_str(stdout.lines().next().unwrap_or_default())
        .with_context(|| format!("chokepoint status printed {stdout:?}"))
}

/// `chokepoint status --instance <instance>` for an instance with nothing
/// attached: it still prints its line (parsed here), says why on stderr,
/// and exits 1.
pub fn status_detached(instance: &str) -> Result<Value> {
    let out = cli(&["status", "--instance", instance])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(1) || !stderr.contains("is not attached") {
        bail!(
            "chokepoint status should exit 1 saying the instance is not attached ({}): {stdout}{stderr}",
            out.status
        );
    }
    serde_json::from_str(stdout.lines().next().unwrap_or_default())
        .with_context(|| format!("chokepoint status printed {stdout:?}"))
}

/// `fields.message` of a log event.
pub fn message(event: &Value) -> Option<&str> {
    event["fields"]["message"].as_str()
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("warning: stopping the gateway: {e:#}");
        }
        match cli(&["detach", "--instance", &self.config.instance]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: chokepoint detach --instance {} failed ({}): {}",
                self.config.instance,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("warning: chokepoint detach: {e:#}"),
        }
        if std::thread::panicking() {
            eprintln!(
                "--- chokepoint log ({}) ---\n{}",
                self.config.instance,
                tail(&self.logs(), 200)
            );
        }
    }
}

/// A stopped gateway (see [`Gateway::pause`]); dropping it resumes it.
#[must_use = "the gateway resumes when this drops"]
pub struct Paused(Pid);

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}
