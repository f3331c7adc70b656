//! Hostile-peer robustness, item 2: a socket-level matrix of malformed input against a running
//! agent.
//!
//! The matrix runs against the real `spoa echo` binary (a child process, default settings:
//! max-frame-size 16380, pipelining, hello timeout 10 s). For every case:
//!
//! 1. a healthy connection A completes its handshake and gets an ACK for a NOTIFY;
//! 2. a bad connection B (optionally after its own handshake) sends the case's bytes and must
//!    see the expected outcome within [`STEP`] (2 s): an AGENT-DISCONNECT (FIN, ids 0/0) with
//!    the expected status code followed by a clean EOF, or the outcome noted in the table;
//! 3. the agent process is still running;
//! 4. A still gets ACKs for new NOTIFYs;
//! 5. a third connection C opened afterwards completes a handshake and a NOTIFY→ACK;
//! 6. once A, B and C are closed, the agent's fd count is back where it was before A opened:
//!    no connection, the bad one included, is leaked.
//!
//! All cases run (one loop over the table); the test fails at the end listing every case that
//! did not behave, and prints the observed outcome of every case.
//!
//! The slow-HELLO case (one byte per second) needs a short hello timeout, which `spoa echo`
//! has no flag for: it runs against an in-process `spoa_runtime::Server` with a 1 s hello
//! timeout in its own test.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use spoa_runtime::{Request, Server, handler_fn};
use spop_proto::frame::{FrameFlags, HaproxyHello};
use spop_proto::{Actions, FrameType, KvList, NotifyId, Scope, StatusCode, TypedData};
use spop_tests::hostile::{
    EchoAgent, InProcessAgent, Peer, Reply, STEP, hello, hello_frame, length_prefix, notify_frame,
    notify_i, poll_until, raw_frame,
};

/// What B does before the case's bytes.
#[derive(Debug, Clone, Copy)]
enum Prelude {
    /// Nothing: the bytes are the first thing on the connection.
    Fresh,
    /// A handshake offering this max-frame-size (the agent accepts `min(offer, 16380)`).
    Handshake(u64),
}

/// What B must observe after sending the case's bytes.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// AGENT-DISCONNECT with this status code, then a clean EOF.
    Disconnect(u64),
    /// AGENT-HELLO with this max-frame-size; then a NOTIFY on B gets its ACK.
    AgentHello(u64),
    /// No reply to the bytes; the connection lives: a following NOTIFY gets its ACK (and the
    /// ACK is the first frame B receives).
    Lives,
    /// B then closes its sending side (vanishes mid-frame): the agent must close its side
    /// without sending anything (B reads EOF).
    EofAfterHalfClose,
}

struct Case {
    name: &'static str,
    prelude: Prelude,
    bytes: Vec<u8>,
    expect: Expect,
}

fn case(name: &'static str, prelude: Prelude, bytes: Vec<u8>, expect: Expect) -> Case {
    Case {
        name,
        prelude,
        bytes,
        expect,
    }
}

