//! Parsing shared by the subcommands: `name=TYPE:VALUE` arguments, addresses, durations, hex
//! input, and typed values as text or JSON.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Value, json};
use spop_proto::frame::NotifyBuilder;
use spop_proto::{HeaderBlock, OwnedTypedData, TypedData};

/// An owned typed value parsed from the command line (`int64:-1`, `bin:00ff`...): the
/// protocol crate's owned value.
pub(crate) type OwnedValue = OwnedTypedData;

/// Parses `TYPE:VALUE` values.
pub(crate) trait ParseValue: Sized {
    fn parse(spec: &str) -> Result<Self, String>;
}

impl ParseValue for OwnedValue {
    /// Parses `TYPE:VALUE` (`null` alone is accepted for NULL).
    fn parse(spec: &str) -> Result<Self, String> {
        let (ty, value) = spec.split_once(':').unwrap_or((spec, ""));
        let bad = |e: &dyn fmt::Display| format!("invalid {ty} value {value:?}: {e}");
        Ok(match ty {
            "null" => {
                if !value.is_empty() {
                    return Err(format!("null takes no value, got {value:?}"));
                }
                Self::Null
            }
            "bool" => Self::Bool(match value {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(bad(&"expected true or false")),
            }),
            "int32" => Self::Int32(value.parse().map_err(|e| bad(&e))?),
            "uint32" => Self::Uint32(value.parse().map_err(|e| bad(&e))?),
            "int64" => Self::Int64(value.parse().map_err(|e| bad(&e))?),
            "uint64" => Self::Uint64(value.parse().map_err(|e| bad(&e))?),
            "ipv4" => Self::Ipv4(value.parse().map_err(|e| bad(&e))?),
            "ipv6" => Self::Ipv6(value.parse().map_err(|e| bad(&e))?),
            "str" => Self::String(value.as_bytes().to_vec().into()),
            // spaced hex (`bin:00 ff`) as `spoa decode` reads it
            "bin" => Self::Binary(parse_hex_text(value).map_err(|e| bad(&e.message))?.into()),
            other => {
                return Err(format!(
                    "unknown type {other:?} (expected null, bool, int32, uint32, int64, uint64, \
                     ipv4, ipv6, str or bin)"
                ));
            }
        })
    }
}

/// One `--arg name=TYPE:VALUE` (the name may be empty: `=int64:1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArgSpec {
    pub(crate) name: String,
    pub(crate) value: OwnedValue,
}

impl FromStr for ArgSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, spec) = s
            .split_once('=')
            .ok_or_else(|| format!("expected name=TYPE:VALUE, got {s:?}"))?;
        Ok(Self {
            name: name.to_string(),
            value: OwnedValue::parse(spec)?,
        })
    }
}

/// Adds a message and its arguments to a NOTIFY being built.
pub(crate) fn add_message(builder: &mut NotifyBuilder, message: &str, args: &[ArgSpec]) {
    builder.message(message);
    for a in args {
        match a.value.as_typed() {
            TypedData::Null => builder.arg(&a.name, ()),
            v => builder.arg(&a.name, v),
        };
    }
}

/// One `--header "Name: value"`: the name lowercased (as HAProxy stores it), the value with
/// surrounding blanks trimmed.
pub(crate) fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("expected \"Name: value\", got {s:?}"))?;
    let name = name.trim();
    if name.is_empty() || name.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(format!("invalid header name {name:?} in {s:?}"));
    }
    Ok((name.to_ascii_lowercase(), value.trim().to_owned()))
}

/// The `req.hdrs_bin` block of these headers, as a BINARY value.
pub(crate) fn header_block_value(headers: &[(String, String)]) -> OwnedValue {
    let mut b = Vec::with_capacity(HeaderBlock::encoded_len(
        headers.iter().map(|(n, v)| (n, v)),
    ));
    HeaderBlock::encode(headers.iter().map(|(n, v)| (n, v)), &mut b);
    OwnedValue::Binary(b.into())
}

/// Where to connect or listen: `host:port`, or a Unix socket (`unix:/path`, or anything with
/// a `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Addr {
    Tcp(String),
    Unix(PathBuf),
    /// `systemd`: the first listening socket passed by socket activation (`LISTEN_FDS`).
    Inherited,
}

impl FromStr for Addr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "systemd" {
            return Ok(Self::Inherited);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("empty Unix socket path".into());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if s.contains('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        if s.rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.is_empty())
        {
            return Err(format!(
                "expected host:port or a Unix socket path (unix:/path), got {s:?}"
            ));
        }
        Ok(Self::Tcp(s.to_string()))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => f.write_str(a),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Inherited => f.write_str("systemd"),
        }
    }
}

