//! ACK: actions (set-var, unset-var) in one of five variable scopes.

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::{FrameFlags, FrameHeader, FramePrefix, NotifyId};
use crate::data::{TypedData, name, put_raw_str, typed_data};
use crate::error::DecodeError;
use crate::parse::{self, Emit, PResult, byte};
use crate::status::FrameType;
use crate::varint;

/// The scope of a variable: HAProxy sets `<scope>.<var-prefix>.<name>`.
///
/// ```
/// use spop_proto::Scope;
/// assert_eq!(Scope::Transaction.as_str(), "txn");
/// assert_eq!("sess".parse::<Scope>(), Ok(Scope::Session));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `proc` (0): process-wide.
    Process = 0,
    /// `sess` (1): the client session.
    Session = 1,
    /// `txn` (2): the HTTP transaction.
    Transaction = 2,
    /// `req` (3): the request.
    Request = 3,
    /// `res` (4): the response.
    Response = 4,
}

impl Scope {
    /// Every scope, in wire order.
    pub const ALL: [Self; 5] = [
        Self::Process,
        Self::Session,
        Self::Transaction,
        Self::Request,
        Self::Response,
    ];

    /// Decodes the scope byte.
    pub const fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Process,
            1 => Self::Session,
            2 => Self::Transaction,
            3 => Self::Request,
            4 => Self::Response,
            _ => return None,
        })
    }

    /// HAProxy's name of the scope (`proc`, `sess`, `txn`, `req`, `res`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Process => "proc",
            Self::Session => "sess",
            Self::Transaction => "txn",
            Self::Request => "req",
            Self::Response => "res",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|sc| sc.as_str() == s)
            .ok_or_else(|| format!("unknown scope {s:?} (expected proc, sess, txn, req or res)"))
    }
}

/// The smallest allocation of an [`Actions`] buffer (room for two or three typical actions).
const MIN_ALLOC: usize = 96;

const SET_VAR: u8 = 1;
const UNSET_VAR: u8 = 2;

/// One decoded action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action<'a> {
    /// set-var (type 1, 3 arguments). A NULL value makes HAProxy unset the variable.
    SetVar {
        /// Scope.
        scope: Scope,
        /// Variable name (without scope and prefix).
        name: &'a str,
        /// Value.
        value: TypedData<'a>,
    },
    /// unset-var (type 2, 2 arguments).
    UnsetVar {
        /// Scope.
        scope: Scope,
        /// Variable name.
        name: &'a str,
    },
}

impl fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SetVar { scope, name, value } => write!(f, "set-var {scope}.{name} = {value}"),
            Self::UnsetVar { scope, name } => write!(f, "unset-var {scope}.{name}"),
        }
    }
}

/// The grammar's action: `<TYPE:1 byte><NB-ARGS:1 byte>`, then the scope byte and the
/// variable name, and for set-var its value (set-var takes 3 arguments, unset-var 2).
#[inline]
fn action(i: &[u8]) -> PResult<'_, Action<'_>> {
    let (i, code) = byte(i, "action type")?;
    let (i, nb_args) = byte(i, "action nb-args")?;
    let expected = match code {
        SET_VAR => 3,
        UNSET_VAR => 2,
        other => return parse::fail(DecodeError::UnknownAction(other)),
    };
    if nb_args != expected {
        return parse::fail(DecodeError::BadActionArgs {
            action: code,
            nb_args,
        });
    }
    let (i, sb) = byte(i, "action scope")?;
    let Some(scope) = Scope::from_byte(sb) else {
        return parse::fail(DecodeError::UnknownScope(sb));
    };
    let (i, name) = name::<Emit>(i, "variable name")?;
    if code == UNSET_VAR {
        return Ok((i, Action::UnsetVar { scope, name }));
    }
    let (i, value) = typed_data::<Emit>(i)?;
    Ok((i, Action::SetVar { scope, name, value }))
}

