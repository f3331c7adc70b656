//! Internal parsing glue: the crate's parsers run on nom 8 with a private error type, and every
//! public function maps the result to [`DecodeError`]. nom never appears in the public API.
//!
//! The hot-path primitives (`p_*`) are plain functions over slices returning
//! `Result<(rest, value), DecodeError>`; the nom combinators below are thin wrappers over them,
//! so both report exactly the same errors.

use nom::error::{ErrorKind, ParseError};
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

/// The result of a plain (non-nom) parser: what is left of the input and the value.
pub(crate) type DResult<'a, T> = Result<(&'a [u8], T), DecodeError>;

/// Lifts a plain parser's result into nom's.
#[inline(always)]
pub(crate) fn lift<T>(r: DResult<'_, T>) -> PResult<'_, T> {
    r.map_err(|e| nom::Err::Error(PError(e)))
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

// ---------------------------------------------------------------------------------------------
// Plain primitives
// ---------------------------------------------------------------------------------------------

/// A varint (see [`crate::varint`]), with the one-byte case inline.
#[inline(always)]
pub(crate) fn p_varint(i: &[u8]) -> DResult<'_, u64> {
    match i.split_first() {
        Some((&b, rest)) if b < 240 => Ok((rest, u64::from(b))),
        _ => {
            let (v, n) = varint::decode(i)?;
            Ok((&i[n..], v))
        }
    }
}

/// One byte, reporting `what` on truncation.
#[inline(always)]
pub(crate) fn p_byte<'a>(i: &'a [u8], what: &'static str) -> DResult<'a, u8> {
    match i.split_first() {
        Some((&b, rest)) => Ok((rest, b)),
        None => Err(DecodeError::Truncated(what)),
    }
}

/// `n` raw bytes, reporting `what` on truncation.
#[inline(always)]
pub(crate) fn p_bytes<'a>(i: &'a [u8], n: u64, what: &'static str) -> DResult<'a, &'a [u8]> {
    match usize::try_from(n) {
        Ok(n) if n <= i.len() => {
            let (taken, rest) = i.split_at(n);
            Ok((rest, taken))
        }
        _ => Err(DecodeError::Truncated(what)),
    }
}

/// Exactly `N` raw bytes, reporting `what` on truncation.
#[inline(always)]
pub(crate) fn p_array<'a, const N: usize>(i: &'a [u8], what: &'static str) -> DResult<'a, [u8; N]> {
    match i.split_first_chunk::<N>() {
        Some((taken, rest)) => Ok((rest, *taken)),
        None => Err(DecodeError::Truncated(what)),
    }
}

/// A length-prefixed byte string (the grammar's `<STRING>` without a type byte).
#[inline(always)]
pub(crate) fn p_raw_str<'a>(i: &'a [u8], what: &'static str) -> DResult<'a, &'a [u8]> {
    let (i, len) = match p_varint(i) {
        Ok(v) => v,
        Err(DecodeError::Truncated(_)) => return Err(DecodeError::Truncated(what)),
        Err(e) => return Err(e),
    };
    p_bytes(i, len, what)
}

/// A length-prefixed name that must be UTF-8.
#[inline(always)]
pub(crate) fn p_name<'a>(i: &'a [u8], what: &'static str) -> DResult<'a, &'a str> {
    let (i, raw) = p_raw_str(i, what)?;
    match std::str::from_utf8(raw) {
        Ok(s) => Ok((i, s)),
        Err(_) => Err(DecodeError::InvalidUtf8(what)),
    }
}

/// Checks a length-prefixed name like [`p_name`] (same errors) without producing the `&str`;
/// ASCII, the usual case, is recognised without a call to the UTF-8 validator.
#[inline(always)]
pub(crate) fn p_check_name<'a>(i: &'a [u8], what: &'static str) -> Result<&'a [u8], DecodeError> {
    let (i, raw) = p_raw_str(i, what)?;
    if raw.is_ascii() || std::str::from_utf8(raw).is_ok() {
        Ok(i)
    } else {
        Err(DecodeError::InvalidUtf8(what))
    }
}

// ---------------------------------------------------------------------------------------------
// nom combinators over the primitives
// ---------------------------------------------------------------------------------------------

/// A varint (see [`crate::varint`]).
#[inline]
pub(crate) fn varint(i: &[u8]) -> PResult<'_, u64> {
    lift(p_varint(i))
}

/// One byte, reporting `what` on truncation.
#[inline]
pub(crate) fn byte(what: &'static str) -> impl Fn(&[u8]) -> PResult<'_, u8> {
    move |i| lift(p_byte(i, what))
}

/// `n` raw bytes, reporting `what` on truncation.
#[inline]
pub(crate) fn bytes(n: u64, what: &'static str) -> impl Fn(&[u8]) -> PResult<'_, &[u8]> {
    move |i| lift(p_bytes(i, n, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_report_what() {
        assert_eq!(p_byte(&[], "x"), Err(DecodeError::Truncated("x")));
        assert_eq!(p_byte(&[7, 8], "x"), Ok((&[8u8][..], 7)));
        assert_eq!(p_bytes(&[1, 2], 3, "y"), Err(DecodeError::Truncated("y")));
        assert_eq!(
            p_bytes(&[1, 2], u64::MAX, "y"),
            Err(DecodeError::Truncated("y"))
        );
        assert_eq!(p_bytes(&[1, 2, 3], 2, "y"), Ok((&[3u8][..], &[1u8, 2][..])));
        assert_eq!(p_array::<2>(&[1], "z"), Err(DecodeError::Truncated("z")));
        assert_eq!(p_array::<2>(&[1, 2], "z"), Ok((&[][..], [1, 2])));
        assert_eq!(p_raw_str(&[0xf0], "s"), Err(DecodeError::Truncated("s")));
        assert_eq!(p_raw_str(&[], "s"), Err(DecodeError::Truncated("s")));
        let eleven = [0xff; 11];
        assert_eq!(p_raw_str(&eleven, "s"), Err(DecodeError::InvalidVarint));
        assert_eq!(p_name(&[1, 0xc3], "n"), Err(DecodeError::InvalidUtf8("n")));
        assert_eq!(p_name(&[2, b'o', b'k', 9], "n"), Ok((&[9u8][..], "ok")));
        assert_eq!(
            p_check_name(&[1, 0xc3], "n"),
            Err(DecodeError::InvalidUtf8("n"))
        );
        assert_eq!(
            p_check_name(&[3, 0xc3, 0xa9], "n"),
            Err(DecodeError::Truncated("n"))
        );
        assert_eq!(p_check_name(&[2, 0xc3, 0xa9, 9], "n"), Ok(&[9u8][..]));
        assert_eq!(p_check_name(&[2, b'o', b'k'], "n"), Ok(&[][..]));
        assert_eq!(p_varint(&[0xf0, 0x80, 0x00, 1]), Ok((&[1u8][..], 2288)));
        assert_eq!(p_varint(&[]), Err(DecodeError::Truncated("varint")));
    }
}
