//! Negotiation of version, frame size and capabilities from a HAPROXY-HELLO.

use crate::error::ProtocolError;
use crate::frame::{Capabilities, HaproxyHello, MIN_MAX_FRAME_SIZE, parse_versions};

use super::AgentConfig;

/// What the handshake settled.
///
/// ```
/// use spop_proto::{Negotiated, frame::Capabilities};
/// let n = Negotiated::default();
/// assert_eq!(n.max_frame_size, 16380);
/// assert_eq!(n.capabilities, Capabilities::default());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Negotiated {
    /// The frame size limit for both directions: `min(ours, offered)`, at least 256.
    pub max_frame_size: u32,
    /// The capabilities in use: pipelining if both offered it; fragmentation if we announced it.
    pub capabilities: Capabilities,
    /// HAProxy's engine-id, if sent (lossily decoded).
    pub engine_id: Option<String>,
    /// This was a health-check HELLO: the connection closes after the AGENT-HELLO.
    pub healthcheck: bool,
}

impl Default for Negotiated {
    fn default() -> Self {
        Self {
            max_frame_size: crate::frame::DEFAULT_MAX_FRAME_SIZE,
            capabilities: Capabilities::default(),
            engine_id: None,
            healthcheck: false,
        }
    }
}

/// Checks a HAPROXY-HELLO against our configuration (spop-notes §5).
pub(super) fn negotiate(
    hello: &HaproxyHello<'_>,
    config: &AgentConfig,
) -> Result<Negotiated, ProtocolError> {
    let versions = hello
        .supported_versions
        .ok_or(ProtocolError::MissingVersion)?;
    if !parse_versions(versions).any(|v| v == 2000) {
        return Err(ProtocolError::NoSupportedVersion);
    }
    let offered = hello
        .max_frame_size
        .ok_or(ProtocolError::MissingMaxFrameSize)?;
    if offered < u64::from(MIN_MAX_FRAME_SIZE) {
        return Err(ProtocolError::BadMaxFrameSize(offered));
    }
    let ours = config.max_frame_size.max(MIN_MAX_FRAME_SIZE);
    let max_frame_size = u32::try_from(offered).map_or(ours, |o| o.min(ours));
    let theirs = hello
        .capabilities
        .map(Capabilities::parse)
        .unwrap_or_default();
    let capabilities = Capabilities {
        pipelining: config.pipelining && theirs.pipelining,
        asynchronous: false,
        // announced by the receiver: HAProxy never offers it, we announce it when configured
        fragmentation: config.fragmentation,
    };
    Ok(Negotiated {
        max_frame_size,
        capabilities,
        engine_id: hello
            .engine_id
            .map(|e| String::from_utf8_lossy(e).into_owned()),
        healthcheck: hello.healthcheck,
    })
}
