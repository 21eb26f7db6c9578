//! Only socket families that are local or that the other hooks guard may
//! be created: the cgroup socket hooks see inet sockets alone, and a
//! `AF_VSOCK` socket (a VM's line to its host, open on Firecracker runners),
//! `AF_PACKET`, `AF_XDP`, `AF_RDS` or `AF_TIPC` would carry traffic none
//! of them ever sees.
//!
//! An LSM hook attached per cgroup (`BPF_LSM_CGROUP`, Linux 6.0, with the
//! BPF LSM enabled at boot); the loader skips it, saying so, where the
//! kernel cannot run it.
use aya_ebpf::{macros::lsm_cgroup, programs::LsmContext};
use gateway_common::Counter;

use crate::{
    common::{ALLOW, DENY},
    maps::count,
};

const AF_UNIX: i32 = 1;
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const AF_NETLINK: i32 = 16;
/// The kernel's crypto API: no traffic leaves through it.
const AF_ALG: i32 = 38;

/// `int socket_create(int family, int type, int protocol, int kern)`,
/// decided against the cgroup of the task creating the socket.
#[lsm_cgroup(hook = "socket_create")]
pub fn cp_socket_family(ctx: LsmContext) -> i32 {
    // Arguments 0 and 3 of this hook are ints.
    let (family, kern): (i32, i32) = (ctx.arg(0), ctx.arg(3));
    // Sockets the kernel opens for itself in a job's context (a network
    // filesystem's, say) are not the job's to use.
    if kern != 0 || matches!(family, AF_UNIX | AF_INET | AF_INET6 | AF_NETLINK | AF_ALG) {
        ALLOW
    } else {
        count(Counter::SocketDenied);
        DENY
    }
}
