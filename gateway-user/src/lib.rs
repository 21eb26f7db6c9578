//! Chokepoint's user side: the gateway daemon and its command line.
//!
//! The folders are the architecture (see `ARCHITECTURE.md`):
//!
//! * [`ebpf`] loads, attaches, pins and detaches the kernel programs and is
//!   the only module that touches aya;
//! * [`flow`] turns an accepted connection into a [`flow::Flow`]: who opened
//!   it and where it was going, as the kernel recorded it;
//! * [`identity`] validates the CI provider's OIDC tokens and binds their
//!   claims to the job's cgroup;
//! * [`job_budget`] bounds the bytes one job's connections make the
//!   gateway hold in partly received messages;
//! * [`policy`] is the TOML model, its loading with precise errors, and the
//!   pure evaluation of a flow against it;
//! * [`protocols`] holds one folder per protocol the gateway speaks (plain
//!   TCP passthrough first);
//! * [`masking`] rewrites sensitive result values;
//! * [`recording`] writes each session as a hash-chained, sealed log;
//! * [`approvals`] holds a statement until an approver decides, and
//!   [`store`] keeps the requests (files, or PostgreSQL for a fleet);
//! * [`admin`] is the Unix-socket API the CLI uses, callers identified by
//!   their peer credentials;
//! * [`daemon`] wires them together for `chokepoint run`;
//! * [`cli`] is the clap command line;
//! * [`regular_file`] reads files that must not be FIFOs or devices.
pub mod admin;
pub mod approvals;
pub mod cli;
pub mod daemon;
pub mod ebpf;
pub mod flow;
pub mod identity;
pub mod job_budget;
pub mod masking;
pub mod policy;
pub mod protocols;
pub mod recording;
pub mod regular_file;
pub mod store;
