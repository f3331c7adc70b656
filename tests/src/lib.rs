//! Shared support for the workspace's cross-crate tests.
//!
//! [`interop`] runs real HAProxy processes in front of the example agent.

pub mod hostile;
pub mod interop;

pub use spop_proto;
