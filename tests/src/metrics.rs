//! Reading the gateway's Prometheus endpoint (`[daemon] metrics_listen`).
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};

/// `GET path` on 127.0.0.1:`port`: the status line and the body.
pub fn http_get(port: u16, path: &str) -> Result<(String, String)> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers")?;
    Ok((
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    ))
}

/// The value of the sample line that starts with `series` (name and labels).
pub fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The value of `series` in a successful scrape of `port`, if both are there.
pub fn scrape(port: u16, series: &str) -> Option<u64> {
    let (status, body) = http_get(port, "/metrics").ok()?;
    if !status.contains("200") {
        return None;
    }
    sample(&body, series)
}
