//! Counters and a handler-latency histogram, lock-free, with a Prometheus text rendering.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use spop_proto::StatusCode;

/// Upper bounds (seconds) of the handler latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The assigned status codes get their own disconnect counter; others count as "other".
const STATUS_SLOTS: usize = 16;

/// Runtime metrics, shared by every connection of a server. Read them with
/// [`Metrics::snapshot`] or [`Metrics::render_prometheus`].
///
/// The counters a NOTIFY moves (NOTIFYs, ACKs, bytes, handler latency) are kept per worker
/// thread, written by that thread alone, and summed when read: the per-request path writes no
/// memory that another worker writes, and a connection holds no counters of its own. The rare
/// ones (errors, timeouts, disconnects...) are shared atomics.
///
/// ```
/// let metrics = spoa_runtime::Metrics::default();
/// assert_eq!(metrics.snapshot().notifies, 0);
/// assert!(metrics.render_prometheus().contains("spoa_notifies_total 0"));
/// ```
#[derive(Debug)]
pub struct Metrics {
    /// Tells this instance's per-thread counters from another's.
    id: u64,
    connections_accepted: AtomicU64,
    connections_active: AtomicU64,
    health_checks: AtomicU64,
    /// Counts made where no per-thread counters could be (handlers timed on their own
    /// tasks, threads being torn down).
    hot: Hot,
    /// Each worker thread's counters.
    shards: Mutex<Vec<Arc<Hot>>>,
    handler_errors: AtomicU64,
    handler_panics: AtomicU64,
    handler_timeouts: AtomicU64,
    handler_overloads: AtomicU64,
    acks_too_large: AtomicU64,
    handler_late: AtomicU64,
    handler_cancelled: AtomicU64,
    background_spawned: AtomicU64,
    background_refused: AtomicU64,
    background_panics: AtomicU64,
    background_active: AtomicU64,
    write_timeouts: AtomicU64,
    hook_panics: AtomicU64,
    disconnects: [AtomicU64; STATUS_SLOTS],
    disconnects_other: AtomicU64,
    peer_closes: AtomicU64,
}

/// The counters every NOTIFY moves.
#[derive(Debug, Default)]
pub(crate) struct Hot {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    notifies: AtomicU64,
    acks: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
}

/// The values of a [`Hot`], summed over connections.
#[derive(Debug, Default)]
struct HotValues {
    bytes_in: u64,
    bytes_out: u64,
    notifies: u64,
    acks: u64,
    latency_buckets: [u64; LATENCY_BUCKETS.len()],
    latency_count: u64,
    latency_sum_ns: u64,
}

/// Adds `n` to a counter that only one thread writes: a plain load and store, no locked
/// read-modify-write. Readers may see it a moment late, never torn.
#[inline]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
}