/// A HAPROXY-HELLO with fields removed or replaced.
fn hello_with(edit: impl FnOnce(&mut HaproxyHello<'static>)) -> Vec<u8> {
    let mut h = HaproxyHello::new(16380, "pipelining");
    edit(&mut h);
    hello_frame(&h)
}

/// A NOTIFY frame (FIN, ids 1/1) with a hand-written payload.
fn notify_payload(payload: &[u8]) -> Vec<u8> {
    raw_frame(FrameType::NOTIFY, 1, 1, 1, payload)
}

fn cases() -> Vec<Case> {
    use Expect::{AgentHello, Disconnect, EofAfterHalfClose, Lives};
    use Prelude::{Fresh, Handshake};
    let hs = Handshake(16380);
    let mut v = vec![case("length 0", Fresh, length_prefix(0, 0), Disconnect(4))];
    for (n, name) in [
        (1, "length 1"),
        (2, "length 2"),
        (3, "length 3"),
        (4, "length 4"),
        (5, "length 5"),
        (6, "length 6"),
    ] {
        // the prefix and that many body bytes: below the 7-byte minimum frame
        v.push(case(
            name,
            Fresh,
            length_prefix(n, n as usize),
            Disconnect(4),
        ));
    }
    // HELLO with a KV whose type nibble is reserved (0x0e): its length is unknowable
    let mut bad_kv = Vec::new();
    KvList::put(&mut bad_kv, "supported-versions", TypedData::String(b"2.0"));
    KvList::put(&mut bad_kv, "max-frame-size", TypedData::Uint32(16380));
    bad_kv.extend_from_slice(&[12]);
    bad_kv.extend_from_slice(b"capabilities");
    bad_kv.extend_from_slice(&[0x0e, 0x00]);

    v.extend([
        // refused on the 4 prefix bytes alone, before any body byte is sent
        case(
            "length 0xFFFFFFFF (prefix only)",
            Fresh,
            length_prefix(u32::MAX, 0),
            Disconnect(3),
        ),
        // the same with 256 KiB of body behind it: the agent closes with unread input, and
        // the AGENT-DISCONNECT (then the FIN) must still reach the peer
        case(
            "length 0xFFFFFFFF + 256 KiB of body",
            Fresh,
            length_prefix(u32::MAX, 256 * 1024),
            Disconnect(3),
        ),
        case(
            "length 16381 before HELLO (above the agent's 16380)",
            Fresh,
            length_prefix(16_381, 0),
            Disconnect(3),
        ),
        case(
            "length 1025 after negotiating 1024",
            Handshake(1024),
            length_prefix(1025, 0),
            Disconnect(3),
        ),
        // "GET " read as a big-endian length is 0x47455420 = 1195725856 > 16380: frame too big
        case(
            "HTTP request line instead of HELLO",
            Fresh,
            b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n".to_vec(),
            Disconnect(3),
        ),
        case(
            "NOTIFY before HELLO",
            Fresh,
            notify_frame(&notify_i(NotifyId::new(1, 1), 1)),
            Disconnect(4),
        ),
        case("HELLO twice", hs, hello(16380, "pipelining"), Disconnect(4)),
        case(
            "HELLO with non-zero ids",
            Fresh,
            {
                // ids are the two 1-byte varints after type + flags: bytes 9 and 10
                let mut b = hello(16380, "pipelining");
                b[9] = 1;
                b[10] = 1;
                b
            },
            Disconnect(4),
        ),
        case(
            "HELLO with unsupported version 1.0",
            Fresh,
            hello_with(|h| h.supported_versions = Some(b"1.0")),
            Disconnect(8),
        ),
        case(
            "HELLO without supported-versions",
            Fresh,
            hello_with(|h| h.supported_versions = None),
            Disconnect(5),
        ),
        case(
            "HELLO without max-frame-size",
            Fresh,
            hello_with(|h| h.max_frame_size = None),
            Disconnect(6),
        ),
        case(
            "HELLO with max-frame-size 100",
            Fresh,
            hello(100, "pipelining"),
            Disconnect(9),
        ),
        case(
            "HELLO with max-frame-size 255",
            Fresh,
            hello(255, "pipelining"),
            Disconnect(9),
        ),
        case(
            "HELLO with max-frame-size 256 (the minimum)",
            Fresh,
            hello(256, "pipelining"),
            AgentHello(256),
        ),
        // above the agent's own limit: it clamps to its 16380
        case(
            "HELLO with max-frame-size 1000000",
            Fresh,
            hello(1_000_000, "pipelining"),
            AgentHello(16380),
        ),
        case(
            "HELLO with max-frame-size u64::MAX (UINT64)",
            Fresh,
            hello(u64::MAX, "pipelining"),
            AgentHello(16380),
        ),
        case(
            "HELLO KV with unknown data type 0x0e",
            Fresh,
            raw_frame(FrameType::HAPROXY_HELLO, 1, 0, 0, &bad_kv),
            Disconnect(4),
        ),
        case(
            "NOTIFY arg with unknown data type 0x0e",
            hs,
            notify_payload(&[1, b'm', 1, 1, b'a', 0x0e, 0]),
            Disconnect(4),
        ),
        // INT64 whose varint announces a continuation byte that never comes
        case(
            "truncated varint at the end of a NOTIFY",
            hs,
            notify_payload(&[1, b'm', 1, 1, b'i', 0x04, 0xf5]),
            Disconnect(4),
        ),
        // length 7: type, flags, stream-id 0, then frame-id 0xf0 needing one more byte
        case(
            "truncated varint in a frame header",
            Fresh,
            vec![0, 0, 0, 7, 1, 0, 0, 0, 1, 0, 0xf0],
            Disconnect(4),
        ),
        // eleven continuation bytes: longer than the 10-byte maximum
        case(
            "over-long varint (11 bytes) as stream-id",
            hs,
            {
                let mut b = vec![0, 0, 0, 18, 3, 0, 0, 0, 1];
                b.extend_from_slice(&[0xff; 11]);
                b.extend_from_slice(&[0x01, 0x00]);
                b
            },
            Disconnect(4),
        ),
        case(
            "nb-args 3 with one arg present",
            hs,
            notify_payload(&[1, b'm', 3, 1, b'a', 0x00]),
            Disconnect(4),
        ),
        case(
            "non-UTF-8 message name",
            hs,
            notify_payload(&[2, 0xc3, 0x28, 0]),
            Disconnect(4),
        ),
        case(
            "NOTIFY without FIN (fragmentation not negotiated)",
            hs,
            raw_frame(FrameType::NOTIFY, 0, 1, 1, &[1, b'm', 0]),
            Disconnect(10),
        ),
        case(
            "UNSET continuation frame (type 0)",
            hs,
            raw_frame(FrameType::UNSET, 1, 1, 1, &[1, b'm', 0]),
            Disconnect(10),
        ),
        case(
            "ACK frame from the peer (an agent frame type)",
            hs,
            raw_frame(FrameType::ACK, 1, 1, 1, &[]),
            Disconnect(4),
        ),
        case(
            "HAPROXY-DISCONNECT (answered with status 0)",
            hs,
            {
                let mut p = Vec::new();
                KvList::put(&mut p, "status-code", TypedData::Uint32(0));
                KvList::put(&mut p, "message", TypedData::String(b"bye"));
                raw_frame(FrameType::HAPROXY_DISCONNECT, 1, 0, 0, &p)
            },
            Disconnect(0),
        ),
        case(
            "unknown frame type 42 (skipped)",
            hs,
            raw_frame(FrameType(42), 1, 0, 0, b"\x01\x02some payload"),
            Lives,
        ),
        // before the handshake only a HELLO is acceptable, whatever the type
        case(
            "unknown frame type 42 before HELLO",
            Fresh,
            raw_frame(FrameType(42), 1, 0, 0, b"\x01\x02"),
            Disconnect(4),
        ),
        case(
            "peer vanishes mid-NOTIFY",
            hs,
            notify_frame(&notify_i(NotifyId::new(1, 1), 7))[..10].to_vec(),
            EofAfterHalfClose,
        ),
        case(
            "peer vanishes mid-HELLO",
            Fresh,
            hello(16380, "pipelining")[..20].to_vec(),
            EofAfterHalfClose,
        ),
        case(
            "peer vanishes after a length prefix",
            hs,
            length_prefix(100, 0),
            EofAfterHalfClose,
        ),
    ]);
    v
}

/// What a target exposes to the per-case checks.
trait Target {
    fn addr(&self) -> std::net::SocketAddr;
    fn alive(&mut self) -> Result<(), String>;
    /// A count that goes up by one per open connection and back down when it closes.
    fn open_count(&self) -> usize;
}

impl Target for EchoAgent {
    fn addr(&self) -> std::net::SocketAddr {
        Self::addr(self)
    }
    fn alive(&mut self) -> Result<(), String> {
        Self::alive(self)
    }
    fn open_count(&self) -> usize {
        self.fd_count()
    }
}

impl Target for InProcessAgent {
    fn addr(&self) -> std::net::SocketAddr {
        Self::addr(self)
    }
    fn alive(&mut self) -> Result<(), String> {
        Self::alive(self)
    }
    fn open_count(&self) -> usize {
        usize::try_from(self.metrics().connections_active).unwrap_or(usize::MAX)
    }
}

/// B's outcome for one case; `Ok` carries a description of what was observed.
fn observe_b(b: &mut Peer, expect: Expect, sent: Result<(), String>) -> Result<String, String> {
    let start = Instant::now();
    match expect {
        Expect::Disconnect(code) => {
            // A failed write (the agent closed first) is fine as long as the frame arrived.
            let f = b.recv_frame().map_err(|e| {
                format!(
                    "expected AGENT-DISCONNECT status {code}: {e} (our write: {:?})",
                    sent.as_ref().err()
                )
            })?;
            let waited = start.elapsed();
            match &f.reply {
                Reply::Disconnect {
                    status: Some(s),
                    message,
                } if *s == code => {
                    if f.header.flags != FrameFlags::FIN || f.header.id() != NotifyId::new(0, 0) {
                        return Err(format!(
                            "AGENT-DISCONNECT with header {:?} (want FIN, ids 0/0)",
                            f.header
                        ));
                    }
                    b.expect_eof()
                        .map_err(|e| format!("after AGENT-DISCONNECT {code}: {e}"))?;
                    Ok(format!(
                        "AGENT-DISCONNECT {code} {message:?} after {waited:.1?}, then EOF"
                    ))
                }
                _ => Err(format!("expected AGENT-DISCONNECT status {code}, got {f}")),
            }
        }
        Expect::AgentHello(size) => {
            sent?;
            let got = b.expect_agent_hello()?;
            if got != size {
                return Err(format!("AGENT-HELLO max-frame-size {got}, expected {size}"));
            }
            b.echo_roundtrip(NotifyId::new(1, 1), 11)
                .map_err(|e| format!("B after its handshake: {e}"))?;
            Ok(format!(
                "AGENT-HELLO max-frame-size {got}; NOTIFY on B ACKed"
            ))
        }
        Expect::Lives => {
            sent?;
            b.echo_roundtrip(NotifyId::new(1, 1), 12)
                .map_err(|e| format!("B after the skipped frame: {e}"))?;
            Ok("no reply; the next NOTIFY on B ACKed".into())
        }
        Expect::EofAfterHalfClose => {
            sent?;
            b.half_close()?;
            b.expect_eof()
                .map_err(|e| format!("after B half-closed mid-frame: {e}"))?;
            Ok(format!(
                "agent closed without a frame {:.1?} after B's FIN",
                start.elapsed()
            ))
        }
    }
}

fn run_case(target: &mut dyn Target, c: &Case, n: u64) -> Result<String, String> {
    let addr = target.addr();
    let baseline = target.open_count();

    let mut a = Peer::connect(addr).map_err(|e| format!("A: {e}"))?;
    a.handshake().map_err(|e| format!("A: {e}"))?;
    a.echo_roundtrip(NotifyId::new(1, 1), 1)
        .map_err(|e| format!("A before B: {e}"))?;

    let mut b = Peer::connect(addr).map_err(|e| format!("B: {e}"))?;
    if let Prelude::Handshake(offer) = c.prelude {
        let got = b
            .handshake_with(offer)
            .map_err(|e| format!("B's prelude: {e}"))?;
        if got != offer.min(16380) {
            return Err(format!(
                "B's prelude: AGENT-HELLO max-frame-size {got} for an offer of {offer}"
            ));
        }
    }
    let sent = b.send(&c.bytes);
    let observed = observe_b(&mut b, c.expect, sent)?;

    target.alive()?;
    a.echo_roundtrip(NotifyId::new(3, 1), 2)
        .map_err(|e| format!("A after B: {e}"))?;
    let mut cc = Peer::connect(addr).map_err(|e| format!("C: {e}"))?;
    cc.handshake().map_err(|e| format!("C: {e}"))?;
    cc.echo_roundtrip(NotifyId::new(1, 1), 3)
        .map_err(|e| format!("C: {e}"))?;
    a.echo_roundtrip(NotifyId::new(5, 1), i64::try_from(n).unwrap_or(0))
        .map_err(|e| format!("A after C: {e}"))?;

    drop((a, b, cc));
    if poll_until(STEP, || (target.open_count() <= baseline).then_some(())).is_none() {
        return Err(format!(
            "connections not released: open count {} > {baseline} before the case, {STEP:?} \
             after closing A, B and C",
            target.open_count()
        ));
    }
    target.alive()?;
    Ok(observed)
}

fn run_matrix(target: &mut dyn Target, label: &str) {
    let cases = cases();
    let started = Instant::now();
    let mut report = String::new();
    let mut failures = Vec::new();
    for (n, c) in (1u64..).zip(&cases) {
        let t = Instant::now();
        let res = run_case(target, c, n);
        let took = t.elapsed();
        match res {
            Ok(observed) => {
                let _ = writeln!(report, "  ok   {:<52} {observed} [{took:.0?}]", c.name);
            }
            Err(e) => {
                let _ = writeln!(report, "  FAIL {:<52} {e} [{took:.0?}]", c.name);
                failures.push(format!(
                    "{} (prelude {:?}, expected {:?}, bytes {:02x?}): {e}",
                    c.name,
                    c.prelude,
                    c.expect,
                    &c.bytes[..c.bytes.len().min(48)]
                ));
            }
        }
        if target.alive().is_err() {
            break;
        }
    }
    eprintln!(
        "hostile matrix against {label}: {} cases in {:.1?}\n{report}",
        cases.len(),
        started.elapsed()
    );
    if let Err(e) = target.alive() {
        failures.push(e);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed against {label}:\n- {}",
        failures.len(),
        cases.len(),
        failures.join("\n- ")
    );
}

/// The whole matrix against the real `spoa echo` binary.
#[test]
fn malformed_input_matrix_against_spoa_echo() {
    let mut agent = EchoAgent::start(&[]);
    run_matrix(&mut agent, "spoa echo");
}

fn echo_handler() -> impl spoa_runtime::Handler {
    handler_fn(|req: Request| async move {
        let mut actions = Actions::new();
        for m in req.messages() {
            for a in m.args() {
                actions.set_var_unchecked(Scope::Transaction, a.name, a.value);
            }
        }
        Ok::<_, std::convert::Infallible>(actions)
    })
}

/// The same matrix against an in-process server, to cross-check the runtime's disconnect
/// counters: one AGENT-DISCONNECT per `Disconnect` case, by status code.
#[test]
fn malformed_input_matrix_in_process_metrics() {
    let mut agent = InProcessAgent::start(Server::builder(), echo_handler());
    run_matrix(&mut agent, "in-process Server");
    let mut want: Vec<(StatusCode, u64)> = Vec::new();
    for c in cases() {
        if let Expect::Disconnect(code) = c.expect {
            let code = StatusCode(u32::try_from(code).expect("small code"));
            match want.iter_mut().find(|(s, _)| *s == code) {
                Some((_, n)) => *n += 1,
                None => want.push((code, 1)),
            }
        }
    }
    want.sort();
    let m = agent.metrics();
    assert_eq!(
        m.disconnects, want,
        "AGENT-DISCONNECTs counted by status code (metrics {m:?})"
    );
    assert_eq!(m.connections_active, 0, "connections left open: {m:?}");
}

/// A peer sending its HELLO one byte per second is closed by the hello timeout (status 2).
///
/// `spoa echo` has no hello-timeout flag (its default is 10 s), so this runs against an
/// in-process server with a 1 s hello timeout. Bound: the AGENT-DISCONNECT must come between
/// 0.9 s and 3 s after the connection opened; the whole test takes about 2 s.
#[test]
fn slow_hello_is_closed_by_the_hello_timeout() {
    let hello_timeout = Duration::from_secs(1);
    let mut agent = InProcessAgent::start(
        Server::builder().hello_timeout(Some(hello_timeout)),
        echo_handler(),
    );
    let addr = agent.addr();
    let test_start = Instant::now();

    let mut a = Peer::connect(addr).expect("A");
    a.handshake().expect("A handshake");
    a.echo_roundtrip(NotifyId::new(1, 1), 1)
        .expect("A before B");

    let mut b = Peer::connect(addr).expect("B");
    let b_opened = Instant::now();
    let mut writer = b.socket().try_clone().expect("clone B");
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let stop = Arc::clone(&stop);
        let bytes = hello(16380, "pipelining");
        thread::spawn(move || {
            use std::io::Write as _;
            let mut sent = 0;
            for byte in bytes {
                if stop.load(Ordering::Relaxed) || writer.write_all(&[byte]).is_err() {
                    break;
                }
                sent += 1;
                // one byte per second, in small sleeps so the thread stops promptly
                for _ in 0..10 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }
            sent
        })
    };

    let f = b
        .recv(Duration::from_secs(3))
        .expect("B: AGENT-DISCONNECT within 3 s")
        .expect("B: a frame, not EOF");
    let waited = b_opened.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent = trickle.join().expect("trickle thread");
    match &f.reply {
        Reply::Disconnect {
            status: Some(2),
            message,
        } => eprintln!(
            "slow HELLO: AGENT-DISCONNECT 2 {message:?} after {waited:.2?} ({sent} bytes of the \
             HELLO sent)"
        ),
        _ => panic!("B: expected AGENT-DISCONNECT status 2, got {f}"),
    }
    assert!(
        waited >= hello_timeout - Duration::from_millis(100) && waited < Duration::from_secs(3),
        "hello timeout {hello_timeout:?} fired after {waited:?} (bound 0.9 s .. 3 s)"
    );
    b.expect_eof().expect("B: EOF after the AGENT-DISCONNECT");

    agent.alive().expect("agent alive");
    a.echo_roundtrip(NotifyId::new(3, 1), 2).expect("A after B");
    let mut c = Peer::connect(addr).expect("C");
    c.handshake().expect("C handshake");
    c.echo_roundtrip(NotifyId::new(1, 1), 3).expect("C");
    drop((a, b, c));

    assert!(
        poll_until(STEP, || (agent.metrics().connections_active == 0)
            .then_some(()))
        .is_some(),
        "connections left open: {:?}",
        agent.metrics()
    );
    let m = agent.metrics();
    assert_eq!(m.disconnects, [(StatusCode::TIMEOUT, 1)], "{m:?}");
    let took = test_start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "test took {took:?} (bound 5 s)"
    );
    // the agent must be fully usable again
    Target::alive(&mut agent).expect("agent alive at the end");
}
