//! DNS mediation: a job's queries reach the gateway's forwarder, which
//! answers only names the job's rules allow (denied names get NXDOMAIN or
//! REFUSED), asks the configured upstream resolvers over exempt sockets,
//! records every question and answer, and remembers which names each job
//! resolved to which addresses ([`NameTable`]) so that targets can be
//! matched by host name.
//!
//! Queries arrive over UDP (port 53 datagrams, which the kernel sends to
//! the gateway's DNS listener; see `daemon/dns.rs`, bounded per job by
//! [`in_flight`]) and over TCP (any address, port 53, redirected like
//! every TCP connection: resolvers with `options use-vc`, large answers).
pub mod in_flight;
pub mod message;
mod names;
pub mod session;
mod upstream;

use std::sync::Arc;

pub use names::{MAX_NAMES_PER_ADDRESS, NameTable, UNKEPT};

use crate::policy::{DnsSettings, Mode, Policy};

/// What one DNS connection needs from the daemon.
pub struct DnsContext {
    pub settings: DnsSettings,
    pub policy: Arc<Policy>,
    pub names: Arc<NameTable>,
    /// `SO_MARK` of the gateway's upstream sockets.
    pub mark: u32,
    /// In audit mode a name policy denies is still answered (and the
    /// would-be denial logged and recorded).
    pub mode: Mode,
    pub job: Option<Arc<crate::identity::JobIdentity>>,
}
