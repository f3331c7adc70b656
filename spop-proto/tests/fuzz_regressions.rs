//! Every file of `fuzz/corpus/<target>/` goes through `spop_proto::fuzzing::<target>`, so seeds
//! and crash reproducers committed there are exercised by `cargo test` (no nightly, no
//! cargo-fuzz needed).
//!
//! The `seed-*` files are generated from the golden vectors of `tests/vectors/` by
//! setting `SPOA_WRITE_SEEDS`:
//!
//! ```text
//! SPOA_WRITE_SEEDS=1 cargo test -p spop-proto --test fuzz_regressions
//! ```
//!
//! [`seed_corpus_is_up_to_date`] fails when the committed seeds differ from what it generates.
//! To keep a crash found by the fuzzer, copy the artifact to `fuzz/corpus/<target>/seed-<what>`
//! (hash-named files are the fuzzer's own corpus and are ignored by git).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use spop_proto::frame::{FrameFlags, FrameHeader, encode_frame, split_frame};
use spop_proto::{AgentConfig, AgentConnection, Event, FrameType, fuzzing};

type Target = fn(&[u8]);

/// Fuzz target name (directory of `fuzz/corpus`, `[[bin]]` of `fuzz/Cargo.toml`) → entry point.
const TARGETS: &[(&str, Target)] = &[
    ("frame", fuzzing::frame),
    ("connection", fuzzing::connection),
    ("varint", fuzzing::varint),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn corpus_dir() -> PathBuf {
    fuzz_dir().join("corpus")
}

/// The regular, non-hidden files of a directory, sorted by name.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    v.sort();
    v
}

#[test]
fn corpus_regressions() {
    let root = corpus_dir();
    let mut failures = Vec::new();
    let mut seen = BTreeMap::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let Some(&(_, target)) = TARGETS.iter().find(|(t, _)| *t == name) else {
            panic!(
                "fuzz/corpus/{name}: no such fuzz target in TARGETS of {}",
                file!()
            );
        };
        for file in files(&dir) {
            let data = std::fs::read(&file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                failures.push(file.display().to_string());
            }
            *seen.entry(name.clone()).or_insert(0) += 1;
        }
    }
    assert!(failures.is_empty(), "fuzz regressions: {failures:#?}");
    for (t, _) in TARGETS {
        assert!(
            seen.get(*t).is_some_and(|&n| n > 0),
            "fuzz/corpus/{t} holds no input"
        );
    }
}

/// Every `[[bin]]` of fuzz/Cargo.toml has an entry in [`TARGETS`].
#[test]
fn every_fuzz_target_is_covered() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|section| {
            let line = section
                .lines()
                .find(|l| l.trim_start().starts_with("name"))?;
            line.split('"').nth(1)
        })
        .collect();
    assert!(!bins.is_empty());
    for bin in bins {
        assert!(
            TARGETS.iter().any(|(t, _)| *t == bin),
            "fuzz target {bin} is not in TARGETS"
        );
    }
}

// ---- seed generation ------------------------------------------------------------------------

/// Parses a golden vector: whitespace-separated hex bytes, `#` comments.
fn hex(text: &str) -> Vec<u8> {
    text.lines()
        .flat_map(|l| l.split('#').next().unwrap_or_default().split_whitespace())
        .map(|t| u8::from_str_radix(t, 16).expect("hex byte"))
        .collect()
}

macro_rules! vectors {
    ($($name:literal),* $(,)?) => {
        [$(($name, hex(include_str!(concat!("vectors/", $name, ".hex"))))),*]
    };
}

fn golden() -> BTreeMap<&'static str, Vec<u8>> {
    vectors![
        "haproxy-hello",
        "haproxy-hello-healthcheck",
        "agent-hello",
        "notify-check-client-ip",
        "ack-set-var-ip-score",
        "ack-unset-var-flag",
        "ack-set-var-minus-one",
        "ack-empty",
        "agent-disconnect-normal",
    ]
    .into_iter()
    .collect()
}

