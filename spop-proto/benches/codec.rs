//! Hot-path benches of the SPOP codec: NOTIFY split + validate + walk, the named-argument
//! lookup, typed extraction of three arguments (`Message::get`, and `Message::deserialize`
//! with `--features serde`), a 20-header `req.hdrs_bin` block (validate, iterate, two
//! lookups), and ACK encoding, with a `memcpy` of the same NOTIFY frame as the baseline.
//! The `notify_decode_walk/baseline_*` benches run the hand-written decoder the library used
//! before its grammar moved to nom (`benches/baseline/`), on the same frame, in the same run.
//!
//! Before criterion runs, every benchmarked operation is run 10 000 times under a counting
//! global allocator and the allocations per operation are printed; the NOTIFY decode paths
//! (and the ACK encode with a reused builder) must allocate nothing in steady state.
//!
//! ```text
//! cargo bench -p spop-proto --features serde --bench codec -- --warm-up-time 1 --measurement-time 3
//! SPOP_BENCH_MIN_OF=1 cargo bench -p spop-proto --bench codec   # best-of-30 runs, no criterion
//! ```

// The counting allocator needs `unsafe impl GlobalAlloc`; the workspace lint is `deny`, not
// `forbid`, so that this bench (and only this bench) may allow it.
#![allow(unsafe_code)]

mod baseline;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{Criterion, Throughput};
use spop_proto::frame::{FrameDecoder, MessageList, split_frame};
use spop_proto::{
    Actions, ArgError, FrameType, HeaderBlock, Message, Notify, NotifyId, Scope, TypedData,
};

// ---------------------------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------------------------

/// Counts every call that hands out memory (`alloc`, `alloc_zeroed`, `realloc`).
struct CountingAlloc;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocs() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const MAX_FRAME: u32 = 16380;
const ID: NotifyId = NotifyId::new(1, 1);
const MESSAGE: &str = "check-request";
const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 20);
const PATH: &str = "/api/v1/items?id=42";
const HOST: &str = "www.example.com";
const N: i64 = 1_234_567_890_123;

fn put_str(b: &mut Vec<u8>, s: &[u8]) {
    spop_proto::varint::put(b, s.len() as u64);
    b.extend_from_slice(s);
}

/// The NOTIFY frame (length prefix included) as HAProxy sends it for
/// `spoe-message check-request args src method path host n=...`, assembled field by field
/// rather than with the crate's builder (which must agree; checked below).
fn notify_frame() -> Vec<u8> {
    let mut p = Vec::new();
    put_str(&mut p, MESSAGE.as_bytes());
    p.push(5); // nb-args
    put_str(&mut p, b"src");
    p.push(0x06);
    p.extend_from_slice(&SRC.octets());
    put_str(&mut p, b"method");
    p.push(0x08);
    put_str(&mut p, b"GET");
    put_str(&mut p, b"path");
    p.push(0x08);
    put_str(&mut p, PATH.as_bytes());
    put_str(&mut p, b"host");
    p.push(0x08);
    put_str(&mut p, HOST.as_bytes());
    put_str(&mut p, b"n");
    p.push(0x04);
    spop_proto::varint::put(&mut p, N as u64);

    let mut f = Vec::new();
    f.push(FrameType::NOTIFY.0);
    f.extend_from_slice(&1u32.to_be_bytes()); // FIN
    spop_proto::varint::put(&mut f, ID.stream_id);
    spop_proto::varint::put(&mut f, ID.frame_id);
    f.extend_from_slice(&p);
    let mut out = Vec::with_capacity(4 + f.len());
    out.put_u32(u32::try_from(f.len()).unwrap());
    out.extend_from_slice(&f);

    // cross-check against the crate's encoder
    let mut via_builder = BytesMut::new();
    Notify::builder(ID)
        .message(MESSAGE)
        .arg("src", SRC)
        .arg("method", "GET")
        .arg("path", PATH)
        .arg("host", HOST)
        .arg("n", N)
        .build()
        .encode(&mut via_builder);
    assert_eq!(&via_builder[..], &out[..], "hand-built NOTIFY differs");
    out
}

/// Touches every message and every argument value; returns a count so nothing is dead.
#[inline]
fn walk<'a>(messages: impl Iterator<Item = Message<'a>>) -> usize {
    let mut n = 0;
    for m in messages {
        black_box(m.name());
        for a in m.args() {
            black_box(a.name);
            black_box(a.value);
            n += 1;
        }
    }
    n
}

