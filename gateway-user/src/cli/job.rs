//! `chokepoint job begin|end|list`: what a CI runner's job-started and job-completed hooks call.
use std::{io::Read, path::PathBuf, process::ExitCode};

use clap::Subcommand;

use super::Failure;
use crate::{
    admin::{AdminRequest, JobInfo, call},
    identity::token::MAX_TOKEN_BYTES,
    policy::{DEFAULT_ADMIN_SOCKET, Policy},
};

/// Which gateway to ask.
#[derive(Debug, clap::Args)]
pub struct SocketArgs {
    /// The gateway's admin socket.
    #[arg(long, global = true, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Take the admin socket from this daemon configuration.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Validate the job's OIDC token and bind its claims to the job's cgroup.
    Begin {
        /// File holding the token (`-` for stdin).
        #[arg(
            long,
            conflicts_with = "token_env",
            required_unless_present = "token_env"
        )]
        token_file: Option<PathBuf>,
        /// Environment variable holding the token.
        #[arg(long)]
        token_env: Option<String>,
        /// The job's cgroup (relative to the cgroup2 mount, or absolute);
        /// default: the cgroup this command runs in.
        #[arg(long)]
        cgroup: Option<String>,
    },
    /// End the job of a cgroup: its new connections are unidentified.
    End {
        #[arg(long)]
        cgroup: Option<String>,
    },
    /// Bound jobs (root only).
    List,
}

pub fn job(args: &SocketArgs, command: &JobCommand) -> ExitCode {
    match run(args, command) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => e.exit(),
    }
}

fn read_token(file: Option<&PathBuf>, env: Option<&str>) -> Result<String, String> {
    let token = match (file, env) {
        (Some(f), _) if f.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .take(MAX_TOKEN_BYTES as u64 + 1)
                .read_to_string(&mut s)
                .map_err(|e| format!("reading the token from stdin: {e}"))?;
            s
        }
        (Some(f), _) => {
            let mut s = String::new();
            std::fs::File::open(f)
                .and_then(|file| file.take(MAX_TOKEN_BYTES as u64 + 1).read_to_string(&mut s))
                .map_err(|e| format!("token file {}: {e}", f.display()))?;
            s
        }
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| format!("environment variable {var} is not set (or not UTF-8)"))?,
        (None, None) => return Err("give the token: --token-file F or --token-env VAR".to_owned()),
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err("the token is empty".to_owned());
    }
    Ok(token)
}

fn run(args: &SocketArgs, command: &JobCommand) -> Result<String, Failure> {
    let request = match command {
        JobCommand::Begin {
            token_file,
            token_env,
            cgroup,
        } => AdminRequest::JobBegin {
            token: read_token(token_file.as_ref(), token_env.as_deref()).map_err(Failure::Usage)?,
            cgroup: cgroup.clone(),
        },
        JobCommand::End { cgroup } => AdminRequest::JobEnd {
            cgroup: cgroup.clone(),
        },
        JobCommand::List => AdminRequest::JobList,
    };
    let socket = match (&args.socket, &args.config) {
        (Some(s), _) => s.clone(),
        (None, Some(config)) => Policy::load(config)
            .map(|p| p.daemon().admin_socket.clone())
            .map_err(|e| Failure::Usage(format!("invalid configuration:\n{e}")))?,
        (None, None) => PathBuf::from(DEFAULT_ADMIN_SOCKET),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let answer = runtime.block_on(call(&socket, &request))?;
    if let Some(e) = answer.error {
        return Err(e.into());
    }
    let line = |j: &JobInfo, verb: &str| {
        format!(
            "{verb} {} to cgroup {} (until {})\n",
            j.identity, j.cgroup, j.expires
        )
    };
    Ok(match command {
        JobCommand::Begin { .. } => answer.jobs.iter().map(|j| line(j, "bound")).collect(),
        JobCommand::End { .. } => answer.jobs.iter().map(|j| line(j, "ended")).collect(),
        JobCommand::List if answer.jobs.is_empty() => "no bound jobs\n".to_owned(),
        JobCommand::List => answer
            .jobs
            .iter()
            .map(|j| line(j, ""))
            .map(|l| l.trim_start().to_owned())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, process::ExitCode};

    use super::{JobCommand, SocketArgs, job};

    #[test]
    fn a_bad_token_source_or_config_is_a_usage_error() {
        // Neither reaches a gateway: 1 stays "the gateway refused".
        let default = SocketArgs {
            socket: None,
            config: None,
        };
        let unset = JobCommand::Begin {
            token_file: None,
            token_env: Some("CHOKEPOINT_TEST_NO_SUCH_VARIABLE".into()),
            cgroup: None,
        };
        assert_eq!(job(&default, &unset), ExitCode::from(2));
        let missing = JobCommand::Begin {
            token_file: Some(PathBuf::from("/nonexistent/job.jwt")),
            token_env: None,
            cgroup: None,
        };
        assert_eq!(job(&default, &missing), ExitCode::from(2));
        let bad_config = SocketArgs {
            socket: None,
            config: Some("/nonexistent/chokepoint.toml".into()),
        };
        assert_eq!(job(&bad_config, &JobCommand::List), ExitCode::from(2));
    }
}
