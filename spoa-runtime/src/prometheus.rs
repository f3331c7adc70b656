//! The Prometheus endpoint (feature `prometheus`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::Metrics;

/// Serves `GET /metrics` (any path, in fact) in Prometheus text format until `shutdown`
/// completes. Deliberately tiny: one request per connection, no keep-alive.
pub async fn serve_prometheus(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::pin!(shutdown);
    loop {
        let (mut sock, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            res = listener.accept() => res?,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf)).await;
            let body = metrics.render_prometheus();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
