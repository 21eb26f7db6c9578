//! `connect4`/`connect6`: record and redirect TCP (datagram sockets go to
//! [`crate::udp`]); `bind4`/`bind6`: keep the gateway's ports for the
//! gateway.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    },
    macros::cgroup_sock_addr,
    maps::HashMap,
    programs::SockAddrContext,
};
use gateway_common::{AF_INET, AF_INET6, COMM_LEN, Counter, FlowRecord, mapped_v4, v6_bytes};

use crate::{
    common::{
        ALLOW, DENY, IPPROTO_TCP, IPPROTO_UDP, LOOPBACK_V4, LOOPBACK_V4_MAPPED, LOOPBACK_V6,
        MAPPED_PREFIX, SOCK_DGRAM, SOCK_STREAM, config, foreign_netns, is_exempt,
    },
    maps::{PENDING, REACH, count},
    quota, reach, udp,
};

#[cgroup_sock_addr(connect4)]
pub fn cp_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let cfg = config();
    // SAFETY: the kernel hands us a valid bpf_sock_addr.
    let (ty, proto, dst_ip, dst_port) = unsafe {
        (
            (*sa).type_,
            (*sa).protocol,
            (*sa).user_ip4,
            u16::from_be((*sa).user_port as u16),
        )
    };
    // The namespace first: nothing in another namespace is the gateway's.
    if foreign_netns(&ctx, &cfg) {
        count(Counter::Denied);
        return DENY;
    }
    if is_exempt() {
        count(Counter::Exempt);
        return ALLOW;
    }
    if ty == SOCK_DGRAM && (proto == IPPROTO_UDP || proto == 0) {
        return udp::redirect_udp4(&ctx);
    }
    if ty != SOCK_STREAM || (proto != IPPROTO_TCP && proto != 0) {
        count(Counter::Denied);
        return DENY;
    }
    if dst_ip == LOOPBACK_V4 && dst_port == cfg.listen_port {
        return to_gateway(&ctx);
    }
    let dst = mapped_v4(dst_ip);
    if !reach::reachable(&REACH, dst, dst_port) {
        reach::report(&flow_record(&ctx, dst, dst_port, AF_INET));
        return DENY;
    }
    if !record(&ctx, dst, dst_port, AF_INET, &PENDING) {
        return DENY;
    }
    unsafe {
        (*sa).user_ip4 = LOOPBACK_V4;
        (*sa).user_port = u32::from(cfg.listen_port.to_be());
    }
    count(Counter::Redirected);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn cp_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let cfg = config();
    let (ty, proto, dst_ip, dst_port) = unsafe {
        (
            (*sa).type_,
            (*sa).protocol,
            (*sa).user_ip6,
            u16::from_be((*sa).user_port as u16),
        )
    };
    if foreign_netns(&ctx, &cfg) {
        count(Counter::Denied);
        return DENY;
    }
    if is_exempt() {
        count(Counter::Exempt);
        return ALLOW;
    }
    if ty == SOCK_DGRAM && (proto == IPPROTO_UDP || proto == 0) {
        return udp::redirect_udp6(&ctx);
    }
    if ty != SOCK_STREAM || (proto != IPPROTO_TCP && proto != 0) {
        count(Counter::Denied);
        return DENY;
    }
    let mapped = dst_ip[0] == MAPPED_PREFIX[0]
        && dst_ip[1] == MAPPED_PREFIX[1]
        && dst_ip[2] == MAPPED_PREFIX[2];
    // A mapped destination must stay mapped: the socket may be dual-stack
    // only because the job asked for it, and ::1 would change the family
    // the connection actually uses.
    let gateway = if mapped {
        LOOPBACK_V4_MAPPED
    } else {
        LOOPBACK_V6
    };
    if dst_port == cfg.listen_port && dst_ip == gateway {
        return to_gateway(&ctx);
    }
    let dst = v6_bytes(dst_ip);
    if !reach::reachable(&REACH, dst, dst_port) {
        reach::report(&flow_record(&ctx, dst, dst_port, AF_INET6));
        return DENY;
    }
    if !record(&ctx, dst, dst_port, AF_INET6, &PENDING) {
        return DENY;
    }
    unsafe {
        (*sa).user_ip6 = gateway;
        (*sa).user_port = u32::from(cfg.listen_port.to_be());
    }
    count(Counter::Redirected);
    ALLOW
}

