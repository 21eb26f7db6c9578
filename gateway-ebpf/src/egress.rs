//! `cgroup_skb` egress: every packet a guarded socket sends passes here,
//! with the socket's addresses final, so this is where records are re-keyed
//! by what the gateway will see of the sender.
//!
//! A TCP socket's first SYN moves its connect record to [`FLOWS`] under the
//! client's (ip, port), which is all the gateway learns from `accept()`;
//! the SYN leaves within `connect()`, so the record is there long before the
//! handshake completes. Datagrams go to [`crate::udp::name_sender`].
//!
//! This replaces a `sock_ops` program that did the move at
//! ACTIVE_ESTABLISHED: the kernel calls a `sock_ops` program about six
//! times per connection whatever it does, which cost more than the move.
//!
//! The record in [`FLOWS`] stays charged to its job's
//! [`quota`](crate::quota) until the socket is released, and
//! [`HANDSHAKES`] remembers where it went: a socket released before its
//! handshake completed (its SYN dropped, by a `TCP_MD5SIG` option the
//! listener refuses, or the socket closed at once) takes its record out of
//! [`FLOWS`] with it (see [`crate::sock_release`]), since the gateway will
//! never accept that connection. Before, such records stayed for the
//! gateway's age sweep outside any share, and one job could fill the map
//! every job needs. What is left to the sweep: a record whose client saw
//! the handshake complete but the gateway never accepted (its accept queue
//! overflowed).
//!
//! It is also the one hook that sees sockets no connect or send hook
//! does: connections a job accepted. With `[guard] loopback_clients_only`
//! a TCP socket's packets for anywhere but loopback are dropped (every
//! connection a job opens goes to the gateway on loopback), so a job
//! cannot listen on a routable address and hand data to whoever connects
//! from outside. Only TCP stream sockets: the kernel's own control
//! sockets (RSTs, ICMP, IPv6 neighbour discovery) must keep working, and
//! datagrams pass the send hooks already. Off by default, because with
//! the cgroup2 root guarded it would cut off the host's own servers.
use aya_ebpf::{
    bindings::bpf_sock,
    helpers::generated::{bpf_get_socket_cookie, bpf_sk_fullsock, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use core::ptr::read_volatile;
use gateway_common::{AF_INET, ClientKey, Handshake, mapped_v4, v6_bytes};

use crate::{
    common::{ETH_P_IP_BE, ETH_P_IPV6_BE, IPPROTO_TCP, SOCK_STREAM, TCP_SYN_SENT, config},
    maps::{FLOWS, HANDSHAKES, PENDING, count},
    udp,
};
use gateway_common::Counter;

#[cgroup_skb(egress)]
pub fn cp_egress(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the verifier checks the pointer and the null test below.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 1;
    }
    // The gateway's own (exempt) sockets never set a source route either,
    // so no socket here needs one.
    if routes_elsewhere(&ctx) {
        count(Counter::Denied);
        return 0;
    }
    if config().loopback_clients_only != 0
        && tcp_stream(sk)
        && leaves_loopback(&ctx)
        && !gateway_socket(&ctx)
    {
        count(Counter::Denied);
        return 0;
    }
    // Only TCP has this state (UDP sockets are ESTABLISHED or CLOSE).
    if unsafe { read_volatile(&(*sk).state) } == TCP_SYN_SENT {
        rekey(&ctx, sk);
    } else {
        udp::name_sender(&ctx, sk);
    }
    1
}

/// A packet whose route another address decides than its destination:
/// IPv4 with options (IP_OPTIONS with a loose or strict source route needs
/// no privilege, and the kernel routes to the route's first hop, not to
/// the gateway address connect4/sendmsg4 wrote), or IPv6 with an extension
/// header before its payload (IPV6_RTHDR needs none either). Guarded
/// sockets never need either; dropping them makes the send fail (EPERM)
/// instead of leaving the host towards the hop.
#[inline(always)]
fn routes_elsewhere(ctx: &SkBuffContext) -> bool {
    // SAFETY: the context's skb is valid for the program's run.
    let protocol = unsafe { read_volatile(&(*ctx.skb.skb).protocol) };
    if protocol == ETH_P_IP_BE {
        // Version and header length (in words): 0x45 without options.
        return ctx.load::<u8>(0).map_or(true, |b| b & 0x0f != 5);
    }
    if protocol == ETH_P_IPV6_BE {
        // Next header: TCP, UDP, a fragment (no routing header can follow
        // one) or ICMPv6.
        return ctx
            .load::<u8>(6)
            .map_or(true, |next| !matches!(next, 6 | 17 | 44 | 58));
    }
    false
}

/// A TCP stream socket (not a kernel control socket, which is raw).
#[inline(always)]
fn tcp_stream(sk: *mut bpf_sock) -> bool {
    // The verifier knows the packet's socket as the common part only;
    // type and protocol need the full socket.
    // SAFETY: `sk` is the packet's socket, checked non-null by the caller.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return false;
    }
    let (ty, protocol) = unsafe {
        (
            read_volatile(&(*full).type_),
            read_volatile(&(*full).protocol),
        )
    };
    ty == SOCK_STREAM && protocol == IPPROTO_TCP
}

