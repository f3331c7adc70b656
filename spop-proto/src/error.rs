//! Error types and their one mapping to SPOP status codes.

use crate::status::{FrameType, StatusCode};

/// Bytes that cannot be a SPOP frame or payload.
///
/// Cheap to create and copy: it sits on the hot path and never allocates.
///
/// ```
/// use spop_proto::{DecodeError, StatusCode};
/// let err = DecodeError::FrameTooLarge { len: 70_000, max: 16_380 };
/// assert_eq!(err.status(), StatusCode::TOO_BIG);
/// assert_eq!(err.to_string(), "frame length 70000 exceeds the maximum of 16380");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix announces more than the allowed maximum; detected before buffering.
    #[error("frame length {len} exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: u32,
        /// Allowed maximum.
        max: u32,
    },
    /// The length prefix is below the 7 bytes of the smallest possible frame.
    #[error("frame length {0} is below the minimum of 7")]
    FrameTooShort(u32),
    /// The frame ended while this item was being read.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// Bytes remain where the grammar expects the end of the frame.
    #[error("trailing bytes after {0}")]
    TrailingBytes(&'static str),
    /// A varint longer than 10 bytes or above `u64::MAX`.
    #[error("invalid varint (more than 10 bytes or above u64::MAX)")]
    InvalidVarint,
    /// A typed-data byte whose type nibble (10..=15) is reserved.
    #[error("unknown data type {0}")]
    UnknownDataType(u8),
    /// An integer too large for its declared type (INT32 and UINT32).
    #[error("integer {0} out of range for its declared type")]
    IntegerOutOfRange(u64),
    /// A name (key, message, argument or variable name) that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A key with an empty name in a KV list.
    #[error("empty key name in a KV list")]
    EmptyKey,
    /// An action type this library does not know (ACK decoding, HAProxy side).
    #[error("unknown action type {0}")]
    UnknownAction(u8),
    /// An action with the wrong number of arguments (ACK decoding, HAProxy side).
    #[error("action type {action} with {nb_args} arguments")]
    BadActionArgs {
        /// Action type byte.
        action: u8,
        /// Announced argument count.
        nb_args: u8,
    },
    /// A variable scope byte outside 0..=4.
    #[error("unknown variable scope {0}")]
    UnknownScope(u8),
    /// A KV value of the wrong data type for its key.
    #[error("unexpected data type for {0}")]
    UnexpectedType(&'static str),
}

impl DecodeError {
    /// The status code an agent sends in its AGENT-DISCONNECT when it receives such bytes.
    ///
    /// ```
    /// use spop_proto::{DecodeError, StatusCode};
    /// assert_eq!(DecodeError::InvalidVarint.status(), StatusCode::INVALID);
    /// ```
    pub const fn status(&self) -> StatusCode {
        match self {
            Self::FrameTooLarge { .. } => StatusCode::TOO_BIG,
            Self::FrameTooShort(_)
            | Self::Truncated(_)
            | Self::TrailingBytes(_)
            | Self::InvalidVarint
            | Self::UnknownDataType(_)
            | Self::IntegerOutOfRange(_)
            | Self::InvalidUtf8(_)
            | Self::EmptyKey
            | Self::UnknownAction(_)
            | Self::BadActionArgs { .. }
            | Self::UnknownScope(_)
            | Self::UnexpectedType(_) => StatusCode::INVALID,
        }
    }
}

/// Well-formed frames that break the protocol's rules.
///
/// ```
/// use spop_proto::{ProtocolError, StatusCode};
/// assert_eq!(ProtocolError::NoSupportedVersion.status(), StatusCode::BAD_VERSION);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame type that is not allowed in the current state.
    #[error("unexpected {frame} frame while {state}")]
    UnexpectedFrame {
        /// What the connection was doing.
        state: &'static str,
        /// The frame type received.
        frame: FrameType,
    },
    /// HELLO or DISCONNECT with a stream-id or frame-id other than 0.
    #[error("{0} frame with non-zero stream-id or frame-id")]
    NonZeroIds(FrameType),
    /// The HELLO frame has no `supported-versions` (or `version`) key.
    #[error("version missing in HELLO")]
    MissingVersion,
    /// No version both sides support (only 2.0 exists).
    #[error("no supported version in HELLO")]
    NoSupportedVersion,
    /// The HELLO frame has no `max-frame-size` key.
    #[error("max-frame-size missing in HELLO")]
    MissingMaxFrameSize,
    /// The AGENT-HELLO frame has no `capabilities` key.
    #[error("capabilities missing in HELLO")]
    MissingCapabilities,
    /// `max-frame-size` below 256, or above what was offered.
    #[error("max-frame-size {0} out of range")]
    BadMaxFrameSize(u64),
    /// A frame without FIN (or an UNSET continuation) while fragmentation is not in use.
    #[error("fragmented frame but fragmentation was not negotiated")]
    FragmentationNotSupported,
    /// A fragment of another frame arrived while a fragmented NOTIFY was being reassembled.
    #[error("interlaced fragments")]
    InterlacedFrames,
    /// A continuation fragment for a NOTIFY that is not being reassembled.
    #[error("fragment for an unknown stream-id/frame-id")]
    FrameIdNotFound,
    /// A reassembled NOTIFY would exceed the configured maximum size.
    #[error("reassembled NOTIFY exceeds {0} bytes")]
    ReassemblyTooLarge(usize),
}

