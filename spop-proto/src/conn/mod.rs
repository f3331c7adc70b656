//! The agent side of a SPOP connection, as a sans-IO state machine.
//!
//! Feed it bytes and time; take out bytes, events and the next deadline. It never reads the
//! clock and never does I/O. See the [crate documentation](crate) for the call-order contract.

mod config;
mod handshake;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, BytesMut};

pub use config::{AgentConfig, PAD_VAR_NAME, PRE_HANDSHAKE_MAX_FRAME_SIZE};
pub use handshake::Negotiated;

use config::PAD_ACTION;

use crate::error::{AckError, ConnectionError, ProtocolError, TimeoutKind};
use crate::frame::decoder::take_payload;
use crate::frame::{
    Actions, AgentHello, Disconnect, FrameDecoder, FrameFlags, FrameHeader, FramePrefix,
    HaproxyHello, MIN_MAX_FRAME_SIZE, MessageList, Notify, NotifyId, RawFrame, split_frame,
};
use crate::status::{FrameType, StatusCode};

/// What happened on a connection; drain with [`AgentConnection::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake completed (the AGENT-HELLO is queued).
    Established(Negotiated),
    /// A NOTIFY to answer with [`AgentConnection::send_ack`].
    Notify(Notify),
    /// A frame of unknown type was skipped (worth a log line).
    FrameSkipped(FrameType),
    /// The connection is over; emitted exactly once. Flush [`AgentConnection::poll_transmit`]
    /// (it may hold a final AGENT-DISCONNECT), then close the socket.
    Closed(ConnectionError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingHello,
    Established,
    Draining { deadline: Instant },
    Closed,
}

impl State {
    const fn name(self) -> &'static str {
        match self {
            Self::AwaitingHello => "awaiting HAPROXY-HELLO",
            Self::Established => "established",
            Self::Draining { .. } => "draining",
            Self::Closed => "closed",
        }
    }
}

#[derive(Debug)]
struct Reassembly {
    id: NotifyId,
    buf: BytesMut,
}

/// The agent side of one SPOP connection.
///
/// Inputs (`handle_*`) never fail: a peer error queues an AGENT-DISCONNECT with the matching
/// status code and emits [`Event::Closed`]. Commands (`send_ack`, `close`, `begin_drain`) fail
/// only on caller misuse. After every input or command, collect the outputs:
/// [`poll_transmit`](Self::poll_transmit), [`poll_event`](Self::poll_event),
/// [`poll_timeout`](Self::poll_timeout).
///
/// ```
/// use std::{sync::Arc, time::Instant};
/// use bytes::BytesMut;
/// use spop_proto::{AgentConfig, AgentConnection, Event, frame::HaproxyHello};
///
/// let now = Instant::now();
/// let mut conn = AgentConnection::new(Arc::new(AgentConfig::default()), now);
/// let mut rbuf = BytesMut::new();
/// HaproxyHello::new(16380, "pipelining").encode(&mut rbuf);
/// conn.handle_read(now, &mut rbuf);
/// let mut wbuf = BytesMut::new();
/// assert!(conn.poll_transmit(&mut wbuf) > 0); // the AGENT-HELLO
/// assert!(matches!(conn.poll_event(), Some(Event::Established(n)) if n.max_frame_size == 16380));
/// ```
#[derive(Debug)]
pub struct AgentConnection {
    config: Arc<AgentConfig>,
    state: State,
    decoder: FrameDecoder,
    negotiated: Option<Negotiated>,
    /// The NOTIFYs not yet ACKed, in arrival order; an id HAProxy reused while in flight is
    /// there twice. At most `max_in_flight` entries (HAProxy keeps 20 or fewer), and ACKs
    /// mostly come in order: a linear search from the front beats hashing the ids.
    in_flight: VecDeque<NotifyId>,
    out: BytesMut,
    events: VecDeque<Event>,
    hello_deadline: Option<Instant>,
    /// When the connection last had work (a frame, or the ACK that emptied it): the idle
    /// timeout runs from there while nothing is in flight (kept as the instant, not the
    /// deadline, so the per-NOTIFY path does no clock arithmetic).
    idle_since: Option<Instant>,
    /// Boxed: fragmented NOTIFYs are rare, and idle connections should be small.
    reassembly: Option<Box<Reassembly>>,
    partial: bool,
    refuse_health_checks: bool,
}

