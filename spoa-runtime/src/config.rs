//! Runtime configuration: protocol settings plus deadlines, limits and timeouts, with the
//! checks that refuse a configuration that cannot work.

use std::fmt;
use std::time::Duration;

use spop_proto::frame::MIN_MAX_FRAME_SIZE;
use spop_proto::{AgentConfig, Scope, VarName};

/// The default of [`Config::processing_timeout`]: the `timeout processing` of every HAProxy
/// configuration this project ships and generates.
///
/// ```
/// assert_eq!(spoa_runtime::DEFAULT_PROCESSING_TIMEOUT, std::time::Duration::from_millis(500));
/// ```
pub const DEFAULT_PROCESSING_TIMEOUT: Duration = Duration::from_millis(500);

/// The default of [`Config::error_var`]'s name: `txn.<var-prefix>.spoa_error` in HAProxy.
///
/// ```
/// assert_eq!(spoa_runtime::DEFAULT_ERROR_VAR, "spoa_error");
/// ```
pub const DEFAULT_ERROR_VAR: &str = "spoa_error";

/// Everything a server needs to know. Usually built through
/// [`Server::builder`](crate::Server::builder); `Config::default()` plus field changes works
/// too, checked by [`Config::validate`] when the server is made.
///
/// Every default is chosen so that an agent whose author configures nothing is safe behind
/// the HAProxy configurations we ship (`timeout processing 500ms`); the field docs say why.
///
/// ```
/// use spoa_runtime::Config;
/// use std::time::Duration;
/// let mut config = Config::default();
/// config.processing_timeout = Duration::from_millis(200);
/// config.agent.max_frame_size = 65_536;
/// assert_eq!(config.handler_budget(), Duration::from_millis(180));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Protocol settings: frame size, capabilities, in-flight limit, hello/idle timeouts,
    /// empty-ACK padding (on by default). The runtime's default raises
    /// [`AgentConfig::max_in_flight`] to 64, see [`DEFAULT_MAX_IN_FLIGHT`].
    pub agent: AgentConfig,
    /// HAProxy's `timeout processing` for this agent, one to one: set it to the value in your
    /// `spoe-agent` section. Default 500 ms ([`DEFAULT_PROCESSING_TIMEOUT`]), the value of the
    /// configurations we ship. The handler budget is derived from it.
    pub processing_timeout: Duration,
    /// How long a handler may take before the runtime answers for it with the fallback ACK
    /// (the error variable set to [`FallbackReason::Timeout`]). Default `None`: 90% of
    /// [`processing_timeout`](Self::processing_timeout) (450 ms for 500 ms), because HAProxy's
    /// timer starts before the NOTIFY is sent and stops when the ACK is applied: the margin
    /// covers HAProxy's queue and both trips over the network, so the fallback arrives before
    /// HAProxy gives up. Must be below `processing_timeout`.
    pub handler_budget: Option<Duration>,
    /// How long a handler past its budget (already answered with the fallback ACK) may keep
    /// running, so a slow dependency can still finish (and fill caches) instead of being
    /// cancelled halfway. It completes "late": its result is dropped and counted. After this it
    /// is cancelled. Default 5 s: long enough for a slow dependency, short enough that a hung
    /// one cannot pile up work. `Duration::ZERO` cancels handlers at their budget.
    pub late_limit: Duration,
    /// Handlers per connection allowed to run late at once (see
    /// [`late_limit`](Self::late_limit)); beyond it a handler is cancelled at its budget.
    /// Default 64. Bounds the memory a hung dependency can hold per connection.
    pub max_late: usize,
    /// Poll each handler once on the connection's task before spawning it (default true):
    /// handlers that complete without waiting are answered with no task spawn at all. Turn it
    /// off when handlers do moderate synchronous work before their first `.await` (regex,
    /// rule evaluation): each then starts on a worker thread of a multi-threaded runtime, not on
    /// the connection's task, so the other NOTIFYs of its connection wait only for a free
    /// worker. For CPU-heavy or blocking work use [`blocking_fn`](crate::blocking_fn), which
    /// guarantees it.
    pub inline_first_poll: bool,
    /// Most connections served at once; further ones wait in the kernel's accept queue.
    /// Default 10,000.
    pub max_connections: usize,
    /// Most handlers running at once across all connections (a shared semaphore). Default
    /// unlimited. A NOTIFY that finds the limit reached waits for a slot until its budget, then
    /// gets the fallback ACK with [`FallbackReason::Overload`].
    pub handler_concurrency: Option<usize>,
    /// Stop consuming frames of a connection while this many bytes wait to be written to it.
    /// The write buffer never exceeds this plus one ACK. Default 64 KiB.
    pub write_high_water: usize,
    /// Close a connection whose peer has not accepted a single byte of our pending ACKs for
    /// this long. Default 10 s: HAProxy reads continuously, so a peer that stops for that
    /// long is gone or wedged, and its buffers are better freed.
    pub write_timeout: Duration,
    /// The first phase of a graceful shutdown: keep serving every connection normally while
    /// HAProxy's health checks take the server out of rotation (see [`LameDuck`] for how),
    /// so no request is sent to an agent that is about to close. Choose it from the
    /// backend's check settings: at least `fall` × `inter` plus one `inter`. Default 7 s:
    /// HAProxy's own defaults (`inter 2s`, `fall 3`) need 6 s; the configurations we ship
    /// (`inter 1s fall 2`) need 2 s. Skipped when no data connection is open (HAProxy is not
    /// using the agent). `Duration::ZERO` skips it.
    pub lame_duck: Duration,
    /// What the lame-duck phase does to take the server out of rotation. Default
    /// [`LameDuck::FailHealthChecks`].
    pub lame_duck_mode: LameDuck,
    /// During the drain (after the lame duck), a connection closes (AGENT-DISCONNECT status
    /// 0) once nothing is in flight on it and no frame has arrived for this long; NOTIFYs
    /// that still arrive are answered. Default 1 s.
    pub drain_quiet: Duration,
    /// How long the drain lets connections and background work finish; then what is left is
    /// answered within one budget and closed. Default 10 s.
    pub shutdown_grace: Duration,
    /// Work spawned after the ACK ([`Background`](crate::Background)) allowed at once across
    /// the server; beyond it a spawn is refused and counted. Default 1024.
    pub max_background: usize,
    /// Set this variable (an integer, see [`FallbackReason`]) in the fallback ACK when a
    /// handler fails, panics, runs out of budget or is shed, so HAProxy rules can tell what
    /// happened. Default `txn.spoa_error` ([`DEFAULT_ERROR_VAR`], `var(txn.<prefix>.spoa_error)`
    /// in HAProxy): it costs nothing when unused (HAProxy ignores names the configuration does
    /// not reference) and saves a restart the day it is needed. `None` sends the bare
    /// fallback ACK (padded, see [`AgentConfig::pad_empty_ack`]).
    pub error_var: Option<(Scope, String)>,
}

