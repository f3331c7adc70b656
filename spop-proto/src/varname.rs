//! Variable names HAProxy accepts.
//!
//! HAProxy sets the variable `<scope>.<var-prefix>.<name>` for a set-var action, and it drops
//! the action **silently** when:
//!
//! - the name holds a byte outside `[A-Za-z0-9._]` (`client-ip` is refused);
//! - the whole `scope.prefix.name` does not fit its 64-byte buffer (63 bytes and a NUL): up to
//!   3.4 the name is truncated, so another (unknown) variable would be meant; newer versions
//!   refuse it. So `txn.` + prefix + `.` + name must be at most [`MAX_FULL_VAR_NAME_LEN`] bytes;
//! - the name is unknown to HAProxy: not used in the configuration, not listed in
//!   `register-var-names`, and `option force-set-var` is off.
//!
//! # Which API, and why
//!
//! - [`VarName::new`] is a `const fn`: `const SCORE: VarName = VarName::new("score");` checks
//!   the characters **at compile time** (an invalid name does not build). Use it for the names
//!   a handler sets, and declare them (spoa-runtime lists them for `register-var-names` and
//!   checks the 64-byte rule against the configured prefix at startup, since only the
//!   configuration knows the prefix).
//! - [`Actions::try_set_var`](crate::Actions::try_set_var) checks a name computed at run time
//!   (from the peer, the configuration) and returns a [`VarNameError`] instead of sending it.
//! - [`Actions::set_var`](crate::Actions::set_var) keeps taking a plain `&str` with no cost in
//!   release builds, and `debug_assert!`s the characters: every handler test (debug build)
//!   catches a bad literal, and hot paths pay nothing for names that are constants.
//!
//! A validated type on `set_var` itself was rejected: it would make every call spell
//! `VarName::new(..)` for names that are almost always literals, while the compile-time
//! check on declared constants already covers them.
//!
//! ```
//! use spop_proto::{Scope, VarName, VarNameError};
//! const SCORE: VarName<'static> = VarName::new("score");
//! assert_eq!(SCORE.full_len(Scope::Transaction, "botguard"), "txn.botguard.score".len());
//! assert_eq!(VarName::try_new("client-ip"), Err(VarNameError::InvalidByte { byte: b'-', index: 6 }));
//! assert!(SCORE.check_full(Scope::Transaction, &"p".repeat(60)).is_err());
//! ```

use std::fmt;

use crate::frame::Scope;

/// The longest `scope.prefix.name` HAProxy keeps whole (its buffer is 64 bytes with the NUL).
pub const MAX_FULL_VAR_NAME_LEN: usize = 63;

/// Why a variable name (or prefix) would not reach HAProxy as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum VarNameError {
    /// The name is empty.
    #[error("empty variable name")]
    Empty,
    /// A byte outside `[A-Za-z0-9._]`.
    #[error("byte {:?} at index {index} is not allowed in a variable name (only A-Z a-z 0-9 . _)", char::from(*byte))]
    InvalidByte {
        /// The byte.
        byte: u8,
        /// Its index in the name.
        index: usize,
    },
    /// `scope.prefix.name` is longer than HAProxy's buffer keeps.
    #[error("variable {scope}.<prefix>.<name> is {len} bytes, above HAProxy's maximum of {max}")]
    TooLong {
        /// The scope.
        scope: Scope,
        /// The full length.
        len: usize,
        /// [`MAX_FULL_VAR_NAME_LEN`].
        max: usize,
    },
    /// The `var-prefix` itself has a byte outside `[A-Za-z0-9._]` (or is empty).
    #[error("invalid var-prefix: {0}")]
    BadPrefix(&'static str),
}

const fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'_'
}

/// Checks the characters of a name: `[A-Za-z0-9._]`, at least one.
const fn check_chars(name: &str) -> Result<(), VarNameError> {
    let b = name.as_bytes();
    if b.is_empty() {
        return Err(VarNameError::Empty);
    }
    let mut i = 0;
    while i < b.len() {
        if !allowed(b[i]) {
            return Err(VarNameError::InvalidByte {
                byte: b[i],
                index: i,
            });
        }
        i += 1;
    }
    Ok(())
}

/// True when HAProxy accepts the characters of `name` (`[A-Za-z0-9._]`, not empty).
///
/// ```
/// assert!(spop_proto::is_valid_var_name("ip_score"));
/// assert!(!spop_proto::is_valid_var_name("ip-score"));
/// ```
pub const fn is_valid_var_name(name: &str) -> bool {
    check_chars(name).is_ok()
}

/// A variable name whose characters HAProxy accepts (`[A-Za-z0-9._]`).
///
/// ```
/// use spop_proto::VarName;
/// const REASON: VarName<'static> = VarName::new("reason");
/// assert_eq!(REASON.as_str(), "reason");
/// assert_eq!(REASON.to_string(), "reason");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VarName<'a>(&'a str);