impl ProtocolError {
    /// The status code an agent sends in its AGENT-DISCONNECT for this error.
    ///
    /// ```
    /// use spop_proto::{ProtocolError, StatusCode};
    /// assert_eq!(ProtocolError::BadMaxFrameSize(100).status(), StatusCode::BAD_FRAME_SIZE);
    /// ```
    pub const fn status(&self) -> StatusCode {
        match self {
            Self::UnexpectedFrame { .. } | Self::NonZeroIds(_) => StatusCode::INVALID,
            Self::MissingVersion => StatusCode::NO_VERSION,
            Self::NoSupportedVersion => StatusCode::BAD_VERSION,
            Self::MissingMaxFrameSize => StatusCode::NO_FRAME_SIZE,
            Self::MissingCapabilities => StatusCode::NO_CAPABILITIES,
            Self::BadMaxFrameSize(_) => StatusCode::BAD_FRAME_SIZE,
            Self::FragmentationNotSupported => StatusCode::FRAGMENTATION_NOT_SUPPORTED,
            Self::InterlacedFrames => StatusCode::INTERLACED_FRAMES,
            Self::FrameIdNotFound => StatusCode::FRAME_ID_NOT_FOUND,
            Self::ReassemblyTooLarge(_) => StatusCode::TOO_BIG,
        }
    }
}

/// Which timer expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// No HAPROXY-HELLO within the hello timeout.
    Hello,
    /// No traffic within the idle timeout while nothing was in flight.
    Idle,
    /// The graceful-drain deadline passed with NOTIFYs still unanswered.
    Drain,
}

/// Why a connection ended. Emitted exactly once, as [`Event::Closed`](crate::Event::Closed).
///
/// ```
/// use spop_proto::{ConnectionError, DecodeError, StatusCode};
/// let err = ConnectionError::from(DecodeError::InvalidVarint);
/// assert_eq!(err.status(), Some(StatusCode::INVALID));
/// assert!(!ConnectionError::HealthCheck.is_error());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer sent bytes that are not SPOP; an AGENT-DISCONNECT was queued.
    #[error("decode error: {0}")]
    Decode(#[from] DecodeError),
    /// The peer broke the protocol; an AGENT-DISCONNECT was queued.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The peer sent a DISCONNECT frame (answered with AGENT-DISCONNECT status 0).
    #[error("peer disconnected: {status}, message {message:?}")]
    PeerDisconnected {
        /// The peer's status code.
        status: StatusCode,
        /// The peer's message, lossily decoded.
        message: String,
    },
    /// A timer expired; an AGENT-DISCONNECT was queued.
    #[error("{0:?} timeout")]
    TimedOut(TimeoutKind),
    /// The peer closed its side.
    ///
    /// `clean` is true when nothing was in flight and no partial frame was buffered: the normal
    /// way HAProxy 3.x drops pooled connections.
    #[error("connection closed by peer ({})", if *.clean { "idle" } else { "with work pending" })]
    Eof {
        /// No NOTIFY in flight and no partial frame buffered.
        clean: bool,
    },
    /// The application closed the connection (including the end of a graceful drain).
    #[error("closed locally: {0}")]
    LocallyClosed(StatusCode),
    /// A health-check HELLO was answered; the connection is done.
    #[error("health check answered")]
    HealthCheck,
    /// A health-check HELLO was refused (AGENT-DISCONNECT status 0 instead of AGENT-HELLO),
    /// because the agent is shutting down: HAProxy counts a failed check.
    #[error("health check refused (shutting down)")]
    HealthCheckRefused,
}

