//! Plain TCP: allowed connections are spliced to the original destination
//! over an exempt socket; refused ones are reset.
mod passthrough;
mod splice;
#[cfg(test)]
mod tests;
mod upstream;

pub use passthrough::{Interrupted, Transferred, passthrough, refuse};
pub use upstream::connect_upstream;
