//! Turning an accepted connection into a [`Flow`]: the kernel's record of
//! who opened it and where it was going, read right after `accept()`.
pub mod automatic_ports;
mod listener;
mod record;

pub use listener::{BindError, Listeners, bind_listeners, bind_udp};
pub use record::{Flow, FlowError, recover};