/// The table of spop-notes §2: `(value, encoding)`.
fn varint_table() -> Vec<(u64, Vec<u8>)> {
    include_str!("vectors/varint.txt")
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (v, b) = l.split_once('=').unwrap();
            (v.trim().parse().unwrap(), hex(b))
        })
        .collect()
}

/// A frame with the header and payload of `frame` but another type, flags and ids.
fn reframe(
    frame: &[u8],
    ty: FrameType,
    flags: u32,
    sid: u64,
    fid: u64,
    cut: Option<(usize, usize)>,
) -> Vec<u8> {
    let (_, payload, _) = split_frame(frame, u32::MAX).unwrap().unwrap();
    let payload = match cut {
        Some((a, b)) => &payload[a..b.min(payload.len())],
        None => payload,
    };
    let mut b = BytesMut::new();
    encode_frame(
        &mut b,
        FrameHeader::new(ty, FrameFlags(flags), sid, fid),
        |p| {
            p.extend_from_slice(payload);
        },
    );
    b.to_vec()
}

/// A script for `fuzzing::connection`: the first byte is the configuration, then operations.
struct Script(Vec<u8>);

impl Script {
    /// Config byte: bit 0 fragmentation, bit 1 no pipelining, bit 2 pad empty ACKs, bit 3
    /// idle timeout 500 ms, bits 4-7 max in flight - 1.
    fn new(config: u8) -> Self {
        Self(vec![config])
    }

    /// Read ops (`op % 8` in 0..=3) carry `op >> 3` bytes (at most 31) of input.
    fn read(mut self, bytes: &[u8], chunk: usize) -> Self {
        assert!((1..=31).contains(&chunk));
        for part in bytes.chunks(chunk) {
            self.0.push((part.len() as u8) << 3);
            self.0.extend_from_slice(part);
        }
        self
    }

    /// Advance the clock by `steps` × 100 ms and handle timeouts.
    fn wait(mut self, steps: u8) -> Self {
        assert!(steps < 32);
        self.0.push((steps << 3) | 4);
        self
    }

    /// ACK the latest NOTIFY, with a set-var or empty.
    fn ack(mut self, set_var: bool) -> Self {
        self.0.push(if set_var { 8 | 5 } else { 5 });
        self
    }

    /// Start a drain with a deadline `steps` × 50 ms away.
    fn drain(mut self, steps: u8) -> Self {
        assert!(steps < 32);
        self.0.push((steps << 3) | 6);
        self
    }

    fn eof(mut self) -> Self {
        self.0.push(7);
        self
    }
}

