//! `chokepoint job begin|end|list`: what a CI runner's job-started and job-completed hooks call.
use super::output::say_raw;
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
            say_raw!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => e.exit(),
    }
}

fn read_token(file: Option<&PathBuf>, env: Option<&str>) -> Result<String, String> {
    // Read as bytes, one past the limit: a token cut at the limit (perhaps
    // inside a character) would be refused for the wrong reason.
    let limited = |mut reader: Box<dyn Read>, what: &str| -> Result<String, String> {
        let mut bytes = Vec::new();
        reader
            .by_ref()
            .take(MAX_TOKEN_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{what}: {e}"))?;
        if bytes.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "{what}: the token is longer than {MAX_TOKEN_BYTES} bytes: is this the job's OIDC token?"
            ));
        }
        String::from_utf8(bytes).map_err(|_| format!("{what}: the token is not UTF-8"))
    };
    let token = match (file, env) {
        (Some(f), _) if f.as_os_str() == "-" => {
            limited(Box::new(std::io::stdin()), "reading the token from stdin")?
        }
        (Some(f), _) => {
            let what = format!("token file {}", f.display());
            let file = std::fs::File::open(f).map_err(|e| format!("{what}: {e}"))?;
            limited(Box::new(file), &what)?
        }
        (None, Some(var)) => {
            let value = std::env::var(var)
                .map_err(|_| format!("environment variable {var} is not set (or not UTF-8)"))?;
            limited(
                Box::new(std::io::Cursor::new(value.into_bytes())),
                &format!("environment variable {var}"),
            )?
        }
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

    use super::{JobCommand, SocketArgs, job, read_token};
    use crate::identity::token::MAX_TOKEN_BYTES;

    /// Found in review: a token file over the limit was cut silently, and
    /// a cut inside a character read as "not UTF-8".
    #[test]
    fn a_token_over_the_limit_is_named_as_too_long() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jwt");
        let mut long = "a".repeat(MAX_TOKEN_BYTES - 1);
        long.push('é');
        std::fs::write(&path, &long).unwrap();
        let error = read_token(Some(&path), None).unwrap_err();
        assert!(error.contains("longer than"), "{error}");
        std::fs::write(&path, b"\xff\xfe").unwrap();
        let error = read_token(Some(&path), None).unwrap_err();
        assert!(error.ends_with("the token is not UTF-8"), "{error}");
        std::fs::write(&path, "  eyJ.x.y\n").unwrap();
        assert_eq!(read_token(Some(&path), None).unwrap(), "eyJ.x.y");
    }

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