fn bucket(d: Duration) -> Option<usize> {
    let secs = d.as_secs_f64();
    LATENCY_BUCKETS.iter().position(|&b| secs <= b)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Hot {
    fn add_to(&self, v: &mut HotValues) {
        v.bytes_in += self.bytes_in.load(Relaxed);
        v.bytes_out += self.bytes_out.load(Relaxed);
        v.notifies += self.notifies.load(Relaxed);
        v.acks += self.acks.load(Relaxed);
        for (t, b) in v.latency_buckets.iter_mut().zip(&self.latency_buckets) {
            *t += b.load(Relaxed);
        }
        v.latency_count += self.latency_count.load(Relaxed);
        v.latency_sum_ns += self.latency_sum_ns.load(Relaxed);
    }

    /// Adds counts made apart (shared: locked adds).
    fn absorb(&self, o: &Self) {
        self.bytes_in.fetch_add(o.bytes_in.load(Relaxed), Relaxed);
        self.bytes_out.fetch_add(o.bytes_out.load(Relaxed), Relaxed);
        self.notifies.fetch_add(o.notifies.load(Relaxed), Relaxed);
        self.acks.fetch_add(o.acks.load(Relaxed), Relaxed);
        for (t, b) in self.latency_buckets.iter().zip(&o.latency_buckets) {
            t.fetch_add(b.load(Relaxed), Relaxed);
        }
        self.latency_count
            .fetch_add(o.latency_count.load(Relaxed), Relaxed);
        self.latency_sum_ns
            .fetch_add(o.latency_sum_ns.load(Relaxed), Relaxed);
    }

    /// Adds a connection's counts of one loop turn.
    #[inline]
    pub(crate) fn add(&self, notifies: u64, acks: u64, bytes_in: u64, bytes_out: u64) {
        bump(&self.notifies, notifies);
        bump(&self.acks, acks);
        bump(&self.bytes_in, bytes_in);
        bump(&self.bytes_out, bytes_out);
    }

    /// Records `n` handlers that each took `d` (the handlers of one batch, timed together).
    pub(crate) fn handler_latency(&self, d: Duration, n: u64) {
        if let Some(i) = bucket(d) {
            bump(&self.latency_buckets[i], n);
        }
        bump(&self.latency_count, n);
        bump(&self.latency_sum_ns, nanos(d).saturating_mul(n));
    }
}

/// One thread's counters of one [`Metrics`].
struct Shard {
    metrics_id: u64,
    metrics: Weak<Metrics>,
    hot: Arc<Hot>,
}

thread_local! {
    /// This thread's counters, per `Metrics` it has counted for (usually one server).
    static SHARDS: RefCell<Vec<Shard>> = const { RefCell::new(Vec::new()) };
}

static NEXT_METRICS_ID: AtomicU64 = AtomicU64::new(1);

impl Default for Metrics {
    fn default() -> Self {
        Self {
            id: NEXT_METRICS_ID.fetch_add(1, Relaxed),
            connections_accepted: AtomicU64::default(),
            connections_active: AtomicU64::default(),
            health_checks: AtomicU64::default(),
            hot: Hot::default(),
            shards: Mutex::default(),
            handler_errors: AtomicU64::default(),
            handler_panics: AtomicU64::default(),
            handler_timeouts: AtomicU64::default(),
            handler_overloads: AtomicU64::default(),
            acks_too_large: AtomicU64::default(),
            handler_late: AtomicU64::default(),
            handler_cancelled: AtomicU64::default(),
            background_spawned: AtomicU64::default(),
            background_refused: AtomicU64::default(),
            background_panics: AtomicU64::default(),
            background_active: AtomicU64::default(),
            write_timeouts: AtomicU64::default(),
            hook_panics: AtomicU64::default(),
            disconnects: Default::default(),
            disconnects_other: AtomicU64::default(),
            peer_closes: AtomicU64::default(),
        }
    }
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Connections accepted since start.
    pub connections_accepted: u64,
    /// Connections being served now.
    pub connections_active: u64,
    /// Health-check HELLOs answered.
    pub health_checks: u64,
    /// Bytes read from peers.
    pub bytes_in: u64,
    /// Bytes written to peers.
    pub bytes_out: u64,
    /// NOTIFY frames received.
    pub notifies: u64,
    /// ACK frames queued.
    pub acks: u64,
    /// Handlers that returned an error.
    pub handler_errors: u64,
    /// Handlers that panicked.
    pub handler_panics: u64,
    /// Handlers answered by the fallback ACK at their budget
    /// ([`FallbackReason::Timeout`](crate::FallbackReason::Timeout)).
    pub handler_timeouts: u64,
    /// NOTIFYs answered with [`FallbackReason::Overload`](crate::FallbackReason::Overload): no
    /// handler slot freed up within the budget.
    pub handler_overloads: u64,
    /// Handler ACKs that did not fit the negotiated frame size
    /// ([`FallbackReason::TooLarge`](crate::FallbackReason::TooLarge)).
    pub acks_too_large: u64,
    /// Handlers that completed after their fallback ACK had been sent (result dropped).
    pub handler_late: u64,
    /// Handlers cancelled past their budget: at [`Config::late_limit`](crate::Config::late_limit),
    /// with the connection's late slots full, or when their connection closed.
    pub handler_cancelled: u64,
    /// Background tasks started ([`Background::spawn`](crate::Background::spawn)).
    pub background_spawned: u64,
    /// Background tasks refused because [`Config::max_background`](crate::Config::max_background)
    /// were running.
    pub background_refused: u64,
    /// Background tasks that panicked.
    pub background_panics: u64,
    /// Background tasks running now.
    pub background_active: u64,
    /// Connections closed because the peer stopped reading our ACKs
    /// ([`Config::write_timeout`](crate::Config::write_timeout)).
    pub write_timeouts: u64,
    /// Panics caught in `on_connect`/`on_disconnect` hooks.
    pub hook_panics: u64,
    /// AGENT-DISCONNECT frames sent, by status code.
    pub disconnects: Vec<(StatusCode, u64)>,
    /// Connections closed by the peer (EOF/reset/HAPROXY-DISCONNECT).
    pub peer_closes: u64,
    /// Handlers that returned or timed out, and were timed (panics are counted apart).
    pub handled: u64,
}

impl Metrics {
    pub(crate) fn connection_opened(&self) {
        self.connections_accepted.fetch_add(1, Relaxed);
        self.connections_active.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Relaxed);
    }

    pub(crate) fn health_check(&self) {
        self.health_checks.fetch_add(1, Relaxed);
    }

    /// Runs `f` on the calling thread's counters (registered at the thread's first use); on
    /// a thread being torn down, on the shared ones, with locked adds.
    #[inline]
    pub(crate) fn local<R>(self: &Arc<Self>, f: impl FnOnce(&Hot) -> R) -> R {
        let mut f = Some(f);
        let done = SHARDS.try_with(|shards| {
            let mut shards = shards.borrow_mut();
            let i = match shards.iter().position(|s| s.metrics_id == self.id) {
                Some(i) => i,
                None => {
                    let hot = Arc::new(Hot::default());
                    self.shards
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(hot.clone());
                    // forget the counters of servers that are gone
                    shards.retain(|s| s.metrics.strong_count() > 0);
                    shards.push(Shard {
                        metrics_id: self.id,
                        metrics: Arc::downgrade(self),
                        hot,
                    });
                    shards.len() - 1
                }
            };
            f.take().map(|f| f(&shards[i].hot))
        });
        match done {
            Ok(Some(r)) => r,
            _ => {
                let f = f.take().expect("not called");
                let shared = Hot::default();
                let r = f(&shared);
                self.hot.absorb(&shared);
                r
            }
        }
    }

    /// The hot counters, summed over threads.
    fn hot_totals(&self) -> HotValues {
        let mut v = HotValues::default();
        let shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        self.hot.add_to(&mut v);
        for h in shards.iter() {
            h.add_to(&mut v);
        }
        v
    }

    pub(crate) fn handler_error(&self) {
        self.handler_errors.fetch_add(1, Relaxed);
    }

    pub(crate) fn handler_panic(&self) {
        self.handler_panics.fetch_add(1, Relaxed);
    }

    pub(crate) fn handler_timeout(&self) {
        self.handler_timeouts.fetch_add(1, Relaxed);
    }

    pub(crate) fn handler_overload(&self) {
        self.handler_overloads.fetch_add(1, Relaxed);
    }

    pub(crate) fn ack_too_large(&self) {
        self.acks_too_large.fetch_add(1, Relaxed);
    }

    pub(crate) fn handler_late(&self) {
        self.handler_late.fetch_add(1, Relaxed);
    }

    pub(crate) fn handler_cancelled(&self) {
        self.handler_cancelled.fetch_add(1, Relaxed);
    }

    pub(crate) fn background_started(&self) {
        self.background_spawned.fetch_add(1, Relaxed);
        self.background_active.fetch_add(1, Relaxed);
    }

    pub(crate) fn background_ended(&self) {
        self.background_active.fetch_sub(1, Relaxed);
    }

    pub(crate) fn background_refused(&self) {
        self.background_refused.fetch_add(1, Relaxed);
    }

    pub(crate) fn background_panic(&self) {
        self.background_panics.fetch_add(1, Relaxed);
    }

    pub(crate) fn write_timeout(&self) {
        self.write_timeouts.fetch_add(1, Relaxed);
    }

    pub(crate) fn hook_panic(&self) {
        self.hook_panics.fetch_add(1, Relaxed);
    }

    pub(crate) fn peer_close(&self) {
        self.peer_closes.fetch_add(1, Relaxed);
    }

    pub(crate) fn disconnect(&self, status: StatusCode) {
        match usize::try_from(status.0) {
            Ok(i) if i < STATUS_SLOTS => self.disconnects[i].fetch_add(1, Relaxed),
            _ => self.disconnects_other.fetch_add(1, Relaxed),
        };
    }

    /// A handler timed on its own task (shared: a locked add).
    pub(crate) fn handler_latency(&self, d: Duration) {
        let hot = &self.hot;
        if let Some(i) = bucket(d) {
            hot.latency_buckets[i].fetch_add(1, Relaxed);
        }
        hot.latency_count.fetch_add(1, Relaxed);
        hot.latency_sum_ns.fetch_add(nanos(d), Relaxed);
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut disconnects: Vec<(StatusCode, u64)> = (0..STATUS_SLOTS)
            .filter_map(|i| {
                let n = self.disconnects[i].load(Relaxed);
                (n > 0).then(|| (StatusCode(u32::try_from(i).unwrap_or(u32::MAX)), n))
            })
            .collect();
        let other = self.disconnects_other.load(Relaxed);
        if other > 0 {
            disconnects.push((StatusCode(u32::MAX), other));
        }
        let hot = self.hot_totals();
        MetricsSnapshot {
            connections_accepted: self.connections_accepted.load(Relaxed),
            connections_active: self.connections_active.load(Relaxed),
            health_checks: self.health_checks.load(Relaxed),
            bytes_in: hot.bytes_in,
            bytes_out: hot.bytes_out,
            notifies: hot.notifies,
            acks: hot.acks,
            handler_errors: self.handler_errors.load(Relaxed),
            handler_panics: self.handler_panics.load(Relaxed),
            handler_timeouts: self.handler_timeouts.load(Relaxed),
            handler_overloads: self.handler_overloads.load(Relaxed),
            acks_too_large: self.acks_too_large.load(Relaxed),
            handler_late: self.handler_late.load(Relaxed),
            handler_cancelled: self.handler_cancelled.load(Relaxed),
            background_spawned: self.background_spawned.load(Relaxed),
            background_refused: self.background_refused.load(Relaxed),
            background_panics: self.background_panics.load(Relaxed),
            background_active: self.background_active.load(Relaxed),
            write_timeouts: self.write_timeouts.load(Relaxed),
            hook_panics: self.hook_panics.load(Relaxed),
            disconnects,
            peer_closes: self.peer_closes.load(Relaxed),
            handled: hot.latency_count,
        }
    }

    /// The metrics in Prometheus text exposition format (version 0.0.4).
    #[allow(clippy::cast_precision_loss)] // seconds for Prometheus: f64 is its format
    pub fn render_prometheus(&self) -> String {
        let s = self.snapshot();
        let mut out = String::with_capacity(2048);
        let mut counter = |name: &str, help: &str, v: u64, kind: &str| {
            let _ = writeln!(
                out,
                "# HELP spoa_{name} {help}\n# TYPE spoa_{name} {kind}\nspoa_{name} {v}"
            );
        };
        counter(
            "connections_accepted_total",
            "Connections accepted.",
            s.connections_accepted,
            "counter",
        );
        counter(
            "connections_active",
            "Connections being served.",
            s.connections_active,
            "gauge",
        );
        counter(
            "health_checks_total",
            "Health-check HELLOs answered.",
            s.health_checks,
            "counter",
        );
        counter(
            "bytes_in_total",
            "Bytes read from HAProxy.",
            s.bytes_in,
            "counter",
        );
        counter(
            "bytes_out_total",
            "Bytes written to HAProxy.",
            s.bytes_out,
            "counter",
        );
        counter(
            "notifies_total",
            "NOTIFY frames received.",
            s.notifies,
            "counter",
        );
        counter("acks_total", "ACK frames sent.", s.acks, "counter");
        counter(
            "handler_errors_total",
            "Handlers that returned an error.",
            s.handler_errors,
            "counter",
        );
        counter(
            "handler_panics_total",
            "Handlers that panicked.",
            s.handler_panics,
            "counter",
        );
        counter(
            "handler_timeouts_total",
            "Handlers answered by the fallback ACK at their budget.",
            s.handler_timeouts,
            "counter",
        );
        counter(
            "handler_overloads_total",
            "NOTIFYs shed: no handler slot within the budget.",
            s.handler_overloads,
            "counter",
        );
        counter(
            "acks_too_large_total",
            "Handler ACKs larger than the negotiated frame size.",
            s.acks_too_large,
            "counter",
        );
        counter(
            "handler_late_total",
            "Handlers that completed after their fallback ACK.",
            s.handler_late,
            "counter",
        );
        counter(
            "handler_cancelled_total",
            "Handlers cancelled past their budget.",
            s.handler_cancelled,
            "counter",
        );
        counter(
            "background_spawned_total",
            "Background tasks started.",
            s.background_spawned,
            "counter",
        );
        counter(
            "background_refused_total",
            "Background tasks refused at the limit.",
            s.background_refused,
            "counter",
        );
        counter(
            "background_panics_total",
            "Background tasks that panicked.",
            s.background_panics,
            "counter",
        );
        counter(
            "background_active",
            "Background tasks running.",
            s.background_active,
            "gauge",
        );
        counter(
            "write_timeouts_total",
            "Connections closed because the peer stopped reading.",
            s.write_timeouts,
            "counter",
        );
        counter(
            "hook_panics_total",
            "Panics caught in connect/disconnect hooks.",
            s.hook_panics,
            "counter",
        );
        counter(
            "peer_closes_total",
            "Connections closed by HAProxy.",
            s.peer_closes,
            "counter",
        );
        let _ = writeln!(
            out,
            "# HELP spoa_disconnects_total AGENT-DISCONNECT frames sent, by status code."
        );
        let _ = writeln!(out, "# TYPE spoa_disconnects_total counter");
        for (status, n) in &s.disconnects {
            let label = if status.0 == u32::MAX {
                "other".to_string()
            } else {
                status.0.to_string()
            };
            let _ = writeln!(out, "spoa_disconnects_total{{status=\"{label}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP spoa_handler_duration_seconds Handler latency.");
        let _ = writeln!(out, "# TYPE spoa_handler_duration_seconds histogram");
        let hot = self.hot_totals();
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += hot.latency_buckets[i];
            let _ = writeln!(
                out,
                "spoa_handler_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = hot.latency_count;
        let sum = hot.latency_sum_ns as f64 / 1e9;
        let _ = writeln!(
            out,
            "spoa_handler_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(out, "spoa_handler_duration_seconds_sum {sum}");
        let _ = writeln!(out, "spoa_handler_duration_seconds_count {count}");
        out
    }
}
