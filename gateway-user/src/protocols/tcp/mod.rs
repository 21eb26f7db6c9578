//! Plain TCP: allowed connections are spliced to the original destination
//! over an exempt socket; refused ones are reset.
mod passthrough;
mod upstream;

pub use passthrough::{Transferred, passthrough, refuse};
pub use upstream::connect_upstream;
