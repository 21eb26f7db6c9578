//! A real PostgreSQL server per test: initdb as the `postgres` user, SCRAM-only login on 127.0.0.1, the `orders` fixture database, role passwords in 0600 files.
//!
//! The server runs outside every test cgroup and is reached only by the
//! gateway's upstream connections (and by the harness's own setup `psql`);
//! jobs inside a cgroup connect to a target address the gateway owns and
//! never learn a password.
use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    os::unix::{
        fs::{PermissionsExt, chown},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, User},
};
use tempfile::TempDir;

use crate::{TestCgroup, gateway_port, run_with_timeout};

/// Hang guards only; initdb and startup take seconds, more on a loaded
/// 2-core machine running several tests at once.
const SETUP_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The login roles the fixture creates: the job's read-write role and a
/// read-only one. Both get random passwords held only in 0600 files.
pub const ROLES: [&str; 2] = ["app_rw", "app_ro"];

/// One row of `public.customers`.
#[derive(Clone, Copy, Debug)]
pub struct Customer {
    pub id: i32,
    pub name: &'static str,
    pub email: &'static str,
    /// Luhn-valid test card numbers, printed in groups of four.
    pub card: &'static str,
    pub ssn: &'static str,
}

/// The rows of `public.customers`, in `id` order.
pub const CUSTOMERS: [Customer; 3] = [
    Customer {
        id: 1,
        name: "Alice",
        email: "alice@example.com",
        card: "4111 1111 1111 1111",
        ssn: "123-45-6789",
    },
    Customer {
        id: 2,
        name: "Bob",
        email: "bob@example.org",
        card: "5500 0000 0000 0004",
        ssn: "987-65-4321",
    },
    Customer {
        id: 3,
        name: "Carol",
        email: "carol@example.net",
        card: "4012 8888 8888 1881",
        ssn: "111-22-3333",
    },
];

/// Rows of `public.items`: `id` 1..=ITEMS, `qty = 10 * id`.
pub const ITEMS: i64 = 100;

/// The fixture, run as `app_rw` (so it owns everything) in `orders`.
const FIXTURE_SQL: &str = "
CREATE TABLE customers (id serial PRIMARY KEY, name text, email text, card text, ssn text);
INSERT INTO customers (name, email, card, ssn) VALUES
  ('Alice', 'alice@example.com', '4111 1111 1111 1111', '123-45-6789'),
  ('Bob', 'bob@example.org', '5500 0000 0000 0004', '987-65-4321'),
  ('Carol', 'carol@example.net', '4012 8888 8888 1881', '111-22-3333');
CREATE TABLE items (id int, qty int);
INSERT INTO items SELECT g, 10 * g FROM generate_series(1, 100) AS g;
CREATE SCHEMA billing;
CREATE TABLE billing.invoices (id int, amount int);
INSERT INTO billing.invoices VALUES (1, 100), (2, 250);
GRANT USAGE ON SCHEMA billing TO app_ro;
GRANT SELECT ON ALL TABLES IN SCHEMA public, billing TO app_ro;
";

/// The bin directory of the newest PostgreSQL installed the Debian way
/// (`/usr/lib/postgresql/<major>/bin`).
pub fn pg_bin_dir() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(root)
        .with_context(|| {
            format!(
                "reading {}: install PostgreSQL (apt-get install postgresql)",
                root.display()
            )
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .with_context(|| format!("no {}/<major>/bin/initdb found", root.display()))
}

/// A running PostgreSQL server with the `orders` fixture, for one test.
///
/// Listens on `127.0.0.1:<port>` only; `pg_hba.conf` accepts nothing but
/// SCRAM-SHA-256 over TCP. Dropping it stops the server (`pg_ctl stop -m
/// immediate` on its own data directory) and removes every file.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    /// Owned by `postgres`: data directory, socket, log, superuser password.
    dir: TempDir,
    /// Owned by root, mode 0700: one 0600 password file per role.
    secrets: TempDir,
    port: u16,
    uid: u32,
    gid: u32,
    superuser_password: String,
    passwords: BTreeMap<String, String>,
    /// Set by [`PgServer::start_tls`]: the CA that signed the server's certificate.
    ca_file: Option<PathBuf>,
    running: bool,
}