impl ConnectionError {
    /// The status code sent in the AGENT-DISCONNECT for this error, if one was sent.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Decode(e) => Some(e.status()),
            Self::Protocol(e) => Some(e.status()),
            Self::PeerDisconnected { .. } => Some(StatusCode::NORMAL),
            Self::TimedOut(_) => Some(StatusCode::TIMEOUT),
            Self::LocallyClosed(s) => Some(*s),
            Self::HealthCheckRefused => Some(StatusCode::NORMAL),
            Self::Eof { .. } | Self::HealthCheck => None,
        }
    }

    /// False for the ordinary ends of a connection: a clean EOF, a peer DISCONNECT with status
    /// 0, a local close with status 0, an answered health check.
    pub fn is_error(&self) -> bool {
        match self {
            Self::Eof { clean } => !clean,
            Self::PeerDisconnected { status, .. } => *status != StatusCode::NORMAL,
            Self::LocallyClosed(s) => *s != StatusCode::NORMAL,
            Self::HealthCheck | Self::HealthCheckRefused => false,
            Self::Decode(_) | Self::Protocol(_) | Self::TimedOut(_) => true,
        }
    }
}

/// Caller misuse of [`AgentConnection`](crate::AgentConnection) commands.
///
/// ```
/// use spop_proto::AckError;
/// assert_eq!(AckError::Closed.to_string(), "connection is closed");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// No NOTIFY with this id is in flight.
    #[error("no NOTIFY in flight with {0}")]
    UnknownNotify(crate::NotifyId),
    /// The handshake has not completed.
    #[error("connection is not established")]
    NotEstablished,
    /// The connection is closed or closing.
    #[error("connection is closed")]
    Closed,
    /// The ACK would exceed the negotiated frame size; nothing was queued.
    #[error("ACK of {len} bytes exceeds the negotiated maximum of {max}")]
    FrameTooLarge {
        /// Encoded frame length (without the 4-byte prefix).
        len: usize,
        /// Negotiated maximum.
        max: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one mapping table from errors to status codes.
    #[test]
    fn error_to_status_table() {
        let decode = [
            (DecodeError::FrameTooLarge { len: 1, max: 0 }, 3),
            (DecodeError::FrameTooShort(3), 4),
            (DecodeError::Truncated("x"), 4),
            (DecodeError::TrailingBytes("x"), 4),
            (DecodeError::InvalidVarint, 4),
            (DecodeError::UnknownDataType(12), 4),
            (DecodeError::IntegerOutOfRange(1 << 40), 4),
            (DecodeError::InvalidUtf8("x"), 4),
            (DecodeError::EmptyKey, 4),
            (DecodeError::UnknownAction(9), 4),
            (
                DecodeError::BadActionArgs {
                    action: 1,
                    nb_args: 2,
                },
                4,
            ),
            (DecodeError::UnknownScope(7), 4),
            (DecodeError::UnexpectedType("x"), 4),
        ];
        for (e, code) in decode {
            assert_eq!(e.status(), StatusCode(code), "{e:?}");
            assert_eq!(ConnectionError::from(e).status(), Some(StatusCode(code)));
        }
        let proto = [
            (
                ProtocolError::UnexpectedFrame {
                    state: "s",
                    frame: FrameType::ACK,
                },
                4,
            ),
            (ProtocolError::NonZeroIds(FrameType::HAPROXY_HELLO), 4),
            (ProtocolError::MissingVersion, 5),
            (ProtocolError::MissingMaxFrameSize, 6),
            (ProtocolError::MissingCapabilities, 7),
            (ProtocolError::NoSupportedVersion, 8),
            (ProtocolError::BadMaxFrameSize(100), 9),
            (ProtocolError::FragmentationNotSupported, 10),
            (ProtocolError::InterlacedFrames, 11),
            (ProtocolError::FrameIdNotFound, 12),
            (ProtocolError::ReassemblyTooLarge(1), 3),
        ];
        for (e, code) in proto {
            assert_eq!(e.status(), StatusCode(code), "{e:?}");
            assert_eq!(ConnectionError::from(e).status(), Some(StatusCode(code)));
        }
        assert_eq!(
            ConnectionError::TimedOut(TimeoutKind::Hello).status(),
            Some(StatusCode::TIMEOUT)
        );
        assert_eq!(ConnectionError::Eof { clean: true }.status(), None);
        assert!(!ConnectionError::Eof { clean: true }.is_error());
        assert!(ConnectionError::Eof { clean: false }.is_error());
    }
}
