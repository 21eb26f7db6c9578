//! `chokepoint status`.
use std::process::ExitCode;

use super::InstanceArg;

/// Prints each instance's line; exits 1 when one has nothing attached.
pub(super) fn status(which: &InstanceArg) -> ExitCode {
    let instances = match which.instances() {
        Ok(i) => i,
        Err(e) => return super::usage(e),
    };
    let mut code = ExitCode::SUCCESS;
    for instance in instances {
        match crate::ebpf::status(&instance) {
            Ok(s) => match serde_json::to_string(&s) {
                Ok(line) => println!("{line}"),
                Err(e) => return super::fail(e),
            },
            Err(e) => return super::fail(format_args!("{instance}: {}", super::chain(&e))),
        }
        if let Err(e) = pinned(&instance) {
            code = super::fail(e);
        }
    }
    code
}

/// All-zero counters for a mistyped name look like an idle instance, so
/// an instance without pins is an error: a script must not take it for a
/// guarded host. Its line is still printed (`"attached": false`), as
/// scripts read it after a detach; a detached instance and one that never
/// ran look the same on bpffs.
fn pinned(instance: &str) -> Result<(), String> {
    let root = crate::ebpf::PinDir::new(instance).root;
    if root.exists() {
        return Ok(());
    }
    Err(format!(
        "instance {instance:?} is not attached: nothing under {} (no such instance, or it was detached)",
        root.display()
    ))
}

#[cfg(test)]
mod tests {
    use std::process::ExitCode;

    use super::{super::InstanceArg, status};

    #[test]
    fn an_instance_with_nothing_attached_is_an_error() {
        let which = InstanceArg {
            instance: Some("no-such-instance-0".into()),
            config: None,
            all: false,
        };
        assert_eq!(status(&which), ExitCode::FAILURE);
    }

    #[test]
    fn a_bad_instance_name_or_config_is_a_usage_error() {
        let bad_name = InstanceArg {
            instance: Some("../etc".into()),
            config: None,
            all: false,
        };
        assert_eq!(status(&bad_name), ExitCode::from(2));
        let bad_config = InstanceArg {
            instance: None,
            config: Some("/nonexistent/chokepoint.toml".into()),
            all: false,
        };
        assert_eq!(status(&bad_config), ExitCode::from(2));
    }
}
