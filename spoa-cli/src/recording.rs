//! The `spoa tap` recording format: what the tap writes, `spoa decode` prints and
//! `spoa replay` replays.
//!
//! ```text
//! file    = magic "SPOATAP1" (8 bytes), start time (u64, µs since the Unix epoch), record*
//! record  = kind (u8), connection (u32), time (u64, µs since the start), length (u32), data
//! ```
//!
//! All integers are big-endian. Kinds: 1 connection opened (data: the peer address), 2
//! connection closed (data: why), 3 a frame HAProxy -> agent, 4 a frame agent -> HAProxy (data:
//! the whole frame, length prefix included), 5/6 bytes that are not frames (garbage) in those
//! directions, 7 a note from the tap (data: text, e.g. why recording stopped).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use spop_proto::frame::MIN_FRAME_LEN;

/// The first 8 bytes of a recording.
pub(crate) const MAGIC: &[u8; 8] = b"SPOATAP1";
/// Bytes before the first record.
pub(crate) const FILE_HEADER_LEN: usize = 16;
/// Bytes of a record before its data.
pub(crate) const RECORD_HEADER_LEN: usize = 17;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Open = 1,
    Close = 2,
    ToAgent = 3,
    ToHaproxy = 4,
    GarbageToAgent = 5,
    GarbageToHaproxy = 6,
    Note = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Open,
            2 => Self::Close,
            3 => Self::ToAgent,
            4 => Self::ToHaproxy,
            5 => Self::GarbageToAgent,
            6 => Self::GarbageToHaproxy,
            7 => Self::Note,
            _ => return None,
        })
    }

    /// `haproxy->agent`, ...
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Close => "close",
            Self::ToAgent => "haproxy->agent",
            Self::ToHaproxy => "agent->haproxy",
            Self::GarbageToAgent => "haproxy->agent garbage",
            Self::GarbageToHaproxy => "agent->haproxy garbage",
            Self::Note => "note",
        }
    }

    /// The garbage kind of a frame direction.
    pub(crate) const fn garbage(self) -> Self {
        match self {
            Self::ToHaproxy | Self::GarbageToHaproxy => Self::GarbageToHaproxy,
            _ => Self::GarbageToAgent,
        }
    }
}

/// One record read back.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) kind: Kind,
    pub(crate) conn: u32,
    pub(crate) time_us: u64,
    pub(crate) data: Bytes,
    /// Offset of the record in the file.
    pub(crate) offset: usize,
}

/// A whole recording read back.
#[derive(Debug)]
pub(crate) struct Recording {
    pub(crate) start_unix_us: u64,
    pub(crate) records: Vec<Record>,
    /// Set when the file ends in the middle of a record (the tap was killed).
    pub(crate) truncated_at: Option<usize>,
}

/// Whether `data` is a recording.
pub(crate) fn is_recording(data: &[u8]) -> bool {
    data.starts_with(MAGIC)
}

/// Parses a recording. Unknown record kinds are an error; a truncated last record is
/// reported, not an error (a killed tap leaves one).
pub(crate) fn parse(data: &[u8]) -> Result<Recording, String> {
    if !is_recording(data) || data.len() < FILE_HEADER_LEN {
        return Err("not a spoa tap recording (no SPOATAP1 header)".into());
    }
    let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
    let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes"));
    let start_unix_us = be64(&data[8..16]);
    let all = Bytes::copy_from_slice(data);
    let mut records = Vec::new();
    let mut pos = FILE_HEADER_LEN;
    let mut truncated_at = None;
    while pos < data.len() {
        if data.len() - pos < RECORD_HEADER_LEN {
            truncated_at = Some(pos);
            break;
        }
        let h = &data[pos..pos + RECORD_HEADER_LEN];
        let kind = Kind::from_u8(h[0])
            .ok_or_else(|| format!("unknown record kind {} at offset {pos}", h[0]))?;
        let len = be32(&h[13..17]) as usize;
        let start = pos + RECORD_HEADER_LEN;
        if data.len() - start < len {
            truncated_at = Some(pos);
            break;
        }
        records.push(Record {
            kind,
            conn: be32(&h[1..5]),
            time_us: be64(&h[5..13]),
            data: all.slice(start..start + len),
            offset: pos,
        });
        pos = start + len;
    }
    Ok(Recording {
        start_unix_us,
        records,
        truncated_at,
    })
}

/// Counters the writer shares with the tap.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    /// Set once the size limit is reached: nothing more is recorded.
    pub(crate) stopped: AtomicBool,
    pub(crate) records: AtomicU64,
    pub(crate) bytes: AtomicU64,
    /// Records lost because the writer could not keep up.
    pub(crate) dropped: AtomicU64,
}

