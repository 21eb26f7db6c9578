//! Free listen ports and unique instance names, so tests running in parallel never share either.
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Result, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A port free on both 127.0.0.1 and [::1], for a gateway listener.
///
/// Taken below the kernel's ephemeral range: a port handed out by `bind(0)`
/// could be picked again as the source port of one of the thousands of
/// client connections other tests make before the gateway binds it.
pub fn gateway_port() -> Result<u16> {
    let low = ephemeral_low().min(32768);
    let span = u32::from(low.saturating_sub(20000)).max(1);
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..2000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20000 + ((seed.wrapping_add(n.wrapping_mul(104_729))) % span) as u16;
        if free_on_both(port) {
            return Ok(port);
        }
    }
    bail!("no free port below {low} on both 127.0.0.1 and [::1]")
}

fn free_on_both(port: u16) -> bool {
    let v4 = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    let v6 = TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port)));
    v4.is_ok() && v6.is_ok()
}

fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768)
}

/// A `[daemon] instance` name unique to this test process and call,
/// within the daemon's `[a-z0-9_-]{1,32}`; `hint` keeps it readable in
/// `/sys/fs/bpf/chokepoint/`.
pub fn instance_name(hint: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let hint: String = hint
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("t{}-{n}-{hint}", std::process::id());
    name.truncate(32);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_valid_and_unique() {
        let a = instance_name("Hot Reload: a very long hint that overflows");
        let b = instance_name("Hot Reload: a very long hint that overflows");
        assert_ne!(a, b);
        for name in [a, b] {
            assert!(name.len() <= 32, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            );
        }
    }
}
