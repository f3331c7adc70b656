//! The `connection` target: an agent connection driven by a script of reads, time steps, ACKs
//! and drains, its outputs checked against a model after every step.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::error::AckError;
use crate::frame::{
    Capabilities, DEFAULT_MAX_FRAME_SIZE, Frame, FrameFlags, MIN_MAX_FRAME_SIZE, parse_versions,
    split_frame,
};
use crate::{
    Actions, AgentConfig, AgentConnection, ConnectionError, Event, NotifyId, PAD_VAR_NAME, Scope,
    StatusCode,
};

/// What [`connection_observed`] saw, in order.
#[derive(Debug)]
pub enum Observed<'e> {
    /// An event taken from [`AgentConnection::poll_event`].
    Event(&'e Event),
    /// [`AgentConnection::send_ack`] accepted an ACK for this NOTIFY.
    Acked(NotifyId),
}

/// The largest read chunk of a connection script.
pub const MAX_READ_CHUNK: usize = 31;

/// Drives an agent connection with a script derived from `data`. Checks the invariants.
///
/// See [`connection_observed`].
pub fn connection(data: &[u8]) {
    connection_observed(data, |_| {});
}

/// Drives an agent connection with a script derived from `data`: read chunks with arbitrary
/// split points, time steps, ACKs and drains; reports events and accepted ACKs to `observe`.
///
/// The first byte is the configuration: bit 0 fragmentation, bit 1 no pipelining, bit 2 pad
/// empty ACKs, bit 3 idle timeout 500 ms, bits 4-7 max in flight - 1 (own max frame size
/// 16380, reassembly limit 4096). Then operations, by `op % 8`:
///
/// - 0..=3: the peer sends the next `op >> 3` bytes (at most 31; one read chunk). The driver
///   reads like a real one: chunks go to the read buffer only while
///   [`AgentConnection::wants_read`], each followed by `handle_read` (ops 0 and 2) or, like
///   the runtime (ops 1 and 3), by [`AgentConnection::read_notify`] with
///   `handle_read_frames(now, buf, 1)` where it declines, the events taken after each frame.
/// - 4: the clock advances `(op >> 3) * 100` ms; `handle_timeout`.
/// - 5: ACK. Bit 3: with a set-var; bit 4: the oldest unanswered NOTIFY, else the newest;
///   bit 5: an id with nothing in flight instead (a NOTIFY already answered, or never
///   received); bit 6: with a set-var too large for the negotiated frame size (then, like a
///   handler should, again with no actions); bit 7: with a set-var and an unset-var in each
///   scope. Then `handle_read`, since an ACK may free a slot. Nothing when no NOTIFY is
///   unanswered (unless bit 5).
/// - 6: drain with a deadline `(op >> 3) * 50` ms away.
/// - 7: EOF from the peer.
///
/// At the end an id with nothing in flight is ACKed (refused), then EOF.
///
/// Invariants, checked after every operation: no panic; [`Event::Closed`] exactly once
/// by the end and no event after it; every transmitted frame well-formed (flags FIN, known
/// agent frame type, payload parses, AGENT-HELLO first and once, nothing after
/// AGENT-DISCONNECT, which carries the status of the `Closed` reason) and within the size
/// limit (negotiated, or our own before the handshake); every transmitted ACK is the next one
/// accepted by `send_ack` and answers a NOTIFY delivered as an event and not ACKed as often as
/// it was delivered; `send_ack` accepts or refuses exactly as the model says; the in-flight
/// count matches the model and stays within the limit; NOTIFY payloads, the read buffer's
/// length and capacity stay bounded by the configured limits; after `handle_timeout`, no
/// deadline in the past remains.
pub fn connection_observed(data: &[u8], mut observe: impl FnMut(Observed<'_>)) {
    let Some((&flags, mut data)) = data.split_first() else {
        return;
    };
    let config = AgentConfig {
        fragmentation: flags & 1 != 0,
        pipelining: flags & 2 == 0,
        pad_empty_ack: flags & 4 != 0,
        max_in_flight: usize::from(flags >> 4) + 1,
        max_reassembly_size: 4096,
        idle_timeout: (flags & 8 != 0).then(|| Duration::from_millis(500)),
        ..AgentConfig::default()
    };
    // an arbitrary origin; the script advances time by hand
    #[allow(clippy::disallowed_methods)]
    let mut now = Instant::now();
    let mut d = Driver::new(Arc::new(config), now);
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        match op % 8 {
            0..=3 => {
                let n = usize::from(op >> 3).min(data.len());
                d.socket.push_back((&data[..n], op & 1 != 0));
                data = &data[n..];
            }
            4 => {
                now += Duration::from_millis(u64::from(op >> 3) * 100);
                d.conn.handle_timeout(now);
                if let Some(deadline) = d.conn.poll_timeout() {
                    assert!(deadline > now, "handle_timeout left a deadline in the past");
                }
            }
            5 => d.ack(now, op, &mut observe),
            6 => d
                .conn
                .begin_drain(now, now + Duration::from_millis(u64::from(op >> 3) * 50)),
            _ => d.conn.handle_eof(now),
        }
        d.pump(now);
        d.collect(&mut observe);
    }
    // ACKing an id with nothing in flight is refused, for the reason the state gives
    d.ack(now, 0x20, &mut observe);
    d.collect(&mut observe);
    d.conn.handle_eof(now);
    d.collect(&mut observe);
    assert_eq!(d.closed, 1, "Closed emitted exactly once by the end");
}

