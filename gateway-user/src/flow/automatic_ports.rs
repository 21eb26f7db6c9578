//! Whether the kernel could hand one of the gateway's ports to a job.
//!
//! The bind hooks refuse a job's explicit bind of a gateway port, but a
//! `bind()` to port 0 takes whatever the kernel picks from
//! `net.ipv4.ip_local_port_range` (IPv6 uses the same range), and no hook
//! sees that choice in time. While the gateway is down, a job that drew
//! its listen port would receive every redirected connection. Ports
//! outside the range, or listed in `net.ipv4.ip_local_reserved_ports`, are
//! never drawn.
use std::ops::RangeInclusive;

const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The named ports (`("listen_port", 15001)`, ...) the kernel may pick as
/// automatic ports on this host, with what to do about it; `Ok(())` when
/// none. Port 0 entries (a listener that is off) are skipped.
pub fn check(ports: &[(&str, u16)]) -> Result<(), String> {
    let range = std::fs::read_to_string(RANGE).map_err(|e| format!("reading {RANGE}: {e}"))?;
    let range = parse_range(&range).ok_or_else(|| format!("{RANGE} holds {range:?}"))?;
    // Absent on kernels built without it: nothing is reserved then.
    let reserved = std::fs::read_to_string(RESERVED).unwrap_or_default();
    let reserved =
        parse_reserved(&reserved).ok_or_else(|| format!("{RESERVED} holds {reserved:?}"))?;
    let exposed: Vec<String> = ports
        .iter()
        .filter(|(_, port)| {
            *port != 0 && range.contains(port) && !reserved.iter().any(|r| r.contains(port))
        })
        .map(|(name, port)| format!("{name} {port}"))
        .collect();
    if exposed.is_empty() {
        return Ok(());
    }
    let ports: Vec<String> = ports
        .iter()
        .filter(|(_, p)| *p != 0 && range.contains(p))
        .map(|(_, p)| p.to_string())
        .collect();
    Err(format!(
        "{} in the kernel's automatic port range {}-{} ({RANGE}) and not reserved: while the gateway is down, a job binding port 0 could be given it and receive the redirected connections. Choose ports below {}, or reserve them: sysctl -w net.ipv4.ip_local_reserved_ports={} (and persist it in /etc/sysctl.d)",
        exposed.join(", "),
        range.start(),
        range.end(),
        range.start(),
        ports.join(","),
    ))
}

/// `"32768\t60999\n"`.
fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut fields = text.split_whitespace();
    let low = fields.next()?.parse().ok()?;
    let high = fields.next()?.parse().ok()?;
    fields.next().is_none().then_some(low..=high)
}

/// `"8080,9000-9100\n"`, or an empty line.
fn parse_reserved(text: &str) -> Option<Vec<RangeInclusive<u16>>> {
    let text = text.trim();
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|item| match item.split_once('-') {
            Some((low, high)) => Some(low.parse().ok()?..=high.parse().ok()?),
            None => {
                let port = item.parse().ok()?;
                Some(port..=port)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_formats() {
        assert_eq!(parse_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_range("32768\n"), None);
        assert_eq!(parse_reserved("\n"), Some(vec![]));
        assert_eq!(
            parse_reserved("8080,9000-9100\n"),
            Some(vec![8080..=8080, 9000..=9100])
        );
        assert_eq!(parse_reserved("80,x"), None);
    }

    #[test]
    fn this_hosts_range_is_read_and_judged() {
        let Ok(text) = std::fs::read_to_string(RANGE) else {
            return; // not Linux with /proc: nothing to read
        };
        let range = parse_range(&text).expect("the kernel's range parses");
        assert!(check(&[("listen_port", 0)]).is_ok(), "port 0 is off");
        if *range.start() > 1 {
            assert!(check(&[("listen_port", range.start() - 1)]).is_ok());
        }
        let reserved = std::fs::read_to_string(RESERVED).unwrap_or_default();
        let reserved = parse_reserved(&reserved).expect("reserved ports parse");
        if let Some(free) = range
            .clone()
            .find(|p| !reserved.iter().any(|r| r.contains(p)))
        {
            let err = check(&[("udp_port", free)]).expect_err("a port the kernel may draw");
            assert!(
                err.starts_with(&format!("udp_port {free} in the kernel's")),
                "{err}"
            );
        }
    }
}
