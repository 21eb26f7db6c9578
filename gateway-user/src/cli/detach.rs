//! `chokepoint detach`.
use std::process::ExitCode;

use super::InstanceArg;

pub(super) fn detach(which: &InstanceArg) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        return super::fail("detach needs root: run it with sudo");
    }
    let instances = match which.instances() {
        Ok(i) => i,
        Err(e) => return super::usage(e),
    };
    for instance in instances {
        match crate::ebpf::detach(&instance) {
            Ok(0) => println!("{instance}: nothing attached"),
            Ok(n) => println!("{instance}: detached {n} programs and removed its pins"),
            Err(e) => return super::fail(format_args!("{instance}: {}", super::chain(&e))),
        }
    }
    ExitCode::SUCCESS
}
