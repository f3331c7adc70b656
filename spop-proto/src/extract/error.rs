//! The errors of typed extraction: what went wrong ([`ArgErrorKind`]), with a value
//! ([`ValueError`]) or with an argument of a message ([`ArgError`], naming it by [`ArgRef`]).

use std::fmt;

use crate::data::{DataType, TypedData};
use crate::http::HeaderBlockError;

/// What went wrong with a value or an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ArgErrorKind {
    /// The message has no such argument (and the target type is not an `Option`).
    Missing,
    /// The argument is NULL: the fetch failed, or its value did not fit (and the target type
    /// is not an `Option`).
    Null,
    /// The value has another SPOP type than the one the target type accepts.
    WrongType,
    /// An integer outside the range of the target type.
    OutOfRange,
    /// A STRING asked for as text that is not valid UTF-8 (ask for `&[u8]` instead).
    InvalidUtf8,
    /// A BINARY value asked for as a header block that is not a valid one.
    InvalidHeaderBlock(HeaderBlockError),
    /// Another reason, reported by a custom `Deserialize` implementation (serde feature).
    Invalid,
}

impl ArgErrorKind {
    fn describe(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Null => "NULL",
            Self::WrongType => "wrong type",
            Self::OutOfRange => "value out of range",
            Self::InvalidUtf8 => "invalid UTF-8",
            Self::InvalidHeaderBlock(_) => "invalid header block",
            Self::Invalid => "invalid value",
        }
    }
}

/// A value that does not convert to the requested type; see [`FromTypedData`](crate::FromTypedData).
///
/// ```
/// use spop_proto::{ArgErrorKind, DataType, TypedData};
/// let err = u32::try_from(TypedData::Int64(-1)).unwrap_err();
/// assert_eq!(err.kind, ArgErrorKind::OutOfRange);
/// assert_eq!(err.actual, Some(DataType::Int64));
/// assert_eq!(err.to_string(), "expected an integer in u32 range, got int64 (value out of range)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ValueError {
    /// What went wrong.
    pub kind: ArgErrorKind,
    /// What the target type accepts, in words (`"an IP address"`, `"UTF-8 text"`...).
    pub expected: &'static str,
    /// The SPOP type of the value; `None` when the argument is missing.
    pub actual: Option<DataType>,
}

impl ValueError {
    /// An error of `kind` for a value of type `actual`.
    ///
    /// ```
    /// use spop_proto::{ArgErrorKind, DataType, ValueError};
    /// let e = ValueError::new(ArgErrorKind::WrongType, "a port number", Some(DataType::String));
    /// assert_eq!(e.to_string(), "expected a port number, got str (wrong type)");
    /// ```
    pub const fn new(kind: ArgErrorKind, expected: &'static str, actual: Option<DataType>) -> Self {
        Self {
            kind,
            expected,
            actual,
        }
    }

    /// The "wrong type" (or "NULL") error for `value`, when `expected` was wanted.
    ///
    /// ```
    /// use spop_proto::{ArgErrorKind, TypedData, ValueError};
    /// assert_eq!(ValueError::unexpected("a bool", &TypedData::Null).kind, ArgErrorKind::Null);
    /// assert_eq!(ValueError::unexpected("a bool", &TypedData::Int64(1)).kind, ArgErrorKind::WrongType);
    /// ```
    pub const fn unexpected(expected: &'static str, value: &TypedData<'_>) -> Self {
        let kind = if value.is_null() {
            ArgErrorKind::Null
        } else {
            ArgErrorKind::WrongType
        };
        Self::new(kind, expected, Some(value.data_type()))
    }

    /// The "missing argument" error.
    ///
    /// ```
    /// use spop_proto::{ArgErrorKind, ValueError};
    /// assert_eq!(ValueError::missing("an integer").to_string(), "expected an integer, got nothing (missing)");
    /// ```
    pub const fn missing(expected: &'static str) -> Self {
        Self::new(ArgErrorKind::Missing, expected, None)
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actual = self.actual.map_or("nothing", DataType::name);
        write!(
            f,
            "expected {}, got {actual} ({}",
            self.expected,
            self.kind.describe()
        )?;
        if let ArgErrorKind::InvalidHeaderBlock(e) = self.kind {
            write!(f, ": {e}")?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for ValueError {}

/// Which argument an [`ArgError`] is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ArgRef {
    /// Looked up by name.
    Name(String),
    /// Looked up by position (0-based).
    Index(usize),
}

impl fmt::Display for ArgRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => write!(f, "argument \"{}\"", n.escape_debug()),
            Self::Index(i) => write!(f, "argument #{i}"),
        }
    }
}

/// An argument that is missing or does not convert to the requested type.
///
/// It names the message and the argument, the expected and the actual type, and the kind;
/// it is `Send + Sync + 'static`, so a handler can return it as its error (the runtime still
/// ACKs), or match on [`ArgError::kind`] to turn it into a decision.
///
/// ```
/// use spop_proto::{ArgErrorKind, DataType, Notify, NotifyId};
/// let n = Notify::builder(NotifyId::new(1, 1)).message("m").arg("ip", "10.0.0.1").build();
/// let err = n.message("m").unwrap().get::<std::net::IpAddr>("ip").unwrap_err();
/// assert_eq!(err.kind(), ArgErrorKind::WrongType);
/// assert_eq!(err.message(), "m");
/// assert_eq!(err.expected(), "an IP address");
/// assert_eq!(err.actual(), Some(DataType::String));
/// assert_eq!(err.to_string(), "message \"m\", argument \"ip\": expected an IP address, got str (wrong type)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArgError {
    message: String,
    arg: ArgRef,
    error: ValueError,
    detail: Option<String>,
}

impl ArgError {
    /// An error about argument `arg` of message `message`.
    ///
    /// ```
    /// use spop_proto::{ArgError, ArgRef, ValueError};
    /// let e = ArgError::new("m", ArgRef::Index(2), ValueError::missing("a bool"));
    /// assert_eq!(e.to_string(), "message \"m\", argument #2: expected a bool, got nothing (missing)");
    /// ```
    pub fn new(message: &str, arg: ArgRef, error: ValueError) -> Self {
        Self {
            message: message.to_owned(),
            arg,
            error,
            detail: None,
        }
    }

    /// Adds a free-text detail, shown after the error (used for serde's custom errors).
    ///
    /// ```
    /// use spop_proto::{ArgError, ArgErrorKind, ArgRef, ValueError};
    /// let e = ArgError::new("m", ArgRef::Index(0), ValueError::new(ArgErrorKind::Invalid, "a level", None))
    ///     .with_detail("unknown level \"x\"");
    /// assert!(e.to_string().ends_with(": unknown level \"x\""));
    /// ```
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// What went wrong.
    pub const fn kind(&self) -> ArgErrorKind {
        self.error.kind
    }

    /// The name of the message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The argument, by name or position.
    pub const fn arg(&self) -> &ArgRef {
        &self.arg
    }

    /// What the requested type accepts, in words.
    pub const fn expected(&self) -> &'static str {
        self.error.expected
    }

    /// The SPOP type the argument had (`None`: missing).
    pub const fn actual(&self) -> Option<DataType> {
        self.error.actual
    }

    /// The value-level error.
    pub const fn value_error(&self) -> &ValueError {
        &self.error
    }
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message \"{}\", {}: {}",
            self.message.escape_debug(),
            self.arg,
            self.error
        )?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ArgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}