/// Zeros for an oversized set-var value.
static ZEROS: [u8; DEFAULT_MAX_FRAME_SIZE as usize] = [0; DEFAULT_MAX_FRAME_SIZE as usize];

/// The connection under test, the peer's unread bytes, and the model the outputs are checked
/// against.
struct Driver<'a> {
    conn: AgentConnection,
    /// Our own frame size limit (the limit before the handshake).
    own_max: u32,
    /// Chunks sent by the peer and not read yet, and whether the driver reads them with the
    /// fast lane.
    socket: VecDeque<(&'a [u8], bool)>,
    /// Events taken by a fast-lane read (NOTIFYs from `read_notify` among them), in order,
    /// before those still in the connection.
    taken: VecDeque<Event>,
    /// How the last chunk was read (reads after an ACK do the same).
    fast_lane: bool,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// NOTIFYs delivered and not yet accepted by `send_ack`, newest last.
    pending: Vec<NotifyId>,
    /// Per id: NOTIFY events minus ACKs accepted by `send_ack`.
    unanswered: HashMap<NotifyId, u32>,
    unanswered_total: usize,
    /// Per id: NOTIFY events minus ACK frames transmitted.
    unacked_on_wire: HashMap<NotifyId, u32>,
    /// ACKs accepted by `send_ack` and not transmitted yet: id and payload.
    accepted: VecDeque<(NotifyId, Vec<u8>)>,
    /// The last id accepted by `send_ack`.
    last_acked: Option<NotifyId>,
    frames_sent: usize,
    hello_sent: bool,
    /// The status of the transmitted AGENT-DISCONNECT.
    disconnect_sent: Option<StatusCode>,
    established: bool,
    closed: u32,
}

impl<'a> Driver<'a> {
    fn new(config: Arc<AgentConfig>, now: Instant) -> Self {
        Self {
            own_max: config.max_frame_size.max(MIN_MAX_FRAME_SIZE),
            conn: AgentConnection::new(config, now),
            socket: VecDeque::new(),
            taken: VecDeque::new(),
            fast_lane: false,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            pending: Vec::new(),
            unanswered: HashMap::new(),
            unanswered_total: 0,
            unacked_on_wire: HashMap::new(),
            accepted: VecDeque::new(),
            last_acked: None,
            frames_sent: 0,
            hello_sent: false,
            disconnect_sent: None,
            established: false,
            closed: 0,
        }
    }

    /// The frame size limit in force: negotiated, or our own before the handshake.
    fn limit(&self) -> u32 {
        self.conn
            .negotiated()
            .map_or(self.own_max, |n| n.max_frame_size)
    }

    /// Reads like a driver honouring `wants_read`: one chunk, then `handle_read`.
    fn pump(&mut self, now: Instant) {
        while self.conn.wants_read() {
            let Some((chunk, fast)) = self.socket.pop_front() else {
                break;
            };
            self.rbuf.extend_from_slice(chunk);
            self.fast_lane = fast;
            self.read(now, fast);
        }
    }

    fn read(&mut self, now: Instant, fast: bool) {
        if fast {
            loop {
                while let Some(ev) = self.conn.poll_event() {
                    self.taken.push_back(ev);
                }
                if let Some(n) = self.conn.read_notify(now, &mut self.rbuf) {
                    self.taken.push_back(Event::Notify(n));
                } else if self.conn.handle_read_frames(now, &mut self.rbuf, 1) == 0 {
                    break;
                }
            }
        } else {
            self.conn.handle_read(now, &mut self.rbuf);
        }
        // A reading connection keeps at most a partial frame; a full one (in-flight limit,
        // closed) keeps what it had plus the last chunk.
        let bound = 4 + self.own_max as usize + MAX_READ_CHUNK;
        assert!(
            self.rbuf.len() < bound,
            "read buffer holds {} bytes",
            self.rbuf.len()
        );
        if self.conn.wants_read() {
            assert!(
                self.rbuf.len() < 4 + self.conn.max_frame_size() as usize,
                "read buffer holds {} bytes, more than a partial frame",
                self.rbuf.len()
            );
        }
        // the decoder reserves room for one frame of at most the limit: allow for doubling
        assert!(
            self.rbuf.capacity() <= 4 * bound,
            "read buffer capacity {}",
            self.rbuf.capacity()
        );
    }

