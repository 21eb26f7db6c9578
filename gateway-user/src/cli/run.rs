//! `chokepoint run`.
use std::{path::PathBuf, process::ExitCode};

use crate::daemon::{self, LogFormat, RunError, RunOptions};

pub(super) fn run(config: PathBuf, log_format: LogFormat) -> ExitCode {
    let _log = daemon::init_logging(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return super::fail(format_args!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(daemon::run(RunOptions { config })) {
        Ok(()) => ExitCode::SUCCESS,
        // Policy errors are the admin's to fix: exit 2 like `policy check`.
        Err(RunError::Policy(errors)) => {
            eprintln!("chokepoint: invalid configuration:\n{errors}");
            ExitCode::from(2)
        }
        Err(e) => super::fail(super::chain(&e)),
    }
}
