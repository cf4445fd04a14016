//! The `paycore` binary's library half: subcommands that tests also drive.

#![forbid(unsafe_code)]

pub mod node;
pub mod torture;