/// A connect to the gateway's own listener passes only when it was
/// redirected there already (a second generation of these programs during
/// an upgrade sees the first one's rewrite; the socket has its record). A
/// job connecting there straight would get no record of its own, and the
/// gateway would take whatever stale record sits under its client port
/// (one a connect left while the gateway was down): someone else's
/// identity and destination.
#[inline(always)]
fn to_gateway(ctx: &SockAddrContext) -> i32 {
    // SAFETY: helper called with the program's own context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut core::ffi::c_void) };
    if unsafe { PENDING.get(&cookie) }.is_some() {
        return ALLOW;
    }
    count(Counter::Denied);
    DENY
}

/// Stores who is connecting where in `map`, keyed by socket cookie, and
/// charges it to the job's [`quota`]. Returns false when the record cannot
/// be stored or the job holds its share: the caller refuses the connect
/// rather than let through a connection the gateway could not attribute.
#[inline(always)]
pub fn record(
    ctx: &SockAddrContext,
    dst_addr: [u8; 16],
    dst_port: u16,
    family: u16,
    map: &HashMap<u64, FlowRecord>,
) -> bool {
    let rec = flow_record(ctx, dst_addr, dst_port, family);
    // A socket with a record already (a UDP socket's next datagram, a
    // connect tried again) replaces it under the charge it has; a process
    // of another job using the socket moves the charge to its job.
    // SAFETY: the cgroup id is copied out at once.
    let held = unsafe { map.get(&rec.cookie) }.map(|old| old.cgroup_id);
    let charge = held != Some(rec.cgroup_id);
    if charge && !quota::take(rec.cgroup_id) {
        count(Counter::JobQuota);
        return false;
    }
    if map.insert(&rec.cookie, &rec, 0).is_err() {
        if charge {
            quota::give_back(rec.cgroup_id);
        }
        count(Counter::RecordFailed);
        return false;
    }
    if charge && let Some(old) = held {
        quota::give_back(old);
    }
    true
}

/// Removes the record of `cookie` from `map` and gives its charge back.
#[inline(always)]
pub fn forget(map: &HashMap<u64, FlowRecord>, cookie: u64) {
    // SAFETY: the cgroup id is copied out before the remove.
    let Some(cgroup_id) = (unsafe { map.get(&cookie) }).map(|r| r.cgroup_id) else {
        return;
    };
    // Only the remove that took the record gives its charge back: the
    // egress program and this socket's release may race for it.
    if map.remove(&cookie).is_ok() {
        quota::give_back(cgroup_id);
    }
}

/// Who is connecting where.
#[inline(always)]
pub fn flow_record(
    ctx: &SockAddrContext,
    dst_addr: [u8; 16],
    dst_port: u16,
    family: u16,
) -> FlowRecord {
    let raw = ctx.sock_addr as *mut core::ffi::c_void;
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
    // SAFETY: helpers called with the program's own context pointer.
    let (cookie, netns_cookie, cgroup_id) = unsafe {
        (
            bpf_get_socket_cookie(raw),
            bpf_get_netns_cookie(raw),
            bpf_get_current_cgroup_id(),
        )
    };
    FlowRecord {
        cookie,
        created_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id,
        netns_cookie,
        dst_addr,
        dst_port,
        family,
        pid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        comm,
    }
}

/// While the gateway is down its ports are free; a job that bound one
/// would receive every redirected connection or query. Only the gateway
/// may bind them.
#[cgroup_sock_addr(bind4)]
pub fn cp_bind4(ctx: SockAddrContext) -> i32 {
    guard_gateway_port(ctx.sock_addr)
}

#[cgroup_sock_addr(bind6)]
pub fn cp_bind6(ctx: SockAddrContext) -> i32 {
    guard_gateway_port(ctx.sock_addr)
}

#[inline(always)]
fn guard_gateway_port(sa: *mut bpf_sock_addr) -> i32 {
    let cfg = config();
    let port = unsafe { u16::from_be((*sa).user_port as u16) };
    let ours = port == cfg.listen_port
        || (cfg.dns_port != 0 && port == cfg.dns_port)
        || (cfg.udp_port != 0 && port == cfg.udp_port);
    if !ours || is_exempt() {
        return ALLOW;
    }
    count(Counter::Denied);
    DENY
}
