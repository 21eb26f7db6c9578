//! `chokepoint status`.
use std::process::ExitCode;

use super::InstanceArg;

pub(super) fn status(which: &InstanceArg) -> ExitCode {
    let instances = match which.instances() {
        Ok(i) => i,
        Err(e) => return super::fail(e),
    };
    for instance in instances {
        match crate::ebpf::status(&instance) {
            Ok(s) => match serde_json::to_string(&s) {
                Ok(line) => println!("{line}"),
                Err(e) => return super::fail(e),
            },
            Err(e) => return super::fail(format_args!("{instance}: {}", super::chain(&e))),
        }
        warn_if_unknown(&instance);
    }
    ExitCode::SUCCESS
}

/// All-zero counters for a mistyped name look like an idle instance; say so.
/// Not a failure: scripts read `attached` from the line after a detach.
fn warn_if_unknown(instance: &str) {
    let root = crate::ebpf::PinDir::new(instance).root;
    if !root.exists() {
        eprintln!(
            "chokepoint: instance {instance:?} is unknown or not attached (nothing under {})",
            root.display()
        );
    }
}
