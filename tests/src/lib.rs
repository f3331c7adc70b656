//! Shared support for the workspace's cross-crate tests.
//!
//! [`interop`] runs real HAProxy processes in front of the example agent; [`hostile`] plays
//! hostile peers and floods; [`peer`] is HAProxy's side at the frame level, which they and the
//! runtime's loopback tests share.

pub mod hostile;
pub mod interop;
pub mod peer;

pub use spop_proto;
