//! `chokepoint policy check|explain`.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use crate::policy::{FlowFacts, Policy};

pub(super) fn check(files: &[PathBuf]) -> ExitCode {
    match Policy::load_files(files) {
        Ok(policy) => {
            println!("ok: {}", policy.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
    }
}

pub(super) fn explain(
    config: &Path,
    dest: SocketAddr,
    uid: Option<u32>,
    user: Option<&str>,
    comm: &str,
) -> ExitCode {
    let policy = match Policy::load(config) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    let (uid, gid) = match (uid, user) {
        (Some(uid), _) => (uid, 0),
        (None, Some(name)) => match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => (u.uid.as_raw(), u.gid.as_raw()),
            _ => return super::fail(format_args!("unknown user {name:?}")),
        },
        (None, None) => return super::fail("say who connects: --uid N or --user NAME"),
    };
    let facts = FlowFacts {
        dst: dest,
        pid: 0,
        uid,
        gid,
        comm,
    };
    print!("{}", policy.explain(&facts));
    ExitCode::SUCCESS
}
