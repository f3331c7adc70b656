//! One test per malformed input, with the status code it earns.

use super::*;

fn fresh() -> FakeHaproxy {
    FakeHaproxy::new(AgentConfig::default())
}

fn est() -> FakeHaproxy {
    FakeHaproxy::established(AgentConfig::default(), "pipelining")
}

#[test]
fn malformed_length_zero() {
    let mut h = est();
    h.feed(&[0, 0, 0, 0]);
    h.assert_disconnected(StatusCode::INVALID);
    assert_eq!(
        h.closed_with(),
        &ConnectionError::Decode(DecodeError::FrameTooShort(0))
    );
}

#[test]
fn malformed_length_below_seven() {
    for len in 1..7u8 {
        let mut h = fresh();
        h.feed(&[0, 0, 0, len, 1, 0, 0]);
        h.assert_disconnected(StatusCode::INVALID);
    }
}

#[test]
fn malformed_length_above_limit_before_buffering() {
    let mut h = fresh();
    h.feed(&[0xff, 0xff, 0xff, 0xff]);
    h.assert_disconnected(StatusCode::TOO_BIG);
    let mut h = est();
    h.feed(&16381u32.to_be_bytes());
    h.assert_disconnected(StatusCode::TOO_BIG);
}

#[test]
fn malformed_truncated_varint() {
    let mut h = est();
    // NOTIFY, frame-id varint cut by the end of the frame
    h.feed(&[0, 0, 0, 7, 3, 0, 0, 0, 1, 1, 0xf3]);
    h.assert_disconnected(StatusCode::INVALID);
    // an INT64 argument whose varint is cut by the end of the frame
    let mut h = est();
    h.feed(&raw_frame(
        FrameType::NOTIFY,
        1,
        1,
        1,
        &[1, b'm', 1, 1, b'n', 0x04, 0xf0, 0x80],
    ));
    h.assert_disconnected(StatusCode::INVALID);
}

#[test]
fn malformed_eleven_byte_varint() {
    let mut h = est();
    let mut p = vec![1, b'm', 1, 1, b'n', 0x04];
    p.extend_from_slice(&[0xff; 10]);
    p.push(0x00);
    h.feed(&raw_frame(FrameType::NOTIFY, 1, 1, 1, &p));
    h.assert_disconnected(StatusCode::INVALID);
    assert_eq!(
        h.closed_with(),
        &ConnectionError::Decode(DecodeError::InvalidVarint)
    );
}

#[test]
fn malformed_unknown_data_type() {
    let mut h = fresh();
    h.feed(&raw_frame(
        FrameType::HAPROXY_HELLO,
        1,
        0,
        0,
        &[3, b'f', b'o', b'o', 0x0d],
    ));
    h.assert_disconnected(StatusCode::INVALID);
    assert_eq!(
        h.closed_with(),
        &ConnectionError::Decode(DecodeError::UnknownDataType(0x0d))
    );
}

#[test]
fn malformed_truncated_kv() {
    let mut h = fresh();
    let mut p = hello_payload(&[("supported-versions", TypedData::String(b"2.0"))]);
    p.extend_from_slice(&[14, b'm', b'a', b'x']);
    h.feed(&raw_frame(FrameType::HAPROXY_HELLO, 1, 0, 0, &p));
    h.assert_disconnected(StatusCode::INVALID);
}

#[test]
fn malformed_notify_before_hello() {
    let mut h = fresh();
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0));
    h.assert_disconnected(StatusCode::INVALID);
    assert!(matches!(
        h.closed_with(),
        ConnectionError::Protocol(ProtocolError::UnexpectedFrame { .. })
    ));
}

#[test]
fn malformed_second_hello() {
    let mut h = est();
    h.send_hello(16380, "pipelining");
    h.assert_disconnected(StatusCode::INVALID);
}

#[test]
fn malformed_bad_version() {
    let mut h = fresh();
    let p = hello_payload(&[
        ("supported-versions", TypedData::String(b"1.0,3.0")),
        ("max-frame-size", TypedData::Uint32(16380)),
        ("capabilities", TypedData::String(b"")),
    ]);
    h.feed(&raw_frame(FrameType::HAPROXY_HELLO, 1, 0, 0, &p));
    h.assert_disconnected(StatusCode::BAD_VERSION);
}

