//! One folder per protocol the gateway speaks. Each decodes before it
//! decides and refuses in the protocol's own terms. Plain TCP comes first:
//! bytes pass through once the connection itself is allowed; PostgreSQL
//! and DNS are decoded message by message; other UDP is relayed per flow.
pub mod dns;
pub mod postgres;
pub mod tcp;
pub mod udp;
