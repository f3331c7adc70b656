//! HAPROXY-HELLO and AGENT-HELLO.

use std::fmt;

use bytes::BytesMut;

use super::{FrameFlags, FrameHeader, MIN_MAX_FRAME_SIZE, encode_frame};
use crate::data::{KvList, TypedData};
use crate::error::{DecodeError, ProtocolError};
use crate::status::FrameType;

/// The only SPOP version: 2.0.
pub const SUPPORTED_VERSION: &str = "2.0";

/// The capabilities a side announces.
///
/// ```
/// use spop_proto::frame::Capabilities;
/// let caps = Capabilities::parse(b" pipelining , async,foo");
/// assert!(caps.pipelining && caps.asynchronous && !caps.fragmentation);
/// assert_eq!(caps.to_string(), "pipelining,async");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities {
    /// Several NOTIFYs in flight per connection, ACKs in any order.
    pub pipelining: bool,
    /// HAProxy 2.x only: ACKs on any connection of the engine. Never offered by this library.
    pub asynchronous: bool,
    /// HAProxy 2.x only: the announcing side accepts fragmented frames.
    pub fragmentation: bool,
}

impl Capabilities {
    /// Parses a comma-separated list; spaces are ignored, unknown names skipped.
    pub fn parse(list: &[u8]) -> Self {
        let mut caps = Self::default();
        for item in list.split(|&b| b == b',') {
            match item.trim_ascii() {
                b"pipelining" => caps.pipelining = true,
                b"async" => caps.asynchronous = true,
                b"fragmentation" => caps.fragmentation = true,
                _ => {}
            }
        }
        caps
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for (on, name) in [
            (self.pipelining, "pipelining"),
            (self.asynchronous, "async"),
            (self.fragmentation, "fragmentation"),
        ] {
            if on {
                write!(f, "{sep}{name}")?;
                sep = ",";
            }
        }
        Ok(())
    }
}

/// Parses a `supported-versions`/`version` list (`"2.0"`, `" 1.0 , 2.0"`) into
/// `MAJOR * 1000 + MINOR` values; malformed entries are skipped.
///
/// ```
/// use spop_proto::frame::parse_versions;
/// assert_eq!(parse_versions(b"1.0, 2.0, x").collect::<Vec<_>>(), [1000, 2000]);
/// ```
pub fn parse_versions(list: &[u8]) -> impl Iterator<Item = u32> + '_ {
    list.split(|&b| b == b',').filter_map(|item| {
        let s = std::str::from_utf8(item.trim_ascii()).ok()?;
        let (major, minor) = s.split_once('.')?;
        let major: u32 = major.parse().ok()?;
        let minor: u32 = minor.parse().ok()?;
        (major != 0 && minor <= 999)
            .then(|| major.checked_mul(1000)?.checked_add(minor))
            .flatten()
    })
}

/// The payload of a HAPROXY-HELLO frame.
///
/// Keys are matched exactly; unknown keys are skipped; a repeated key overrides the earlier one.
///
/// ```
/// use bytes::BytesMut;
/// use spop_proto::frame::{HaproxyHello, split_frame};
/// let mut buf = BytesMut::new();
/// HaproxyHello::healthcheck().encode(&mut buf);
/// assert_eq!(buf.len(), 82); // byte-identical to HAProxy's spop-check HELLO
/// let (_, payload, _) = split_frame(&buf, 16380).unwrap().unwrap();
/// assert!(HaproxyHello::parse(payload).unwrap().healthcheck);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HaproxyHello<'a> {
    /// `supported-versions` (STRING).
    pub supported_versions: Option<&'a [u8]>,
    /// `max-frame-size` (any integer type).
    pub max_frame_size: Option<u64>,
    /// `capabilities` (STRING).
    pub capabilities: Option<&'a [u8]>,
    /// `engine-id` (STRING).
    pub engine_id: Option<&'a [u8]>,
    /// `healthcheck` (BOOL), true for `option spop-check` probes.
    pub healthcheck: bool,
}

