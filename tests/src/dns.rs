//! A small authoritative DNS server on loopback (TCP, port 53) serving a fixed zone, and counting the questions that reach it.
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{Name, RData, Record, rdata},
};

/// Runs until the test process ends (the thread blocks in accept).
pub struct DnsServer {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
}

impl DnsServer {
    /// Serves `zone` (name → addresses, TTL 300) on `ip`:53; every other
    /// name is NXDOMAIN.
    pub fn start(ip: IpAddr, zone: &[(&str, &[IpAddr])]) -> Result<Self> {
        let addr = SocketAddr::new(ip, 53);
        let listener =
            TcpListener::bind(addr).with_context(|| format!("binding DNS server {addr}"))?;
        let zone: Arc<HashMap<String, Vec<IpAddr>>> = Arc::new(
            zone.iter()
                .map(|(n, ips)| (n.to_ascii_lowercase(), ips.to_vec()))
                .collect(),
        );
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = asked.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (zone, log) = (zone.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    loop {
                        let mut len = [0u8; 2];
                        if stream.read_exact(&mut len).is_err() {
                            return;
                        }
                        let mut query = vec![0; usize::from(u16::from_be_bytes(len))];
                        if stream.read_exact(&mut query).is_err() {
                            return;
                        }
                        let Some(answer) = answer(&zone, &log, &query) else {
                            return;
                        };
                        let mut out = (answer.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&answer);
                        if stream.write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self { addr, asked })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Names asked so far (lower-case, no trailing dot).
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn answer(
    zone: &HashMap<String, Vec<IpAddr>>,
    log: &Mutex<Vec<String>>,
    query: &[u8],
) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let q = query.queries().first()?.clone();
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    log.lock().unwrap().push(name.clone());
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true)
        .add_query(q.clone());
    match zone.get(&name) {
        None => {
            m.set_response_code(ResponseCode::NXDomain);
        }
        Some(ips) => {
            for ip in ips {
                let data = match (ip, q.query_type().to_string().as_str()) {
                    (IpAddr::V4(v4), "A") => RData::A(rdata::A(*v4)),
                    (IpAddr::V6(v6), "AAAA") => RData::AAAA(rdata::AAAA(*v6)),
                    _ => continue,
                };
                m.add_answer(Record::from_rdata(
                    Name::from_str(&format!("{name}.")).ok()?,
                    300,
                    data,
                ));
            }
        }
    }
    m.to_vec().ok()
}
