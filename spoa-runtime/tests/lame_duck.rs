//! Zero-loss shutdown: the lame-duck phase refuses health checks (or releases the port) while
//! every established connection keeps being served; the drain answers what still arrives and
//! closes each connection with AGENT-DISCONNECT status 0 once it is quiet.

mod common;

use std::time::Duration;

use common::{STEP, Stub, bounded, init_tracing, notify_i, scripted};
use spoa_runtime::{LameDuck, Server, bind_tcp};
use spop_proto::frame::HaproxyHello;
use spop_proto::{FrameType, NotifyId};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const LAME: Duration = Duration::from_millis(600);
const QUIET: Duration = Duration::from_millis(200);

/// Serves `listener` with `server` on a task until the returned sender fires (or is dropped).
fn spawn_serve(
    server: &Server,
    listener: tokio::net::TcpListener,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let server = server.clone();
    let task = tokio::spawn(async move {
        server
            .serve(listener, scripted(), async {
                let _ = stopped.await;
            })
            .await;
    });
    (stop, task)
}

fn server(mode: LameDuck) -> Server {
    Server::builder()
        .lame_duck(LAME)
        .lame_duck_mode(mode)
        .drain_quiet(QUIET)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lame_duck_fails_health_checks_and_keeps_serving() {
    init_tracing();
    bounded(async {
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = server(LameDuck::FailHealthChecks);
        let (stop, task) = spawn_serve(&server, listener);
        let mut data = Stub::connect(addr).await;
        data.handshake().await;
        data.roundtrip(1, 1, 1).await;
        // a health check before the shutdown passes
        let mut check = Stub::connect(addr).await;
        check.send_hello_frame(&HaproxyHello::healthcheck()).await;
        assert_eq!(check.recv().await.header.frame_type, FrameType::AGENT_HELLO);

        stop.send(()).unwrap();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // lame duck: health checks refused with AGENT-DISCONNECT status 0...
        let mut check = Stub::connect(addr).await;
        check.send_hello_frame(&HaproxyHello::healthcheck()).await;
        assert_eq!(check.recv().await.into_disconnect_status(), 0);
        check.expect_eof().await;
        // ...while the established connection and new data connections are served
        data.roundtrip(3, 1, 3).await;
        let mut late = Stub::connect(addr).await;
        late.handshake().await;
        late.roundtrip(1, 1, 7).await;
        assert!(
            t0.elapsed() < LAME,
            "the checks above took the whole lame duck"
        );
        let m = server.metrics().snapshot();
        assert_eq!(m.health_checks, 1, "{m:?}");

        // a slow NOTIFY in flight across the end of the lame duck, and a quick one sent during
        // the drain: both answered; the connection closes right behind the last ACK
        let slow = NotifyId::new(5, 1);
        tokio::time::sleep_until(t0 + LAME - Duration::from_millis(100)).await;
        data.send_notify(&common::notify_with(slow, 5, "sleep_ms", 300u64))
            .await;
        tokio::time::sleep_until(t0 + LAME + Duration::from_millis(50)).await;
        let quick = NotifyId::new(7, 1);
        data.send_notify(&notify_i(quick, 7)).await;
        assert_eq!(data.recv_ack().await.0, quick);
        assert_eq!(data.recv_ack().await.0, slow);
        // AGENT-DISCONNECT status 0 last
        assert_eq!(data.recv().await.into_disconnect_status(), 0);
        data.expect_eof().await;
        assert_eq!(late.recv().await.into_disconnect_status(), 0);
        // the port is closed, and serve() returns
        tokio::time::timeout(STEP, task)
            .await
            .expect("serve returned")
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    })
    .await;
}

/// With `LameDuck::ReleasePort` (hot upgrade), the listener closes at once: a second
/// instance on the same port (SO_REUSEPORT) gets every new connection, health checks
/// included, while the first one keeps serving its established connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_port_hands_new_connections_to_the_next_instance() {
    init_tracing();
    bounded(async {
        let old_listener = bind_tcp("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let addr = old_listener.local_addr().unwrap();
        let old = server(LameDuck::ReleasePort);
        let (stop, old_task) = spawn_serve(&old, old_listener);
        let mut data = Stub::connect(addr).await;
        data.handshake().await;
        data.roundtrip(1, 1, 1).await;

        // the new instance binds the same port
        let new_listener = bind_tcp(addr, true).unwrap();
        let new = server(LameDuck::ReleasePort);
        let (_stop_new, _new_task) = spawn_serve(&new, new_listener);
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // every new connection and check now reaches the new instance
        for i in 0..10 {
            let mut check = Stub::connect(addr).await;
            check.send_hello_frame(&HaproxyHello::healthcheck()).await;
            assert_eq!(
                check.recv().await.header.frame_type,
                FrameType::AGENT_HELLO,
                "check {i}"
            );
        }
        assert_eq!(new.metrics().snapshot().health_checks, 10);
        assert_eq!(old.metrics().snapshot().health_checks, 0);
        // the old one still serves its connection, then drains it once quiet
        data.roundtrip(3, 1, 3).await;
        assert_eq!(data.recv().await.into_disconnect_status(), 0);
        tokio::time::timeout(STEP + LAME, old_task)
            .await
            .expect("old serve returned")
            .unwrap();
    })
    .await;
}

/// No data connection open at shutdown: HAProxy is not using the agent, so there is no lame
/// duck and the server stops at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lame_duck_without_data_connections() {
    init_tracing();
    bounded(async {
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let server = Server::builder().build().unwrap(); // default lame duck: 7 s
        let (stop, task) = spawn_serve(&server, listener);
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("stopped at once")
            .unwrap();
    })
    .await;
}
