//! Removes a socket's records when it is closed, whether or not the gateway
//! ever consumed them (refused connects, clients that close before accept).
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock, programs::SockContext,
};

use crate::{
    common::ALLOW,
    maps::{FLOWS, KEYS, PENDING},
};

#[cgroup_sock(sock_release)]
pub fn cp_sock_release(ctx: SockContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock as *mut core::ffi::c_void) };
    let _ = PENDING.remove(&cookie);
    if let Some(key) = unsafe { KEYS.get(&cookie) }.copied() {
        // The client port may already belong to a newer socket's record;
        // only remove the entry this socket created.
        if let Some(rec) = unsafe { FLOWS.get(&key) }
            && rec.cookie == cookie
        {
            let _ = FLOWS.remove(&key);
        }
        let _ = KEYS.remove(&cookie);
    }
    ALLOW
}
