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
mod protocol;
mod server;

pub use client::call;
pub use protocol::{AdminRequest, AdminResponse};
pub use server::{AdminSocket, serve_connection};
