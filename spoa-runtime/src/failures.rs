//! Rate-limited warnings for handler failures: the first few per interval are logged, the rest
//! are counted and summed up in one line when the next interval starts.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use crate::config::FallbackReason;

/// Length of one logging window.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Failures logged one by one per window; the rest go into the summary.
pub(crate) const LOG_BURST: u32 = 5;

#[derive(Debug)]
pub(crate) struct FailureLog {
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    suppressed: [u64; FallbackReason::ALL.len()],
}

impl Default for FailureLog {
    fn default() -> Self {
        Self {
            state: Mutex::new(Window {
                start: None,
                logged: 0,
                suppressed: [0; FallbackReason::ALL.len()],
            }),
        }
    }
}

fn index(reason: FallbackReason) -> usize {
    FallbackReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(0)
}

impl FailureLog {
    /// Whether this failure gets its own log line. Emits the previous window's summary first
    /// when a new window starts with failures suppressed in the last one.
    pub(crate) fn admit(&self, reason: FallbackReason, now: Instant) -> bool {
        let mut w = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let expired = w
            .start
            .is_none_or(|s| now.duration_since(s) >= LOG_INTERVAL);
        if expired {
            let total: u64 = w.suppressed.iter().sum();
            if total > 0 {
                let n = |r| w.suppressed[index(r)];
                warn!(
                    suppressed = total,
                    error = n(FallbackReason::Error),
                    timeout = n(FallbackReason::Timeout),
                    panic = n(FallbackReason::Panic),
                    overload = n(FallbackReason::Overload),
                    too_large = n(FallbackReason::TooLarge),
                    interval_s = LOG_INTERVAL.as_secs(),
                    "more handler failures than logged one by one (all counted in the metrics)"
                );
            }
            w.start = Some(now);
            w.logged = 0;
            w.suppressed = [0; FallbackReason::ALL.len()];
        }
        if w.logged < LOG_BURST {
            w.logged += 1;
            true
        } else {
            w.suppressed[index(reason)] += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_suppressed_then_new_window() {
        let log = FailureLog::default();
        let t0 = Instant::now();
        let admitted = (0..20)
            .filter(|_| log.admit(FallbackReason::Timeout, t0))
            .count();
        assert_eq!(admitted, LOG_BURST as usize);
        assert!(!log.admit(FallbackReason::Error, t0 + Duration::from_secs(9)));
        {
            let w = log.state.lock().unwrap();
            assert_eq!(w.suppressed[index(FallbackReason::Timeout)], 15);
            assert_eq!(w.suppressed[index(FallbackReason::Error)], 1);
        }
        assert!(log.admit(FallbackReason::Panic, t0 + LOG_INTERVAL));
        assert_eq!(log.state.lock().unwrap().suppressed, [0; 5]);
    }
}
