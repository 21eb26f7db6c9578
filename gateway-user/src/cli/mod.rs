//! The `chokepoint` command line. Each subcommand lives in its own file and
//! returns an exit code; errors are printed as one line naming the problem.
mod approvals;
mod detach;
mod doctor;
mod escaped;
mod job;
mod output;
mod policy;
mod run;
mod sessions;
mod status;

use std::{io::Write, path::PathBuf, process::ExitCode};

use output::tell;

use clap::{Parser, Subcommand};

use crate::daemon::LogFormat;

/// Chokepoint: the only way out of a CI runner host.
#[derive(Debug, Parser)]
#[command(name = "chokepoint", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway in the foreground (the systemd service runs this).
    Run {
        /// Daemon configuration file.
        #[arg(long, short, default_value = "/etc/chokepoint/chokepoint.toml")]
        config: PathBuf,
        /// Log output format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Detach and unpin the kernel programs of an instance (the only way to
    /// lift the guard).
    Detach {
        #[command(flatten)]
        which: InstanceArg,
    },
    /// Show an instance's attachment, map fill and counters as JSON; exits
    /// 1 when one has nothing attached (no such instance, or detached), or
    /// `--all` finds no instance.
    Status {
        #[command(flatten)]
        which: InstanceArg,
    },
    /// Check this host for what Chokepoint needs and for holes in the threat model.
    Doctor {
        /// Also check this daemon configuration.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate and explain policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Bind a CI job's OIDC token to its cgroup (runner hooks), or end it.
    Job {
        #[command(flatten)]
        target: job::SocketArgs,
        #[command(subcommand)]
        command: job::JobCommand,
    },
    /// Statements held for approval: list, show, approve, deny.
    Approvals {
        #[command(flatten)]
        target: approvals::ApprovalsArgs,
        #[command(subcommand)]
        command: approvals::ApprovalsCommand,
    },
    /// Recorded sessions: list, show, replay, verify, export.
    Sessions {
        #[command(flatten)]
        store: sessions::StoreArgs,
        #[command(subcommand)]
        command: sessions::SessionsCommand,
    },
}

/// Selects an instance by name, by configuration file, or all of them.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct InstanceArg {
    /// Instance name ([daemon] instance).
    #[arg(long)]
    pub instance: Option<String>,
    /// Take the instance name from this configuration file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Every instance on this host.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files; prints every error as file:line:col and exits 2.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show which rule decides a connection, and why the others do not.
    Explain {
        #[arg(long, short, default_value = "/etc/chokepoint/chokepoint.toml")]
        config: PathBuf,
        /// Destination, e.g. 127.0.0.2:5432 or [::1]:443.
        #[arg(long, value_parser = destination)]
        dest: std::net::SocketAddr,
        /// Uid of the connecting process.
        #[arg(long, conflicts_with = "user")]
        uid: Option<u32>,
        /// User name of the connecting process.
        #[arg(long)]
        user: Option<String>,
        /// Process name (comm) of the connecting process.
        #[arg(long, default_value = "")]
        comm: String,
        /// The job's token claims, e.g. repository=acme/app,ref=refs/heads/main
        /// (without them, the connection is unidentified).
        #[arg(long)]
        claims: Option<String>,
        /// A DNS name the job resolved to the destination (repeat for
        /// several): shows whether the gateway's DNS would answer it, and
        /// matches targets by their hosts.
        #[arg(long = "name")]
        names: Vec<String>,
        /// A UDP datagram flow (relayed) instead of a TCP connection.
        #[arg(long)]
        udp: bool,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = command(cli.command);
    match output::failure() {
        None => code,
        Some((kind, why)) => {
            // The reader that went away needs no message; anyone else,
            // one on stderr (itself unchecked: nothing is left to tell).
            if kind != std::io::ErrorKind::BrokenPipe {
                let _ = writeln!(
                    std::io::stderr(),
                    "chokepoint: cannot write the output: {why}"
                );
            }
            // A failure found (a tampered recording, a refused start) is
            // worth more to a script than the output it could not read
            // (found in review: `verify --all | head -1` turned 1 into 2).
            if code == ExitCode::FAILURE {
                code
            } else {
                ExitCode::from(2)
            }
        }
    }
}

fn command(command: Command) -> ExitCode {
    match command {
        Command::Run { config, log_format } => run::run(config, log_format),
        Command::Detach { which } => detach::detach(&which),
        Command::Status { which } => status::status(&which),
        Command::Doctor { config } => doctor::doctor(config.as_deref()),
        Command::Sessions { store, command } => sessions::sessions(&store, &command),
        Command::Approvals { target, command } => approvals::approvals(&target, &command),
        Command::Policy(PolicyCommand::Check { files }) => policy::check(&files),
        Command::Policy(PolicyCommand::Explain {
            config,
            dest,
            uid,
            user,
            comm,
            claims,
            names,
            udp,
        }) => policy::explain(
            &config,
            &policy::Asked {
                dest,
                udp,
                uid,
                user: user.as_deref(),
                comm: &comm,
                claims: claims.as_deref(),
                names: &names,
            },
        ),
        Command::Job { target, command } => job::job(&target, &command),
    }
}

/// Prints `chokepoint: <message>` and returns exit code 1.
/// `--dest`: an address a connection can go to. Port 0 is no port a
/// connect reaches, and no target's range holds it, so an explanation of
/// it would only mislead.
fn destination(text: &str) -> Result<std::net::SocketAddr, String> {
    let dest: std::net::SocketAddr = text
        .parse()
        .map_err(|e| format!("{e} (expected address:port, e.g. 127.0.0.2:5432 or [::1]:443)"))?;
    if dest.port() == 0 {
        return Err("port 0 is not a destination a connection can have".into());
    }
    Ok(dest)
}

pub(crate) fn fail(message: impl std::fmt::Display) -> ExitCode {
    tell!("chokepoint: {message}");
    ExitCode::FAILURE
}

/// A usage or configuration error: exit 2, as clap's own and `policy
/// check`'s, so that 1 keeps the meaning each command gives it (nothing
/// attached, a denial, a tampered recording).
pub(crate) fn usage(message: impl std::fmt::Display) -> ExitCode {
    tell!("chokepoint: {message}");
    ExitCode::from(2)
}

/// Why a command that reports errors as text failed: its exit code.
pub(crate) enum Failure {
    /// A bad argument or configuration: [`usage`], exit 2.
    Usage(String),
    /// Refused or unreachable: [`fail`], exit 1.
    Failed(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Failed(message)
    }
}

impl Failure {
    pub(crate) fn exit(self) -> ExitCode {
        match self {
            Failure::Usage(message) => usage(message),
            Failure::Failed(message) => fail(message),
        }
    }
}

/// An error with its causes (aya puts the errno in the source), on one line.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // thiserror's `{source}` formatting often repeats the cause already.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

impl InstanceArg {
    /// What can be wrong with the arguments themselves, found without
    /// reading anything: a malformed `--instance`, or no selector at all.
    pub(crate) fn check(&self) -> Result<(), String> {
        if let Some(name) = &self.instance {
            // The name becomes a path under the pin root that detach empties.
            if !crate::ebpf::is_instance_name(name) {
                return Err(format!(
                    "--instance {name:?} is not an instance name ({}, as [daemon] instance)",
                    crate::ebpf::INSTANCE_NAME_RULE
                ));
            }
        } else if !self.all && self.config.is_none() {
            return Err("name an instance: --instance, --config or --all".to_owned());
        }
        Ok(())
    }

    /// Instance names selected by the arguments.
    pub(crate) fn instances(&self) -> Result<Vec<String>, String> {
        self.check()?;
        if self.all {
            return Ok(crate::ebpf::PinDir::all());
        }
        if let Some(name) = &self.instance {
            return Ok(vec![name.clone()]);
        }
        let config = self
            .config
            .as_ref()
            .ok_or("name an instance: --instance, --config or --all")?;
        // A broken file must not stand between an admin and `detach`:
        // the message says how to go around it (found in review).
        let policy = crate::policy::Policy::load(config).map_err(|e| {
            format!(
                "invalid configuration:\n{e}\n(to go ahead without it, name the instance: --instance NAME; `chokepoint status --all` lists them)"
            )
        })?;
        Ok(vec![policy.daemon().instance.clone()])
    }
}

#[cfg(test)]
mod destination_tests {
    use super::destination;

    #[test]
    fn a_destination_needs_a_port_a_connection_can_have() {
        assert_eq!(
            destination("127.0.0.2:5432").unwrap(),
            "127.0.0.2:5432".parse().unwrap()
        );
        assert_eq!(destination("[::1]:443").unwrap().port(), 443);
        let zero = destination("127.0.0.2:0").unwrap_err();
        assert!(zero.contains("port 0"), "{zero}");
        let bare = destination("127.0.0.2").unwrap_err();
        assert!(bare.contains("expected address:port"), "{bare}");
    }
}