// ---------------------------------------------------------------------------------------------
// The operations (shared by the allocation report and criterion)
// ---------------------------------------------------------------------------------------------

/// Baseline: copy the frame's bytes into a preallocated buffer.
#[inline]
fn op_memcpy(frame: &[u8], dst: &mut [u8]) {
    dst[..frame.len()].copy_from_slice(black_box(frame));
    black_box(&dst[..frame.len()]);
}

/// `split_frame` alone (length prefix + header).
#[inline]
fn op_split(frame: &[u8]) {
    let (hdr, payload, used) = split_frame(black_box(frame), MAX_FRAME).unwrap().unwrap();
    black_box((hdr, payload, used));
}

/// Borrowed path: `split_frame` on a slice, `MessageList::parse`, walk.
#[inline]
fn op_walk_slice(frame: &[u8]) -> usize {
    let (hdr, payload, _) = split_frame(black_box(frame), MAX_FRAME).unwrap().unwrap();
    assert!(hdr.frame_type == FrameType::NOTIFY && hdr.flags.is_fin());
    let list = MessageList::parse(payload).unwrap();
    walk(list.iter())
}

/// Owned path, as `AgentConnection` does it: the frame lands in the read buffer (one copy, as a
/// socket read would), `FrameDecoder::decode` splits it off zero-copy, `Notify::parse`
/// validates, walk. The read buffer's allocation is reused once the frame is dropped.
#[inline]
fn op_walk_decoder(frame: &[u8], dec: &mut FrameDecoder, rbuf: &mut BytesMut) -> usize {
    rbuf.extend_from_slice(black_box(frame));
    let raw = dec.decode(rbuf).unwrap().unwrap();
    assert!(raw.header.frame_type == FrameType::NOTIFY && raw.header.flags.is_fin());
    let notify = Notify::parse(raw.header.id(), raw.payload).unwrap();
    walk(notify.messages())
}

/// Owned path without the socket copy: the payload is a pre-built `Bytes` (refcount bump).
#[inline]
fn op_walk_bytes(payload: &Bytes) -> usize {
    let notify = Notify::parse(ID, black_box(payload).clone()).unwrap();
    walk(notify.messages())
}

/// Touches every message and argument of the baseline decoder, like [`walk`].
#[inline]
fn walk_baseline<'a>(messages: impl Iterator<Item = baseline::Message<'a>>) -> usize {
    let mut n = 0;
    for m in messages {
        black_box(m.name());
        for a in m.args() {
            black_box(a.name);
            black_box(a.value);
            n += 1;
        }
    }
    n
}

/// [`op_walk_slice`] with the hand-written decoder the library used before nom.
#[inline]
fn op_baseline_walk_slice(frame: &[u8]) -> usize {
    let (hdr, payload, _) = baseline::split_frame(black_box(frame), MAX_FRAME)
        .unwrap()
        .unwrap();
    assert!(hdr.frame_type == FrameType::NOTIFY && hdr.flags.is_fin());
    walk_baseline(baseline::validate(payload).unwrap())
}

/// [`op_walk_decoder`] with the hand-written decoder the library used before nom.
#[inline]
fn op_baseline_walk_decoder(frame: &[u8], rbuf: &mut BytesMut) -> usize {
    rbuf.extend_from_slice(black_box(frame));
    let (hdr, payload) = baseline::decode_frame(rbuf, MAX_FRAME).unwrap().unwrap();
    assert!(hdr.frame_type == FrameType::NOTIFY && hdr.flags.is_fin());
    let notify = baseline::Notify::parse(hdr.id(), payload).unwrap();
    black_box(notify.id());
    walk_baseline(notify.messages())
}

/// [`op_walk_bytes`] with the hand-written decoder the library used before nom.
#[inline]
fn op_baseline_walk_bytes(payload: &Bytes) -> usize {
    let notify = baseline::Notify::parse(ID, black_box(payload).clone()).unwrap();
    walk_baseline(notify.messages())
}

/// Lookup in an already validated NOTIFY.
#[inline]
fn op_lookup(notify: &Notify) -> Option<TypedData<'_>> {
    black_box(notify).message(MESSAGE)?.arg("host")
}

