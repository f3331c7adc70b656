//! The agent connection's settings and the constants its defaults come from.

use std::time::Duration;

use crate::frame::{DEFAULT_MAX_FRAME_SIZE, Scope};

/// The variable an empty ACK is padded with when [`AgentConfig::pad_empty_ack`] is set (the
/// default): an `unset-var txn.<prefix>.spoa_pad_ack`.
///
/// Why this action is harmless: unsetting a variable that does not exist is a no-op in every
/// HAProxy version, and HAProxy drops actions on names that neither the configuration
/// references nor `register-var-names` lists, without a log line. No configuration we ship or
/// generate uses the name. Why an unset and not a set: it carries no value, so it can never be
/// mistaken for a verdict, and it is the shortest action there is (17 bytes on the wire).
///
/// ```
/// assert_eq!(spop_proto::PAD_VAR_NAME, "spoa_pad_ack");
/// ```
pub const PAD_VAR_NAME: &str = "spoa_pad_ack";

/// The padding action as encoded on the wire: `unset-var` (2), 2 arguments, scope
/// transaction, then the name as a length-prefixed string (12 < 240: a one-byte varint).
#[allow(clippy::cast_possible_truncation)] // the name's length, 12
pub(super) const PAD_ACTION: [u8; 4 + PAD_VAR_NAME.len()] = {
    let mut a = [0u8; 4 + PAD_VAR_NAME.len()];
    a[0] = 2;
    a[1] = 2;
    a[2] = Scope::Transaction as u8;
    a[3] = PAD_VAR_NAME.len() as u8;
    let name = PAD_VAR_NAME.as_bytes();
    let mut i = 0;
    while i < name.len() {
        a[4 + i] = name[i];
        i += 1;
    }
    a
};

/// The largest frame accepted before the handshake. HAProxy's HELLO is about 150 bytes
/// (version list, max-frame-size, capabilities, engine-id, healthcheck), so a peer that
/// announces more than this before negotiating is refused with status 3 (frame too big)
/// without any buffer being reserved for it.
///
/// ```
/// assert_eq!(spop_proto::PRE_HANDSHAKE_MAX_FRAME_SIZE, 1024);
/// ```
pub const PRE_HANDSHAKE_MAX_FRAME_SIZE: u32 = 1024;

/// Settings of an agent connection. Build it with `AgentConfig::default()` and change fields.
///
/// ```
/// use spop_proto::AgentConfig;
/// use std::time::Duration;
/// let mut config = AgentConfig::default();
/// config.max_frame_size = 65_536;
/// config.max_in_flight = 64;
/// config.idle_timeout = Some(Duration::from_secs(30));
/// assert!(config.pipelining && !config.fragmentation);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentConfig {
    /// The largest frame this agent accepts and announces; the negotiated size is the minimum
    /// of this and HAProxy's offer. Values below 256 are raised to 256. Default 16380.
    pub max_frame_size: u32,
    /// Offer `pipelining` (several NOTIFYs in flight, ACKs out of order). Default true.
    pub pipelining: bool,
    /// Announce `fragmentation` and reassemble fragmented NOTIFYs (HAProxy 2.x only).
    /// Default false.
    pub fragmentation: bool,
    /// The most NOTIFYs awaiting an ACK before the connection stops consuming frames
    /// ([`AgentConnection::wants_read`](super::AgentConnection::wants_read) turns false). Default 20 (HAProxy's own limit).
    /// Without pipelining the limit is 1.
    pub max_in_flight: usize,
    /// The largest reassembled NOTIFY payload when fragmentation is on. Default 1 MiB.
    pub max_reassembly_size: usize,
    /// Time allowed for the HAPROXY-HELLO after the connection starts. Default 10 s.
    pub hello_timeout: Option<Duration>,
    /// Close (status 2) after this long without traffic while nothing is in flight.
    /// Default off: HAProxy manages idle connections itself.
    pub idle_timeout: Option<Duration>,
    /// Send `unset-var txn.spoa_pad_ack` ([`PAD_VAR_NAME`]) instead of an ACK without
    /// actions. Default **true**: HAProxy 3.1.0 never wakes the stream on an ACK without
    /// actions, so every such request waits for `timeout processing` and fails; the padding is
    /// harmless on every other version. Turn it off only to save 17 bytes per empty ACK on
    /// HAProxy versions known to be fixed (2.x, 3.2+).
    pub pad_empty_ack: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            pipelining: true,
            fragmentation: false,
            max_in_flight: 20,
            max_reassembly_size: 1 << 20,
            hello_timeout: Some(Duration::from_secs(10)),
            idle_timeout: None,
            pad_empty_ack: true,
        }
    }
}
