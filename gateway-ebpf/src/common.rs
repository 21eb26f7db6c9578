//! Load-time configuration and verdict constants.
use gateway_common::GatewayConfig;

/// Filled in by the loader (`EbpfLoader::set_global`); read-only, so the
/// verifier treats it as a constant.
#[unsafe(no_mangle)]
static CP_CONFIG: GatewayConfig = GatewayConfig {
    listen_port: 0,
    dns_port: 0,
    udp_port: 0,
    loopback_clients_only: 0,
    _pad: [0; 9],
    netns_cookie: 0,
};

#[inline(always)]
pub fn config() -> GatewayConfig {
    // Volatile: otherwise the compiler folds the zero initialiser.
    unsafe { core::ptr::read_volatile(&CP_CONFIG) }
}

/// Return value of cgroup programs that lets the operation proceed.
pub const ALLOW: i32 = 1;
/// Return value of cgroup programs that fails the operation with `EPERM`.
pub const DENY: i32 = 0;

pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;

/// `TCP_SYN_SENT` of the kernel's socket states.
pub const TCP_SYN_SENT: u32 = 2;
/// `TCP_CLOSE`: never connected, or disconnected (`shutdown` or
/// `connect(AF_UNSPEC)` of a connecting socket, a connect that timed out).
pub const TCP_CLOSE: u32 = 7;

/// The DNS port every resolver listens on.
pub const DNS_PORT: u16 = 53;

/// `ETH_P_IP` / `ETH_P_IPV6` as `__sk_buff.protocol` holds them (network order).
pub const ETH_P_IP_BE: u32 = (0x0800u16).to_be() as u32;
pub const ETH_P_IPV6_BE: u32 = (0x86DDu16).to_be() as u32;

/// Whether the socket of a `sock_addr` program lives in another network
/// namespace than the gateway (see [`GatewayConfig::netns_cookie`]).
#[inline(always)]
pub fn foreign_netns(ctx: &aya_ebpf::programs::SockAddrContext, cfg: &GatewayConfig) -> bool {
    // SAFETY: helper called with the program's own context pointer.
    cfg.netns_cookie != 0
        && unsafe {
            aya_ebpf::helpers::generated::bpf_get_netns_cookie(
                ctx.sock_addr as *mut core::ffi::c_void,
            )
        } != cfg.netns_cookie
}

/// Whether the task doing this socket operation is the gateway itself
/// (see [`crate::maps::EXEMPT`]). Only for hooks that run in the calling
/// task (`sock_addr`), never in softirq context.
#[inline(always)]
pub fn is_exempt() -> bool {
    // SAFETY: a helper without arguments.
    is_exempt_id(unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() })
}

/// Whether `cgroup_id` is the gateway's own cgroup.
#[inline(always)]
pub fn is_exempt_id(cgroup_id: u64) -> bool {
    crate::maps::EXEMPT
        .get(0)
        .is_some_and(|&id| id != 0 && id == cgroup_id)
}

/// `127.0.0.1` as the kernel's network-order `u32`.
pub const LOOPBACK_V4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// `::1` as the kernel's network-order words.
pub const LOOPBACK_V6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
/// `::ffff:127.0.0.1` as the kernel's network-order words.
pub const LOOPBACK_V4_MAPPED: [u32; 4] = [
    0,
    0,
    u32::from_ne_bytes([0, 0, 0xff, 0xff]),
    u32::from_ne_bytes([127, 0, 0, 1]),
];
/// First three words of an IPv4-mapped address.
pub const MAPPED_PREFIX: [u32; 3] = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff])];