/// Split + validate + lookup (no full walk).
#[inline]
fn op_decode_lookup(frame: &[u8]) -> usize {
    let (_, payload, _) = split_frame(black_box(frame), MAX_FRAME).unwrap().unwrap();
    let list = MessageList::parse(payload).unwrap();
    let host = list
        .iter()
        .find(|m| m.name() == MESSAGE)
        .and_then(|m| m.arg("host"));
    black_box(host).map_or(0, |v| v.as_bytes().map_or(0, <[u8]>::len))
}

#[inline]
fn push_actions(a: &mut Actions) {
    a.set_var(Scope::Transaction, "ip_score", 42i64).set_var(
        Scope::Transaction,
        "verdict",
        "allow",
    );
}

/// ACK encode, the `Actions` builder reused (`clear`), into a reused write buffer.
#[inline]
fn op_ack_reused(actions: &mut Actions, wbuf: &mut BytesMut) {
    actions.clear();
    push_actions(actions);
    wbuf.clear();
    actions.encode_ack(black_box(ID), wbuf);
    black_box(&wbuf[..]);
}

/// ACK encode with a fresh `Actions` per operation, into a reused write buffer.
#[inline]
fn op_ack_fresh(wbuf: &mut BytesMut) {
    let mut actions = Actions::new();
    push_actions(&mut actions);
    wbuf.clear();
    actions.encode_ack(black_box(ID), wbuf);
    black_box(&wbuf[..]);
}

/// ACK encode of prebuilt actions only (header + copy of the action list).
#[inline]
fn op_ack_prebuilt(actions: &Actions, wbuf: &mut BytesMut) {
    wbuf.clear();
    black_box(actions).encode_ack(black_box(ID), wbuf);
    black_box(&wbuf[..]);
}

// ---- typed extraction and header blocks -----------------------------------------------------

/// Three arguments of the 5-argument NOTIFY, as a handler would keep them.
#[derive(Debug)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[allow(dead_code)] // the fields are consumed by `black_box`
struct Extracted<'a> {
    src: std::net::IpAddr,
    path: &'a str,
    n: i64,
}

/// `Message::get` three times (by name, typed, range-checked).
#[inline]
fn op_extract_get(notify: &Notify) -> Result<usize, ArgError> {
    let m: Message<'_> = black_box(notify).message(MESSAGE).unwrap();
    let e = Extracted {
        src: m.get("src")?,
        path: m.get("path")?,
        n: m.get("n")?,
    };
    black_box(&e);
    Ok(e.path.len())
}

/// `Message::deserialize` into the same struct (serde feature).
#[cfg(feature = "serde")]
#[inline]
fn op_extract_serde(notify: &Notify) -> Result<usize, ArgError> {
    let m = black_box(notify).message(MESSAGE).unwrap();
    let e: Extracted<'_> = m.deserialize()?;
    black_box(&e);
    Ok(e.path.len())
}

/// A 20-header `req.hdrs_bin` block like a browser's request.
fn header_block() -> Vec<u8> {
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), HOST.into()),
        (
            "user-agent".into(),
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0".into(),
        ),
        (
            "accept".into(),
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8".into(),
        ),
        ("accept-language".into(), "en-US,en;q=0.5".into()),
        ("accept-encoding".into(), "gzip, deflate, br, zstd".into()),
        (
            "cookie".into(),
            "session=0123456789abcdef0123456789abcdef; theme=dark".into(),
        ),
    ];
    for i in headers.len()..20 {
        headers.push((
            format!("x-custom-{i}"),
            format!("value-{i}-{}", "z".repeat(i)),
        ));
    }
    let mut b = Vec::new();
    HeaderBlock::encode(headers.iter().map(|(n, v)| (n, v)), &mut b);
    b
}

/// Validate a block, iterate every header, look up two (one near the end, one missing).
#[inline]
fn op_hdrs(block: &[u8]) -> usize {
    let h = HeaderBlock::parse(black_box(block)).unwrap();
    let mut n = 0;
    for x in h.iter() {
        black_box(x);
        n += 1;
    }
    let ua = h.get("User-Agent").map_or(0, <[u8]>::len);
    let missing = h.get("x-scanner").is_some();
    black_box((ua, missing));
    n
}

// ---------------------------------------------------------------------------------------------
// Allocation report
// ---------------------------------------------------------------------------------------------

const ALLOC_ITERS: u64 = 10_000;