/// A handle to record; cheap to clone. Records go to a writer thread, so forwarding never
/// waits for the disk.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    tx: mpsc::SyncSender<(Kind, u32, u64, Bytes)>,
    start: Instant,
    pub(crate) stats: Arc<WriterStats>,
}

/// Records queued for the writer at most; beyond, records are dropped (and counted).
const QUEUE: usize = 65_536;

impl Recorder {
    /// Creates `path` (failing if it exists, unless `overwrite`) and starts the writer thread.
    /// Recording stops, with a note in the file and a message on stderr, before the file
    /// would exceed `max_bytes`.
    pub(crate) fn create(
        path: &Path,
        overwrite: bool,
        max_bytes: u64,
    ) -> anyhow::Result<(Self, std::thread::JoinHandle<io::Result<()>>)> {
        use anyhow::Context;
        let file = if overwrite {
            File::create(path)
        } else {
            File::options().write(true).create_new(true).open(path)
        }
        .with_context(|| {
            format!(
                "cannot create {}{}",
                path.display(),
                if overwrite {
                    ""
                } else {
                    " (use --force to overwrite)"
                }
            )
        })?;
        let start_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let stats = Arc::new(WriterStats::default());
        let mut w = BufWriter::with_capacity(256 * 1024, file);
        w.write_all(MAGIC)?;
        w.write_all(&start_unix.to_be_bytes())?;
        stats.bytes.store(FILE_HEADER_LEN as u64, Ordering::Relaxed);
        let thread_stats = stats.clone();
        let path: PathBuf = path.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("spoa-tap-writer".into())
            .spawn(move || writer(&mut w, &rx, &thread_stats, max_bytes, &path))?;
        Ok((
            Self {
                tx,
                start: Instant::now(),
                stats,
            },
            handle,
        ))
    }

    /// Queues one record (dropped and counted when the writer is behind).
    pub(crate) fn record(&self, kind: Kind, conn: u32, data: Bytes) {
        if self.stats.stopped.load(Ordering::Relaxed) {
            return;
        }
        let t = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        if self.tx.try_send((kind, conn, t, data)).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn put_record(w: &mut impl Write, kind: Kind, conn: u32, t: u64, data: &[u8]) -> io::Result<u64> {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0] = kind as u8;
    h[1..5].copy_from_slice(&conn.to_be_bytes());
    h[5..13].copy_from_slice(&t.to_be_bytes());
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    h[13..17].copy_from_slice(&len.to_be_bytes());
    w.write_all(&h)?;
    w.write_all(&data[..len as usize])?;
    Ok((RECORD_HEADER_LEN + len as usize) as u64)
}

/// Pause of the writer between batches.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Room kept for the final note.
const NOTE_ROOM: u64 = 256;

fn writer(
    w: &mut BufWriter<File>,
    rx: &mpsc::Receiver<(Kind, u32, u64, Bytes)>,
    stats: &WriterStats,
    max_bytes: u64,
    path: &Path,
) -> io::Result<()> {
    let mut written = FILE_HEADER_LEN as u64;
    let mut reported_dropped = 0;
    let mut last_t = 0;
    let note = |w: &mut BufWriter<File>, written: &mut u64, t: u64, text: &str| {
        if let Ok(n) = put_record(w, Kind::Note, 0, t, text.as_bytes()) {
            *written += n;
        }
    };
    'outer: loop {
        // block for one record, then drain what is queued, then flush
        let Ok(first) = rx.recv() else { break };
        let mut next = Some(first);
        while let Some((kind, conn, t, data)) = next.take() {
            last_t = t;
            let dropped = stats.dropped.load(Ordering::Relaxed);
            if dropped > reported_dropped {
                note(
                    w,
                    &mut written,
                    t,
                    &format!(
                        "{} record(s) dropped: the disk could not keep up",
                        dropped - reported_dropped
                    ),
                );
                reported_dropped = dropped;
            }
            let need = (RECORD_HEADER_LEN + data.len()) as u64;
            if written + need + NOTE_ROOM > max_bytes {
                stats.stopped.store(true, Ordering::Relaxed);
                let text = format!(
                    "recording stopped: {} would exceed --max-bytes {max_bytes}; traffic is \
                     still forwarded",
                    path.display()
                );
                note(w, &mut written, t, &text);
                eprintln!("spoa tap: {text}");
                break 'outer;
            }
            written += put_record(w, kind, conn, t, &data)?;
            stats.records.fetch_add(1, Ordering::Relaxed);
            stats.bytes.store(written, Ordering::Relaxed);
            next = rx.try_recv().ok();
        }
        w.flush()?;
        // batch: let records pile up for a moment instead of waking up for each one (a
        // wake-up per frame costs the forwarding threads CPU time; the queue holds 64k)
        std::thread::sleep(BATCH_PAUSE);
    }
    let dropped = stats.dropped.load(Ordering::Relaxed);
    if dropped > reported_dropped && !stats.stopped.load(Ordering::Relaxed) {
        note(
            w,
            &mut written,
            last_t,
            &format!("{} record(s) dropped", dropped - reported_dropped),
        );
    }
    stats.bytes.store(written, Ordering::Relaxed);
    w.flush()
}

