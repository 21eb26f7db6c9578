//! Only TCP stream and UDP datagram inet sockets may be created: raw, ICMP
//! ("ping") , SCTP, MPTCP and UDP-Lite sockets would carry traffic the
//! connect hooks never see.
use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use gateway_common::Counter;

use crate::{
    common::{ALLOW, DENY, IPPROTO_TCP, IPPROTO_UDP, SOCK_DGRAM, SOCK_STREAM},
    maps::count,
};

#[cgroup_sock(sock_create)]
pub fn cp_sock_create(ctx: SockContext) -> i32 {
    let (ty, proto) = unsafe { ((*ctx.sock).type_, (*ctx.sock).protocol) };
    let allowed = match ty {
        SOCK_STREAM => proto == IPPROTO_TCP || proto == 0,
        SOCK_DGRAM => proto == IPPROTO_UDP || proto == 0,
        _ => false,
    };
    if allowed {
        ALLOW
    } else {
        count(Counter::SocketDenied);
        DENY
    }
}
