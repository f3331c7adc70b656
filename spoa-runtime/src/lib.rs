//! Tokio runtime for HAProxy SPOE agents, built on [`spop_proto`]. Work in progress.

pub use spop_proto;
