//! The admin API: a Unix socket (`/run/chokepoint/admin.sock`) speaking one
//! JSON request and one JSON answer per connection. The caller is whoever
//! the kernel says is on the other end (`SO_PEERCRED`), never what the
//! request claims.
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! use chokepoint::admin::{AdminRequest, call};
//! let answer = call("/run/chokepoint/admin.sock".as_ref(), &AdminRequest::ApprovalsList { all: false }).await?;
//! for request in answer.requests {
//!     println!("{} {}", request.id, request.statement);
//! }
//! # Ok(()) }
//! ```
mod client;
pub mod metrics;
mod protocol;
mod server;

use std::sync::Arc;

pub use client::call;
pub use protocol::{AdminRequest, AdminResponse, JobInfo};
pub use server::{AdminSocket, serve_connection};

use crate::{approvals::Approvals, identity::Jobs};

/// What the admin API serves: the bound socket and the services behind it.
pub struct AdminContext {
    pub socket: AdminSocket,
    pub approvals: Arc<Approvals>,
    pub jobs: Arc<Jobs>,
}

impl AdminContext {
    /// The services, for one connection's task.
    pub fn handles(&self) -> AdminHandles {
        AdminHandles {
            approvals: self.approvals.clone(),
            jobs: self.jobs.clone(),
        }
    }
}

/// The services one admin connection may call.
#[derive(Clone)]
pub struct AdminHandles {
    pub approvals: Arc<Approvals>,
    pub jobs: Arc<Jobs>,
}