/// A validated LIST-OF-ACTIONS, borrowed (decoding an ACK on the HAProxy side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionList<'a> {
    payload: &'a [u8],
}

impl<'a> ActionList<'a> {
    /// Validates an ACK payload.
    ///
    /// ```
    /// use spop_proto::frame::ActionList;
    /// use spop_proto::DecodeError;
    /// // set-var announcing 2 args
    /// assert_eq!(
    ///     ActionList::parse(&[1, 2, 2, 1, b'n', 0]),
    ///     Err(DecodeError::BadActionArgs { action: 1, nb_args: 2 })
    /// );
    /// ```
    pub fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        parse::run(parse::list(action), payload)?;
        Ok(Self { payload })
    }

    /// The actions, in order.
    pub fn iter(&self) -> impl Iterator<Item = Action<'a>> + 'a {
        ActionIter { rest: self.payload }
    }

    /// True when the ACK carries no action.
    pub const fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }
}

#[derive(Debug)]
struct ActionIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ActionIter<'a> {
    type Item = Action<'a>;
    fn next(&mut self) -> Option<Action<'a>> {
        // validated by `ActionList::parse`, or encoded by `Actions`
        parse::next_item(&mut self.rest, action)
    }
}

/// The actions of an ACK, encoded as they are pushed.
///
/// ```
/// use spop_proto::{Actions, Scope};
/// let mut actions = Actions::new();
/// actions.set_var(Scope::Transaction, "ip_score", 42i64).unset_var(Scope::Session, "flag");
/// assert_eq!(actions.len(), 2);
/// let names: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
/// assert_eq!(names, ["set-var txn.ip_score = int64:42", "unset-var sess.flag"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    buf: BytesMut,
    count: usize,
}

impl Actions {
    /// No actions.
    pub fn new() -> Self {
        Self::default()
    }

