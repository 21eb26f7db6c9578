//! Removes a socket's connect record when it is closed before its SYN
//! moved it (refused or failed connects, and connects that never send one:
//! `TCP_REPAIR` sockets go ESTABLISHED without a SYN), so the map never
//! fills and the job's [`quota`](crate::quota) share comes back.
//!
//! A re-keyed record ([`HANDSHAKES`] says where it went) is removed only if
//! the socket is still in SYN_SENT, or CLOSE (disconnected while
//! connecting): the gateway will never accept that connection. Once the
//! handshake completed it is left alone: a client may
//! write and close before the gateway has accepted its connection, and the
//! gateway still needs the record to forward those bytes. The gateway
//! removes it when it takes it, and sweeps records nobody took by age
//! (those of connects refused while the gateway was down). Either way the
//! socket's charge comes back here.
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock, programs::SockContext,
};

use crate::{
    common::{ALLOW, SOCK_STREAM, TCP_CLOSE, TCP_SYN_SENT},
    connect::forget,
    egress::forget_flow,
    maps::{DNS_PENDING, HANDSHAKES, PENDING, UDP_PENDING},
};

#[cgroup_sock(sock_release)]
pub fn cp_sock_release(ctx: SockContext) -> i32 {
    let cookie = || unsafe { bpf_get_socket_cookie(ctx.sock as *mut core::ffi::c_void) };
    // Only the maps a socket of this type can have a record in: a lookup
    // of a missing key still hashes and walks a bucket, and this runs for
    // every guarded socket. A record found gives its job's share back.
    let ty = unsafe { (*ctx.sock).type_ };
    if ty == SOCK_STREAM {
        // Whatever the state: a socket in TCP_REPAIR mode connects
        // (ESTABLISHED) without sending a SYN, so the egress program never
        // moves its record. The lookup costs no lock when it finds nothing.
        let cookie = cookie();
        forget(&PENDING, cookie);
        // SAFETY: copied out before the entry is removed.
        if let Some(h) = unsafe { HANDSHAKES.get(&cookie) }.copied()
            && HANDSHAKES.remove(&cookie).is_ok()
        {
            // Still connecting, or disconnected while connecting (found in
            // review: `shutdown` of a socket in SYN_SENT leaves it CLOSE):
            // the gateway will never accept it. A connection reset after
            // it was established is CLOSE too; the gateway took its record
            // at accept, or has a dead connection to refuse.
            let state = unsafe { core::ptr::read_volatile(&(*ctx.sock).state) };
            if state == TCP_SYN_SENT || state == TCP_CLOSE {
                forget_flow(&h.client, cookie);
            }
            crate::quota::give_back(h.cgroup_id);
        }
    } else {
        // The port-keyed DNS and relay entries stay (this hook cannot read
        // the port): the next socket to send from the port overwrites them
        // before its first datagram leaves.
        let cookie = cookie();
        forget(&DNS_PENDING, cookie);
        forget(&UDP_PENDING, cookie);
    }
    ALLOW
}
