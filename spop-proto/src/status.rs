//! SPOP status codes carried by DISCONNECT frames, and frame type numbers.

use std::fmt;

macro_rules! status_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:expr, $text:expr; )*) => {
        impl StatusCode {
            $( $(#[$doc])* pub const $name: Self = Self($value); )*

            /// The reason string HAProxy associates with this code, if the code is assigned.
            ///
            /// ```
            /// use spop_proto::StatusCode;
            /// assert_eq!(StatusCode::TOO_BIG.reason(), Some("frame is too big"));
            /// assert_eq!(StatusCode(1234).reason(), None);
            /// ```
            pub const fn reason(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some($text), )*
                    _ => None,
                }
            }

            /// The name of the constant for this code (`"TOO_BIG"`), if the code is assigned.
            ///
            /// ```
            /// use spop_proto::StatusCode;
            /// assert_eq!(StatusCode(4).name(), Some("INVALID"));
            /// ```
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($name)), )*
                    _ => None,
                }
            }

            /// Every assigned code, in numeric order.
            pub const ALL: &'static [StatusCode] = &[$(Self::$name),*];
        }
    };
}

/// A SPOP status code, as carried by the `status-code` key of AGENT-DISCONNECT and
/// HAPROXY-DISCONNECT frames.
///
/// Codes outside the assigned set stay representable (agents may use their own codes, for
/// example 100 and above).
///
/// ```
/// use spop_proto::StatusCode;
/// assert_eq!(StatusCode::INVALID, StatusCode(4));
/// assert_eq!(StatusCode::INVALID.to_string(), "invalid frame received (4)");
/// assert_eq!(StatusCode(150).to_string(), "unassigned status code (150)");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct StatusCode(pub u32);

status_codes! {
    /// 0: normal close, no error.
    NORMAL = 0, "normal";
    /// 1: I/O error.
    IO = 1, "I/O error";
    /// 2: a timeout occurred.
    TIMEOUT = 2, "a timeout occurred";
    /// 3: a frame is larger than the negotiated (or configured) maximum.
    TOO_BIG = 3, "frame is too big";
    /// 4: a malformed or unexpected frame.
    INVALID = 4, "invalid frame received";
    /// 5: the HELLO frame lacks the version key.
    NO_VERSION = 5, "version value not found";
    /// 6: the HELLO frame lacks the max-frame-size key.
    NO_FRAME_SIZE = 6, "max-frame-size value not found";
    /// 7: the HELLO frame lacks the capabilities key.
    NO_CAPABILITIES = 7, "capabilities value not found";
    /// 8: no common protocol version.
    BAD_VERSION = 8, "unsupported version";
    /// 9: max-frame-size below 256 or above what was offered.
    BAD_FRAME_SIZE = 9, "max-frame-size too big or too small";
    /// 10: a fragmented frame arrived but fragmentation was not negotiated.
    FRAGMENTATION_NOT_SUPPORTED = 10, "fragmentation not supported";
    /// 11: fragments of different frames were interlaced.
    INTERLACED_FRAMES = 11, "invalid interlaced frames";
    /// 12: a frame refers to an unknown stream-id/frame-id.
    FRAME_ID_NOT_FOUND = 12, "frame-id not found";
    /// 13: resource allocation error.
    RESOURCE_ALLOCATION = 13, "resource allocation error";
    /// 99: unknown error.
    UNKNOWN = 99, "an unknown error occurred";
}

impl fmt::Debug for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "StatusCode::{name}"),
            None => write!(f, "StatusCode({})", self.0),
        }
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            Some(reason) => write!(f, "{reason} ({})", self.0),
            None => write!(f, "unassigned status code ({})", self.0),
        }
    }
}

impl From<u32> for StatusCode {
    fn from(code: u32) -> Self {
        Self(code)
    }
}

/// The type byte of a SPOP frame.
///
/// Unknown values stay representable: an agent skips frames of unknown type.
///
/// ```
/// use spop_proto::FrameType;
/// assert_eq!(FrameType::ACK.0, 103);
/// assert_eq!(format!("{:?}", FrameType::NOTIFY), "NOTIFY");
/// assert!(FrameType(42).name().is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameType(pub u8);

impl FrameType {
    /// 0: continuation fragment of a NOTIFY (HAProxy 2.x fragmentation only).
    pub const UNSET: Self = Self(0);
    /// 1: HAPROXY-HELLO.
    pub const HAPROXY_HELLO: Self = Self(1);
    /// 2: HAPROXY-DISCONNECT.
    pub const HAPROXY_DISCONNECT: Self = Self(2);
    /// 3: NOTIFY.
    pub const NOTIFY: Self = Self(3);
    /// 101: AGENT-HELLO.
    pub const AGENT_HELLO: Self = Self(101);
    /// 102: AGENT-DISCONNECT.
    pub const AGENT_DISCONNECT: Self = Self(102);
    /// 103: ACK.
    pub const ACK: Self = Self(103);

    /// The protocol name of this frame type (`"AGENT-HELLO"`), if known.
    ///
    /// ```
    /// use spop_proto::FrameType;
    /// assert_eq!(FrameType::AGENT_HELLO.name(), Some("AGENT-HELLO"));
    /// ```
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "UNSET",
            1 => "HAPROXY-HELLO",
            2 => "HAPROXY-DISCONNECT",
            3 => "NOTIFY",
            101 => "AGENT-HELLO",
            102 => "AGENT-DISCONNECT",
            103 => "ACK",
            _ => return None,
        })
    }
}

impl fmt::Debug for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(&name.replace('-', "_")),
            None => write!(f, "FrameType({})", self.0),
        }
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "unknown frame type {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_name_and_reason() {
        assert_eq!(StatusCode::ALL.len(), 15);
        for code in StatusCode::ALL {
            assert!(code.name().is_some());
            assert!(code.reason().is_some());
            assert!(code.reason().unwrap().len() <= 255);
        }
        assert_eq!(
            format!("{:?}", StatusCode(13)),
            "StatusCode::RESOURCE_ALLOCATION"
        );
        assert_eq!(format!("{:?}", StatusCode(14)), "StatusCode(14)");
    }

    #[test]
    fn frame_type_debug() {
        assert_eq!(format!("{:?}", FrameType::HAPROXY_HELLO), "HAPROXY_HELLO");
        assert_eq!(format!("{:?}", FrameType(9)), "FrameType(9)");
        assert_eq!(FrameType::UNSET.to_string(), "UNSET");
    }
}