/// The runtime's default [`AgentConfig::max_in_flight`]: 64 NOTIFYs per connection.
///
/// HAProxy itself keeps at most 20 NOTIFYs unanswered per connection (3.x hard limit, 2.x
/// `max-waiting-frames`), but it stops counting one when its own `timeout processing` expires,
/// which may be before our budget does (its timer started earlier). With a limit equal to
/// HAProxy's, the connection would then stop reading while HAProxy sends more. The limit
/// protects memory, not HAProxy's pacing: per connection the NOTIFYs held are at most
/// `max_in_flight` × the negotiated frame size (1 MiB with 16 KiB frames), plus
/// [`Config::max_late`] requests of late handlers.
///
/// ```
/// assert_eq!(spoa_runtime::Config::default().agent.max_in_flight, spoa_runtime::DEFAULT_MAX_IN_FLIGHT);
/// ```
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

impl Default for Config {
    fn default() -> Self {
        let mut agent = AgentConfig::default();
        agent.max_in_flight = DEFAULT_MAX_IN_FLIGHT;
        Self {
            agent,
            processing_timeout: DEFAULT_PROCESSING_TIMEOUT,
            handler_budget: None,
            late_limit: Duration::from_secs(5),
            max_late: 64,
            inline_first_poll: true,
            max_connections: 10_000,
            handler_concurrency: None,
            write_high_water: 64 * 1024,
            write_timeout: Duration::from_secs(10),
            lame_duck: Duration::from_secs(7),
            lame_duck_mode: LameDuck::FailHealthChecks,
            drain_quiet: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            max_background: 1024,
            error_var: Some((Scope::Transaction, DEFAULT_ERROR_VAR.to_owned())),
        }
    }
}

