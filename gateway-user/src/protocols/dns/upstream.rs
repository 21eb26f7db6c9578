//! Asking the configured resolvers, over TCP from a marked (exempt) socket, one after the other.
use std::{net::SocketAddr, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one resolver may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The first answer of the first resolver that gives one; `Err` lists
/// why each failed.
pub async fn ask(resolvers: &[SocketAddr], mark: u32, query: &[u8]) -> Result<Vec<u8>, String> {
    let mut failures = Vec::new();
    for &addr in resolvers {
        match tokio::time::timeout(TIMEOUT, ask_one(addr, mark, query)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => failures.push(format!("{addr}: {e}")),
            Err(_) => failures.push(format!("{addr}: no answer within {}s", TIMEOUT.as_secs())),
        }
    }
    Err(failures.join("; "))
}

async fn ask_one(addr: SocketAddr, mark: u32, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = crate::protocols::tcp::connect_upstream(addr, mark).await?;
    let len = u16::try_from(query.len()).map_err(|_| std::io::Error::other("query too long"))?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(query);
    stream.write_all(&out).await?;
    let len = stream.read_u16().await?;
    let mut answer = vec![0; usize::from(len)];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}
