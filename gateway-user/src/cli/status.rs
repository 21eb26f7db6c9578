//! `chokepoint status`.
use super::output::say;
use std::process::ExitCode;

use super::InstanceArg;

/// Prints each instance's line; exits 1 when one has nothing attached,
/// or when `--all` finds no instance at all.
pub(super) fn status(which: &InstanceArg) -> ExitCode {
    let instances = match which.instances() {
        Ok(i) => i,
        Err(e) => return super::usage(e),
    };
    let mut attached = Vec::new();
    for instance in &instances {
        match crate::ebpf::status(instance) {
            Ok(s) => {
                match serde_json::to_string(&s) {
                    Ok(line) => say!("{line}"),
                    Err(e) => return super::fail(e),
                }
                attached.push((s.instance, s.attached));
            }
            Err(e) => return super::fail(format_args!("{instance}: {}", super::chain(&e))),
        }
    }
    let problems = unguarded(&attached);
    let code = if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    for problem in problems {
        super::fail(problem);
    }
    code
}

/// Why the host is not guarded as asked, one line each; empty: every
/// instance has its programs attached. All-zero counters for a mistyped
/// name look like an idle instance, so an instance with nothing attached
/// is an error: a script must not take it for a guarded host. Its line is
/// still printed (`"attached": false`), as scripts read it after a
/// detach; a detached instance and one that never ran look the same on
/// bpffs. Found in review: `--all` on a host with no instance printed
/// nothing and exited 0, and an instance with pins but no links (a detach
/// cut short) passed, because only the pin folder was looked at.
fn unguarded(instances: &[(String, bool)]) -> Vec<String> {
    if instances.is_empty() {
        return vec![format!(
            "no instance is attached on this host: nothing under {}",
            crate::ebpf::PinDir::new("").root.display()
        )];
    }
    instances
        .iter()
        .filter(|(_, attached)| !attached)
        .map(|(instance, _)| {
            format!(
                "instance {instance:?} is not attached: no programs linked under {} (no such instance, or it was detached)",
                crate::ebpf::PinDir::new(instance).root.display()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::process::ExitCode;

    use super::{super::InstanceArg, status, unguarded};

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

    #[test]
    fn no_instance_at_all_or_one_not_attached_exits_1() {
        // `status --all || alert` must alert on a host with nothing attached.
        assert_eq!(unguarded(&[]).len(), 1, "no instance passed");
        assert!(unguarded(&[("ci".into(), true)]).is_empty());
        let problems = unguarded(&[("ci".into(), true), ("demo".into(), false)]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("\"demo\" is not attached"),
            "{problems:?}"
        );
    }
}
