//! Shared support for the workspace's cross-crate tests.

pub use spop_proto;
