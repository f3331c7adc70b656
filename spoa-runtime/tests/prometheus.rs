//! The Prometheus endpoint (feature `prometheus`): counters move with real traffic and the
//! text parses as the exposition format. CI runs it with `--features prometheus`.
#![cfg(feature = "prometheus")]

mod common;

use std::sync::Arc;

use common::{Stub, bounded, scripted, start};
use spoa_runtime::{Metrics, Server, serve_prometheus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn metrics_endpoint_reports_traffic() {
    bounded(async {
        let metrics = Arc::new(Metrics::default());
        let mut agent = start(Server::builder().metrics(metrics.clone()), scripted()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let prom_addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let endpoint = tokio::spawn(serve_prometheus(listener, metrics.clone(), async {
            let _ = stop_rx.await;
        }));

        let mut stub = Stub::connect(agent.addr).await;
        stub.handshake().await;
        for i in 0..3 {
            stub.roundtrip(2 * i + 1, 1, i as i64).await;
        }

        let mut http = TcpStream::connect(prom_addr).await.unwrap();
        http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        http.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200 OK\r\n"), "{body}");
        assert!(
            body.contains("content-type: text/plain; version=0.0.4"),
            "{body}"
        );
        for line in [
            "spoa_notifies_total 3",
            "spoa_acks_total 3",
            "spoa_connections_active 1",
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "missing {line:?} in\n{body}"
            );
        }
        assert!(
            body.contains("spoa_handler_duration_seconds_count 3"),
            "{body}"
        );
        // every sample line is `name{labels} value` with a numeric value
        for l in body
            .split("\r\n\r\n")
            .nth(1)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
        {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {l:?}");
        }
        let _ = stop_tx.send(());
        endpoint.await.unwrap().unwrap();
        agent.trigger_shutdown();
        agent.join().await;
    })
    .await;
}