impl<'a> HaproxyHello<'a> {
    /// A HELLO like HAProxy's data-path one: version 2.0, this frame size and capabilities.
    pub fn new(max_frame_size: u32, capabilities: &'a str) -> Self {
        Self {
            supported_versions: Some(SUPPORTED_VERSION.as_bytes()),
            max_frame_size: Some(u64::from(max_frame_size)),
            capabilities: Some(capabilities.as_bytes()),
            engine_id: None,
            healthcheck: false,
        }
    }

    /// The HELLO of HAProxy's `option spop-check`: size 16380, no capabilities, healthcheck.
    pub fn healthcheck() -> Self {
        Self {
            healthcheck: true,
            ..Self::new(16380, "")
        }
    }

    /// Parses the KV list of a HAPROXY-HELLO.
    pub fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut hello = Self::default();
        for kv in KvList::new(payload) {
            let (key, value) = kv?;
            match key {
                "supported-versions" => {
                    hello.supported_versions = Some(string(value, "supported-versions")?)
                }
                "max-frame-size" => hello.max_frame_size = Some(int(value, "max-frame-size")?),
                "capabilities" => hello.capabilities = Some(string(value, "capabilities")?),
                "engine-id" => hello.engine_id = Some(string(value, "engine-id")?),
                "healthcheck" => {
                    hello.healthcheck = value
                        .as_bool()
                        .ok_or(DecodeError::UnexpectedType("healthcheck"))?;
                }
                _ => {}
            }
        }
        Ok(hello)
    }

    /// Writes the whole frame, length prefix included.
    pub fn encode(&self, dst: &mut BytesMut) {
        let hdr = FrameHeader::new(FrameType::HAPROXY_HELLO, FrameFlags::FIN, 0, 0);
        encode_frame(dst, hdr, |b| {
            if let Some(v) = self.supported_versions {
                KvList::put(b, "supported-versions", TypedData::String(v));
            }
            if let Some(v) = self.max_frame_size {
                put_frame_size(b, v);
            }
            if let Some(v) = self.capabilities {
                KvList::put(b, "capabilities", TypedData::String(v));
            }
            if let Some(v) = self.engine_id {
                KvList::put(b, "engine-id", TypedData::String(v));
            }
            if self.healthcheck {
                KvList::put(b, "healthcheck", TypedData::Bool(true));
            }
        });
    }
}

/// The payload of an AGENT-HELLO frame.
///
/// ```
/// use bytes::BytesMut;
/// use spop_proto::frame::{AgentHello, split_frame};
/// let mut buf = BytesMut::new();
/// AgentHello::new(16380, "pipelining").encode(&mut buf);
/// let (_, payload, _) = split_frame(&buf, 16380).unwrap().unwrap();
/// let hello = AgentHello::parse(payload).unwrap();
/// assert_eq!(hello.validate(16380).unwrap(), (16380, "pipelining".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AgentHello<'a> {
    /// `version` (STRING).
    pub version: Option<&'a [u8]>,
    /// `max-frame-size` (any integer type).
    pub max_frame_size: Option<u64>,
    /// `capabilities` (STRING).
    pub capabilities: Option<&'a [u8]>,
}

impl std::str::FromStr for Capabilities {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse(s.as_bytes()))
    }
}

impl<'a> AgentHello<'a> {
    /// An AGENT-HELLO with version 2.0.
    pub fn new(max_frame_size: u32, capabilities: &'a str) -> Self {
        Self {
            version: Some(SUPPORTED_VERSION.as_bytes()),
            max_frame_size: Some(u64::from(max_frame_size)),
            capabilities: Some(capabilities.as_bytes()),
        }
    }

