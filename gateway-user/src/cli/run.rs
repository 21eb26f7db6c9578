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
    exit(runtime.block_on(daemon::run(RunOptions { config })))
}

/// The exit code of a run, its error printed. A configuration error (an
/// invalid file, no `[guard]`) is the admin's to fix: exit 2, like `policy
/// check`; what failed while starting or serving is 1.
fn exit(result: Result<(), RunError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Policy(errors)) => {
            super::usage(format_args!("invalid configuration:\n{errors}"))
        }
        // Found in review: a missing [guard] exited 1, as if the host had
        // failed, when the file is what needs fixing.
        Err(e @ RunError::NoGuard(_)) => super::usage(e),
        // So is a [guard] cgroup that is missing (with `create = false`)
        // or no cgroup: the file names it.
        Err(
            e @ RunError::Ebpf(
                crate::ebpf::EbpfError::CgroupMissing { .. }
                | crate::ebpf::EbpfError::NotACgroup { .. },
            ),
        ) => super::usage(e),
        Err(e) => super::fail(super::chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use std::process::ExitCode;

    use super::exit;
    use crate::daemon::{RunOptions, run};

    #[test]
    fn a_configuration_without_guard_exits_2() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("chokepoint.toml");
        std::fs::write(&config, "[daemon]\ninstance = \"ci\"\n").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // It stops at the missing section, before anything needs root.
        let result = runtime.block_on(run(RunOptions { config }));
        assert!(
            result
                .as_ref()
                .is_err_and(|e| e.to_string().contains("[guard]")),
            "{result:?}"
        );
        assert_eq!(exit(result), ExitCode::from(2));
    }
}
