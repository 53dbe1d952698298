//! Serving a router to the network: HTTP/1.1 with a deadline on every
//! request head, until shutdown, then the requests in flight finish.
//!
//! Written here rather than with `axum::serve`, which sets no timer on
//! hyper's connections, so hyper's header read timeout never runs: a client
//! that opens a connection and sends its head a byte a minute (or nothing,
//! between two requests on a kept-alive connection) would keep its socket
//! and task for ever, outside every request limit of the edge (they count
//! requests, and a request starts once its head is read).

use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a client may take to send a request's head, counted from when
/// the server waits for it (a new connection, or one idle between two
/// requests); then the connection is closed. hyper's own default, and
/// longer than the gap of a Prometheus scrape or a dispatcher's pool
/// between two requests on one connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets
/// the requests in flight finish (idle connections are closed).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, shutdown, HEADER_READ_TIMEOUT).await
}

/// `serve`, with another header read timeout (tests).
async fn serve_with(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
    header_read_timeout: Duration,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let connections = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: the listener itself is fine.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const TIMEOUT: Duration = Duration::from_millis(300);

    async fn server() -> (
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let router = axum::Router::new().route("/", get(|| async { "hello" }));
        let served = tokio::spawn(serve_with(listener, router, shutdown.clone(), TIMEOUT));
        let task = tokio::spawn(async move {
            served.await.expect("no panic").expect("served");
        });
        (addr, shutdown, task)
    }

    /// Reads until the server closes the connection; what it sent.
    async fn until_closed(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
            .await
            .expect("the server closed the connection")
            .ok();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_head_sent_too_slowly_loses_its_connection() {
        let (addr, shutdown, task) = server().await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let started = tokio::time::Instant::now();
        let answer = until_closed(&mut slow).await;
        assert!(started.elapsed() >= TIMEOUT, "closed before the timeout");
        assert!(!answer.contains("hello"), "{answer}");
        // A silent connection is closed too.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        until_closed(&mut silent).await;
        shutdown.cancel();
        task.await.expect("stopped");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_idle_past_the_timeout_is_closed() {
        let (addr, shutdown, task) = server().await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let answer = until_closed(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hello"), "{answer}");
        shutdown.cancel();
        task.await.expect("stopped");
    }

    #[tokio::test]
    async fn shutdown_lets_a_request_in_flight_finish() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let router = axum::Router::new().route(
            "/",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "late"
            }),
        );
        let served = tokio::spawn(serve_with(listener, router, shutdown.clone(), TIMEOUT));
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        let answer = until_closed(&mut client).await;
        assert!(answer.ends_with("late"), "{answer}");
        served.await.expect("no panic").expect("served");
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }
}
