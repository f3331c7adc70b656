//! Drains, timeouts, end of stream and disconnects.

use super::*;

#[test]
fn graceful_drain_answers_in_flight_then_disconnects() {
    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0));
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(3, 1), 0));
    let n = h.notifies();
    let now = h.now;
    h.conn.begin_drain(now, now + Duration::from_secs(5));
    assert!(h.conn.is_draining() && !h.conn.wants_read());
    assert_eq!(h.conn.poll_timeout(), Some(now + Duration::from_secs(5)));
    h.ack(n[1].id(), 1);
    assert!(!h.conn.is_closed());
    h.ack(n[0].id(), 0);
    assert!(matches!(
        h.sent[..],
        [
            Out::Ack { .. },
            Out::Ack { .. },
            Out::Disconnect {
                status: StatusCode::NORMAL,
                ..
            }
        ]
    ));
    assert_eq!(
        h.closed_with(),
        &ConnectionError::LocallyClosed(StatusCode::NORMAL)
    );
    assert!(!h.closed_with().is_error());
}

#[test]
fn drain_deadline_sends_disconnect_anyway() {
    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0));
    let now = h.now;
    h.conn.begin_drain(now, now + Duration::from_secs(2));
    h.advance(Duration::from_secs(1));
    assert!(!h.conn.is_closed());
    h.advance(Duration::from_secs(1));
    h.assert_disconnected(StatusCode::TIMEOUT);
    assert_eq!(
        h.closed_with(),
        &ConnectionError::TimedOut(TimeoutKind::Drain)
    );
    assert_eq!(
        h.conn.send_ack(h.now, NotifyId::new(1, 1), &Actions::new()),
        Err(AckError::Closed)
    );
}

#[test]
fn drain_when_idle_closes_at_once() {
    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    let now = h.now;
    h.conn.begin_drain(now, now + Duration::from_secs(2));
    h.collect();
    h.assert_disconnected(StatusCode::NORMAL);
}

#[test]
fn hello_timeout_with_injected_clock() {
    let mut config = AgentConfig::default();
    config.hello_timeout = Some(Duration::from_secs(3));
    let mut h = FakeHaproxy::new(config);
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(3)));
    // one byte at a time, too slowly
    let mut hello = BytesMut::new();
    HaproxyHello::new(16380, "pipelining").encode(&mut hello);
    h.feed(&hello[..1]);
    h.advance(Duration::from_secs(1));
    h.feed(&hello[1..2]);
    h.advance(Duration::from_secs(1));
    assert!(!h.conn.is_closed());
    h.advance(Duration::from_secs(1));
    h.assert_disconnected(StatusCode::TIMEOUT);
    assert_eq!(
        h.closed_with(),
        &ConnectionError::TimedOut(TimeoutKind::Hello)
    );
}

#[test]
fn idle_timeout_only_when_nothing_in_flight() {
    let mut config = AgentConfig::default();
    config.idle_timeout = Some(Duration::from_secs(10));
    let mut h = FakeHaproxy::established(config, "pipelining");
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0));
    assert_eq!(
        h.conn.poll_timeout(),
        None,
        "no idle timer while a NOTIFY is in flight"
    );
    h.advance(Duration::from_secs(30));
    h.ack(NotifyId::new(1, 1), 0);
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(10)));
    h.advance(Duration::from_secs(10));
    h.assert_disconnected(StatusCode::TIMEOUT);
}

#[test]
fn eof_is_clean_only_when_idle() {
    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    h.conn.handle_eof(h.now);
    h.collect();
    assert_eq!(h.closed_with(), &ConnectionError::Eof { clean: true });
    assert!(h.sent.is_empty(), "no DISCONNECT to a peer that is gone");

    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0)[..9]);
    h.conn.handle_eof(h.now);
    h.collect();
    assert_eq!(h.closed_with(), &ConnectionError::Eof { clean: false });
}

#[test]
fn haproxy_disconnect_is_answered() {
    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    let mut b = BytesMut::new();
    Disconnect::encode(
        &mut b,
        FrameType::HAPROXY_DISCONNECT,
        StatusCode::TIMEOUT,
        "a timeout occurred",
    );
    h.feed(&b);
    h.assert_disconnected(StatusCode::NORMAL);
    assert_eq!(
        h.closed_with(),
        &ConnectionError::PeerDisconnected {
            status: StatusCode::TIMEOUT,
            message: "a timeout occurred".into()
        }
    );
}