/// Every seed: `(target, file name, bytes)`.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let g = golden();
    let mut out = Vec::new();

    // frame: each vector alone, all of them as one stream, and derived shapes
    for (name, bytes) in &g {
        out.push(("frame", format!("seed-{name}"), bytes.clone()));
    }
    out.push((
        "frame",
        "seed-all-vectors".into(),
        g.values().flatten().copied().collect(),
    ));
    let notify = &g["notify-check-client-ip"];
    let mut fragmented = reframe(notify, FrameType::NOTIFY, 0, 1, 1, Some((0, 10)));
    fragmented.extend(reframe(
        notify,
        FrameType::UNSET,
        1,
        1,
        1,
        Some((10, usize::MAX)),
    ));
    out.push(("frame", "seed-notify-fragmented".into(), fragmented));
    out.push((
        "frame",
        "seed-haproxy-disconnect".into(),
        reframe(
            &g["agent-disconnect-normal"],
            FrameType::HAPROXY_DISCONNECT,
            1,
            0,
            0,
            None,
        ),
    ));

    // varint: each row of the table, and the two ways to be invalid
    for (value, bytes) in varint_table() {
        out.push(("varint", format!("seed-{value}"), bytes));
    }
    let mut eleven = vec![0xff; 10];
    eleven.push(0x00);
    out.push(("varint", "seed-invalid-eleven-bytes".into(), eleven));
    out.push((
        "varint",
        "seed-invalid-overflow".into(),
        vec![0xff, 0xf0, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0x0f],
    ));

    // connection: a handshake, then NOTIFYs and ACKs, in various configurations
    let hello = &g["haproxy-hello"];
    let notify_at = |sid| reframe(notify, FrameType::NOTIFY, 1, sid, 1, None);
    let scripts = [
        (
            "handshake-notify-ack",
            Script::new(0x30)
                .read(hello, 31)
                .read(notify, 31)
                .ack(true)
                .read(notify, 31)
                .ack(false)
                .eof(),
        ),
        (
            "healthcheck",
            Script::new(0x00)
                .read(&g["haproxy-hello-healthcheck"], 31)
                .eof(),
        ),
        (
            "byte-by-byte",
            Script::new(0x10)
                .read(hello, 1)
                .read(notify, 1)
                .ack(true)
                .eof(),
        ),
        (
            "pipelined",
            Script::new(0x70)
                .read(
                    &[hello.clone(), notify_at(1), notify_at(3), notify_at(5)].concat(),
                    31,
                )
                .ack(true)
                .ack(false)
                .ack(true)
                .eof(),
        ),
        (
            "no-pipelining",
            Script::new(0x32)
                .read(&[hello.clone(), notify_at(1), notify_at(3)].concat(), 31)
                .ack(true)
                .ack(true)
                .eof(),
        ),
        (
            "pad-empty-ack",
            Script::new(0x04)
                .read(hello, 31)
                .read(notify, 31)
                .ack(false)
                .eof(),
        ),
        (
            "fragmented",
            Script::new(0x01)
                .read(hello, 31)
                .read(
                    &reframe(notify, FrameType::NOTIFY, 0, 1, 1, Some((0, 10))),
                    31,
                )
                .read(
                    &reframe(notify, FrameType::UNSET, 1, 1, 1, Some((10, usize::MAX))),
                    31,
                )
                .ack(true)
                .eof(),
        ),
        (
            "idle-timeout",
            Script::new(0x08)
                .read(hello, 31)
                .read(notify, 31)
                .ack(true)
                .wait(5),
        ),
        (
            "hello-timeout",
            Script::new(0x00)
                .read(&hello[..20], 31)
                .wait(31)
                .wait(31)
                .wait(31)
                .wait(31),
        ),
        (
            "drain",
            Script::new(0x30)
                .read(hello, 31)
                .read(notify, 31)
                .drain(4)
                .ack(true),
        ),
        (
            "haproxy-disconnect",
            Script::new(0x00).read(hello, 31).read(
                &reframe(
                    &g["agent-disconnect-normal"],
                    FrameType::HAPROXY_DISCONNECT,
                    1,
                    0,
                    0,
                    None,
                ),
                31,
            ),
        ),
        (
            "garbage-instead-of-hello",
            Script::new(0x00).read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 31),
        ),
    ];
    for (name, script) in scripts {
        out.push(("connection", format!("seed-{name}"), script.0));
    }
    out
}

#[test]
fn seed_corpus_is_up_to_date() {
    let write = std::env::var_os("SPOA_WRITE_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        let path = corpus_dir().join(target).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `SPOA_WRITE_SEEDS=1 cargo test -p spop-proto --test fuzz_regressions`",
                path.display()
            )
        });
        assert!(
            on_disk == bytes,
            "{} is stale; run `SPOA_WRITE_SEEDS=1 cargo test -p spop-proto --test fuzz_regressions`",
            path.display()
        );
    }
}

// ---- the connection seeds do what their names say -------------------------------------------

