//! Entry points for the fuzz targets and regression tests. Not a stable API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::frame::{Frame, FrameDecoder, split_frame};
use crate::{AgentConfig, AgentConnection, Event};

/// Arbitrary bytes through the frame splitter, the decoder and every payload parser.
pub fn frame(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((header, payload, used))) = split_frame(rest, 1 << 20) {
        if let Ok(f) = Frame::parse(&header, payload) {
            walk(&f);
        }
        rest = &rest[used..];
    }
    let mut buf = BytesMut::from(data);
    let mut dec = FrameDecoder::new(1 << 20);
    while let Ok(Some(raw)) = dec.decode(&mut buf) {
        let _ = raw.parse();
    }
}

fn walk(f: &Frame<'_>) {
    match f {
        Frame::Notify(list) => {
            for m in list.iter() {
                for a in m.args() {
                    let _ = (a.name.len(), a.value.to_string());
                }
            }
        }
        Frame::Ack(list) => {
            for a in list.iter() {
                let _ = a.to_string();
            }
        }
        _ => {}
    }
}

/// Arbitrary bytes as a varint.
pub fn varint(data: &[u8]) {
    if let Ok((v, n)) = crate::varint::decode(data) {
        let (enc, len) = crate::varint::encode(v);
        assert_eq!(&enc[..len], &data[..n], "varint encoding is a bijection");
    }
}

/// Drives an agent connection with a script derived from `data`: read chunks with arbitrary
/// split points, time steps, ACKs and drains. Checks the invariants.
pub fn connection(data: &[u8]) {
    let mut config = AgentConfig::default();
    let Some((&flags, mut data)) = data.split_first() else {
        return;
    };
    config.fragmentation = flags & 1 != 0;
    config.pipelining = flags & 2 == 0;
    config.pad_empty_ack = flags & 4 != 0;
    config.max_in_flight = usize::from(flags >> 4) + 1;
    config.max_reassembly_size = 4096;
    config.idle_timeout = (flags & 8 != 0).then(|| Duration::from_millis(500));
    // an arbitrary origin; the script advances time by hand
    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    let mut now = start;
    let mut conn = AgentConnection::new(Arc::new(config), now);
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    let mut pending = Vec::new();
    let mut closed = 0;
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        match op % 8 {
            0..=3 => {
                let n = usize::from(op >> 3).min(data.len());
                rbuf.extend_from_slice(&data[..n]);
                data = &data[n..];
                conn.handle_read(now, &mut rbuf);
            }
            4 => {
                now += Duration::from_millis(u64::from(op >> 3) * 100);
                conn.handle_timeout(now);
            }
            5 => {
                if let Some(id) = pending.pop() {
                    let mut actions = crate::Actions::new();
                    if op & 8 != 0 {
                        actions.set_var(crate::Scope::Transaction, "v", i64::from(op));
                    }
                    let _ = conn.send_ack(now, id, &actions);
                    conn.handle_read(now, &mut rbuf);
                }
            }
            6 => conn.begin_drain(now, now + Duration::from_millis(u64::from(op >> 3) * 50)),
            _ => conn.handle_eof(now),
        }
        let before = wbuf.len();
        conn.poll_transmit(&mut wbuf);
        check_transmitted(&wbuf[before..], conn.max_frame_size());
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Notify(n) => pending.push(n.id()),
                Event::Closed(_) => closed += 1,
                _ => {}
            }
        }
        assert!(closed <= 1, "Closed emitted more than once");
        assert!(conn.in_flight() <= conn.config().max_in_flight.max(1));
        assert!(
            rbuf.len() <= 4 + conn.max_frame_size() as usize + 256,
            "read buffer unbounded"
        );
        if wbuf.len() > 1 << 16 {
            wbuf.clear();
        }
    }
    // ACKing an unknown id is refused
    assert!(
        conn.send_ack(
            now,
            crate::NotifyId::new(u64::MAX, 0),
            &crate::Actions::new()
        )
        .is_err()
            || !pending.is_empty()
    );
}

fn check_transmitted(mut out: &[u8], max: u32) {
    while !out.is_empty() {
        let (header, payload, used) =
            split_frame(out, max.max(crate::frame::DEFAULT_MAX_FRAME_SIZE))
                .expect("transmitted frame is well-formed")
                .expect("transmitted frame is whole");
        assert!(header.flags.0 == 1, "agent frames carry exactly FIN");
        Frame::parse(&header, payload).expect("transmitted payload parses");
        out = &out[used..];
    }
}
