//! Cancel keys: each client gets the gateway's own (pid, secret) pair, so a
//! job never learns the real backend's key, and a cancel it sends through
//! the gateway is forwarded to the backend its session uses.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use crate::protocols::tcp::connect_upstream;

/// Where a cancel for one client session must go.
#[derive(Clone, Copy, Debug)]
pub struct BackendKey {
    pub upstream: SocketAddr,
    pub pid: i32,
    pub secret: i32,
}

/// Gateway-issued keys of live sessions.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<(i32, i32), BackendKey>>,
}

/// Removes the session's key when the session ends.
pub struct CancelGuard {
    registry: Arc<CancelRegistry>,
    key: (i32, i32),
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
    }
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, i32), BackendKey>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues a fresh random key for `backend`. `None` without an entropy
    /// source: a fixed key would let any job cancel another's queries, and
    /// (found in review) the search for an unused one would never end,
    /// holding the lock every new session needs.
    pub fn register(self: &Arc<Self>, backend: BackendKey) -> Option<((i32, i32), CancelGuard)> {
        let mut keys = self.lock();
        // 63 random bits: a collision with a live key is all but impossible,
        // so a few draws are plenty.
        let key = (0..8).find_map(|_| {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).ok()?;
            let pid = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]) & i32::MAX;
            let key = (pid, i32::from_ne_bytes([b[4], b[5], b[6], b[7]]));
            (!keys.contains_key(&key)).then_some(key)
        })?;
        keys.insert(key, backend);
        Some((
            key,
            CancelGuard {
                registry: self.clone(),
                key,
            },
        ))
    }

    /// Forwards a client's CancelRequest to the real backend. Unknown keys
    /// are ignored, as PostgreSQL itself does (no oracle for guessing).
    pub async fn forward(&self, pid: i32, secret: i32, mark: u32) {
        let Some(backend) = self.lock().get(&(pid, secret)).copied() else {
            warn!(pid, "cancel request with an unknown key ignored");
            return;
        };
        let mut buf = BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(backend.pid, backend.secret, &mut buf);
        match connect_upstream(backend.upstream, mark).await {
            Ok(mut stream) => {
                if let Err(e) = stream.write_all(&buf).await {
                    warn!(error = %e, "forwarding cancel request failed");
                } else {
                    info!(upstream = %backend.upstream, "cancel request forwarded");
                }
            }
            Err(e) => {
                warn!(error = %e, upstream = %backend.upstream, "cannot reach upstream to cancel")
            }
        }
    }
}

pub(crate) fn random_i32() -> i32 {
    let mut b = [0u8; 4];
    // getrandom only fails without an entropy source; a fixed key then
    // still works, it is merely guessable, so log loudly rather than abort.
    if getrandom::fill(&mut b).is_err() {
        warn!("no entropy source for cancel keys");
    }
    i32::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_released() {
        let registry = Arc::new(CancelRegistry::default());
        let backend = BackendKey {
            upstream: "127.0.0.1:5432".parse().unwrap(),
            pid: 7,
            secret: 9,
        };
        let (a, guard_a) = registry.register(backend).unwrap();
        let (b, _guard_b) = registry.register(backend).unwrap();
        assert_ne!(a, b);
        assert!(a.0 >= 0);
        drop(guard_a);
        assert!(registry.lock().get(&a).is_none());
        assert!(registry.lock().get(&b).is_some());
    }
}
