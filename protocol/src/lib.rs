//! Wire protocol: the versioned binary frames gateway nodes and tools use over QUIC.
//!
//! **Not built yet** (issue 4). Length-prefixed frames, request ids, batches of commands with one
//! outcome each, queries and an ordered event subscription; bounds-checked, allocation-bounded
//! decoding that answers malformed input with an error frame.

#![forbid(unsafe_code)]
