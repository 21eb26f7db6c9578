//! Re-keys a connect record by the client's (ip, port) when its handshake
//! completes. The callback runs before the client sends its final ACK, so
//! the record is in place before the gateway can `accept()` the connection.
use aya_ebpf::{
    bindings::BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, helpers::generated::bpf_get_socket_cookie,
    macros::sock_ops, programs::SockOpsContext,
};
use core::ptr::read_volatile;

use gateway_common::{AF_INET, ClientKey, mapped_v4, v6_bytes};

use crate::maps::{FLOWS, PENDING};

#[sock_ops]
pub fn cp_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        rekey(&ctx);
    }
    1
}

#[inline(always)]
fn rekey(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut core::ffi::c_void) };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(rec) = (unsafe { PENDING.get(&cookie) }).copied() else {
        return;
    };
    // Every context field is read unconditionally, each with its own
    // volatile load: otherwise LLVM merges the two branches' loads into one
    // computed context pointer, which the verifier rejects.
    let ops = ctx.ops;
    let (family, ip4, ip6, port) = unsafe {
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).local_ip4),
            [
                read_volatile(&(*ops).local_ip6[0]),
                read_volatile(&(*ops).local_ip6[1]),
                read_volatile(&(*ops).local_ip6[2]),
                read_volatile(&(*ops).local_ip6[3]),
            ],
            read_volatile(&(*ops).local_port),
        )
    };
    let addr = if family == u32::from(AF_INET) {
        mapped_v4(ip4)
    } else {
        v6_bytes(ip6)
    };
    let key = ClientKey {
        addr,
        port: port as u16,
        _pad: [0; 6],
    };
    // If the insert fails the gateway finds no record and refuses the
    // connection: fail closed.
    let _ = FLOWS.insert(&key, &rec, 0);
    let _ = PENDING.remove(&cookie);
}