impl Config {
    /// The time a handler gets before its fallback ACK: [`handler_budget`](Self::handler_budget)
    /// if set, else 90% of [`processing_timeout`](Self::processing_timeout).
    ///
    /// ```
    /// let config = spoa_runtime::Config::default();
    /// assert_eq!(config.handler_budget(), std::time::Duration::from_millis(450));
    /// ```
    pub fn handler_budget(&self) -> Duration {
        self.handler_budget
            .unwrap_or_else(|| self.processing_timeout.mul_f64(0.9))
    }

    /// Checks that the configuration can work; the error names the setting and says why.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut config = spoa_runtime::Config::default();
    /// config.handler_budget = Some(Duration::from_millis(600));
    /// let err = config.validate().unwrap_err();
    /// assert_eq!(err.setting(), "handler_budget");
    /// assert!(err.to_string().contains("below processing_timeout"));
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |setting, why: String| Err(ConfigError { setting, why });
        if self.processing_timeout.is_zero() {
            return err(
                "processing_timeout",
                "must be above zero: it mirrors HAProxy's `timeout processing` for this agent"
                    .into(),
            );
        }
        let budget = self.handler_budget();
        if budget.is_zero() {
            return err(
                "handler_budget",
                "must be above zero: handlers would never be given time to answer".into(),
            );
        }
        if budget >= self.processing_timeout {
            return err(
                "handler_budget",
                format!(
                    "{budget:?} must be below processing_timeout ({:?}): HAProxy gives up at \
                     its `timeout processing`, so the fallback ACK must go out before it",
                    self.processing_timeout
                ),
            );
        }
        if self.agent.max_frame_size < MIN_MAX_FRAME_SIZE {
            return err(
                "max_frame_size",
                format!(
                    "{} is below SPOP's minimum of {MIN_MAX_FRAME_SIZE} bytes",
                    self.agent.max_frame_size
                ),
            );
        }
        let zero_limits: [(&'static str, usize); 4] = [
            ("max_in_flight", self.agent.max_in_flight),
            ("max_connections", self.max_connections),
            ("write_high_water", self.write_high_water),
            (
                "handler_concurrency",
                self.handler_concurrency.unwrap_or(usize::MAX),
            ),
        ];
        for (setting, value) in zero_limits {
            if value == 0 {
                return err(
                    setting,
                    "must be at least 1: zero would serve nothing".into(),
                );
            }
        }
        if self.write_timeout.is_zero() {
            return err(
                "write_timeout",
                "must be above zero: every connection would be closed at its first ACK".into(),
            );
        }
        if let Some((_, name)) = &self.error_var {
            if let Err(e) = VarName::try_new(name) {
                return err(
                    "error_var",
                    format!("{name:?}: HAProxy would ignore it: {e}"),
                );
            }
        }
        Ok(())
    }
}

/// How a server in its lame-duck phase ([`Config::lame_duck`]) gets HAProxy to stop sending it
/// work.
///
/// ```
/// use spoa_runtime::{LameDuck, Server};
/// // a new instance already listens on the same port (SO_REUSEPORT): hand it the port
/// let server = Server::builder().lame_duck_mode(LameDuck::ReleasePort).build().unwrap();
/// assert_eq!(server.config().lame_duck_mode, LameDuck::ReleasePort);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LameDuck {
    /// Keep accepting connections (HAProxy may still need new ones) but answer health-check
    /// HELLOs with AGENT-DISCONNECT, so `option spop-check` fails and HAProxy marks the
    /// server DOWN after `fall` checks and sends its work to the other servers. For rolling
    /// restarts of several agent servers.
    FailHealthChecks,
    /// Stop listening at once, so that another instance bound to the same port
    /// (`SO_REUSEPORT`) gets every new connection and health check, and the server stays
    /// UP; established connections keep being served. For hot upgrades on one address.
    ReleasePort,
}

/// A configuration that cannot work: which setting, and why.
///
/// ```
/// let mut config = spoa_runtime::Config::default();
/// config.max_connections = 0;
/// let err = spoa_runtime::Server::new(config).unwrap_err();
/// assert_eq!(err.to_string(), "invalid setting max_connections: must be at least 1: zero would serve nothing");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: &'static str,
    why: String,
}

impl ConfigError {
    /// The setting's name, as the [`Config`] field (or builder method) spells it.
    ///
    /// ```
    /// let mut config = spoa_runtime::Config::default();
    /// config.write_timeout = std::time::Duration::ZERO;
    /// assert_eq!(config.validate().unwrap_err().setting(), "write_timeout");
    /// ```
    pub const fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid setting {}: {}", self.setting, self.why)
    }
}