/// Splits one direction of a connection into frames for the recorder; once the stream makes
/// no sense as frames (a length below 7 or above `max`), the rest is garbage.
#[derive(Debug)]
pub(crate) struct Splitter {
    buf: BytesMut,
    garbage: bool,
    max: u32,
    kind: Kind,
}

impl Splitter {
    pub(crate) fn new(kind: Kind, max: u32) -> Self {
        Self {
            buf: BytesMut::new(),
            garbage: false,
            max,
            kind,
        }
    }

    /// Feeds bytes as they were forwarded; calls `out` for each whole frame or garbage run.
    pub(crate) fn push(&mut self, bytes: &[u8], mut out: impl FnMut(Kind, Bytes)) {
        if self.garbage {
            out(self.kind.garbage(), Bytes::copy_from_slice(bytes));
            return;
        }
        self.buf.extend_from_slice(bytes);
        while self.buf.len() >= 4 {
            let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
            if !(MIN_FRAME_LEN..=self.max).contains(&len) {
                self.garbage = true;
                out(self.kind.garbage(), self.buf.split().freeze());
                return;
            }
            let total = 4 + len as usize;
            if self.buf.len() < total {
                break;
            }
            out(self.kind, self.buf.split_to(total).freeze());
        }
    }

    /// At the end of the stream: an incomplete frame is garbage.
    pub(crate) fn finish(&mut self, mut out: impl FnMut(Kind, Bytes)) {
        if !self.buf.is_empty() {
            out(self.kind.garbage(), self.buf.split().freeze());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_frames_and_garbage() {
        let mut s = Splitter::new(Kind::ToAgent, 100);
        let mut got = Vec::new();
        let frame = [0u8, 0, 0, 7, 3, 0, 0, 0, 1, 1, 1];
        s.push(&frame[..5], |k, b| got.push((k, b)));
        assert!(got.is_empty());
        s.push(&frame[5..], |k, b| got.push((k, b)));
        s.push(b"GET / HTTP/1.1\r\n", |k, b| got.push((k, b)));
        s.push(b"more", |k, b| got.push((k, b)));
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (Kind::ToAgent, Bytes::copy_from_slice(&frame)));
        assert_eq!(got[1].0, Kind::GarbageToAgent);
        assert_eq!(&got[1].1[..], b"GET / HTTP/1.1\r\n");
        assert_eq!(&got[2].1[..], b"more");
        let mut s = Splitter::new(Kind::ToHaproxy, 100);
        s.push(&frame[..6], |k, b| got.push((k, b)));
        s.finish(|k, b| got.push((k, b)));
        assert_eq!(got[3].0, Kind::GarbageToHaproxy);
    }

    #[test]
    fn write_and_parse() {
        let path = std::env::temp_dir().join(format!("spoa-rec-{}", std::process::id()));
        let (rec, h) = Recorder::create(&path, true, 1 << 20).unwrap();
        rec.record(Kind::Open, 1, Bytes::from_static(b"127.0.0.1:1"));
        rec.record(
            Kind::ToAgent,
            1,
            Bytes::from_static(&[0, 0, 0, 7, 3, 0, 0, 0, 1, 1, 1]),
        );
        rec.record(Kind::Close, 1, Bytes::from_static(b"eof"));
        drop(rec);
        h.join().unwrap().unwrap();
        let data = std::fs::read(&path).unwrap();
        let r = parse(&data).unwrap();
        assert_eq!(r.records.len(), 3);
        assert_eq!(r.records[1].kind, Kind::ToAgent);
        assert_eq!(r.records[1].conn, 1);
        assert!(r.truncated_at.is_none());
        let r = parse(&data[..data.len() - 1]).unwrap();
        assert_eq!(r.records.len(), 2);
        assert!(r.truncated_at.is_some());
        // a tiny limit stops with a note
        let (rec, h) = Recorder::create(&path, true, 400).unwrap();
        for _ in 0..20 {
            rec.record(Kind::ToAgent, 1, Bytes::from(vec![0u8; 50]));
        }
        drop(rec);
        h.join().unwrap().unwrap();
        let data = std::fs::read(&path).unwrap();
        assert!(data.len() <= 400, "{}", data.len());
        let r = parse(&data).unwrap();
        assert_eq!(r.records.last().unwrap().kind, Kind::Note);
        let _ = std::fs::remove_file(path);
    }
}