    /// Parses the KV list of an AGENT-HELLO.
    pub fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut hello = Self::default();
        for kv in KvList::new(payload) {
            let (key, value) = kv?;
            match key {
                "version" => hello.version = Some(string(value, "version")?),
                "max-frame-size" => hello.max_frame_size = Some(int(value, "max-frame-size")?),
                "capabilities" => hello.capabilities = Some(string(value, "capabilities")?),
                _ => {}
            }
        }
        Ok(hello)
    }

    /// Validates the reply as HAProxy 3.x's health check does (all three keys mandatory,
    /// version 2.0, `256 <= max-frame-size <= offered`); returns the frame size and
    /// capabilities.
    pub fn validate(&self, offered: u32) -> Result<(u32, Capabilities), ProtocolError> {
        let version = self.version.ok_or(ProtocolError::MissingVersion)?;
        if !parse_versions(version).any(|v| v == 2000) {
            return Err(ProtocolError::NoSupportedVersion);
        }
        let size = self
            .max_frame_size
            .ok_or(ProtocolError::MissingMaxFrameSize)?;
        if size < u64::from(MIN_MAX_FRAME_SIZE) || size > u64::from(offered) {
            return Err(ProtocolError::BadMaxFrameSize(size));
        }
        let caps = self
            .capabilities
            .ok_or(ProtocolError::MissingCapabilities)?;
        #[allow(clippy::cast_possible_truncation)] // checked against `offered` above
        Ok((size as u32, Capabilities::parse(caps)))
    }

    /// Writes the whole frame, length prefix included: flags exactly FIN, ids `00 00`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let hdr = FrameHeader::new(FrameType::AGENT_HELLO, FrameFlags::FIN, 0, 0);
        encode_frame(dst, hdr, |b| {
            if let Some(v) = self.version {
                KvList::put(b, "version", TypedData::String(v));
            }
            if let Some(v) = self.max_frame_size {
                put_frame_size(b, v);
            }
            if let Some(v) = self.capabilities {
                KvList::put(b, "capabilities", TypedData::String(v));
            }
        });
    }
}

/// `max-frame-size` as UINT32 (what HAProxy sends and expects), UINT64 only if it must.
fn put_frame_size(b: &mut BytesMut, v: u64) {
    match u32::try_from(v) {
        Ok(v) => KvList::put(b, "max-frame-size", TypedData::Uint32(v)),
        Err(_) => KvList::put(b, "max-frame-size", TypedData::Uint64(v)),
    }
}

fn string<'a>(v: TypedData<'a>, key: &'static str) -> Result<&'a [u8], DecodeError> {
    match v {
        TypedData::String(s) => Ok(s),
        _ => Err(DecodeError::UnexpectedType(key)),
    }
}

fn int(v: TypedData<'_>, key: &'static str) -> Result<u64, DecodeError> {
    v.as_u64().ok_or(DecodeError::UnexpectedType(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_versions(b"2.0").collect::<Vec<_>>(), [2000]);
        assert_eq!(parse_versions(b" 2.0 ").collect::<Vec<_>>(), [2000]);
        assert_eq!(parse_versions(b"0.9,1.1000,2.x,,3").count(), 0);
        assert_eq!(parse_versions(b"99999999.0").count(), 0);
    }

    #[test]
    fn agent_hello_validation() {
        let ok = AgentHello::new(1000, "pipelining");
        assert!(ok.validate(1000).is_ok());
        assert_eq!(ok.validate(999), Err(ProtocolError::BadMaxFrameSize(1000)));
        let small = AgentHello {
            max_frame_size: Some(255),
            ..ok
        };
        assert_eq!(
            small.validate(1000),
            Err(ProtocolError::BadMaxFrameSize(255))
        );
        let nov = AgentHello {
            version: None,
            ..ok
        };
        assert_eq!(nov.validate(1000), Err(ProtocolError::MissingVersion));
        let badv = AgentHello {
            version: Some(b"1.0"),
            ..ok
        };
        assert_eq!(badv.validate(1000), Err(ProtocolError::NoSupportedVersion));
        let nos = AgentHello {
            max_frame_size: None,
            ..ok
        };
        assert_eq!(nos.validate(1000), Err(ProtocolError::MissingMaxFrameSize));
        let noc = AgentHello {
            capabilities: None,
            ..ok
        };
        assert_eq!(noc.validate(1000), Err(ProtocolError::MissingCapabilities));
    }

    #[test]
    fn wrong_types() {
        let mut b = Vec::new();
        KvList::put(&mut b, "version", TypedData::Uint32(2));
        assert_eq!(
            AgentHello::parse(&b),
            Err(DecodeError::UnexpectedType("version"))
        );
        b.clear();
        KvList::put(&mut b, "max-frame-size", TypedData::Int64(-1));
        assert_eq!(
            HaproxyHello::parse(&b),
            Err(DecodeError::UnexpectedType("max-frame-size"))
        );
    }
}