/// A packet for an address other than loopback (127.0.0.0/8, ::1).
/// IPv4-mapped destinations of a dual-stack socket leave as IPv4 packets,
/// so IPv6 needs no mapped form here.
#[inline(always)]
fn leaves_loopback(ctx: &SkBuffContext) -> bool {
    // SAFETY: the context's skb is valid for the program's run.
    let protocol = unsafe { read_volatile(&(*ctx.skb.skb).protocol) };
    if protocol == ETH_P_IP_BE {
        return ctx.load::<u8>(16).map_or(true, |first| first != 127);
    }
    if protocol == ETH_P_IPV6_BE {
        return ctx
            .load::<[u8; 16]>(24)
            .map_or(true, |dst| dst != LOOPBACK_V6_BYTES);
    }
    false
}

const LOOPBACK_V6_BYTES: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Whether the packet's socket was made by the gateway itself, when it
/// runs inside the tree it guards: its upstream connections leave for
/// real destinations. By the socket's cgroup, not the current task's:
/// this hook may run in softirq context.
#[inline(always)]
fn gateway_socket(ctx: &SkBuffContext) -> bool {
    // SAFETY: helper called with the program's own context pointer.
    crate::common::is_exempt_id(unsafe { bpf_skb_cgroup_id(ctx.skb.skb) })
}

#[inline(always)]
fn rekey(ctx: &SkBuffContext, sk: *mut bpf_sock) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut core::ffi::c_void) };
    // SAFETY: the value is copied out before the entry is removed. A
    // retransmitted SYN finds nothing: the record has moved.
    let Some(rec) = (unsafe { PENDING.get(&cookie) }).copied() else {
        return;
    };
    let key = client_key(sk);
    // If the insert fails the gateway finds no record and refuses the
    // connection: fail closed.
    let _ = FLOWS.insert(&key, &rec, 0);
    // Only the remove that took the record moves its charge: the socket's
    // release may race for it.
    if PENDING.remove(&cookie).is_err() {
        return;
    }
    let handshake = Handshake {
        client: key,
        cgroup_id: rec.cgroup_id,
    };
    // A socket connecting again (after a refused or abandoned connect)
    // holds one charge already, and may have left a record under another
    // client key: keep one charge, and no record the gateway will not take.
    // SAFETY: copied out at once.
    let earlier = unsafe { HANDSHAKES.get(&cookie) }.copied();
    if HANDSHAKES.insert(&cookie, &handshake, 0).is_err() {
        // No room to find the record at release: it waits for the sweep,
        // as every record did before the charge was kept.
        crate::quota::give_back(rec.cgroup_id);
        return;
    }
    if let Some(earlier) = earlier {
        if earlier.client != key {
            forget_flow(&earlier.client, cookie);
        }
        crate::quota::give_back(earlier.cgroup_id);
    }
}

/// Removes the record under `client` if it is socket `cookie`'s: a later
/// connection from the same client port may have replaced it.
#[inline(always)]
pub fn forget_flow(client: &ClientKey, cookie: u64) {
    // SAFETY: the cookie is compared before the entry is removed.
    if unsafe { FLOWS.get(client) }.is_some_and(|r| r.cookie == cookie) {
        let _ = FLOWS.remove(client);
    }
}

/// The gateway's key for this socket's client end: its local address
/// (IPv4 as mapped) and port.
#[inline(always)]
fn client_key(sk: *const bpf_sock) -> ClientKey {
    // Every field read unconditionally, each with its own volatile load:
    // otherwise LLVM merges the two branches' loads into one computed
    // context pointer, which the verifier rejects.
    let (family, ip4, ip6, port) = unsafe {
        (
            read_volatile(&(*sk).family),
            read_volatile(&(*sk).src_ip4),
            [
                read_volatile(&(*sk).src_ip6[0]),
                read_volatile(&(*sk).src_ip6[1]),
                read_volatile(&(*sk).src_ip6[2]),
                read_volatile(&(*sk).src_ip6[3]),
            ],
            read_volatile(&(*sk).src_port),
        )
    };
    let addr = if family == u32::from(AF_INET) {
        mapped_v4(ip4)
    } else {
        v6_bytes(ip6)
    };
    ClientKey {
        addr,
        port: port as u16,
        _pad: [0; 6],
    }
}
