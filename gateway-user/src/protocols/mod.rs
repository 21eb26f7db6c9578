//! One folder per protocol the gateway speaks. Each decodes before it
//! decides and refuses in the protocol's own terms. Plain TCP comes first:
//! bytes pass through once the connection itself is allowed.
pub mod postgres;
pub mod tcp;
