//! Answering a NOTIFY: its ACK (the handler's actions, or the fallback with the error
//! variable), the failure log lines, and the connection's counts.

use std::sync::Arc;
use std::time::Duration;

use spop_proto::{AckError, Actions, AgentConnection, NotifyId};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Driver, Outcome};
use crate::config::FallbackReason;
use crate::handler::BoxError;

/// What a connection counted since its last turn.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) notifies: u32,
    pub(super) acks: u32,
    pub(super) bytes_in: u32,
    pub(super) bytes_out: u32,
    /// The handlers of the last batch that completed inline, and how long it took.
    pub(super) inline_n: u32,
    pub(super) inline_time: Duration,
}

/// Adds `n` bytes to a count of one loop turn (far below 4 GiB: a turn reads or writes at
/// most a buffer).
pub(super) fn add_bytes(count: &mut u32, n: usize) {
    *count = count.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
}

impl Counts {
    /// Adds the counts to the calling thread's counters, and starts again from zero.
    pub(super) fn flush(&mut self, metrics: &Arc<crate::Metrics>) {
        if self.notifies | self.acks | self.bytes_in | self.bytes_out | self.inline_n == 0 {
            return;
        }
        let c = std::mem::take(self);
        metrics.local(|hot| {
            hot.add(
                c.notifies.into(),
                c.acks.into(),
                c.bytes_in.into(),
                c.bytes_out.into(),
            );
            if c.inline_n > 0 {
                hot.handler_latency(c.inline_time, c.inline_n.into());
            }
        });
    }
}

impl<H, Mk, F> Driver<H, Mk, F> {
    /// Queues the ACK of `id` for what its handler produced: its actions, or for a failure
    /// the fallback (counted and logged). The common case (actions, accepted) stays inline;
    /// failures and refusals take cold paths.
    #[inline(always)]
    pub(super) fn ack(
        &mut self,
        conn: &mut AgentConnection,
        id: NotifyId,
        outcome: Outcome,
        now: Instant,
    ) {
        self.acked = true;
        match outcome {
            Outcome::Done(actions) => self.send(conn, id, actions, None, now),
            Outcome::Panicked => self.ack_failure(conn, id, FallbackReason::Panic, None, now),
            Outcome::Failed(e) => {
                self.ack_failure(conn, id, FallbackReason::Error, Some(&e), now);
            }
            Outcome::Fallback(reason) => self.ack_failure(conn, id, reason, None, now),
        }
    }

    /// Sends `actions` as the ACK of `id` (`reason`: the failure they are the fallback for),
    /// then keeps their buffer for the next request's
    /// [`Request::actions`](crate::Request::actions).
    #[inline(always)]
    fn send(
        &mut self,
        conn: &mut AgentConnection,
        id: NotifyId,
        actions: Actions,
        reason: Option<FallbackReason>,
        now: Instant,
    ) {
        match conn.send_ack(now.into_std(), id, &actions) {
            Ok(()) => self.counts.acks += 1,
            Err(e) => self.refused(conn, id, e, reason, now),
        }
        crate::handler::recycle_actions(actions);
    }

    /// A handler that did not produce actions (it panicked, failed, ran out of its budget or
    /// found no slot): counted, logged, and answered with the fallback.
    #[cold]
    #[inline(never)]
    fn ack_failure(
        &mut self,
        conn: &mut AgentConnection,
        id: NotifyId,
        reason: FallbackReason,
        error: Option<&BoxError>,
        now: Instant,
    ) {
        let metrics = &self.shared.metrics;
        match reason {
            FallbackReason::Panic => metrics.handler_panic(),
            FallbackReason::Error => metrics.handler_error(),
            FallbackReason::Overload => metrics.handler_overload(),
            _ => metrics.handler_timeout(),
        }
        self.log_failure(id, reason, error, now);
        let fallback = self.fallback(reason);
        self.send(conn, id, fallback, Some(reason), now);
    }

    /// The state machine refused an ACK: a handler's actions too large for the negotiated
    /// frame size get the fallback instead; otherwise (closed, or draining past the deadline)
    /// HAProxy has given up on it.
    #[cold]
    #[inline(never)]
    fn refused(
        &mut self,
        conn: &mut AgentConnection,
        id: NotifyId,
        error: AckError,
        reason: Option<FallbackReason>,
        now: Instant,
    ) {
        match error {
            AckError::FrameTooLarge { len, max } if reason.is_none() => {
                self.shared.metrics.ack_too_large();
                self.log_failure(id, FallbackReason::TooLarge, None, now);
                debug!(len, max, "ACK larger than the negotiated frame size");
                if conn
                    .send_ack(now.into_std(), id, &self.fallback(FallbackReason::TooLarge))
                    .is_ok()
                {
                    self.counts.acks += 1;
                }
            }
            e => debug!(error = %e, "ACK not sent"),
        }
    }

    /// The fallback ACK's actions: the error variable, if configured (else nothing, and the
    /// state machine pads the ACK).
    pub(super) fn fallback(&self, reason: FallbackReason) -> Actions {
        let mut a = Actions::new();
        if let Some((scope, name)) = &self.shared.config.error_var {
            a.set_var(*scope, name, reason.code());
        }
        a
    }

    fn log_failure(
        &self,
        id: NotifyId,
        reason: FallbackReason,
        error: Option<&BoxError>,
        now: Instant,
    ) {
        if !self.shared.failures.admit(reason, now) {
            return;
        }
        let (stream_id, frame_id) = (id.stream_id, id.frame_id);
        let code = reason.code();
        match (reason, error) {
            (FallbackReason::Error, Some(e)) => {
                warn!(stream_id, frame_id, error = %e, code, "handler failed; sent the fallback ACK");
            }
            (FallbackReason::Panic, _) => {
                warn!(
                    stream_id,
                    frame_id, code, "handler panicked; sent the fallback ACK"
                );
            }
            (FallbackReason::Timeout, _) => warn!(
                stream_id,
                frame_id,
                code,
                budget = ?self.shared.budget,
                "handler ran out of its budget; sent the fallback ACK"
            ),
            (FallbackReason::Overload, _) => warn!(
                stream_id,
                frame_id,
                code,
                "no handler slot free within the budget (handler_concurrency); sent the fallback ACK"
            ),
            (FallbackReason::TooLarge, _) => warn!(
                stream_id,
                frame_id,
                code,
                "the handler's ACK exceeds the negotiated frame size; sent the fallback ACK"
            ),
            (FallbackReason::Error, None) => {}
        }
    }
}
