//! UDP. A datagram (`sendmsg`, or `connect` of a datagram socket) to port
//! 53 (any server, loopback stub resolvers included) is recorded by socket
//! cookie and redirected to the gateway's DNS listener. Any other
//! destination goes to the gateway's UDP relay when [`UDP_REACH`] says some
//! rule may allow it, and is refused otherwise.
//!
//! The egress program ([`crate::egress`]) tells the gateway who sent each
//! datagram it receives, once the socket's local port is known (a
//! connected socket gets it only after `connect4` ran): for DNS by that
//! port; for the relay by that port and a packet mark naming the (socket,
//! destination) pair, since one unconnected socket may send to several
//! destinations and the gateway must forward each datagram to its own. `recvmsg4/6`/`getpeername4/6`
//! put the original server back so clients that check where the answer
//! came from accept it.
use aya_ebpf::{
    bindings::bpf_sock,
    helpers::generated::bpf_get_socket_cookie,
    macros::cgroup_sock_addr,
    maps::HashMap,
    programs::{SkBuffContext, SockAddrContext},
};
use gateway_common::{
    AF_INET, AF_INET6, Counter, FlowRecord, GatewayConfig, UdpPeerKey, dns_tag, mapped_v4, udp_tag,
    v6_bytes,
};

use crate::{
    common::{
        ALLOW, DENY, DNS_PORT, ETH_P_IP_BE, ETH_P_IPV6_BE, IPPROTO_UDP, LOOPBACK_V4,
        LOOPBACK_V4_MAPPED, LOOPBACK_V6, MAPPED_PREFIX, config, is_exempt,
    },
    connect::{flow_record, record},
    maps::{DNS_PEERS, DNS_PENDING, UDP_PEERS, UDP_PENDING, UDP_REACH, count},
    reach::{reachable, report_udp},
};

/// Where a datagram to `dst` goes: the gateway port and the map its
/// record is kept in, or `None` to refuse it.
#[inline(always)]
fn route(
    cfg: &GatewayConfig,
    dst: [u8; 16],
    dst_port: u16,
    to_gateway: bool,
) -> Option<(u16, &'static HashMap<u64, FlowRecord>)> {
    // Straight to one of the gateway's UDP ports is refused: the gateway
    // names a datagram's sender by the record of a redirected socket, and
    // a socket that skipped the redirect has none of its own.
    if to_gateway && (dst_port == cfg.dns_port || dst_port == cfg.udp_port) {
        return None;
    }
    if cfg.dns_port != 0 && dst_port == DNS_PORT {
        return Some((cfg.dns_port, &DNS_PENDING));
    }
    if cfg.udp_port != 0 && reachable(&UDP_REACH, dst, dst_port) {
        return Some((cfg.udp_port, &UDP_PENDING));
    }
    None
}

/// UDP to an IPv4 destination (`sendmsg4`, or `connect4` of a datagram socket).
#[inline(always)]
pub fn redirect_udp4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let cfg = config();
    // SAFETY: the kernel hands us a valid bpf_sock_addr with its socket.
    let (dst_ip, dst_port) = unsafe { ((*sa).user_ip4, u16::from_be((*sa).user_port as u16)) };
    if is_exempt() {
        count(Counter::Exempt);
        return ALLOW;
    }
    let dst = mapped_v4(dst_ip);
    let Some(port) = admit(ctx, &cfg, (dst, dst_port, AF_INET), dst_ip == LOOPBACK_V4) else {
        return DENY;
    };
    unsafe {
        (*sa).user_ip4 = LOOPBACK_V4;
        (*sa).user_port = u32::from(port.to_be());
    }
    ALLOW
}

/// UDP to an IPv6 (or IPv4-mapped) destination.
#[inline(always)]
pub fn redirect_udp6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let cfg = config();
    let (dst_ip, dst_port) = unsafe { ((*sa).user_ip6, u16::from_be((*sa).user_port as u16)) };
    if is_exempt() {
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
    let dst = v6_bytes(dst_ip);
    let Some(port) = admit(ctx, &cfg, (dst, dst_port, AF_INET6), dst_ip == gateway) else {
        return DENY;
    };
    unsafe {
        set_ip6(sa, gateway);
        (*sa).user_port = u32::from(port.to_be());
    }
    ALLOW
}