    /// No actions, with room for `bytes` encoded bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(bytes),
            count: 0,
        }
    }

    /// Adds a set-var action. `value` is anything convertible to [`TypedData`]: integers,
    /// `bool`, `&str`, `&[u8]`, IP addresses, `Option<T>` (`None` is NULL, which unsets).
    ///
    /// `name` must hold only `[A-Za-z0-9._]` (HAProxy silently ignores other names): a
    /// `debug_assert!` checks it, so handler tests catch a bad literal; release builds do not
    /// check. Use [`Actions::try_set_var`] for names computed at run time, and see
    /// [`VarName`](crate::VarName) for the reasons and the 64-byte rule.
    ///
    /// ```
    /// use spop_proto::{Actions, Scope};
    /// let mut a = Actions::new();
    /// a.set_var(Scope::Transaction, "score", 90i64).set_var(Scope::Transaction, "reason", "tool-ua");
    /// assert_eq!(a.len(), 2);
    /// ```
    #[track_caller]
    pub fn set_var<'v>(
        &mut self,
        scope: Scope,
        name: &str,
        value: impl Into<TypedData<'v>>,
    ) -> &mut Self {
        debug_assert!(
            crate::is_valid_var_name(name),
            "variable name {name:?} holds bytes HAProxy refuses (only A-Z a-z 0-9 . _); \
             use try_set_var for names computed at run time"
        );
        self.set_var_unchecked(scope, name, value)
    }

    /// Adds a set-var action after checking that HAProxy accepts `name` (`[A-Za-z0-9._]`).
    ///
    /// ```
    /// use spop_proto::{Actions, Scope, VarNameError};
    /// let mut a = Actions::new();
    /// assert!(a.try_set_var(Scope::Transaction, "client_ip", 1i64).is_ok());
    /// assert_eq!(
    ///     a.try_set_var(Scope::Transaction, "client-ip", 1i64).unwrap_err(),
    ///     VarNameError::InvalidByte { byte: b'-', index: 6 }
    /// );
    /// assert_eq!(a.len(), 1);
    /// ```
    pub fn try_set_var<'v>(
        &mut self,
        scope: Scope,
        name: &str,
        value: impl Into<TypedData<'v>>,
    ) -> Result<&mut Self, crate::VarNameError> {
        crate::VarName::try_new(name)?;
        Ok(self.set_var_unchecked(scope, name, value))
    }

    /// Adds a set-var action without any check of `name`: for tools and tests that must
    /// produce what HAProxy refuses. Agents use [`Actions::set_var`] or
    /// [`Actions::try_set_var`].
    ///
    /// ```
    /// use spop_proto::{Actions, Scope};
    /// let mut a = Actions::new();
    /// a.set_var_unchecked(Scope::Transaction, "not-valid", true);
    /// assert_eq!(a.len(), 1);
    /// ```
    pub fn set_var_unchecked<'v>(
        &mut self,
        scope: Scope,
        name: &str,
        value: impl Into<TypedData<'v>>,
    ) -> &mut Self {
        let value = value.into();
        // an upper bound on the action's encoded length: at most one growth per action
        self.reserve(
            3 + 2 * varint::MAX_LEN + 1 + name.len() + value.as_bytes().map_or(16, <[u8]>::len),
        );
        self.buf.put_slice(&[SET_VAR, 3, scope as u8]);
        put_raw_str(&mut self.buf, name.as_bytes());
        value.encode(&mut self.buf);
        self.count += 1;
        self
    }

    /// Adds an unset-var action (`name` is checked like [`Actions::set_var`]'s).
    ///
    /// ```
    /// use spop_proto::{Actions, Scope};
    /// let mut a = Actions::new();
    /// a.unset_var(Scope::Session, "flag");
    /// assert_eq!(a.iter().next().unwrap().to_string(), "unset-var sess.flag");
    /// ```
    #[track_caller]
    pub fn unset_var(&mut self, scope: Scope, name: &str) -> &mut Self {
        debug_assert!(
            crate::is_valid_var_name(name),
            "variable name {name:?} holds bytes HAProxy refuses (only A-Z a-z 0-9 . _); \
             use try_unset_var for names computed at run time"
        );
        self.unset_var_unchecked(scope, name)
    }

    /// Adds an unset-var action after checking `name`, like [`Actions::try_set_var`].
    ///
    /// ```
    /// use spop_proto::{Actions, Scope};
    /// assert!(Actions::new().try_unset_var(Scope::Session, "a b").is_err());
    /// ```
    pub fn try_unset_var(
        &mut self,
        scope: Scope,
        name: &str,
    ) -> Result<&mut Self, crate::VarNameError> {
        crate::VarName::try_new(name)?;
        Ok(self.unset_var_unchecked(scope, name))
    }

    /// Adds an unset-var action without checking `name` (tools and tests).
    ///
    /// ```
    /// use spop_proto::{Actions, Scope};
    /// assert_eq!(Actions::new().unset_var_unchecked(Scope::Session, "").len(), 1);
    /// ```
    pub fn unset_var_unchecked(&mut self, scope: Scope, name: &str) -> &mut Self {
        self.reserve(3 + varint::MAX_LEN + name.len());
        self.buf.put_slice(&[UNSET_VAR, 2, scope as u8]);
        put_raw_str(&mut self.buf, name.as_bytes());
        self.count += 1;
        self
    }

    /// Appends the actions of `other`, in order (a router merging the answers to several
    /// messages).
    ///
    /// ```
    /// use spop_proto::{Actions, Scope};
    /// let mut a = Actions::new();
    /// a.set_var(Scope::Transaction, "a", 1i64);
    /// let mut b = Actions::new();
    /// b.unset_var(Scope::Transaction, "b");
    /// a.append(&b);
    /// assert_eq!(a.iter().map(|x| x.to_string()).collect::<Vec<_>>(), ["set-var txn.a = int64:1", "unset-var txn.b"]);
    /// ```
    pub fn append(&mut self, other: &Self) -> &mut Self {
        self.buf.extend_from_slice(&other.buf);
        self.count += other.count;
        self
    }

    /// Makes room for `additional` bytes; the first allocation holds a few typical actions.
    #[inline]
    fn reserve(&mut self, additional: usize) {
        if self.buf.capacity() - self.buf.len() < additional {
            self.grow(additional);
        }
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self, additional: usize) {
        self.buf.reserve(additional.max(MIN_ALLOC));
    }

    /// The number of actions.
    pub const fn len(&self) -> usize {
        self.count
    }

    /// True when there is no action.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Removes every action, keeping the allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }

    /// The encoded LIST-OF-ACTIONS.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The actions, decoded back.
    pub fn iter(&self) -> impl Iterator<Item = Action<'_>> + '_ {
        ActionIter { rest: &self.buf }
    }

    /// The length of the ACK frame carrying these actions for `id` (without the 4-byte prefix).
    pub fn frame_len(&self, id: NotifyId) -> usize {
        1 + 4
            + varint::encoded_len(id.stream_id)
            + varint::encoded_len(id.frame_id)
            + self.buf.len()
    }

    /// Writes the whole ACK frame for `id`, length prefix included, flags FIN.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use spop_proto::{Actions, NotifyId, Scope};
    /// let mut actions = Actions::new();
    /// actions.unset_var(Scope::Session, "flag");
    /// let mut buf = BytesMut::new();
    /// actions.encode_ack(NotifyId::new(1, 1), &mut buf);
    /// assert_eq!(&buf[..], b"\x00\x00\x00\x0f\x67\x00\x00\x00\x01\x01\x01\x02\x02\x01\x04flag");
    /// ```
    pub fn encode_ack(&self, id: NotifyId, dst: &mut BytesMut) {
        let hdr = FrameHeader::new(FrameType::ACK, FrameFlags::FIN, id.stream_id, id.frame_id);
        FramePrefix::new(hdr, self.buf.len()).put(dst, &self.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_acks() {
        let mut a = Actions::new();
        a.set_var(Scope::Transaction, "ip_score", 42i64);
        let mut buf = BytesMut::new();
        a.encode_ack(NotifyId::new(1, 1), &mut buf);
        assert_eq!(
            &buf[..],
            b"\x00\x00\x00\x15\x67\x00\x00\x00\x01\x01\x01\x01\x03\x02\x08ip_score\x04\x2a"
        );
        assert_eq!(a.frame_len(NotifyId::new(1, 1)), 0x15);

        let mut a = Actions::new();
        a.set_var(Scope::Transaction, "n", -1i64);
        buf.clear();
        a.encode_ack(NotifyId::new(1, 1), &mut buf);
        assert_eq!(
            &buf[..],
            b"\x00\x00\x00\x17\x67\x00\x00\x00\x01\x01\x01\x01\x03\x02\x01n\x04\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e"
        );

        buf.clear();
        Actions::new().encode_ack(NotifyId::new(5, 1), &mut buf);
        assert_eq!(&buf[..], b"\x00\x00\x00\x07\x67\x00\x00\x00\x01\x05\x01");
    }

    #[test]
    fn malformed_actions() {
        assert_eq!(
            ActionList::parse(&[9, 2]),
            Err(DecodeError::UnknownAction(9))
        );
        assert_eq!(
            ActionList::parse(&[2, 2, 5, 1, b'x']),
            Err(DecodeError::UnknownScope(5))
        );
        assert_eq!(
            ActionList::parse(&[2, 2, 1, 3, b'x']),
            Err(DecodeError::Truncated("variable name"))
        );
        assert_eq!(
            ActionList::parse(&[1, 3, 1, 1, b'x']),
            Err(DecodeError::Truncated("data type"))
        );
        assert_eq!(
            ActionList::parse(&[1]),
            Err(DecodeError::Truncated("action nb-args"))
        );
    }
}
