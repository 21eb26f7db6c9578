//! DNS over UDP: a UDP `sendmsg`/`connect` to port 53 (any server, loopback
//! stub resolvers included) is recorded by socket cookie and redirected to
//! the gateway's DNS listener; every other UDP destination is refused.
//! `cgroup_skb` egress tells the gateway which local port sends the
//! datagrams (a connected socket gets its port only after `connect4`
//! ran), and `recvmsg4/6`/`getpeername4/6` put the original server back
//! so resolvers that check where the answer came from accept it.
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_skb, cgroup_sock_addr},
    programs::{SkBuffContext, SockAddrContext},
};
use gateway_common::{AF_INET, AF_INET6, Counter, mapped_v4, v6_bytes};

use crate::{
    common::{
        ALLOW, DENY, DNS_PORT, LOOPBACK_V4, LOOPBACK_V4_MAPPED, LOOPBACK_V6, MAPPED_PREFIX, config,
        is_exempt,
    },
    connect::record,
    maps::{DNS_PEERS, DNS_PENDING, count},
};

/// UDP to an IPv4 destination (`sendmsg4`, or `connect4` of a datagram socket).
#[inline(always)]
pub fn redirect_udp4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let cfg = config();
    // SAFETY: the kernel hands us a valid bpf_sock_addr with its socket.
    let (dst_ip, dst_port, mark) = unsafe {
        (
            (*sa).user_ip4,
            u16::from_be((*sa).user_port as u16),
            (*(*sa).__bindgen_anon_1.sk).mark,
        )
    };
    if is_exempt(mark, &cfg) {
        count(Counter::Exempt);
        return ALLOW;
    }
    // Straight to the gateway's DNS port is refused too: the gateway
    // names a datagram's sender by the record of a redirected socket, and
    // a socket that skipped the redirect has none of its own.
    if cfg.dns_port == 0 || dst_port != DNS_PORT {
        count(Counter::Denied);
        return DENY;
    }
    if !record(ctx, mapped_v4(dst_ip), dst_port, AF_INET, &DNS_PENDING) {
        return DENY;
    }
    unsafe {
        (*sa).user_ip4 = LOOPBACK_V4;
        (*sa).user_port = u32::from(cfg.dns_port.to_be());
    }
    count(Counter::Redirected);
    ALLOW
}

/// UDP to an IPv6 (or IPv4-mapped) destination.
#[inline(always)]
pub fn redirect_udp6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let cfg = config();
    let (dst_ip, dst_port, mark) = unsafe {
        (
            (*sa).user_ip6,
            u16::from_be((*sa).user_port as u16),
            (*(*sa).__bindgen_anon_1.sk).mark,
        )
    };
    if is_exempt(mark, &cfg) {
        count(Counter::Exempt);
        return ALLOW;
    }
    let mapped = dst_ip[0] == MAPPED_PREFIX[0]
        && dst_ip[1] == MAPPED_PREFIX[1]
        && dst_ip[2] == MAPPED_PREFIX[2];
    let gateway = if mapped {
        LOOPBACK_V4_MAPPED
    } else {
        LOOPBACK_V6
    };
    if cfg.dns_port == 0 || dst_port != DNS_PORT {
        count(Counter::Denied);
        return DENY;
    }
    if !record(ctx, v6_bytes(dst_ip), dst_port, AF_INET6, &DNS_PENDING) {
        return DENY;
    }
    unsafe {
        set_ip6(sa, gateway);
        (*sa).user_port = u32::from(cfg.dns_port.to_be());
    }
    count(Counter::Redirected);
    ALLOW
}

/// Four separate 32-bit stores: the verifier refuses the context write a
/// copied array can compile to (a store through a moved pointer).
#[inline(always)]
unsafe fn set_ip6(sa: *mut aya_ebpf::bindings::bpf_sock_addr, ip: [u32; 4]) {
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip6[0], ip[0]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[1], ip[1]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[2], ip[2]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[3], ip[3]);
    }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn cp_sendmsg4(ctx: SockAddrContext) -> i32 {
    redirect_udp4(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn cp_sendmsg6(ctx: SockAddrContext) -> i32 {
    redirect_udp6(&ctx)
}

/// Re-keys a redirected socket's record by its local port, which is what
/// the gateway's `recvfrom()` shows.
#[cgroup_skb(egress)]
pub fn cp_dns_egress(ctx: SkBuffContext) -> i32 {
    let cfg = config();
    if cfg.dns_port == 0 {
        return 1;
    }
    let skb = ctx.skb.skb;
    // SAFETY: the verifier checks the pointer and the null test below.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 1;
    }
    let (dst_port, src_port) = unsafe { (u16::from_be((*sk).dst_port), (*sk).src_port) };
    if dst_port != cfg.dns_port {
        return 1;
    }
    let cookie = unsafe { bpf_get_socket_cookie(skb as *mut core::ffi::c_void) };
    if let Some(rec) = unsafe { DNS_PENDING.get(&cookie) } {
        // A full map leaves the datagram without a sender the gateway can
        // name; the gateway then drops it (fail closed).
        let _ = DNS_PEERS.insert(&src_port, rec, 0);
    }
    1
}

/// The source the job sees: the server it asked, not the gateway.
#[inline(always)]
fn restore4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let cfg = config();
    let (ip, port) = unsafe { ((*sa).user_ip4, u16::from_be((*sa).user_port as u16)) };
    if cfg.dns_port == 0 || ip != LOOPBACK_V4 || port != cfg.dns_port {
        return 1;
    }
    let cookie = unsafe { bpf_get_socket_cookie(sa as *mut core::ffi::c_void) };
    if let Some(rec) = unsafe { DNS_PENDING.get(&cookie) } {
        let a = rec.dst_addr;
        unsafe {
            (*sa).user_ip4 = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
            (*sa).user_port = u32::from(rec.dst_port.to_be());
        }
    }
    1
}

#[inline(always)]
fn restore6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let cfg = config();
    let (ip, port) = unsafe { ((*sa).user_ip6, u16::from_be((*sa).user_port as u16)) };
    if cfg.dns_port == 0 || port != cfg.dns_port || (ip != LOOPBACK_V6 && ip != LOOPBACK_V4_MAPPED)
    {
        return 1;
    }
    let cookie = unsafe { bpf_get_socket_cookie(sa as *mut core::ffi::c_void) };
    if let Some(rec) = unsafe { DNS_PENDING.get(&cookie) } {
        let a = rec.dst_addr;
        let word = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        unsafe {
            set_ip6(sa, [word(0), word(4), word(8), word(12)]);
            (*sa).user_port = u32::from(rec.dst_port.to_be());
        }
    }
    1
}

#[cgroup_sock_addr(recvmsg4)]
pub fn cp_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore4(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn cp_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore6(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn cp_getpeername4(ctx: SockAddrContext) -> i32 {
    restore4(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn cp_getpeername6(ctx: SockAddrContext) -> i32 {
    restore6(&ctx)
}
