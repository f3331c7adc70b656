//! Runtime configuration: protocol settings plus limits and timeouts.

use std::time::Duration;

use spop_proto::{AgentConfig, Scope};

/// Everything a server or a single connection needs to know. Usually built through
/// [`Server::builder`](crate::Server::builder); `Config::default()` plus field changes works too.
///
/// ```
/// use spoa_runtime::Config;
/// use std::time::Duration;
/// let mut config = Config::default();
/// config.handler_timeout = Some(Duration::from_millis(200));
/// config.agent.max_frame_size = 65_536;
/// assert_eq!(config.agent.max_in_flight, 20);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Protocol settings: frame size, capabilities, in-flight limit, hello/idle timeouts,
    /// empty-ACK padding.
    pub agent: AgentConfig,
    /// A handler running longer is abandoned and its NOTIFY answered with an empty ACK
    /// (plus the error variable). Default 5 s; set it below HAProxy's `timeout processing`.
    pub handler_timeout: Option<Duration>,
    /// Most connections served at once; further ones wait in the kernel's accept queue.
    /// Default 10,000.
    pub max_connections: usize,
    /// Most handlers running at once across all connections (a shared semaphore). Default
    /// unlimited (the per-connection in-flight limit still applies).
    pub handler_concurrency: Option<usize>,
    /// Stop reading a connection while this many bytes wait to be written. Default 64 KiB.
    pub write_high_water: usize,
    /// How long a graceful shutdown lets in-flight handlers finish. Default 10 s.
    pub shutdown_grace: Duration,
    /// Set this variable (integer 1) in the ACK when a handler fails, panics or times out,
    /// so HAProxy rules can tell. Default none.
    pub error_var: Option<(Scope, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            agent: AgentConfig::default(),
            handler_timeout: Some(Duration::from_secs(5)),
            max_connections: 10_000,
            handler_concurrency: None,
            write_high_water: 64 * 1024,
            shutdown_grace: Duration::from_secs(10),
            error_var: None,
        }
    }
}