impl AgentConnection {
    /// A new connection at `now`; arms the hello timer.
    pub fn new(config: Arc<AgentConfig>, now: Instant) -> Self {
        // before the handshake only a HELLO is expected: a small frame
        let own_max = config
            .max_frame_size
            .clamp(MIN_MAX_FRAME_SIZE, PRE_HANDSHAKE_MAX_FRAME_SIZE);
        let hello_deadline = config.hello_timeout.map(|t| now + t);
        Self {
            state: State::AwaitingHello,
            decoder: FrameDecoder::new(own_max),
            negotiated: None,
            // allocated at the first NOTIFY: idle connections should hold almost nothing
            in_flight: VecDeque::new(),
            out: BytesMut::new(),
            events: VecDeque::new(),
            hello_deadline,
            idle_since: None,
            reassembly: None,
            partial: false,
            refuse_health_checks: false,
            config,
        }
    }

    // ---- inputs ------------------------------------------------------------------------

    /// Consumes the whole frames at the front of `buf`, leaving a partial frame in place.
    ///
    /// Stops early once [`max_in_flight`](AgentConfig::max_in_flight) NOTIFYs are
    /// unanswered; call it again (even without new bytes) after an ACK frees a slot.
    pub fn handle_read(&mut self, now: Instant, buf: &mut BytesMut) {
        self.handle_read_frames(now, buf, usize::MAX);
    }