/// The name in the TLS server's certificate (besides 127.0.0.1).
pub const TLS_SERVER_NAME: &str = "db.chokepoint.test";

impl PgServer {
    /// initdb, start, create the roles and the `orders` database.
    pub fn start() -> Result<Self> {
        Self::start_with(false)
    }

    /// Like [`PgServer::start`], but the server accepts only TLS connections
    /// (`hostssl` in pg_hba.conf), with a certificate for 127.0.0.1 and
    /// [`TLS_SERVER_NAME`] signed by a CA of its own ([`PgServer::ca_file`]).
    pub fn start_tls() -> Result<Self> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Result<Self> {
        let bin = pg_bin_dir()?;
        let user = User::from_name("postgres")?
            .context("no `postgres` system user: install PostgreSQL the Debian way")?;
        let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
        // Under /tmp (mode 1777, traversable by postgres); private to postgres.
        let dir = tempfile::Builder::new()
            .prefix("cp-pg-")
            .tempdir_in("/tmp")?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))?;
        chown(dir.path(), Some(uid), Some(gid))?;
        let secrets = tempfile::Builder::new()
            .prefix("cp-pg-secrets-")
            .tempdir()?;
        fs::set_permissions(secrets.path(), fs::Permissions::from_mode(0o700))?;

        let superuser_password = random_hex(16)?;
        let mut passwords = BTreeMap::new();
        for role in ROLES {
            let password = random_hex(16)?;
            write_secret(&secrets.path().join(role), &password)?;
            passwords.insert(role.to_owned(), password);
        }
        let mut server = Self {
            bin,
            dir,
            secrets,
            port: gateway_port()?,
            uid,
            gid,
            superuser_password,
            passwords,
            ca_file: None,
            running: false,
        };
        server.init()?;
        if tls {
            server.enable_tls()?;
        }
        server.launch()?;
        server.create_fixture()?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far, for error messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A command of the server's bin directory, run as `postgres` in its
    /// own directory (root's working directory may not be readable).
    fn as_postgres(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.uid(self.uid)
            .gid(self.gid)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        cmd
    }

    fn run_as_postgres(&self, what: &str, cmd: &mut Command) -> Result<Output> {
        let out = run_with_timeout(cmd, SETUP_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}{}\nserver log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        Ok(out)
    }

    fn init(&mut self) -> Result<()> {
        let pwfile = self.dir.path().join("superuser.pw");
        fs::write(&pwfile, format!("{}\n", self.superuser_password))?;
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))?;
        chown(&pwfile, Some(self.uid), Some(self.gid))?;
        let data = self.data();
        self.run_as_postgres(
            "initdb",
            self.as_postgres("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "scram-sha-256", "--pwfile"])
                .arg(&pwfile)
                .args(["-E", "UTF8", "--no-locale", "--no-sync"]),
        )?;
        fs::remove_file(&pwfile)?;
        let conf = format!(
            "\n# chokepoint tests\nlisten_addresses = '127.0.0.1'\nport = {}\n\
             unix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nshared_buffers = 16MB\nmax_connections = 50\n\
             password_encryption = 'scram-sha-256'\nlog_connections = on\n",
            self.port,
            self.dir.path().display()
        );
        let mut current = fs::read_to_string(data.join("postgresql.conf"))?;
        current.push_str(&conf);
        fs::write(data.join("postgresql.conf"), current)?;
        // SCRAM over TCP and nothing else: no trust, no Unix socket logins.
        fs::write(
            data.join("pg_hba.conf"),
            "host all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n",
        )?;
        Ok(())
    }

    /// Certificates in place, `ssl = on`, and pg_hba.conf rewritten to
    /// accept SCRAM over TLS only; before launch, so no reload race.
    fn enable_tls(&mut self) -> Result<()> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "chokepoint test CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate()?;
        let server =
            CertificateParams::new(vec![TLS_SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])?
                .signed_by(&server_key, &issuer)?;

        let data = self.data();
        for (name, pem) in [
            ("server.crt", server.pem()),
            ("server.key", server_key.serialize_pem()),
        ] {
            let path = data.join(name);
            fs::write(&path, pem)?;
            // PostgreSQL refuses a key readable by others.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            chown(&path, Some(self.uid), Some(self.gid))?;
        }
        let ca_file = self.secrets.path().join("ca.pem");
        fs::write(&ca_file, ca_cert.pem())?;
        let mut conf = fs::read_to_string(data.join("postgresql.conf"))?;
        conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        fs::write(data.join("postgresql.conf"), conf)?;
        fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 scram-sha-256\nhostssl all all ::1/128 scram-sha-256\n",
        )?;
        self.ca_file = Some(ca_file);
        Ok(())
    }

    /// The CA certificate of a [`PgServer::start_tls`] server.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    fn launch(&mut self) -> Result<()> {
        let (data, log) = (self.data(), self.log_path());
        self.run_as_postgres(
            "pg_ctl start",
            self.as_postgres("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "120", "start"]),
        )?;
        self.running = true;
        Ok(())
    }

    fn create_fixture(&self) -> Result<()> {
        let (rw, ro) = (self.password("app_rw")?, self.password("app_ro")?);
        self.admin_psql(
            "postgres",
            "postgres",
            &[
                &format!("CREATE ROLE app_rw LOGIN PASSWORD '{rw}'"),
                &format!("CREATE ROLE app_ro LOGIN PASSWORD '{ro}'"),
                // Not in a transaction block, hence its own -c.
                "CREATE DATABASE orders OWNER app_rw",
            ],
        )?;
        self.admin_psql("app_rw", "orders", &[FIXTURE_SQL])?;
        Ok(())
    }

    /// Runs SQL as `role` (superuser `postgres` or a fixture role) with
    /// its password, straight to the server from outside every cgroup;
    /// each item is one `-c` (one query string), stopping at the first
    /// error. Returns stdout in `-A -t` form (rows `|`-separated).
    pub fn admin_psql(&self, role: &str, database: &str, commands: &[&str]) -> Result<String> {
        let password = if role == "postgres" {
            self.superuser_password.clone()
        } else {
            self.password(role)?.to_owned()
        };
        let mut cmd = Command::new("psql");
        clean_pg_env(&mut cmd);
        cmd.arg(format!(
            "host=127.0.0.1 port={} dbname={database} user={role}",
            self.port
        ))
        .args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"])
        .env("PGPASSWORD", password)
        .stdin(Stdio::null());
        for c in commands {
            cmd.arg("-c").arg(c);
        }
        let out = run_with_timeout(&mut cmd, SETUP_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "setup psql as {role} on {database} failed ({}): {}\nserver log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Appends `settings` (postgresql.conf lines) and restarts the server,
    /// for settings only a restart applies: the harness's 16 MB of
    /// `shared_buffers` suit small fixtures, not a benchmark's tables.
    pub fn restart_with_settings(&mut self, settings: &str) -> Result<()> {
        let path = self.data().join("postgresql.conf");
        let mut conf =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        conf.push_str(&format!(
            "\n# chokepoint tests: restart_with_settings\n{settings}\n"
        ));
        fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
        self.stop()
            .context("stopping PostgreSQL to apply new settings")?;
        self.launch()
            .context("starting PostgreSQL again with new settings")
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, what `[target.postgres] upstream` names.
    pub fn upstream(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A fixture role's password (what the gateway logs in with).
    pub fn password(&self, role: &str) -> Result<&str> {
        self.passwords
            .get(role)
            .map(String::as_str)
            .with_context(|| format!("no fixture role {role:?}"))
    }

    /// The 0600 file holding `role`'s password.
    pub fn password_file(&self, role: &str) -> PathBuf {
        self.secrets.path().join(role)
    }

    /// A `[[target]]` named `name` for the job-facing `address:5432`,
    /// with `[target.postgres]` pointing at this server and credentials
    /// for every fixture role.
    pub fn target_toml(&self, name: &str, address: &str) -> String {
        let mut s = format!(
            "[[target]]\nname = {}\naddresses = [{}]\nports = [5432]\nprotocol = \"postgres\"\n\n\
             [target.postgres]\nupstream = {}\n",
            toml_str(name),
            toml_str(address),
            toml_str(&self.upstream())
        );
        for role in ROLES {
            s.push_str(&format!(
                "\n[target.postgres.credentials.{role}]\npassword_file = {}\n",
                toml_str(&self.password_file(role).to_string_lossy())
            ));
        }
        s
    }

    fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let data = self.data();
        let out = run_with_timeout(
            self.as_postgres("pg_ctl").arg("-D").arg(&data).args([
                "-m",
                "immediate",
                "-w",
                "-t",
                "60",
                "stop",
            ]),
            STOP_TIMEOUT,
        );
        if matches!(&out, Ok(o) if o.status.success()) {
            return Ok(());
        }
        // pg_ctl failed: the postmaster of this data directory is ours
        // (its pid file names it); kill it directly.
        let pid = fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        if let Some(pid) = pid {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        match out {
            Ok(o) => bail!(
                "pg_ctl stop failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => Err(e),
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: stopping the test PostgreSQL server: {e:#}");
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- PostgreSQL log (port {}) ---\n{}",
                self.port,
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

/// Removes the libpq environment that could point a client elsewhere or
/// hand it a password, so a client only ever has what the test gives it.
pub fn clean_pg_env(cmd: &mut Command) {
    for var in [
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGOPTIONS",
        "PGSSLMODE",
        "PGGSSENCMODE",
        "PGAPPNAME",
    ] {
        cmd.env_remove(var);
    }
    // A password file, if libpq ever looked for one, that does not exist.
    cmd.env("PGPASSFILE", "/nonexistent/chokepoint-tests/pgpass");
}

/// `program` (psql, pgbench…) run inside `cgroup` as a job would run it:
/// no password anywhere in its environment, stdin closed, a connect
/// timeout so a refused connection fails instead of hanging.
pub fn job_command(cgroup: &TestCgroup, program: &str) -> Command {
    let mut cmd = cgroup.command(program);
    clean_pg_env(&mut cmd);
    cmd.env("PGCONNECT_TIMEOUT", "10").stdin(Stdio::null());
    cmd
}

/// `psql <conninfo> -X -w -A -t -v ON_ERROR_STOP=0 -v VERBOSITY=verbose`
/// with one `-c` per command, all in one session, inside `cgroup`.
/// `-w`: psql fails instead of asking for a password.
pub fn job_psql(cgroup: &TestCgroup, conninfo: &str, commands: &[&str]) -> Command {
    let mut cmd = job_command(cgroup, "psql");
    cmd.arg(conninfo).args([
        "-X",
        "-w",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=0",
        "-v",
        "VERBOSITY=verbose",
    ]);
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    cmd
}

fn write_secret(path: &Path, secret: &str) -> Result<()> {
    fs::write(path, format!("{secret}\n"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// One frontend message as hex, for cp-pgclient's `raw` steps: `tag`,
/// length, `body`.
pub fn frame(tag: u8, body: &[u8]) -> String {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out.iter().map(|b| format!("{b:02x}")).collect()
}

/// NUL-terminated strings back to back, then `tail`.
pub fn cstrings(parts: &[&str], tail: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p.as_bytes());
        out.push(0);
    }
    out.extend_from_slice(tail);
    out
}
