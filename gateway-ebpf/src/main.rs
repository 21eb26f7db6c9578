//! Chokepoint's kernel side: cgroup programs that make the gateway the only
//! way out of a guarded cgroup.
//!
//! * [`connect`]: TCP `connect()` is recorded and redirected to the gateway,
//!   or refused at once when [`reach`] says no rule could allow it;
//!   binding the gateway's ports is refused so a job cannot impersonate a
//!   stopped gateway.
//! * [`udp`]: UDP to port 53 goes to the gateway's DNS listener, UDP to a
//!   destination some rule may allow to its UDP relay (either way the
//!   answer seems to come from the server asked); all other UDP is refused.
//! * [`egress`]: a TCP client's SYN re-keys its record by the client's
//!   (ip, port), which is all the gateway learns from `accept()`; datagrams
//!   to the gateway are attributed to their sender.
//! * [`sock_create`]: only TCP stream and UDP datagram inet sockets may exist.
//! * [`socket_family`]: no sockets of other families but local ones (an
//!   LSM hook: the cgroup socket hooks see inet sockets only).
//! * [`sock_release`]: records die with their socket, so maps never fill;
//!   [`quota`] keeps one job from filling them while its sockets live.
//!
//! Every program lets the gateway's own sockets through when they carry the
//! configured `SO_MARK` (setting it needs `CAP_NET_ADMIN`).
#![no_std]
#![no_main]
// `asm!` for BPF: see `quota::add`.
#![feature(asm_experimental_arch)]

mod common;
mod connect;
mod egress;
mod maps;
mod quota;
mod reach;
mod sock_create;
mod sock_release;
mod socket_family;
mod udp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // BPF programs cannot unwind; the verifier rejects code that can reach here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
