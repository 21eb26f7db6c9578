//! Passthrough over real loopback sockets: counts, half-close, resets.
use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{Interrupted, Transferred, passthrough};

/// A connected pair: (the side `connect` returned, the side `accept` returned).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connecting = TcpStream::connect(listener.local_addr().unwrap());
    let (connected, accepted) = tokio::join!(connecting, listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

/// Client app, server app, and the passthrough between them in a task.
async fn through_gateway() -> (
    TcpStream,
    TcpStream,
    tokio::task::JoinHandle<std::io::Result<Transferred>>,
) {
    let (app, mut gw_client) = pair().await;
    let (mut gw_upstream, server) = pair().await;
    let gateway = tokio::spawn(async move { passthrough(&mut gw_client, &mut gw_upstream).await });
    (app, server, gateway)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_keeps_the_other_direction_flowing() {
    let (mut app, mut server, gateway) = through_gateway().await;
    let request = pattern(3 << 20, 1);
    let response = pattern(1 << 20, 2);

    // The server answers only after the client's EOF, so the answer can
    // only arrive if the half-close went through and the reply path stayed open.
    let server_side = {
        let response = response.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            server.write_all(&response).await.unwrap();
            server.shutdown().await.unwrap();
            got
        })
    };
    app.write_all(&request).await.unwrap();
    app.shutdown().await.unwrap();
    let mut answer = Vec::new();
    app.read_to_end(&mut answer).await.unwrap();

    assert!(server_side.await.unwrap() == request, "request corrupted");
    assert!(answer == response, "response corrupted");
    let moved = gateway.await.unwrap().unwrap();
    assert_eq!(
        moved,
        Transferred {
            up: request.len() as u64,
            down: response.len() as u64
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_ends_the_session_with_the_counts_so_far() {
    let (mut app, mut server, gateway) = through_gateway().await;
    app.write_all(&[7; 1000]).await.unwrap();
    let mut got = [0; 1000];
    server.read_exact(&mut got).await.unwrap();
    // Linger 0: close() sends RST instead of FIN.
    socket2::SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(server);

    let error = tokio::time::timeout(Duration::from_secs(10), gateway)
        .await
        .expect("the session outlived the reset")
        .unwrap()
        .unwrap_err();
    let interrupted = Interrupted::of(&error).expect("error without counts");
    assert_eq!(interrupted.moved, Transferred { up: 1000, down: 0 });
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_writes_and_closes_is_delivered() {
    let (mut app, mut server, gateway) = through_gateway().await;
    app.write_all(b"metric 1\n").await.unwrap();
    drop(app);
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"metric 1\n");
    drop(server);
    let moved = gateway.await.unwrap().unwrap();
    assert_eq!(moved, Transferred { up: 9, down: 0 });
}