#[test]
fn malformed_missing_version() {
    let mut h = fresh();
    let p = hello_payload(&[
        ("max-frame-size", TypedData::Uint32(16380)),
        ("capabilities", TypedData::String(b"")),
    ]);
    h.feed(&raw_frame(FrameType::HAPROXY_HELLO, 1, 0, 0, &p));
    h.assert_disconnected(StatusCode::NO_VERSION);
}

#[test]
fn malformed_missing_frame_size() {
    let mut h = fresh();
    let p = hello_payload(&[("supported-versions", TypedData::String(b"2.0"))]);
    h.feed(&raw_frame(FrameType::HAPROXY_HELLO, 1, 0, 0, &p));
    h.assert_disconnected(StatusCode::NO_FRAME_SIZE);
}

#[test]
fn malformed_frame_size_below_256() {
    let mut h = fresh();
    h.send_hello(255, "pipelining");
    h.assert_disconnected(StatusCode::BAD_FRAME_SIZE);
    let mut h = fresh();
    h.send_hello(100, "pipelining");
    h.assert_disconnected(StatusCode::BAD_FRAME_SIZE);
}

#[test]
fn frame_size_above_our_ceiling_is_clamped_not_refused() {
    // "above the offer" is a fault of an AGENT-HELLO (checked by AgentHello::validate);
    // a HAPROXY-HELLO offering more than we accept just gets our ceiling back.
    let mut h = fresh();
    h.send_hello(u32::MAX, "pipelining");
    assert_eq!(
        h.sent,
        [Out::Hello {
            max_frame_size: 16380,
            capabilities: "pipelining".into()
        }]
    );
}

#[test]
fn malformed_frame_without_fin() {
    let mut h = est();
    let mut b = FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0);
    b[8] = 0; // flags low byte: FIN cleared
    h.feed(&b);
    h.assert_disconnected(StatusCode::FRAGMENTATION_NOT_SUPPORTED);
    // UNSET continuation without fragmentation
    let mut h = est();
    h.feed(&raw_frame(FrameType::UNSET, 1, 1, 1, b"x"));
    h.assert_disconnected(StatusCode::FRAGMENTATION_NOT_SUPPORTED);
    // HELLO without FIN
    let mut h = fresh();
    let mut b = BytesMut::new();
    HaproxyHello::new(16380, "").encode(&mut b);
    b[8] = 0;
    h.feed(&b);
    h.assert_disconnected(StatusCode::FRAGMENTATION_NOT_SUPPORTED);
}

#[test]
fn malformed_hello_with_ids() {
    let mut h = fresh();
    let p = hello_payload(&[("supported-versions", TypedData::String(b"2.0"))]);
    h.feed(&raw_frame(FrameType::HAPROXY_HELLO, 1, 1, 0, &p));
    h.assert_disconnected(StatusCode::INVALID);
}

#[test]
fn malformed_agent_frame_types_from_haproxy() {
    for t in [
        FrameType::ACK,
        FrameType::AGENT_HELLO,
        FrameType::AGENT_DISCONNECT,
    ] {
        let mut h = est();
        h.feed(&raw_frame(t, 1, 0, 0, &[]));
        h.assert_disconnected(StatusCode::INVALID);
    }
}

#[test]
fn malformed_nb_args_larger_than_present() {
    let mut h = est();
    h.feed(&raw_frame(
        FrameType::NOTIFY,
        1,
        1,
        1,
        &[1, b'm', 2, 1, b'a', 0x00],
    ));
    h.assert_disconnected(StatusCode::INVALID);
}

#[test]
fn garbage_instead_of_hello() {
    let mut h = fresh();
    h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    // "GET " read as a length: 0x47455420 is far above the limit
    h.assert_disconnected(StatusCode::TOO_BIG);
}

#[test]
fn bytes_after_close_are_ignored() {
    let mut h = est();
    h.feed(&[0, 0, 0, 0]);
    h.assert_disconnected(StatusCode::INVALID);
    let sent = h.sent.len();
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0));
    h.conn.handle_eof(h.now);
    h.conn.handle_timeout(h.now + Duration::from_secs(100));
    h.conn.close(h.now, StatusCode::NORMAL, "again");
    h.collect();
    assert_eq!(h.sent.len(), sent);
    assert_eq!(h.closed, 1);
}

#[test]
fn local_close_sends_status_and_truncated_message() {
    let mut h = est();
    h.conn.close(h.now, StatusCode(150), &"m".repeat(1000));
    h.collect();
    h.assert_disconnected(StatusCode(150));
}