/// Allocations per call of `f` in steady state (after a short warm-up).
#[allow(clippy::cast_precision_loss)] // a ratio for a report
fn allocs_per_op(mut f: impl FnMut()) -> f64 {
    for _ in 0..100 {
        f();
    }
    let before = allocs();
    for _ in 0..ALLOC_ITERS {
        f();
    }
    (allocs() - before) as f64 / ALLOC_ITERS as f64
}

fn allocation_report() {
    let frame = notify_frame();
    let payload = Bytes::copy_from_slice(split_frame(&frame, MAX_FRAME).unwrap().unwrap().1);
    let notify = Notify::parse(ID, payload.clone()).unwrap();
    let mut dst = vec![0u8; frame.len()];
    let mut dec = FrameDecoder::new(MAX_FRAME);
    let mut rbuf = BytesMut::with_capacity(4096);
    let mut actions = Actions::with_capacity(64);
    let mut prebuilt = Actions::new();
    push_actions(&mut prebuilt);
    let mut wbuf = BytesMut::with_capacity(4096);

    // sanity: every path sees the five arguments
    assert_eq!(op_walk_slice(&frame), 5);
    assert_eq!(op_walk_decoder(&frame, &mut dec, &mut rbuf), 5);
    assert_eq!(op_walk_bytes(&payload), 5);
    assert_eq!(op_baseline_walk_slice(&frame), 5);
    assert_eq!(op_baseline_walk_decoder(&frame, &mut rbuf), 5);
    assert_eq!(op_baseline_walk_bytes(&payload), 5);
    assert_eq!(op_lookup(&notify), Some(TypedData::String(HOST.as_bytes())));
    assert_eq!(op_decode_lookup(&frame), HOST.len());
    op_ack_reused(&mut actions, &mut wbuf);
    let mut expected = BytesMut::new();
    prebuilt.encode_ack(ID, &mut expected);
    assert_eq!(wbuf, expected);

    let block = header_block();
    assert_eq!(op_extract_get(&notify), Ok(PATH.len()));
    #[cfg(feature = "serde")]
    assert_eq!(op_extract_serde(&notify), Ok(PATH.len()));
    assert_eq!(op_hdrs(&block), 20);

    #[cfg_attr(not(feature = "serde"), allow(unused_mut))]
    let mut rows: Vec<(&str, f64, bool)> = vec![
        (
            "baseline/memcpy_frame",
            allocs_per_op(|| op_memcpy(&frame, &mut dst)),
            false,
        ),
        (
            "split_frame/slice",
            allocs_per_op(|| op_split(&frame)),
            false,
        ),
        (
            "notify_decode_walk/slice",
            allocs_per_op(|| {
                black_box(op_walk_slice(&frame));
            }),
            true,
        ),
        (
            "notify_decode_walk/frame_decoder",
            allocs_per_op(|| {
                black_box(op_walk_decoder(&frame, &mut dec, &mut rbuf));
            }),
            true,
        ),
        (
            "notify_decode_walk/bytes",
            allocs_per_op(|| {
                black_box(op_walk_bytes(&payload));
            }),
            true,
        ),
        (
            "notify_decode_walk/baseline_slice",
            allocs_per_op(|| {
                black_box(op_baseline_walk_slice(&frame));
            }),
            true,
        ),
        (
            "notify_decode_walk/baseline_frame_decoder",
            allocs_per_op(|| {
                black_box(op_baseline_walk_decoder(&frame, &mut rbuf));
            }),
            true,
        ),
        (
            "notify_decode_walk/baseline_bytes",
            allocs_per_op(|| {
                black_box(op_baseline_walk_bytes(&payload));
            }),
            true,
        ),
        (
            "notify_lookup/validated",
            allocs_per_op(|| {
                black_box(op_lookup(&notify));
            }),
            true,
        ),
        (
            "notify_lookup/decode",
            allocs_per_op(|| {
                black_box(op_decode_lookup(&frame));
            }),
            true,
        ),
        (
            "ack_encode/reused",
            allocs_per_op(|| op_ack_reused(&mut actions, &mut wbuf)),
            true,
        ),
        (
            "ack_encode/fresh",
            allocs_per_op(|| op_ack_fresh(&mut wbuf)),
            false,
        ),
        (
            "ack_encode/prebuilt",
            allocs_per_op(|| op_ack_prebuilt(&prebuilt, &mut wbuf)),
            false,
        ),
        (
            "extract/get_3_args",
            allocs_per_op(|| {
                black_box(op_extract_get(&notify).unwrap());
            }),
            true,
        ),
        (
            "hdrs_bin/parse_iterate_20_get_2",
            allocs_per_op(|| {
                black_box(op_hdrs(&block));
            }),
            true,
        ),
    ];
    #[cfg(feature = "serde")]
    rows.push((
        "extract/serde_3_args",
        allocs_per_op(|| {
            black_box(op_extract_serde(&notify).unwrap());
        }),
        true,
    ));

    eprintln!();
    eprintln!(
        "allocations per op (steady state, {ALLOC_ITERS} iterations; NOTIFY frame {} bytes)",
        frame.len()
    );
    eprintln!("  {:<36} {:>10}", "benchmark", "allocs/op");
    eprintln!("  {:-<36} {:->10}", "", "");
    for (name, per_op, _) in &rows {
        eprintln!("  {name:<36} {per_op:>10.3}");
    }
    eprintln!();
    for (name, per_op, must_be_zero) in &rows {
        assert!(
            !must_be_zero || *per_op == 0.0,
            "{name} must not allocate in steady state, made {per_op} allocations per op"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Criterion
// ---------------------------------------------------------------------------------------------

fn bench_baseline(c: &mut Criterion) {
    let frame = notify_frame();
    let mut dst = vec![0u8; frame.len()];
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("memcpy_frame", |b| b.iter(|| op_memcpy(&frame, &mut dst)));
    g.finish();

    c.bench_function("split_frame/slice", |b| b.iter(|| op_split(&frame)));
}

fn bench_notify(c: &mut Criterion) {
    let frame = notify_frame();
    let payload = Bytes::copy_from_slice(split_frame(&frame, MAX_FRAME).unwrap().unwrap().1);
    let notify = Notify::parse(ID, payload.clone()).unwrap();

    let mut g = c.benchmark_group("notify_decode_walk");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("slice", |b| b.iter(|| op_walk_slice(&frame)));
    let mut dec = FrameDecoder::new(MAX_FRAME);
    let mut rbuf = BytesMut::with_capacity(4096);
    g.bench_function("frame_decoder", |b| {
        b.iter(|| op_walk_decoder(&frame, &mut dec, &mut rbuf));
    });
    g.bench_function("bytes", |b| b.iter(|| op_walk_bytes(&payload)));
    // the hand-written decoder the library used before nom, in the same run
    g.bench_function("baseline_slice", |b| {
        b.iter(|| op_baseline_walk_slice(&frame));
    });
    g.bench_function("baseline_frame_decoder", |b| {
        b.iter(|| op_baseline_walk_decoder(&frame, &mut rbuf));
    });
    g.bench_function("baseline_bytes", |b| {
        b.iter(|| op_baseline_walk_bytes(&payload));
    });
    g.finish();

    let mut g = c.benchmark_group("notify_lookup");
    g.bench_function("validated", |b| b.iter(|| op_lookup(&notify)));
    g.bench_function("decode", |b| b.iter(|| op_decode_lookup(&frame)));
    g.finish();
}

fn bench_ack(c: &mut Criterion) {
    let mut g = c.benchmark_group("ack_encode");
    let mut wbuf = BytesMut::with_capacity(4096);
    let mut actions = Actions::with_capacity(64);
    g.bench_function("reused", |b| {
        b.iter(|| op_ack_reused(&mut actions, &mut wbuf));
    });
    g.bench_function("fresh", |b| b.iter(|| op_ack_fresh(&mut wbuf)));
    let mut prebuilt = Actions::new();
    push_actions(&mut prebuilt);
    g.bench_function("prebuilt", |b| {
        b.iter(|| op_ack_prebuilt(&prebuilt, &mut wbuf));
    });
    g.finish();
}

fn bench_extract(c: &mut Criterion) {
    let frame = notify_frame();
    let payload = Bytes::copy_from_slice(split_frame(&frame, MAX_FRAME).unwrap().unwrap().1);
    let notify = Notify::parse(ID, payload).unwrap();
    let mut g = c.benchmark_group("extract");
    g.bench_function("get_3_args", |b| b.iter(|| op_extract_get(&notify)));
    #[cfg(feature = "serde")]
    g.bench_function("serde_3_args", |b| b.iter(|| op_extract_serde(&notify)));
    g.finish();

    let block = header_block();
    let mut g = c.benchmark_group("hdrs_bin");
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("parse_iterate_20_get_2", |b| b.iter(|| op_hdrs(&block)));
    g.finish();
}

/// Every criterion group, configured from the command line.
fn benches(c: &mut Criterion) {
    bench_baseline(c);
    bench_notify(c);
    bench_ack(c);
    bench_extract(c);
}

/// `SPOP_BENCH_MIN_OF=1`: instead of criterion, the library's NOTIFY decode paths against the
/// hand-written baseline, each the best of 30 runs of 20 000 operations, twice. On a shared
/// machine the best run is steadier than criterion's mean.
fn min_of_runs() {
    let frame = notify_frame();
    let payload = Bytes::copy_from_slice(split_frame(&frame, MAX_FRAME).unwrap().unwrap().1);
    let mut dec = FrameDecoder::new(MAX_FRAME);
    let mut rbuf = BytesMut::with_capacity(4096);
    let mut rbuf2 = BytesMut::with_capacity(4096);
    #[allow(clippy::cast_precision_loss)] // nanoseconds for a report
    let min_ns = |f: &mut dyn FnMut()| {
        let mut best = f64::MAX;
        for _ in 0..30 {
            // a bench measures time; the library never reads the clock
            #[allow(clippy::disallowed_methods)]
            let t = std::time::Instant::now();
            for _ in 0..20_000 {
                f();
            }
            best = best.min(t.elapsed().as_nanos() as f64 / 20_000.0);
        }
        best
    };
    for _ in 0..2 {
        let a = min_ns(&mut || {
            black_box(op_walk_slice(&frame));
        });
        let b = min_ns(&mut || {
            black_box(op_baseline_walk_slice(&frame));
        });
        let c = min_ns(&mut || {
            black_box(op_walk_decoder(&frame, &mut dec, &mut rbuf));
        });
        let d = min_ns(&mut || {
            black_box(op_baseline_walk_decoder(&frame, &mut rbuf2));
        });
        let e = min_ns(&mut || {
            black_box(op_walk_bytes(&payload));
        });
        let f = min_ns(&mut || {
            black_box(op_baseline_walk_bytes(&payload));
        });
        eprintln!(
            "min of runs, ns/op, library vs baseline: slice {a:.1} vs {b:.1} ({:+.1}%) | decoder {c:.1} vs {d:.1} ({:+.1}%) | bytes {e:.1} vs {f:.1} ({:+.1}%)",
            (a / b - 1.0) * 100.0,
            (c / d - 1.0) * 100.0,
            (e / f - 1.0) * 100.0
        );
    }
}

/// `SPOP_BENCH_ONLY=<op>`: runs one NOTIFY decode path (`slice`, `frame_decoder`, `bytes`, or
/// `baseline_` and one of those) 100 000 times and nothing else, to count its instructions
/// (`valgrind --tool=callgrind`), which a busy machine does not disturb as it does wall time.
fn run_only(op: &str) {
    let frame = notify_frame();
    let payload = Bytes::copy_from_slice(split_frame(&frame, MAX_FRAME).unwrap().unwrap().1);
    let mut dec = FrameDecoder::new(MAX_FRAME);
    let mut rbuf = BytesMut::with_capacity(4096);
    let mut f: Box<dyn FnMut() -> usize> = match op {
        "slice" => Box::new(|| op_walk_slice(&frame)),
        "frame_decoder" => Box::new(|| op_walk_decoder(&frame, &mut dec, &mut rbuf)),
        "bytes" => Box::new(|| op_walk_bytes(&payload)),
        "baseline_slice" => Box::new(|| op_baseline_walk_slice(&frame)),
        "baseline_frame_decoder" => Box::new(|| op_baseline_walk_decoder(&frame, &mut rbuf)),
        "baseline_bytes" => Box::new(|| op_baseline_walk_bytes(&payload)),
        other => panic!("SPOP_BENCH_ONLY: unknown operation {other:?}"),
    };
    let mut n = 0;
    for _ in 0..100_000 {
        n += f();
    }
    assert_eq!(black_box(n), 500_000);
}

fn main() {
    if std::env::var_os("SPOP_BENCH_MIN_OF").is_some() {
        min_of_runs();
        return;
    }
    if let Some(op) = std::env::var_os("SPOP_BENCH_ONLY") {
        run_only(op.to_str().unwrap_or_default());
        return;
    }
    allocation_report();
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