/// Replays a connection script the way `fuzzing::connection` reads it and lists what happened.
#[allow(clippy::disallowed_methods)] // a test needs some instant to start the injected clock from
fn replay(script: &[u8]) -> Vec<String> {
    let (&flags, mut data) = script.split_first().unwrap();
    let mut config = AgentConfig::default();
    config.fragmentation = flags & 1 != 0;
    config.pipelining = flags & 2 == 0;
    config.pad_empty_ack = flags & 4 != 0;
    config.max_in_flight = usize::from(flags >> 4) + 1;
    config.max_reassembly_size = 4096;
    config.idle_timeout = (flags & 8 != 0).then(|| Duration::from_millis(500));
    let mut now = Instant::now();
    let mut conn = AgentConnection::new(Arc::new(config), now);
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    let mut pending = Vec::new();
    let mut log = Vec::new();
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
                    let mut actions = spop_proto::Actions::new();
                    if op & 8 != 0 {
                        actions.set_var(spop_proto::Scope::Transaction, "v", i64::from(op));
                    }
                    conn.send_ack(now, id, &actions).unwrap();
                    log.push("ack".to_owned());
                    conn.handle_read(now, &mut rbuf);
                }
            }
            6 => conn.begin_drain(now, now + Duration::from_millis(u64::from(op >> 3) * 50)),
            _ => conn.handle_eof(now),
        }
        wbuf.clear();
        conn.poll_transmit(&mut wbuf);
        while let Some(ev) = conn.poll_event() {
            log.push(match ev {
                Event::Established(n) if n.healthcheck => "established(healthcheck)".to_owned(),
                Event::Established(_) => "established".to_owned(),
                Event::Notify(n) => {
                    pending.push(n.id());
                    format!("notify({})", n.id().stream_id)
                }
                Event::Closed(e) => format!("closed({e})"),
                other => format!("{other:?}"),
            });
        }
    }
    log
}

#[test]
fn connection_seeds_reach_their_states() {
    let seeds: BTreeMap<String, Vec<u8>> = seeds()
        .into_iter()
        .filter(|(t, _, _)| *t == "connection")
        .map(|(_, n, b)| (n, b))
        .collect();
    let log = |name: &str| replay(&seeds[&format!("seed-{name}")]);
    let starts = |name: &str, prefix: &[&str]| {
        let l = log(name);
        assert!(
            l.len() >= prefix.len() && l[..prefix.len()] == *prefix,
            "{name}: {l:?}"
        );
        l
    };
    let closed = |l: &[String], what: &str| {
        assert!(
            l.last()
                .is_some_and(|e| e.starts_with("closed") && e.to_lowercase().contains(what)),
            "{l:?} should end closed with {what:?}"
        );
    };

    // every script ending with an EOF while idle is a clean close by the peer
    for name in [
        "handshake-notify-ack",
        "byte-by-byte",
        "pipelined",
        "no-pipelining",
        "pad-empty-ack",
        "fragmented",
    ] {
        closed(&log(name), "closed by peer (idle)");
    }
    starts(
        "handshake-notify-ack",
        &["established", "notify(1)", "ack", "notify(1)", "ack"],
    );
    let l = starts("healthcheck", &["established(healthcheck)"]);
    closed(&l, "health check");
    starts("byte-by-byte", &["established", "notify(1)", "ack"]);
    starts(
        "pipelined",
        &[
            "established",
            "notify(1)",
            "notify(3)",
            "notify(5)",
            "ack",
            "ack",
            "ack",
        ],
    );
    // without pipelining the second NOTIFY is read only once the first is answered
    starts(
        "no-pipelining",
        &["established", "notify(1)", "ack", "notify(3)", "ack"],
    );
    starts("pad-empty-ack", &["established", "notify(1)", "ack"]);
    starts("fragmented", &["established", "notify(1)", "ack"]);
    let l = starts("idle-timeout", &["established", "notify(1)", "ack"]);
    closed(&l, "idle timeout");
    let l = log("hello-timeout");
    assert_eq!(l.len(), 1, "{l:?}");
    closed(&l, "hello timeout");
    let l = starts("drain", &["established", "notify(1)", "ack"]);
    closed(&l, "closed locally: normal");
    let l = starts("haproxy-disconnect", &["established"]);
    closed(&l, "peer disconnected");
    let l = log("garbage-instead-of-hello");
    assert_eq!(l.len(), 1, "{l:?}");
    closed(&l, "exceeds the maximum");
}