/// Parses a duration: `2s`, `500ms`, `1.5s`, `2m`, `100us`, or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 2s, 500ms, 1.5)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Writes bytes as lowercase hex.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// How frame input is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputFormat {
    Auto,
    Hex,
    Binary,
}

impl InputFormat {
    pub(crate) const fn from_flags(hex: bool, bin: bool) -> Self {
        match (hex, bin) {
            (true, _) => Self::Hex,
            (_, true) => Self::Binary,
            _ => Self::Auto,
        }
    }
}

/// A hex text error and the line (1-based) it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HexError {
    pub(crate) line: usize,
    pub(crate) message: String,
}

impl HexError {
    fn new(line: usize, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for HexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Whether `data` reads as text (UTF-8 without control characters other than tabs and line
/// ends): such input is hex or an error, never binary frames (which start with NUL bytes).
pub(crate) fn looks_like_text(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok()
        && data
            .iter()
            .all(|&b| b >= 0x20 || matches!(b, b'\t' | b'\n' | b'\r'))
}

/// Turns file contents into frame bytes: hex text (whitespace ignored, `#` comments, and
/// `"quoted strings"` standing for their bytes, as in the protocol notes) or raw binary.
/// `Auto` picks hex when the input parses as hex text.
pub(crate) fn decode_input(data: &[u8], format: InputFormat) -> Result<Vec<u8>, HexError> {
    match format {
        InputFormat::Binary => Ok(data.to_vec()),
        InputFormat::Hex => {
            let text = std::str::from_utf8(data)
                .map_err(|_| HexError::new(1, "hex input is not UTF-8 text"))?;
            parse_hex_text(text)
        }
        InputFormat::Auto if looks_like_text(data) => {
            parse_hex_text(std::str::from_utf8(data).unwrap_or_default())
        }
        InputFormat::Auto => Ok(data.to_vec()),
    }
}

/// Parses hex text: pairs of hex digits (tokens may hold several pairs, `0x` prefixes are
/// allowed), whitespace and commas ignored, `#` starts a comment to end of line, `"..."` is a
/// string literal (escapes `\" \\ \n \r \t \0 \xNN`).
pub(crate) fn parse_hex_text(text: &str) -> Result<Vec<u8>, HexError> {
    let mut out = Vec::new();
    let mut pending: Option<u8> = None;
    let mut chars = text.char_indices().peekable();
    let mut line = 1;
    while let Some((_, c)) = chars.next() {
        match c {
            '\n' => {
                if pending.is_some() {
                    return Err(HexError::new(line, "odd number of hex digits"));
                }
                line += 1;
            }
            c if c.is_whitespace() || c == ',' => {
                if pending.is_some() {
                    return Err(HexError::new(line, "odd number of hex digits in a token"));
                }
            }
            '#' => {
                if pending.is_some() {
                    return Err(HexError::new(line, "odd number of hex digits"));
                }
                for (_, c) in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '0' if pending.is_none() && matches!(chars.peek(), Some((_, 'x' | 'X'))) => {
                chars.next();
            }
            '"' => {
                if pending.is_some() {
                    return Err(HexError::new(line, "odd number of hex digits"));
                }
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => {
                            let Some((_, e)) = chars.next() else { break };
                            match e {
                                '"' | '\\' => out.push(e as u8),
                                'n' => out.push(b'\n'),
                                'r' => out.push(b'\r'),
                                't' => out.push(b'\t'),
                                '0' => out.push(0),
                                'x' => {
                                    let h = chars.next().and_then(|(_, c)| c.to_digit(16));
                                    let l = chars.next().and_then(|(_, c)| c.to_digit(16));
                                    match (h, l) {
                                        #[allow(clippy::cast_possible_truncation)]
                                        (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                                        _ => {
                                            return Err(HexError::new(
                                                line,
                                                "bad \\x escape in a string",
                                            ));
                                        }
                                    }
                                }
                                other => {
                                    return Err(HexError::new(
                                        line,
                                        format!("unknown escape \\{other} in a string"),
                                    ));
                                }
                            }
                        }
                        '\n' => {
                            return Err(HexError::new(line, "unterminated string"));
                        }
                        c => {
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                if !closed {
                    return Err(HexError::new(line, "unterminated string"));
                }
            }
            c => {
                #[allow(clippy::cast_possible_truncation)]
                let v = c
                    .to_digit(16)
                    .ok_or_else(|| HexError::new(line, format!("unexpected character {c:?}")))?
                    as u8;
                match pending.take() {
                    Some(hi) => out.push((hi << 4) | v),
                    None => pending = Some(v),
                }
            }
        }
    }
    if pending.is_some() {
        return Err(HexError::new(line, "odd number of hex digits at the end"));
    }
    Ok(out)
}

/// A typed value as JSON: `{"type": "int64", "value": -1}`; strings as (lossy UTF-8) text,
/// binary as hex, u64 exact.
pub(crate) fn typed_json(v: &TypedData<'_>) -> Value {
    let ty = v.data_type().name();
    let value = match *v {
        TypedData::Null => Value::Null,
        TypedData::Bool(b) => json!(b),
        TypedData::Int32(n) => json!(n),
        TypedData::Uint32(n) => json!(n),
        TypedData::Int64(n) => json!(n),
        TypedData::Uint64(n) => json!(n),
        TypedData::Ipv4(a) => json!(a.to_string()),
        TypedData::Ipv6(a) => json!(a.to_string()),
        TypedData::String(s) => json!(String::from_utf8_lossy(s)),
        TypedData::Binary(b) => json!(to_hex(b)),
    };
    json!({ "type": ty, "value": value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arg_specs() {
        let a: ArgSpec = "ip=ipv4:127.0.0.1".parse().unwrap();
        assert_eq!(a.name, "ip");
        assert_eq!(a.value, OwnedValue::Ipv4(std::net::Ipv4Addr::LOCALHOST));
        let a: ArgSpec = "=int64:-1".parse().unwrap();
        assert_eq!((a.name.as_str(), a.value), ("", OwnedValue::Int64(-1)));
        let a: ArgSpec = "s=str:a=b:c".parse().unwrap();
        assert_eq!(a.value, OwnedValue::String("a=b:c".into()));
        let a: ArgSpec = "e=str:".parse().unwrap();
        assert_eq!(a.value, OwnedValue::String("".into()));
        let a: ArgSpec = "n=null".parse().unwrap();
        assert_eq!(a.value, OwnedValue::Null);
        let a: ArgSpec = "b=bin:00ff00".parse().unwrap();
        assert_eq!(a.value, OwnedValue::Binary(vec![0, 255, 0].into()));
        let a: ArgSpec = "u=uint64:18446744073709551615".parse().unwrap();
        assert_eq!(a.value, OwnedValue::Uint64(u64::MAX));
        assert!("x".parse::<ArgSpec>().is_err());
        assert!("x=int32:99999999999".parse::<ArgSpec>().is_err());
        assert!("x=float:1".parse::<ArgSpec>().is_err());
        assert!("x=bin:0".parse::<ArgSpec>().is_err());
        let a: ArgSpec = "b=bin:00 ff".parse().unwrap();
        assert_eq!(a.value, OwnedValue::Binary(vec![0, 255].into()));
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("User-Agent: curl/8.5 "),
            Ok(("user-agent".into(), "curl/8.5".into()))
        );
        assert_eq!(
            parse_header("x-empty:"),
            Ok(("x-empty".into(), String::new()))
        );
        assert!(parse_header("novalue").is_err());
        assert!(parse_header(": v").is_err());
        assert!(parse_header("a b: v").is_err());
        let v = header_block_value(&[("host".into(), "a".into())]);
        assert_eq!(
            v,
            OwnedValue::Binary((&b"\x04host\x01a\x00\x00"[..]).into())
        );
    }

    #[test]
    fn addrs() {
        assert_eq!("127.0.0.1:0".parse(), Ok(Addr::Tcp("127.0.0.1:0".into())));
        assert_eq!("unix:sock".parse(), Ok(Addr::Unix("sock".into())));
        assert_eq!("/tmp/s".parse(), Ok(Addr::Unix("/tmp/s".into())));
        assert!("nope".parse::<Addr>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn hex_text() {
        assert_eq!(
            parse_hex_text("00 0a # comment\n ff0x10 \"ab\\x00\" 0XfF").unwrap(),
            [0, 10, 255, 16, b'a', b'b', 0, 255]
        );
        assert!(parse_hex_text("0 1").is_err());
        assert!(parse_hex_text("zz").is_err());
        assert!(parse_hex_text("\"abc").is_err());
        assert_eq!(parse_hex_text("00\n0\n").unwrap_err().line, 2);
        assert_eq!(parse_hex_text("# c\n00 zz").unwrap_err().line, 2);
        assert_eq!(parse_hex_text("00\n\n1").unwrap_err().line, 3);
        assert_eq!(
            decode_input(b"\x00\x00\x00\x07", InputFormat::Auto).unwrap(),
            [0, 0, 0, 7]
        );
        assert_eq!(
            decode_input(b"00000007", InputFormat::Auto).unwrap(),
            [0, 0, 0, 7]
        );
        assert_eq!(
            decode_input(b"00000007", InputFormat::Binary).unwrap(),
            b"00000007"
        );
        // text that is not hex is an error, not binary input
        assert!(decode_input(b"hello\n", InputFormat::Auto).is_err());
        assert_eq!(
            decode_input(b"\x00\x00\x00\x07hello", InputFormat::Auto).unwrap(),
            b"\x00\x00\x00\x07hello"
        );
    }
}