/// Both families' decision once the destination is known: the gateway
/// port to rewrite it to, with the sender recorded, or `None` (refused,
/// counted and reported). Takes plain values only: the context loads
/// stay in each family's program, where the verifier accepts them.
#[inline(always)]
fn admit(
    ctx: &SockAddrContext,
    cfg: &GatewayConfig,
    (dst, dst_port, family): ([u8; 16], u16, u16),
    to_gateway: bool,
) -> Option<u16> {
    let Some((port, map)) = route(cfg, dst, dst_port, to_gateway) else {
        count(Counter::Denied);
        report_udp(&flow_record(ctx, dst, dst_port, family));
        return None;
    };
    if !record(ctx, dst, dst_port, family, map) {
        return None;
    }
    count(if port == cfg.dns_port {
        Counter::Redirected
    } else {
        Counter::UdpRelayed
    });
    Some(port)
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
    if crate::common::foreign_netns(&ctx, &config()) {
        count(Counter::Denied);
        return DENY;
    }
    redirect_udp4(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn cp_sendmsg6(ctx: SockAddrContext) -> i32 {
    if crate::common::foreign_netns(&ctx, &config()) {
        count(Counter::Denied);
        return DENY;
    }
    redirect_udp6(&ctx)
}

/// Names the sender of a datagram to one of the gateway's UDP ports (run
/// by the egress program for every packet of a guarded socket that is not
/// a TCP SYN): the DNS listener looks senders up by local port, the relay
/// by local port and this packet's mark.
#[inline(always)]
pub fn name_sender(ctx: &SkBuffContext, sk: *mut bpf_sock) {
    let cfg = config();
    if cfg.dns_port == 0 && cfg.udp_port == 0 {
        return;
    }
    let skb = ctx.skb.skb;
    // SAFETY: `sk` is the packet's socket, checked non-null by the caller.
    let (sk_dport, src_port) = unsafe { (u16::from_be((*sk).dst_port as u16), (*sk).src_port) };
    // The common case, every TCP segment included, leaves here: a
    // connected socket talking to something else. Unconnected sockets
    // (port 0) name their destination per datagram, in the packet.
    if sk_dport != 0 && sk_dport != cfg.dns_port && sk_dport != cfg.udp_port {
        return;
    }
    let Some(dst_port) = udp_dst_port(ctx) else {
        return;
    };
    let cookie = unsafe { bpf_get_socket_cookie(skb as *mut core::ffi::c_void) };
    if dst_port == cfg.dns_port {
        if let Some(rec) = unsafe { DNS_PENDING.get(&cookie) } {
            // The mark names the socket, so a datagram from another socket
            // on the same port (another local address) cannot pass for this one.
            unsafe { (*skb).mark = dns_tag(rec.cookie) };
            // A full map leaves the datagram without a sender the gateway
            // can name; the gateway then drops it (fail closed).
            let _ = DNS_PEERS.insert(&src_port, rec, 0);
        }
    } else if dst_port == cfg.udp_port
        && let Some(rec) = unsafe { UDP_PENDING.get(&cookie) }
    {
        // `sendmsg4/6` wrote this socket's record in the same system call,
        // so it holds this datagram's destination.
        let tag = udp_tag(rec.cookie, &rec.dst_addr, rec.dst_port);
        unsafe { (*skb).mark = tag };
        let _ = UDP_PEERS.insert(
            &UdpPeerKey {
                port: src_port,
                tag,
            },
            rec,
            0,
        );
    }
}

/// The destination port of a UDP packet (IPv4, or IPv6 without extension
/// headers: the egress program drops a guarded socket's packets that carry
/// any before this runs).
#[inline(always)]
fn udp_dst_port(ctx: &SkBuffContext) -> Option<u16> {
    let proto = unsafe { (*ctx.skb.skb).protocol };
    let offset = if proto == ETH_P_IP_BE {
        let version_ihl: u8 = ctx.load(0).ok()?;
        let l4: u8 = ctx.load(9).ok()?;
        if u32::from(l4) != IPPROTO_UDP {
            return None;
        }
        usize::from(version_ihl & 0x0f) * 4
    } else if proto == ETH_P_IPV6_BE {
        let next: u8 = ctx.load(6).ok()?;
        if u32::from(next) != IPPROTO_UDP {
            return None;
        }
        40
    } else {
        return None;
    };
    let port: u16 = ctx.load(offset + 2).ok()?;
    Some(u16::from_be(port))
}

/// The records of sockets whose datagrams went to the gateway port `port`.
#[inline(always)]
fn restored_from(cfg: &GatewayConfig, port: u16) -> Option<&'static HashMap<u64, FlowRecord>> {
    if cfg.dns_port != 0 && port == cfg.dns_port {
        Some(&DNS_PENDING)
    } else if cfg.udp_port != 0 && port == cfg.udp_port {
        // An unconnected socket talking to several destinations sees
        // every answer come from the latest one it sent to.
        Some(&UDP_PENDING)
    } else {
        None
    }
}

/// The source the job sees: the server it asked, not the gateway.
#[inline(always)]
fn restore4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let cfg = config();
    let (ip, port) = unsafe { ((*sa).user_ip4, u16::from_be((*sa).user_port as u16)) };
    if ip != LOOPBACK_V4 {
        return 1;
    }
    let Some(map) = restored_from(&cfg, port) else {
        return 1;
    };
    let cookie = unsafe { bpf_get_socket_cookie(sa as *mut core::ffi::c_void) };
    if let Some(rec) = unsafe { map.get(&cookie) } {
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
    if ip != LOOPBACK_V6 && ip != LOOPBACK_V4_MAPPED {
        return 1;
    }
    let Some(map) = restored_from(&cfg, port) else {
        return 1;
    };
    let cookie = unsafe { bpf_get_socket_cookie(sa as *mut core::ffi::c_void) };
    if let Some(rec) = unsafe { map.get(&cookie) } {
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
