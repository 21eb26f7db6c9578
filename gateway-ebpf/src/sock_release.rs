//! Removes a socket's connect record when it is closed before it sent its
//! SYN (refused or failed connects), so the map never fills.
//!
//! The hook runs before the protocol's close, so a TCP socket still has the
//! state it had in use. Only a socket that never got past `SYN_SENT` can
//! still hold a record in [`PENDING`]: any later state means its SYN left,
//! and the egress program moved the record then. Skipping the delete for
//! those saves a bucket lookup and lock on every connection that worked.
//!
//! The re-keyed record is left alone: a client may write and close before
//! the gateway has accepted its connection, and the gateway still needs
//! the record to forward those bytes. (This hook could not find it anyway:
//! it may not read the socket's local address.) The gateway removes it
//! when it takes it, and sweeps records nobody took by age: those of
//! connects refused while the gateway was down, or abandoned mid-handshake.
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock, programs::SockContext,
};

use crate::{
    common::{ALLOW, SOCK_STREAM, TCP_CLOSE, TCP_SYN_SENT},
    connect::forget,
    maps::{DNS_PENDING, PENDING, UDP_PENDING},
};

#[cgroup_sock(sock_release)]
pub fn cp_sock_release(ctx: SockContext) -> i32 {
    let cookie = || unsafe { bpf_get_socket_cookie(ctx.sock as *mut core::ffi::c_void) };
    // Only the maps a socket of this type can have a record in: a lookup
    // of a missing key still hashes and walks a bucket, and this runs for
    // every guarded socket. A record found gives its job's share back.
    let (ty, state) = unsafe { ((*ctx.sock).type_, (*ctx.sock).state) };
    if ty == SOCK_STREAM {
        // SYN_SENT too: a SYN whose first transmission failed before the
        // egress hook is retransmitted later, and the socket may close first.
        if state == TCP_CLOSE || state == TCP_SYN_SENT {
            forget(&PENDING, cookie());
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