    /// Sends an ACK as `op` says (see [`connection_observed`]).
    fn ack(&mut self, now: Instant, op: u8, observe: &mut impl FnMut(Observed<'_>)) {
        let id = if op & 0x20 != 0 {
            let mut id = self
                .last_acked
                .unwrap_or_else(|| NotifyId::new(u64::MAX, u64::from(op)));
            while self.unanswered.contains_key(&id) {
                id.frame_id = id.frame_id.wrapping_add(1);
            }
            id
        } else if self.pending.is_empty() {
            return;
        } else if op & 0x10 != 0 {
            self.pending.remove(0)
        } else {
            self.pending.pop().expect("not empty")
        };
        let mut actions = Actions::new();
        if op & 0x08 != 0 {
            actions.set_var(Scope::Transaction, "v", i64::from(op));
        }
        if op & 0x80 != 0 {
            for scope in Scope::ALL {
                actions
                    .set_var(scope, scope.as_str(), u32::from(op))
                    .unset_var(scope, "u");
            }
        }
        if op & 0x40 != 0 {
            let len = (self.limit() as usize).min(ZEROS.len());
            actions.set_var(Scope::Request, "big", &ZEROS[..len]);
        }
        if let Err(AckError::FrameTooLarge { .. }) = self.send_ack(now, id, &actions, observe) {
            // what a handler should do: answer without actions, so HAProxy does not wait
            let _ = self.send_ack(now, id, &Actions::new(), observe);
        }
        // an ACK may free a slot for frames already buffered
        self.read(now, self.fast_lane);
    }

    /// `send_ack`, with its outcome checked against the model.
    fn send_ack(
        &mut self,
        now: Instant,
        id: NotifyId,
        actions: &Actions,
        observe: &mut impl FnMut(Observed<'_>),
    ) -> Result<(), AckError> {
        let mut padded = Actions::new();
        let sent = if actions.is_empty() && self.conn.config().pad_empty_ack {
            padded.unset_var(Scope::Transaction, PAD_VAR_NAME);
            &padded
        } else {
            actions
        };
        let mut frame = BytesMut::new();
        sent.encode_ack(id, &mut frame);
        let len = frame.len() - 4;
        let max = self.limit();
        let expected = if self.closed > 0 {
            Err(AckError::Closed)
        } else if !self.established {
            Err(AckError::NotEstablished)
        } else if !self.unanswered.contains_key(&id) {
            Err(AckError::UnknownNotify(id))
        } else if len > max as usize {
            Err(AckError::FrameTooLarge { len, max })
        } else {
            Ok(())
        };
        let res = self.conn.send_ack(now, id, actions);
        assert_eq!(
            res,
            expected,
            "send_ack({id}) with {} actions",
            actions.len()
        );
        if res.is_ok() {
            let left = self.unanswered.get_mut(&id).expect("checked above");
            *left -= 1;
            if *left == 0 {
                self.unanswered.remove(&id);
            }
            self.unanswered_total -= 1;
            self.accepted.push_back((id, sent.as_bytes().to_vec()));
            self.last_acked = Some(id);
            observe(Observed::Acked(id));
        }
        res
    }

    /// Takes the outputs and checks them.
    fn collect(&mut self, observe: &mut impl FnMut(Observed<'_>)) {
        self.wbuf.clear();
        let n = self.conn.poll_transmit(&mut self.wbuf);
        assert_eq!(n, self.wbuf.len());
        assert!(
            n == 0 || self.closed == 0,
            "{n} bytes transmitted after Closed"
        );
        self.check_transmitted();
        assert!(
            self.accepted.is_empty(),
            "an ACK accepted by send_ack was not transmitted"
        );
        while let Some(ev) = self.taken.pop_front().or_else(|| self.conn.poll_event()) {
            assert_eq!(self.closed, 0, "{ev:?} after Closed");
            match &ev {
                Event::Established(n) => {
                    assert!(!self.established, "Established twice");
                    assert!(self.hello_sent, "Established without an AGENT-HELLO");
                    assert_eq!(Some(n), self.conn.negotiated());
                    assert!((MIN_MAX_FRAME_SIZE..=self.own_max).contains(&n.max_frame_size));
                    self.established = true;
                }
                Event::Notify(n) => {
                    assert!(self.established, "NOTIFY before Established");
                    let config = self.conn.config();
                    let mut bound = self.limit() as usize;
                    if config.fragmentation {
                        bound = bound.max(config.max_reassembly_size);
                    }
                    assert!(
                        n.payload().len() <= bound,
                        "NOTIFY of {} bytes",
                        n.payload().len()
                    );
                    *self.unanswered.entry(n.id()).or_default() += 1;
                    self.unanswered_total += 1;
                    *self.unacked_on_wire.entry(n.id()).or_default() += 1;
                    self.pending.push(n.id());
                }
                Event::Closed(e) => {
                    self.closed += 1;
                    assert_eq!(
                        self.disconnect_sent,
                        e.status(),
                        "AGENT-DISCONNECT status on {e}"
                    );
                    if let ConnectionError::Eof { clean: true } = e {
                        assert!(
                            self.unanswered_total == 0 && self.rbuf.is_empty(),
                            "clean EOF with {} in flight, {} bytes buffered",
                            self.unanswered_total,
                            self.rbuf.len()
                        );
                    }
                }
                Event::FrameSkipped(_) => {}
            }
            observe(Observed::Event(&ev));
        }
        assert_eq!(self.conn.is_closed(), self.closed == 1);
        if self.closed > 0 {
            assert!(!self.conn.wants_read());
            assert_eq!(self.conn.poll_timeout(), None);
        }
        assert_eq!(self.conn.in_flight(), self.unanswered_total);
        let limit = match self.conn.negotiated() {
            Some(n) if !n.capabilities.pipelining => 1,
            _ => self.conn.config().max_in_flight.max(1),
        };
        assert!(self.conn.in_flight() <= limit, "in flight above the limit");
    }

    /// Every transmitted frame: well-formed, within the limit, in protocol order, and every
    /// ACK the next accepted one, for a delivered NOTIFY.
    fn check_transmitted(&mut self) {
        let limit = self.limit() as usize;
        let wbuf = std::mem::take(&mut self.wbuf);
        let mut out = &wbuf[..];
        while !out.is_empty() {
            let (header, payload, used) = split_frame(out, u32::MAX)
                .expect("transmitted frame is well-formed")
                .expect("transmitted frame is whole");
            assert!(
                used - 4 <= limit,
                "transmitted {} frame of {} bytes exceeds the limit of {limit}",
                header.frame_type,
                used - 4
            );
            assert_eq!(
                header.flags,
                FrameFlags::FIN,
                "agent frames carry exactly FIN"
            );
            assert!(
                self.disconnect_sent.is_none(),
                "frame after AGENT-DISCONNECT"
            );
            let frame = Frame::parse(&header, payload)
                .unwrap_or_else(|e| panic!("transmitted {} payload: {e}", header.frame_type));
            match frame {
                Frame::AgentHello(hello) => {
                    assert_eq!(self.frames_sent, 0, "AGENT-HELLO is the first frame");
                    assert_eq!(header.id(), NotifyId::default());
                    let n = self
                        .conn
                        .negotiated()
                        .expect("AGENT-HELLO after negotiation");
                    assert_eq!(hello.max_frame_size, Some(u64::from(n.max_frame_size)));
                    assert!(
                        hello
                            .version
                            .is_some_and(|v| parse_versions(v).any(|v| v == 2000))
                    );
                    assert_eq!(
                        hello.capabilities.map(Capabilities::parse),
                        Some(n.capabilities)
                    );
                    self.hello_sent = true;
                }
                Frame::Ack(_) => {
                    assert!(self.hello_sent, "ACK before AGENT-HELLO");
                    let id = header.id();
                    let (want_id, want) = self
                        .accepted
                        .pop_front()
                        .expect("transmitted ACK was accepted by send_ack");
                    assert_eq!((id, payload), (want_id, &want[..]), "transmitted ACK");
                    let left = self
                        .unacked_on_wire
                        .get_mut(&id)
                        .filter(|n| **n > 0)
                        .unwrap_or_else(|| {
                            panic!("ACK for {id}: not delivered as NOTIFY, or ACKed more often")
                        });
                    *left -= 1;
                }
                Frame::AgentDisconnect(d) => {
                    assert_eq!(header.id(), NotifyId::default());
                    self.disconnect_sent = Some(d.status().expect("AGENT-DISCONNECT status"));
                }
                other => panic!("the agent transmitted {other:?}"),
            }
            self.frames_sent += 1;
            out = &out[used..];
        }
        self.wbuf = wbuf;
    }
}
