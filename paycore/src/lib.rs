//! The `paycore` binary's library half: subcommands that tests also drive.

#![forbid(unsafe_code)]

pub mod client_role;
pub mod credentials;
pub mod cut_repair;
pub mod flush;
pub mod frames;
pub mod metrics;
pub mod node;
pub mod node_state;
pub mod publish;
pub mod replication;
pub mod torture;
