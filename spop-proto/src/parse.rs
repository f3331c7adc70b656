//! Internal nom glue: the crate's parsers run on nom 8 with a private error type, and every
//! public function maps the result to [`DecodeError`]. nom never appears in the public API.

use nom::bytes::complete::take;
use nom::error::{ErrorKind, ParseError};
use nom::number::complete::be_u8;
use nom::{IResult, Parser};

use crate::error::DecodeError;
use crate::varint;

/// The private nom error: a [`DecodeError`] with no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PError(pub(crate) DecodeError);

impl ParseError<&[u8]> for PError {
    fn from_error_kind(_input: &[u8], _kind: ErrorKind) -> Self {
        Self(DecodeError::Truncated("data"))
    }

    fn append(_input: &[u8], _kind: ErrorKind, other: Self) -> Self {
        other
    }
}

pub(crate) type PResult<'a, T> = IResult<&'a [u8], T, PError>;

#[inline]
pub(crate) fn fail<'a, T>(e: DecodeError) -> PResult<'a, T> {
    Err(nom::Err::Error(PError(e)))
}

/// Runs a nom parser and maps its error, keeping what it left.
#[inline]
pub(crate) fn run<'a, T>(
    mut p: impl Parser<&'a [u8], Output = T, Error = PError>,
    input: &'a [u8],
) -> Result<(&'a [u8], T), DecodeError> {
    match p.parse(input) {
        Ok(v) => Ok(v),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(e.0),
        // complete parsers never ask for more input
        Err(nom::Err::Incomplete(_)) => Err(DecodeError::Truncated("data")),
    }
}

/// A varint (see [`crate::varint`]).
#[inline]
pub(crate) fn varint(i: &[u8]) -> PResult<'_, u64> {
    match varint::decode(i) {
        Ok((v, n)) => Ok((&i[n..], v)),
        Err(e) => fail(e),
    }
}

/// One byte, reporting `what` on truncation.
#[inline]
pub(crate) fn byte(what: &'static str) -> impl Fn(&[u8]) -> PResult<'_, u8> {
    move |i| {
        be_u8::<_, PError>(i).map_err(|_| nom::Err::Error(PError(DecodeError::Truncated(what))))
    }
}

/// `n` raw bytes, reporting `what` on truncation.
#[inline]
pub(crate) fn bytes(n: u64, what: &'static str) -> impl Fn(&[u8]) -> PResult<'_, &[u8]> {
    move |i| {
        let Ok(n) = usize::try_from(n) else {
            return fail(DecodeError::Truncated(what));
        };
        take::<_, _, PError>(n)
            .parse(i)
            .map_err(|_| nom::Err::Error(PError(DecodeError::Truncated(what))))
    }
}

/// A length-prefixed byte string (the grammar's `<STRING>` without a type byte).
#[inline]
pub(crate) fn raw_str(what: &'static str) -> impl Fn(&[u8]) -> PResult<'_, &[u8]> {
    move |i| {
        let (i, len) = varint(i).map_err(|e| match e {
            nom::Err::Error(PError(DecodeError::Truncated(_))) => {
                nom::Err::Error(PError(DecodeError::Truncated(what)))
            }
            other => other,
        })?;
        bytes(len, what)(i)
    }
}

/// A length-prefixed name that must be UTF-8.
#[inline]
pub(crate) fn name(what: &'static str) -> impl Fn(&[u8]) -> PResult<'_, &str> {
    move |i| {
        let (i, raw) = raw_str(what)(i)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok((i, s)),
            Err(_) => fail(DecodeError::InvalidUtf8(what)),
        }
    }
}