impl<'a> VarName<'a> {
    /// Validates `name`.
    ///
    /// # Panics
    ///
    /// If a byte is outside `[A-Za-z0-9._]` or the name is empty: in a `const` that is a
    /// compile error, which is the point.
    ///
    /// ```compile_fail
    /// const BAD: spop_proto::VarName<'static> = spop_proto::VarName::new("client-ip");
    /// assert_eq!(BAD.as_str(), "client-ip");
    /// ```
    #[track_caller]
    pub const fn new(name: &'a str) -> Self {
        match check_chars(name) {
            Ok(()) => Self(name),
            Err(VarNameError::Empty) => panic!("empty variable name"),
            Err(_) => panic!("variable names may hold only A-Z a-z 0-9 . _"),
        }
    }

    /// Validates `name`, reporting the first offending byte.
    ///
    /// ```
    /// use spop_proto::{VarName, VarNameError};
    /// assert!(VarName::try_new("a.b_c9").is_ok());
    /// assert_eq!(VarName::try_new(""), Err(VarNameError::Empty));
    /// ```
    pub const fn try_new(name: &'a str) -> Result<Self, VarNameError> {
        match check_chars(name) {
            Ok(()) => Ok(Self(name)),
            Err(e) => Err(e),
        }
    }

    /// The name.
    pub const fn as_str(&self) -> &'a str {
        self.0
    }

    /// The length of `scope.prefix.name`, what HAProxy's 64-byte buffer must hold.
    ///
    /// ```
    /// use spop_proto::{Scope, VarName};
    /// assert_eq!(VarName::new("n").full_len(Scope::Session, "p"), "sess.p.n".len());
    /// ```
    pub const fn full_len(&self, scope: Scope, prefix: &str) -> usize {
        scope.as_str().len() + 1 + prefix.len() + 1 + self.0.len()
    }

    /// Checks the 64-byte rule (and the prefix's characters) for `scope` and `var-prefix`.
    ///
    /// ```
    /// use spop_proto::{Scope, VarName, VarNameError};
    /// let n = VarName::new("score");
    /// assert_eq!(n.check_full(Scope::Transaction, "botguard"), Ok(()));
    /// assert!(matches!(n.check_full(Scope::Transaction, &"x".repeat(54)), Err(VarNameError::TooLong { len: 64, .. })));
    /// assert_eq!(n.check_full(Scope::Transaction, "bot-guard"), Err(VarNameError::BadPrefix("bytes other than A-Z a-z 0-9 . _")));
    /// ```
    pub const fn check_full(&self, scope: Scope, prefix: &str) -> Result<(), VarNameError> {
        if let Err(e) = check_chars(prefix) {
            return Err(VarNameError::BadPrefix(match e {
                VarNameError::Empty => "empty",
                _ => "bytes other than A-Z a-z 0-9 . _",
            }));
        }
        let len = self.full_len(scope, prefix);
        if len > MAX_FULL_VAR_NAME_LEN {
            return Err(VarNameError::TooLong {
                scope,
                len,
                max: MAX_FULL_VAR_NAME_LEN,
            });
        }
        Ok(())
    }
}

impl AsRef<str> for VarName<'_> {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl fmt::Display for VarName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl<'a> TryFrom<&'a str> for VarName<'a> {
    type Error = VarNameError;
    fn try_from(s: &'a str) -> Result<Self, VarNameError> {
        Self::try_new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charset() {
        for ok in ["a", "A.Z", "ip_score", "x9", "..", "_"] {
            assert!(VarName::try_new(ok).is_ok(), "{ok}");
        }
        for (bad, byte, index) in [
            ("a-b", b'-', 1),
            ("a b", b' ', 1),
            ("é", 0xc3, 0),
            ("a:", b':', 1),
        ] {
            assert_eq!(
                VarName::try_new(bad),
                Err(VarNameError::InvalidByte { byte, index })
            );
        }
        assert!(is_valid_var_name(crate::PAD_VAR_NAME));
    }

    #[test]
    fn sixty_four_byte_rule() {
        // txn. + prefix(5) + . + name: 63 fits, 64 does not
        let name = "n".repeat(63 - 4 - 5 - 1);
        let n = VarName::try_new(&name).unwrap();
        assert_eq!(n.full_len(Scope::Transaction, "abcde"), 63);
        assert_eq!(n.check_full(Scope::Transaction, "abcde"), Ok(()));
        assert_eq!(
            n.check_full(Scope::Session, "abcde"),
            Err(VarNameError::TooLong {
                scope: Scope::Session,
                len: 64,
                max: 63
            })
        );
        assert!(n.check_full(Scope::Transaction, "").is_err());
    }
}
