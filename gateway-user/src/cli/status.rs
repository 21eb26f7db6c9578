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
    }
    ExitCode::SUCCESS
}