    /// Like [`handle_read`](Self::handle_read), but consumes at most `max_frames` frames;
    /// returns how many it consumed. A driver that must not queue output past a limit (a write
    /// high-water mark) reads one frame at a time and checks its output in between.
    ///
    /// ```
    /// use std::{sync::Arc, time::Instant};
    /// use bytes::BytesMut;
    /// use spop_proto::{AgentConfig, AgentConnection, Notify, NotifyId, frame::HaproxyHello};
    ///
    /// let now = Instant::now();
    /// let mut conn = AgentConnection::new(Arc::new(AgentConfig::default()), now);
    /// let mut rbuf = BytesMut::new();
    /// HaproxyHello::new(16380, "pipelining").encode(&mut rbuf);
    /// Notify::builder(NotifyId::new(1, 1)).message("m").build().encode(&mut rbuf);
    /// assert_eq!(conn.handle_read_frames(now, &mut rbuf, 1), 1); // the HELLO only
    /// assert_eq!(conn.handle_read_frames(now, &mut rbuf, 1), 1); // then the NOTIFY
    /// assert_eq!(conn.handle_read_frames(now, &mut rbuf, 1), 0);
    /// assert_eq!(conn.in_flight(), 1);
    /// ```
    pub fn handle_read_frames(
        &mut self,
        now: Instant,
        buf: &mut BytesMut,
        max_frames: usize,
    ) -> usize {
        let mut consumed = 0;
        while consumed < max_frames
            && self.state != State::Closed
            && self.in_flight.len() < self.in_flight_limit()
        {
            match self.decoder.decode(buf) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    consumed += 1;
                    self.idle_since = Some(now);
                    if let Err(e) = self.on_frame(frame) {
                        self.fail(e);
                    }
                }
                Err(e) => {
                    consumed += 1;
                    self.fail(e.into());
                }
            }
        }
        self.partial = !buf.is_empty();
        consumed
    }

    /// The fast lane for a driver's busiest path: if the next frame in `buf` is a whole,
    /// unfragmented NOTIFY on an established connection with no event waiting, consumes it and
    /// returns it, tracked in flight exactly as one delivered by
    /// [`Event::Notify`](Event::Notify) (answer it with [`send_ack`](Self::send_ack)).
    /// Otherwise returns `None` and consumes nothing: another kind of frame, a partial or
    /// malformed one, the in-flight limit reached; call
    /// [`handle_read_frames`](Self::handle_read_frames), which reads it or fails the
    /// connection with the right status.
    ///
    /// It skips the event queue; the result is the same as `handle_read_frames(now, buf, 1)`
    /// followed by `poll_event()`.
    ///
    /// ```
    /// use std::{sync::Arc, time::Instant};
    /// use bytes::BytesMut;
    /// use spop_proto::{AgentConfig, AgentConnection, Notify, NotifyId, frame::HaproxyHello};
    ///
    /// let now = Instant::now();
    /// let mut conn = AgentConnection::new(Arc::new(AgentConfig::default()), now);
    /// let mut rbuf = BytesMut::new();
    /// HaproxyHello::new(16380, "pipelining").encode(&mut rbuf);
    /// Notify::builder(NotifyId::new(1, 1)).message("m").build().encode(&mut rbuf);
    /// assert!(conn.read_notify(now, &mut rbuf).is_none()); // a HELLO first: the slow lane
    /// conn.handle_read_frames(now, &mut rbuf, 1);
    /// while conn.poll_event().is_some() {}
    /// let notify = conn.read_notify(now, &mut rbuf).unwrap();
    /// assert_eq!((notify.id(), conn.in_flight()), (NotifyId::new(1, 1), 1));
    /// ```
    #[inline(always)]
    pub fn read_notify(&mut self, _now: Instant, buf: &mut BytesMut) -> Option<Notify> {
        if self.state != State::Established
            || !self.events.is_empty()
            || self.reassembly.is_some()
            || self.in_flight.len() >= self.in_flight_limit()
        {
            return None;
        }
        // anything else than a whole, valid NOTIFY with FIN (another frame, a partial or
        // malformed one) is left to the general path, which reads it or names the error
        let (header, payload, used) = split_frame(buf, self.decoder.max_frame_size()).ok()??;
        if header.frame_type != FrameType::NOTIFY || !header.flags.is_fin() {
            return None;
        }
        MessageList::parse(payload).ok()?;
        let id = header.id();
        let payload = take_payload(buf, used, payload.len());
        // (no idle deadline to move: with a NOTIFY in flight there is none, and the ACK that
        // empties the connection sets it)
        self.partial = !buf.is_empty();
        self.in_flight.push_back(id);
        Some(Notify::validated(id, payload))
    }

    /// The peer closed its side (read returned 0, or the connection was reset).
    pub fn handle_eof(&mut self, _now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let clean = self.in_flight.is_empty() && !self.partial && self.reassembly.is_none();
        self.state = State::Closed;
        self.events
            .push_back(Event::Closed(ConnectionError::Eof { clean }));
    }

    /// Call when [`poll_timeout`](Self::poll_timeout)'s deadline has passed. Harmless when
    /// called early.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::AwaitingHello if self.hello_deadline.is_some_and(|d| now >= d) => {
                self.fail(ConnectionError::TimedOut(TimeoutKind::Hello));
            }
            State::Established
                if self.in_flight.is_empty() && self.idle_deadline().is_some_and(|d| now >= d) =>
            {
                self.fail(ConnectionError::TimedOut(TimeoutKind::Idle));
            }
            State::Draining { deadline } if now >= deadline => {
                self.fail(ConnectionError::TimedOut(TimeoutKind::Drain));
            }
            _ => {}
        }
    }

    // ---- commands ----------------------------------------------------------------------

    /// Queues the ACK of the NOTIFY `id` carrying `actions`.
    ///
    /// Fails without queuing anything when `id` is not in flight, the connection is not
    /// established or is closed, or the frame would exceed the negotiated size (then send an
    /// empty [`Actions`] instead, so HAProxy does not wait for its timeout).
    #[inline]
    pub fn send_ack(
        &mut self,
        now: Instant,
        id: NotifyId,
        actions: &Actions,
    ) -> Result<(), AckError> {
        let max = match (self.state, &self.negotiated) {
            (State::Closed, _) => return Err(AckError::Closed),
            (State::AwaitingHello, _) | (_, None) => return Err(AckError::NotEstablished),
            (_, Some(n)) => n.max_frame_size,
        };
        // ACKs mostly come in arrival order: found at the front, popped without a shift
        let at = if self.in_flight.front() == Some(&id) {
            Some(0)
        } else {
            self.in_flight.iter().position(|&i| i == id)
        };
        let Some(at) = at else {
            return Err(AckError::UnknownNotify(id));
        };
        let payload = if actions.is_empty() && self.config.pad_empty_ack {
            &PAD_ACTION[..]
        } else {
            actions.as_bytes()
        };
        // the header is encoded once, for the length check and the write
        let hdr = FrameHeader::new(FrameType::ACK, FrameFlags::FIN, id.stream_id, id.frame_id);
        let prefix = FramePrefix::new(hdr, payload.len());
        if prefix.frame_len > max as usize {
            return Err(AckError::FrameTooLarge {
                len: prefix.frame_len,
                max,
            });
        }
        if at == 0 {
            self.in_flight.pop_front();
        } else {
            self.in_flight.remove(at);
        }
        prefix.put(&mut self.out, payload);
        if self.in_flight.is_empty() {
            self.idle_since = Some(now);
            if matches!(self.state, State::Draining { .. }) {
                self.finish(ConnectionError::LocallyClosed(StatusCode::NORMAL), "normal");
            }
        }
        Ok(())
    }

    /// Queues an AGENT-DISCONNECT with `status` and `message` (cut to 255 bytes) and closes.
    /// NOTIFYs still in flight are abandoned (HAProxy fails them). No-op when closed.
    pub fn close(&mut self, _now: Instant, status: StatusCode, message: &str) {
        if self.state != State::Closed {
            self.finish(ConnectionError::LocallyClosed(status), message);
        }
    }

    /// Starts a graceful close: stop reading ([`wants_read`](Self::wants_read) turns false),
    /// answer what is in flight, then send AGENT-DISCONNECT status 0. At `deadline` the
    /// AGENT-DISCONNECT (status 2) goes out regardless.
    pub fn begin_drain(&mut self, now: Instant, deadline: Instant) {
        match self.state {
            State::Established if !self.in_flight.is_empty() && deadline > now => {
                self.state = State::Draining { deadline };
            }
            State::Closed | State::Draining { .. } => {}
            State::AwaitingHello | State::Established => {
                self.finish(ConnectionError::LocallyClosed(StatusCode::NORMAL), "normal");
            }
        }
    }

    /// From now on, answer a health-check HELLO with AGENT-DISCONNECT status 0 ("shutting
    /// down") instead of AGENT-HELLO, so HAProxy's `option spop-check` fails and marks the
    /// server DOWN; other HELLOs are served as usual. An agent calls it on the connections it
    /// accepts while it is about to stop (lame duck).
    ///
    /// ```
    /// use std::{sync::Arc, time::Instant};
    /// use bytes::BytesMut;
    /// use spop_proto::{AgentConfig, AgentConnection, ConnectionError, Event, frame::HaproxyHello};
    ///
    /// let now = Instant::now();
    /// let mut conn = AgentConnection::new(Arc::new(AgentConfig::default()), now);
    /// conn.refuse_health_checks();
    /// let mut rbuf = BytesMut::new();
    /// HaproxyHello::healthcheck().encode(&mut rbuf);
    /// conn.handle_read(now, &mut rbuf);
    /// let mut out = BytesMut::new();
    /// conn.poll_transmit(&mut out);
    /// assert_eq!(out[4], 102); // AGENT-DISCONNECT, not AGENT-HELLO (101)
    /// assert_eq!(conn.poll_event(), Some(Event::Closed(ConnectionError::HealthCheckRefused)));
    /// ```
    pub fn refuse_health_checks(&mut self) {
        self.refuse_health_checks = true;
    }

    // ---- outputs -----------------------------------------------------------------------

    /// Appends every queued frame to `out`; returns the number of bytes appended. Frames are
    /// whole (length prefix included), so one write of `out` never splits a frame.
    pub fn poll_transmit(&mut self, out: &mut BytesMut) -> usize {
        let n = self.out.len();
        if n == 0 {
            return 0;
        }
        if out.is_empty() {
            std::mem::swap(out, &mut self.out);
        } else {
            out.put_slice(&self.out);
            self.out.clear();
        }
        n
    }

    /// The bytes queued for the peer, for a driver that writes them straight from the state
    /// machine's buffer instead of copying them out with
    /// [`poll_transmit`](Self::poll_transmit): write from the front and advance past what was
    /// written (`BytesMut` is a `bytes::Buf`; tokio's `write_buf` advances it). Frames are
    /// appended whole. The driver may also swap in a buffer of its own while this one is empty
    /// (to pool buffers across connections); queued bytes must stay in order.
    ///
    /// ```
    /// use std::{sync::Arc, time::Instant};
    /// use bytes::{Buf, BytesMut};
    /// use spop_proto::{AgentConfig, AgentConnection, frame::HaproxyHello};
    ///
    /// let now = Instant::now();
    /// let mut conn = AgentConnection::new(Arc::new(AgentConfig::default()), now);
    /// let mut rbuf = BytesMut::new();
    /// HaproxyHello::new(16380, "pipelining").encode(&mut rbuf);
    /// conn.handle_read(now, &mut rbuf);
    /// let out = conn.outgoing();
    /// assert_eq!(out[4], 101); // the AGENT-HELLO, ready to write
    /// let n = out.len(); // say the socket took it all
    /// out.advance(n);
    /// assert!(conn.outgoing().is_empty());
    /// ```
    pub fn outgoing(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Frees the memory kept for traffic (the event queue, the in-flight table, the output
    /// buffer) where it is empty, for connections that went quiet: thousands of idle
    /// connections then hold almost nothing. The next frames allocate it again, so call it
    /// after a quiet period, not after every batch.
    ///
    /// ```
    /// use std::{sync::Arc, time::Instant};
    /// use bytes::BytesMut;
    /// use spop_proto::{AgentConfig, AgentConnection, frame::HaproxyHello};
    ///
    /// let now = Instant::now();
    /// let mut conn = AgentConnection::new(Arc::new(AgentConfig::default()), now);
    /// let mut rbuf = BytesMut::new();
    /// HaproxyHello::new(16380, "pipelining").encode(&mut rbuf);
    /// conn.handle_read(now, &mut rbuf);
    /// while conn.poll_event().is_some() {}
    /// conn.poll_transmit(&mut BytesMut::new());
    /// conn.release_buffers();
    /// assert_eq!(conn.outgoing().capacity(), 0);
    /// ```
    pub fn release_buffers(&mut self) {
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        if self.in_flight.is_empty() {
            self.in_flight = VecDeque::new();
        }
        if self.out.is_empty() {
            self.out = BytesMut::new();
        }
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitingHello => self.hello_deadline,
            State::Established if self.in_flight.is_empty() => self.idle_deadline(),
            State::Established | State::Closed => None,
            State::Draining { deadline } => Some(deadline),
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- getters -----------------------------------------------------------------------

    /// True while the driver should read more bytes from the socket: not closed, not
    /// draining, and fewer than the in-flight limit NOTIFYs unanswered.
    pub fn wants_read(&self) -> bool {
        matches!(self.state, State::AwaitingHello | State::Established)
            && self.in_flight.len() < self.in_flight_limit()
    }

    /// NOTIFYs received and not yet ACKed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The negotiated parameters, once established.
    pub const fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// True once closed (the final [`Event::Closed`] is queued or taken).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// True while a graceful drain waits for in-flight NOTIFYs.
    pub const fn is_draining(&self) -> bool {
        matches!(self.state, State::Draining { .. })
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The largest frame currently accepted (own limit before the handshake, negotiated after).
    pub const fn max_frame_size(&self) -> u32 {
        self.decoder.max_frame_size()
    }

    // ---- internals ---------------------------------------------------------------------

    fn idle_deadline(&self) -> Option<Instant> {
        Some(self.idle_since? + self.config.idle_timeout?)
    }

    fn in_flight_limit(&self) -> usize {
        match &self.negotiated {
            Some(n) if !n.capabilities.pipelining => 1,
            _ => self.config.max_in_flight.max(1),
        }
    }

    fn fragmentation(&self) -> bool {
        self.negotiated
            .as_ref()
            .is_some_and(|n| n.capabilities.fragmentation)
    }

    /// Queues the final AGENT-DISCONNECT for `err` and emits `Closed`.
    fn fail(&mut self, err: ConnectionError) {
        let message = err.to_string();
        self.finish(err, &message);
    }

    fn finish(&mut self, err: ConnectionError, message: &str) {
        if self.state == State::Closed {
            return;
        }
        if let Some(status) = err.status() {
            Disconnect::encode(&mut self.out, FrameType::AGENT_DISCONNECT, status, message);
        }
        self.state = State::Closed;
        self.reassembly = None;
        self.events.push_back(Event::Closed(err));
    }

    fn on_frame(&mut self, frame: RawFrame) -> Result<(), ConnectionError> {
        let h = frame.header;
        let fragmentable = matches!(h.frame_type, FrameType::NOTIFY | FrameType::UNSET);
        if !(h.flags.is_fin() || fragmentable && self.fragmentation()) {
            return Err(ProtocolError::FragmentationNotSupported.into());
        }
        match (self.state, h.frame_type) {
            (State::Closed, _) => Ok(()),
            (_, FrameType::HAPROXY_DISCONNECT) => {
                check_zero_ids(&h)?;
                let d = Disconnect::parse(&frame.payload)?;
                let err = ConnectionError::PeerDisconnected {
                    status: d.status().unwrap_or(StatusCode::UNKNOWN),
                    message: String::from_utf8_lossy(d.message.unwrap_or_default()).into_owned(),
                };
                self.finish(err, "normal");
                Ok(())
            }
            (State::AwaitingHello, FrameType::HAPROXY_HELLO) => {
                check_zero_ids(&h)?;
                let hello = HaproxyHello::parse(&frame.payload)?;
                let negotiated = handshake::negotiate(&hello, &self.config)?;
                if negotiated.healthcheck && self.refuse_health_checks {
                    self.finish(ConnectionError::HealthCheckRefused, "shutting down");
                    return Ok(());
                }
                AgentHello::new(
                    negotiated.max_frame_size,
                    &negotiated.capabilities.to_string(),
                )
                .encode(&mut self.out);
                self.decoder.set_max_frame_size(negotiated.max_frame_size);
                self.hello_deadline = None;
                let healthcheck = negotiated.healthcheck;
                self.negotiated = Some(negotiated.clone());
                self.state = State::Established;
                self.events.push_back(Event::Established(negotiated));
                if healthcheck {
                    self.state = State::Closed;
                    self.events
                        .push_back(Event::Closed(ConnectionError::HealthCheck));
                }
                Ok(())
            }
            (State::AwaitingHello, frame) => Err(ProtocolError::UnexpectedFrame {
                state: self.state.name(),
                frame,
            }
            .into()),
            (_, FrameType::NOTIFY) => {
                if self.reassembly.is_some() {
                    return Err(ProtocolError::InterlacedFrames.into());
                }
                if !h.flags.is_fin() {
                    self.check_reassembly_size(frame.payload.len())?;
                    let mut buf = BytesMut::with_capacity(frame.payload.len() * 2);
                    buf.put_slice(&frame.payload);
                    self.reassembly = Some(Box::new(Reassembly { id: h.id(), buf }));
                    return Ok(());
                }
                let notify = Notify::parse(h.id(), frame.payload)?;
                self.track(notify);
                Ok(())
            }
            (_, FrameType::UNSET) => {
                // only reached with fragmentation negotiated or FIN set
                if !self.fragmentation() {
                    return Err(ProtocolError::FragmentationNotSupported.into());
                }
                let Some(r) = self.reassembly.as_mut() else {
                    if h.flags.is_abort() {
                        return Ok(()); // aborting something already finished: nothing to do
                    }
                    return Err(ProtocolError::FrameIdNotFound.into());
                };
                if r.id != h.id() {
                    return Err(ProtocolError::InterlacedFrames.into());
                }
                if h.flags.is_abort() {
                    self.reassembly = None;
                    return Ok(());
                }
                let total = r.buf.len() + frame.payload.len();
                self.check_reassembly_size(total)?;
                let r = self.reassembly.as_mut().expect("checked above");
                r.buf.put_slice(&frame.payload);
                if h.flags.is_fin() {
                    let r = self.reassembly.take().expect("checked above");
                    let notify = Notify::parse(r.id, r.buf.freeze())?;
                    self.track(notify);
                }
                Ok(())
            }
            (
                _,
                frame @ (FrameType::HAPROXY_HELLO
                | FrameType::AGENT_HELLO
                | FrameType::AGENT_DISCONNECT
                | FrameType::ACK),
            ) => Err(ProtocolError::UnexpectedFrame {
                state: self.state.name(),
                frame,
            }
            .into()),
            (_, other) => {
                self.events.push_back(Event::FrameSkipped(other));
                Ok(())
            }
        }
    }

    fn check_reassembly_size(&self, len: usize) -> Result<(), ProtocolError> {
        let max = self.config.max_reassembly_size;
        if len > max {
            return Err(ProtocolError::ReassemblyTooLarge(max));
        }
        Ok(())
    }

    fn track(&mut self, notify: Notify) {
        self.in_flight.push_back(notify.id());
        self.events.push_back(Event::Notify(notify));
    }
}

fn check_zero_ids(h: &FrameHeader) -> Result<(), ProtocolError> {
    if h.stream_id != 0 || h.frame_id != 0 {
        return Err(ProtocolError::NonZeroIds(h.frame_type));
    }
    Ok(())
}
