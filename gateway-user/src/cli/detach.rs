//! `chokepoint detach`.
use super::output::{say, tell};
use std::process::ExitCode;

use super::InstanceArg;

pub(super) fn detach(which: &InstanceArg) -> ExitCode {
    detach_as(which, nix::unistd::geteuid().is_root())
}

/// `detach`, as root or not. A mistyped argument is a usage error (2)
/// whoever runs it, so it is checked before privileges (found in review:
/// a non-root caller got 1 for it); reading `--config` or `--all`'s pins
/// may need root, so that comes after.
fn detach_as(which: &InstanceArg, root: bool) -> ExitCode {
    if let Err(e) = which.check() {
        return super::usage(e);
    }
    if !root {
        return super::fail("detach needs root: run it with sudo");
    }
    let instances = match which.instances() {
        Ok(i) => i,
        Err(e) => return super::usage(e),
    };
    // One instance that fails must not leave the others attached (found
    // in review: `--all` stopped at the first failure).
    let mut failed = 0;
    for instance in instances {
        match crate::ebpf::detach(&instance) {
            Ok(0) => say!("{instance}: nothing attached"),
            Ok(n) => say!("{instance}: detached {n} programs and removed its pins"),
            Err(e) => {
                tell!("error: {instance}: {}", super::chain(&e));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return super::fail(format_args!(
            "{failed} instance{} could not be detached (above)",
            if failed == 1 { "" } else { "s" }
        ));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use std::process::ExitCode;

    use super::{super::InstanceArg, detach_as};

    #[test]
    fn a_bad_argument_is_a_usage_error_before_root_is_required() {
        let arg = |instance: Option<&str>| InstanceArg {
            instance: instance.map(str::to_owned),
            config: None,
            all: false,
        };
        assert_eq!(detach_as(&arg(Some("../etc")), false), ExitCode::from(2));
        assert_eq!(detach_as(&arg(None), false), ExitCode::from(2));
        // A well-formed one: now root is what is missing.
        assert_eq!(detach_as(&arg(Some("ci")), false), ExitCode::FAILURE);
    }
}