impl std::error::Error for ConfigError {}

/// Why the runtime answered a NOTIFY itself: the integer it puts in [`Config::error_var`].
///
/// | value | reason | what happened |
/// |---|---|---|
/// | 1 | [`Error`](Self::Error) | the handler returned `Err` |
/// | 2 | [`Timeout`](Self::Timeout) | the handler ran out of its budget ([`Config::handler_budget`]) |
/// | 3 | [`Panic`](Self::Panic) | the handler panicked |
/// | 4 | [`Overload`](Self::Overload) | no handler slot ([`Config::handler_concurrency`]) freed up within the budget |
/// | 5 | [`TooLarge`](Self::TooLarge) | the handler's actions did not fit the negotiated frame size |
///
/// In HAProxy, with `option var-prefix myagent`:
/// `http-request deny if { var(txn.myagent.spoa_error) -m int 2 }` denies when the agent was
/// too slow, and `{ var(txn.myagent.spoa_error) -m found }` matches any fallback. HAProxy's own
/// `option set-on-error` variable is a different one: it is set when HAProxy got no usable
/// ACK at all.
///
/// ```
/// use spoa_runtime::FallbackReason;
/// assert_eq!(FallbackReason::Timeout.code(), 2);
/// assert_eq!(FallbackReason::Overload.to_string(), "overload");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FallbackReason {
    /// The handler returned an error.
    Error,
    /// The handler's budget ran out.
    Timeout,
    /// The handler panicked.
    Panic,
    /// No handler slot within the budget.
    Overload,
    /// The handler's ACK would exceed the negotiated frame size.
    TooLarge,
}

impl FallbackReason {
    /// Every reason, in code order.
    ///
    /// ```
    /// assert_eq!(spoa_runtime::FallbackReason::ALL.len(), 5);
    /// ```
    pub const ALL: [Self; 5] = [
        Self::Error,
        Self::Timeout,
        Self::Panic,
        Self::Overload,
        Self::TooLarge,
    ];

    /// The value of the error variable.
    ///
    /// ```
    /// assert_eq!(spoa_runtime::FallbackReason::Panic.code(), 3);
    /// ```
    pub const fn code(self) -> i64 {
        match self {
            Self::Error => 1,
            Self::Timeout => 2,
            Self::Panic => 3,
            Self::Overload => 4,
            Self::TooLarge => 5,
        }
    }

    /// A short name, as in log lines and metrics labels.
    ///
    /// ```
    /// assert_eq!(spoa_runtime::FallbackReason::TooLarge.name(), "too_large");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Panic => "panic",
            Self::Overload => "overload",
            Self::TooLarge => "too_large",
        }
    }
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.processing_timeout, Duration::from_millis(500));
        assert_eq!(c.handler_budget(), Duration::from_millis(450));
        assert!(c.agent.pad_empty_ack);
        assert_eq!(
            c.error_var,
            Some((Scope::Transaction, "spoa_error".to_owned()))
        );
        let codes: Vec<i64> = FallbackReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn impossible_settings_are_refused_by_name() {
        type Change = fn(&mut Config);
        let cases: [(&str, Change); 10] = [
            ("processing_timeout", |c| {
                c.processing_timeout = Duration::ZERO
            }),
            ("handler_budget", |c| {
                c.handler_budget = Some(Duration::from_millis(500));
            }),
            ("handler_budget", |c| {
                c.handler_budget = Some(Duration::ZERO)
            }),
            ("max_frame_size", |c| c.agent.max_frame_size = 100),
            ("max_in_flight", |c| c.agent.max_in_flight = 0),
            ("max_connections", |c| c.max_connections = 0),
            ("write_high_water", |c| c.write_high_water = 0),
            ("handler_concurrency", |c| c.handler_concurrency = Some(0)),
            ("write_timeout", |c| c.write_timeout = Duration::ZERO),
            ("error_var", |c| {
                c.error_var = Some((Scope::Transaction, "spoa-error".into()));
            }),
        ];
        for (setting, change) in cases {
            let mut c = Config::default();
            change(&mut c);
            let e = c.validate().unwrap_err();
            assert_eq!(e.setting(), setting, "{e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid setting {setting}: "))
            );
        }
        // a budget just below the processing timeout is fine
        let c = Config {
            handler_budget: Some(Duration::from_millis(499)),
            ..Config::default()
        };
        c.validate().unwrap();
    }
}
